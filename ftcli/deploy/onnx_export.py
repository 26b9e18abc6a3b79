"""`ftcli export RUN_DIR --format onnx [--quantize int8]`: the trained model as an ONNX graph
that ONNX Runtime runs, checked against the PyTorch model on the validation split before it is
kept.

The exporter is torch's own (`torch.onnx.export(dynamo=True)`, built on `torch.export`): it
exports every family ftcli trains (BERT, RoBERTa, DeBERTa-v2, ModernBERT, T5 encoders, GPT-2,
Llama, Qwen2) with logits within 4e-7 of PyTorch's. The TorchScript exporter it replaces is
deprecated and drops inputs a graph does not read (DeBERTa-v2's token types); optimum covers
only the architectures it lists, and this machine's package registry does not carry it.

The graph takes the tokenizer's tensors (`input_ids`, `attention_mask`, and `token_type_ids`
for models that read them), with dynamic batch and sequence sizes, and returns `logits` already
divided by the model's temperature (`ftcli calibrate`). The folder holds the tokenizer, the
model's config.json (labels), its thresholds and calibration, and `export.json`: the parity
figures. int8 is ONNX Runtime's dynamic quantization (int8 weights of every MatMul, activations
quantized per batch), which needs no calibration data; weights are quantized per output channel
(measured faster and closer to fp32 than one scale per tensor on MiniLM).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcli.console import Reporter
from ftcli.deploy.artifacts import WEIGHTS, locate_run, run_config
from ftcli.errors import CheckFailed, FtcliError, first_line
from ftcli.files import check_output_folder, replace_folder

FORMATS = ("onnx",)
QUANTIZE = ("int8",)
TOLERANCE = 1e-4
"""The largest absolute difference between the export's logits and PyTorch's (fp32) that passes."""

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export(run_dir: str | Path, *, format: str = "onnx", quantize: str | None = None,
           output: str | Path | None = None, split: str | None = None, reporter: Reporter | None = None,
           tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export the run's model to ONNX (`output`, default `RUN_DIR/onnx/`, or `onnx-int8/` with
    `quantize`), run it next to the PyTorch model on `split` (default: the validation split) and
    keep it only when the largest logit difference is at most `tolerance` (an fp32 graph; a
    failed check raises CheckFailed with the figure and writes nothing). With `quantize="int8"`
    the checked fp32 graph is quantized, and the int8 graph's metrics and speed are reported next
    to PyTorch's. Returns the summary `export.json` holds, with `output`."""
    import torch

    from ftcli import modeling
    from ftcli.data import check_splits, eval_dataloader, prepare
    from ftcli.evaluation import (ONNX_FILE, ExportInfo, OneProcess, OnnxClassifier, load_metric, metric_name,
                                  temperature_of, trained_labels)

    if format not in FORMATS:
        raise FtcliError(f"--format {format!r}: ftcli exports {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise FtcliError(f"--quantize {quantize!r}: unsupported; use {', '.join(QUANTIZE)} (or leave it out for fp32)")
    run = locate_run(run_dir, "export")
    cfg = run_config(run, "export")
    out = Path(output) if output else run.run / ("onnx" if quantize is None else f"onnx-{quantize}")
    if out.resolve() == run.model.resolve() or run.model.resolve() in out.resolve().parents:
        raise FtcliError(f"-o {out}: that is the model folder (or inside it); choose a folder of its own")
    check_output_folder(out, "-o" if output else "export folder")
    reporter = reporter or Reporter()
    split = split or cfg.data.validation_name
    check_splits(cfg.data, split)
    prepared = prepare(cfg, log=reporter.info, progress=reporter.progress)
    if not prepared.split_info(split).labeled:
        raise FtcliError(f"export: split {split!r} has no labels; the parity check runs on a labelled split (--split)")
    labels = trained_labels(run.model)
    multi = modeling.read_json(run.model / "config.json").get("problem_type") == "multi_label_classification"
    model = modeling.load_trained(run.model, prepared.label_names, prepared.pad_token_id, cfg.model).eval()
    temperature = temperature_of(run.model) if labels else 1.0
    local = OneProcess()
    dl = eval_dataloader(cfg.data, local, prepared.split(split), prepared, batch_size=cfg.train.eval_batch_size,
                         workers=0)
    sample = next(iter(dl))
    inputs = [k for k in INPUTS if k in sample]
    metric = load_metric(metric_name(cfg.eval, prepared.label_names, multi))

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        started = time.perf_counter()
        reporter.info(f"exporting {run.model} to ONNX (torch.onnx, dynamo)")
        opset = _export_graph(model, temperature, {k: sample[k] for k in inputs}, tmp / ONNX_FILE,
                              prepared.max_length)
        reporter.info(f"exported in {time.perf_counter() - started:.1f} s; checking it on {split} "
                      f"({prepared.split_info(split).docs:,} rows) next to PyTorch")
        reference = _evaluate(local, model, dl, metric, prepared, cfg, multi, temperature)
        onnx_fp32 = _evaluate(local, OnnxClassifier(tmp), dl, metric, prepared, cfg, multi, 1.0)
        diff = _max_difference(reference.result, onnx_fp32.result)
        parity = {"split": split, "rows": reference.result.rows, "max_abs_diff": diff, "tolerance": tolerance,
                  "metrics_pytorch": reference.result.metrics, "metrics_onnx": onnx_fp32.result.metrics}
        if not diff <= tolerance:  # also NaN
            raise CheckFailed(
                f"export: the ONNX graph's logits differ from PyTorch's by up to {diff:.3g} on {split} "
                f"({reference.result.rows:,} rows), above the {tolerance:.0e} tolerance, so nothing was kept; the "
                "exporter mistranslated this model. Run `ftcli --debug export` and report it with the model's family")
        quantized: dict[str, Any] = {}
        if quantize == "int8":
            _quantize_int8(tmp / ONNX_FILE)
            int8 = _evaluate(local, OnnxClassifier(tmp), dl, metric, prepared, cfg, multi, 1.0)
            quantized = {
                "metrics_pytorch": reference.result.metrics, "metrics_int8": int8.result.metrics,
                "change": {k: round(int8.result.metrics[k] - v, 6) for k, v in reference.result.metrics.items()
                           if k in int8.result.metrics},
                "max_abs_diff": _max_difference(reference.result, int8.result),
                "seconds_pytorch": reference.seconds, "seconds_onnx_fp32": onnx_fp32.seconds,
                "seconds_int8": int8.seconds, "speedup_vs_pytorch": round(reference.seconds / int8.seconds, 3),
            }
        _copy_model_files(run.model, tmp)
        info = ExportInfo(format=format, quantize=quantize, model=str(run.model.resolve()), inputs=inputs,
                          temperature=temperature, labels=labels, problem_type=_problem(labels, multi),
                          exporter=f"torch.onnx.export(dynamo=True), torch {torch.__version__}", opset=opset,
                          parity=parity, quantized=quantized)
        info.save(tmp)
        replace_folder(tmp, out)  # an export already there is replaced only now
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out.parent.resolve() == run.run.resolve():  # an export of the run's own: the card lists it
        from ftcli.deploy.card import write_card

        write_card(run.model)
    summary = {"output": str(out), "model": str(run.model), "quantize": quantize, "inputs": inputs,
               "temperature": temperature, "parity": parity, **({"int8": quantized} if quantized else {})}
    _report(reporter, summary, labels)
    return summary


@dataclass(frozen=True)
class _Evaluated:
    result: Any  # EvalResult
    seconds: float


def _evaluate(local, model, dl, metric, prepared, cfg, multi: bool, temperature: float) -> _Evaluated:
    """The split through `model` in this process, as eval runs it (binary and multi-label at
    0.5 or the model's saved thresholds are not needed here: metrics compare like with like)."""
    import torch

    from ftcli.evaluation import run_eval

    start = time.perf_counter()
    with torch.inference_mode():
        result = run_eval(local, model, dl, metric, regression=prepared.is_regression, keep_outputs=True,
                          multi_label=multi, temperature=temperature, pooling=cfg.eval.window_pooling)
    return _Evaluated(result, round(time.perf_counter() - start, 3))


def _max_difference(a, b) -> float:
    """The largest absolute difference between two evaluations' logits (every window's)."""
    x = a.window_logits if a.window_logits is not None else a.logits
    y = b.window_logits if b.window_logits is not None else b.logits
    if x.shape != y.shape:
        return float("inf")
    return float((x.double() - y.double()).abs().max()) if x.numel() else 0.0


def _logits_module(model, temperature: float):
    """The graph's function: the model's logits divided by the temperature, from named inputs
    (torch.export names the graph's inputs after forward's parameters)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            types = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **types).logits / temperature

    return Logits().eval()


def _export_graph(model, temperature: float, sample: dict, path: Path, max_length: int | None) -> int:
    """Write `model`'s graph to `path`; returns its opset. Batch and sequence sizes stay dynamic
    (torch.export specializes a size of 1, so the sample has at least two rows). The sequence's
    bound is the prepared data's max_length: within the model's positions, so torch.export's
    guards hold and the exporter does not fall back to its slower strategies."""
    import contextlib
    import io

    import torch

    from ftcli.quiet import quiet

    if sample["input_ids"].shape[0] < 2:
        sample = {k: torch.cat([v, v]) for k, v in sample.items()}
    inputs = list(sample)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=max_length) if max_length else torch.export.Dim("sequence")
    wrapped = _logits_module(model, temperature)
    # The exporter prints its progress to stdout; ftcli's stdout is for results (--json).
    with quiet("transformers", "warnings", "torch.onnx"), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        try:
            program = torch.onnx.export(wrapped, (), kwargs=sample, dynamo=True, input_names=inputs,
                                        output_names=["logits"], optimize=True, verbose=False,
                                        dynamic_shapes={k: {0: batch, 1: sequence} for k in inputs})
        except Exception as exc:  # noqa: BLE001 - the exporter's errors are long; say which step failed
            raise FtcliError(f"export: torch.onnx cannot export this model ({first_line(exc)}); rerun with --debug for "
                             "the exporter's report") from exc
        program.save(str(path))
    import onnx

    return max((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx")), default=0)


def _quantize_int8(path: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of `path`, in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ftcli.quiet import quiet

    fp32 = path.with_name("model.fp32.onnx")
    path.rename(fp32)
    with quiet("warnings", "onnxruntime"):
        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, per_channel=True)
    fp32.unlink()


def _copy_model_files(model: Path, into: Path) -> None:
    """The tokenizer, config.json (labels), thresholds and calibration travel with the graph."""
    for f in sorted(model.iterdir()):
        if f.is_file() and not f.name.startswith(".") and not any(f.match(p) for p in WEIGHTS) \
                and f.suffix != ".png" and f.name not in ("README.md", "ftcli_run.json", "adapter_config.json"):
            shutil.copy2(f, into / f.name)


def _problem(labels: list[str], multi: bool) -> str:
    return "regression" if not labels else "multi_label_classification" if multi else "single_label_classification"


def _report(reporter: Reporter, summary: dict[str, Any], labels: list[str]) -> None:
    parity = summary["parity"]
    reporter.info(f"parity on {parity['split']} ({parity['rows']:,} rows): largest logit difference "
                  f"{parity['max_abs_diff']:.2e} (tolerance {parity['tolerance']:.0e})")
    if "int8" in summary:
        q = summary["int8"]
        change = ", ".join(f"{k} {q['metrics_pytorch'][k]:.4f} -> {q['metrics_int8'][k]:.4f} ({v:+.4f})"
                           for k, v in q["change"].items() if k != "loss")
        reporter.info(f"int8: {change}; {q['speedup_vs_pytorch']:.2f}x PyTorch's speed on this split "
                      f"({q['seconds_pytorch']:.2f} s -> {q['seconds_int8']:.2f} s)")
    reporter.info(f"export -> {summary['output']}")
