"""`ftcli eval`: a trained model on a split of the prepared data, with its reports, thresholds
and quality gate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ftcli.config import Config
from ftcli.console import Reporter
from ftcli.errors import FtcliError
from ftcli.evaluation.loop import EvalResult, run_eval
from ftcli.evaluation.metrics import load_metric, metric_keys, metric_name
from ftcli.evaluation.reports import error_rows, per_class_report, report_folder, write_errors, write_report
from ftcli.evaluation.thresholds import best_threshold, few_positives_warning, save_threshold_file, threshold_for
from ftcli.files import check_output, check_output_folder
from ftcli.gate import Requirement


def evaluate_model(config: Config | str | Path, *, model_dir: str | Path | None = None, split: str | None = None,
                   require: list[Requirement] = (), reporter: Reporter | None = None,
                   report_dir: str | Path | None = None, find_threshold: bool = False, save_threshold: bool = False,
                   errors_file: str | Path | None = None, backend: str = "torch") -> dict[str, Any]:
    """`ftcli eval`: evaluate a trained model on a split of the prepared data, print the results
    (a metrics table and, for classification, a per-class table) and return them.

    Returns the metrics (`loss` and those of `eval.metric`, e.g. `accuracy`, `f1`) with `split`,
    `model`, `samples` and `seconds`; for classification also `per_class` (precision, recall, F1,
    support of each label) and `report`, the `eval_report.json` written with a confusion matrix
    and `confusion_matrix.png` into `report_dir` (default: `eval/<split>/` in the model's run
    folder). Multi-label: `threshold` and where it came from (`threshold_for`); with
    `find_threshold`, `best_threshold`: the single threshold that maximizes micro F1 on this
    split, kept with the model (`thresholds.json`, used by later evals and predictions) when
    `save_threshold`. `errors_file` (.jsonl or .csv): the misclassified rows with their text,
    true and predicted labels and probabilities, most confident mistakes first. `require`
    (quality-gate requirements, see ftcli.gate) are checked against the metric names before the
    model runs; `result["gate"]` has each one's value and verdict, `result["failed"]` lists those
    the model missed (empty when it passed). Binary models with a saved threshold, and
    probabilities with a saved temperature, are evaluated as predict uses them. `backend`:
    `torch`, or `onnx` for the model's ONNX export (`model_dir` may name the export folder)."""
    from ftcli import gate
    from ftcli.config import as_config
    from ftcli.data import eval_dataloader, prepare
    from ftcli.evaluation.backends import load_scorer, scoring_folder
    from ftcli.runtime import accelerator_session

    cfg = as_config(config)
    folder = scoring_folder(backend, cfg, model_dir)
    split = split or cfg.eval.split
    where, errors_path = _check_request(cfg, folder, split, report_dir, errors_file)
    find_threshold = find_threshold or save_threshold
    reporter = reporter or Reporter()
    with accelerator_session(cfg.train) as accelerator:
        reporter.enabled = reporter.enabled and accelerator.is_main_process
        # one builder per cache key (file lock)
        prepared = prepare(cfg, log=reporter.info, progress=reporter.progress)
        info = prepared.split_info(split)
        if not info.labeled:
            raise FtcliError(
                f"split {split!r} ({info.source}) has no labels to evaluate against; use `ftcli predict`"
            )
        multi = prepared.is_multi_label
        if find_threshold and not multi:
            raise FtcliError("--best-threshold/--save-threshold: a threshold is chosen for multi-label data only; "
                             "single-label rows take the most probable label")
        if errors_path is not None and prepared.is_regression:
            raise FtcliError("--errors: regression has no misclassified rows; compare predictions from ftcli predict")
        name = metric_name(cfg.eval, prepared.label_names, multi)
        gate.check_names(list(require), ["loss", *metric_keys(name)])
        thresholds = threshold_for(cfg, folder, prepared.label_names, multi)
        scorer = load_scorer(folder, backend == "onnx", prepared.label_names, prepared.pad_token_id, cfg.model,
                             reporter.warn)
        metric = load_metric(name)
        dl = eval_dataloader(cfg.data, accelerator, prepared.split(split), prepared,
                             batch_size=cfg.train.eval_batch_size, workers=cfg.train.dataloader_workers)
        model, dl = scorer.prepare(accelerator, dl)
        start = time.perf_counter()
        with reporter.progress(len(dl), f"eval {split}", every=1, unit="batches", min_interval=10) as bar:
            evaluated = run_eval(accelerator, model, dl, metric, regression=prepared.is_regression, progress=bar,
                                 keep_predictions=True, multi_label=multi, **thresholds.loop_args(multi),
                                 temperature=scorer.temperature,
                                 pooling=cfg.eval.window_pooling)
        predictions, references, scores = evaluated.predictions, evaluated.references, evaluated.scores
        result = evaluated.values()
        extra: dict[str, Any] = {}
        if thresholds.values is not None:
            single = thresholds.single
            result["threshold"] = single if single is not None else dict(zip(prepared.label_names, thresholds.values))
            extra["threshold_source"] = thresholds.source
        if scorer.applied != 1.0:
            result["temperature"] = scorer.applied
        if multi:
            shown = thresholds.single if thresholds.single is not None else min(thresholds.values)
            if warning := few_positives_warning(predictions, references, shown, split):
                reporter.warn(warning)
            if find_threshold:
                extra["best_threshold"] = best_threshold(scores, references)
                if save_threshold and accelerator.is_main_process:
                    extra["best_threshold"]["saved"] = str(save_threshold_file(folder, extra["best_threshold"], split,
                                                                               scorer.temperature))
        summary = {
            "split": split,
            "model": str(folder),
            "metric": name,
            "backend": backend,
            "processes": accelerator.num_processes,
            "seconds": round(time.perf_counter() - start, 3),
            **result,
            **extra,
            "gate": gate.checks(list(require), result),
            "failed": gate.failures(list(require), result),
        }
        if prepared.label_names:
            per_class = per_class_report(predictions, references, prepared.label_names, multi)
            report = {"split": split, "model": str(folder), **result, **per_class}
            summary["per_class"] = report["per_class"]
            if accelerator.is_main_process:
                summary["report"] = str(write_report(where, report, f"{split}: {folder}"))
        if errors_path is not None:
            rows = _write_error_rows(cfg, split, prepared, evaluated, errors_path, accelerator.is_main_process)
            summary["errors"] = {"path": str(errors_path), "rows": rows}
        accelerator.wait_for_everyone()
        print_eval(reporter, summary)
        return summary


def _check_request(cfg: Config, folder: Path, split: str, report_dir, errors_file) -> tuple[Path, Path | None]:
    """What `eval` is asked to read and write, checked before anything loads: the model folder,
    the split, the report folder and the `--errors` file. Returns the report folder and the
    errors file (None: not asked for)."""
    from ftcli.data import check_splits

    check_splits(cfg.data, split)
    where = Path(report_dir) if report_dir else report_folder(folder, split)
    check_output_folder(where, "--report-dir" if report_dir else "report folder")
    errors_path = Path(errors_file) if errors_file else None
    if errors_path is not None:
        if errors_path.suffix.lower() not in (".jsonl", ".csv"):
            raise FtcliError(f"--errors {errors_path}: write .jsonl or .csv")
        check_output(errors_path, "--errors", inputs=[Path(f) for f in (cfg.data.files or {}).values()])
    return where, errors_path


def _write_error_rows(cfg: Config, split: str, prepared, evaluated: EvalResult, path: Path, main: bool) -> int:
    """`eval --errors`: the misclassified rows with their texts, read again from the raw data;
    written by the main process. Returns how many rows were wrong."""
    from ftcli.data import SortedSampler, split_texts

    multi = prepared.is_multi_label
    texts, positions = split_texts(cfg, split, prepared.label_names, multi)
    # The evaluation saw the rows longest first (batching.SortedSampler): put them in that order.
    # Windows are pooled into documents, which come in document order.
    order = (list(range(len(positions))) if evaluated.windows is not None
             else SortedSampler(prepared.split(split)["length"]).indices.tolist())
    texts = {c: [v[k] for k in order] for c, v in texts.items()}
    records = error_rows(evaluated.predictions, evaluated.references, evaluated.scores, prepared.label_names, texts,
                         [positions[k] for k in order], multi)
    if main:
        write_errors(path, records, prepared.label_names, list(texts), multi, separator=cfg.data.label_separator or "|")
    return len(records)


def print_eval(reporter: Reporter, summary: dict[str, Any]) -> None:
    """What `ftcli eval` (and `evaluate()` in Python) shows: the metrics, the per-class table,
    where the report and the error rows went, and the best threshold."""
    shown = {k: v for k, v in summary.items() if k not in (
        "model", "split", "failed", "gate", "per_class", "report", "best_threshold", "threshold_source", "errors")
        and not (k == "threshold" and isinstance(v, dict))}
    reporter.results(f"{summary['split']} - {summary['model']}", shown)
    if "per_class" in summary:
        reporter.class_table(summary["per_class"])
        if "report" in summary:
            reporter.info(f"report: {summary['report']} (and confusion_matrix.png beside it)")
    if summary.get("threshold_source") and summary["threshold_source"] != "default":
        reporter.info(f"threshold {_threshold_text(summary['threshold'])}: {summary['threshold_source']}")
    if "best_threshold" in summary:
        best = summary["best_threshold"]
        reporter.info(f"best single threshold on {summary['split']}: {best['threshold']:.2f} "
                      f"(f1_micro {best['f1_micro']:.4f}; evaluated at {_threshold_text(summary['threshold'])})"
                      + (f"; saved to {best['saved']}: eval and predict use it unless eval.threshold is set"
                         if "saved" in best else "; --save-threshold keeps it with the model"))
    if "errors" in summary:
        errors = summary["errors"]
        reporter.info(f"errors: {errors['rows']:,} misclassified rows -> {errors['path']}")


def _threshold_text(value: float | dict[str, float]) -> str:
    """One threshold, or one per label."""
    return f"{value:.2f}" if isinstance(value, float) else ", ".join(f"{k} {v:.2f}" for k, v in value.items())
