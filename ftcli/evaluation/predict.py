"""`ftcli predict`: label every row of a file with a trained model, in input order."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcli.config import Config
from ftcli.console import Reporter
from ftcli.errors import FtcliError
from ftcli.evaluation.loop import run_eval
from ftcli.evaluation.thresholds import Thresholds, threshold_for
from ftcli.files import atomic_path, check_output

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def trained_labels(folder: Path) -> list[str]:
    """Label names of a trained model folder, from its config.json ([] for regression)."""
    from ftcli.modeling import read_json

    config = read_json(folder / "config.json")
    n = int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)
    if n == 1 or config.get("problem_type") == "regression":
        return []
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def predict(config: Config | str | Path, input_file: str | Path, output_file: str | Path | None = None, *,
            model_dir: str | Path | None = None, keep_columns: list[str] | tuple[str, ...] = (),
            reporter: Reporter | None = None, label_separator: str | None = None,
            backend: str = "torch") -> dict[str, Any]:
    """`ftcli predict`: label every row of `input_file` (csv/tsv/json/jsonl/parquet with the
    config's text columns; a label column is not needed) with a trained model, and write the
    predictions in input order as JSON Lines or CSV (by the output's extension).

    `keep_columns`: input columns copied into each prediction, e.g. an id column (`idx`, as GLUE
    submissions need) or the text itself. Multi-label rows get every label whose probability is
    at least the threshold (`threshold_for`: eval.threshold, or the one saved with the model);
    in CSV their `labels` cell joins them with `label_separator` (default: data.label_separator,
    else `|`). A binary model with a saved threshold predicts the second label when its
    probability reaches it. Probabilities are divided by the temperature kept with the model
    (`ftcli calibrate`), if any. `backend`: `torch`, or `onnx` for the model's ONNX export
    (`ftcli export`; `model_dir` may name the export folder), with the same output. Returns a
    summary: `output`, `rows`, label counts."""
    import torch

    from ftcli import modeling
    from ftcli.config import DATA_FORMATS, as_config, with_values
    from ftcli.data import eval_dataloader, prepare, with_row_ids
    from ftcli.evaluation.backends import load_scorer, scoring_folder
    from ftcli.runtime import accelerator_session

    cfg = as_config(config)
    source = Path(input_file)
    if not source.is_file():
        raise FtcliError(f"--input: file {str(source)!r} not found")
    if source.suffix.lower() not in DATA_FORMATS:
        raise FtcliError(f"--input {source}: unsupported extension {source.suffix!r}; "
                         f"use one of {', '.join(sorted(DATA_FORMATS))}")
    folder = scoring_folder(backend, cfg, model_dir)
    output = Path(output_file) if output_file else Path(cfg.train.output_dir) / "predictions" / f"{source.stem}.jsonl"
    if output.suffix.lower() not in (".jsonl", ".csv"):
        raise FtcliError(f"--output {output}: write .jsonl or .csv")
    check_output(output, "--output", inputs=(source,))  # before the model runs, not after
    if label_separator == "":
        raise FtcliError("--label-separator: give a character such as ',' or '|'")
    labels = trained_labels(folder)
    multi = modeling.read_json(folder / "config.json").get("problem_type") == "multi_label_classification"
    thresholds = threshold_for(cfg, folder, labels, multi)  # an unreadable thresholds.json: before the work
    # One file to label, as it is (no split held out of it), with the trained model's labels.
    pcfg = with_values(cfg, {
        "data.path": None, "data.name": None, "data.revision": None, "data.files": {"predict": str(source)},
        "data.validation_split": "validation", "model.labels": labels or None,
        "model.num_labels": 1 if not labels else len(labels), "model.problem_type": "multi_label" if multi else "auto",
    }, origin="predict")
    reporter = reporter or Reporter()
    with accelerator_session(pcfg.train) as accelerator:
        reporter.enabled = reporter.enabled and accelerator.is_main_process
        kept = _kept_columns(pcfg, source, keep_columns) if keep_columns else {}
        prepared = prepare(pcfg, log=reporter.info, labels_optional=True, progress=reporter.progress)
        scorer = load_scorer(folder, backend == "onnx", labels, prepared.pad_token_id, pcfg.model, reporter.warn)
        ds = with_row_ids(prepared.split("predict"))
        dl = eval_dataloader(pcfg.data, accelerator, ds, prepared, batch_size=pcfg.train.eval_batch_size,
                             workers=pcfg.train.dataloader_workers, with_row_ids=True)
        model, dl = scorer.prepare(accelerator, dl)
        start = time.perf_counter()
        with reporter.progress(len(dl), "predict", every=1, unit="batches", min_interval=10) as bar:
            result = run_eval(accelerator, model, dl, None, regression=prepared.is_regression, progress=bar,
                              keep_outputs=True, multi_label=multi, **thresholds.loop_args(multi),
                              temperature=scorer.temperature, pooling=pcfg.eval.window_pooling)
        seconds = time.perf_counter() - start
        order = torch.argsort(result.row_ids)
        rows = result.row_ids[order].tolist()
        documents = prepared.split_info("predict").docs
        if rows != list(range(documents)):
            raise RuntimeError(f"gathered {len(rows)} predictions for {documents} rows")  # a bug, not bad input
        outputs = result.logits[order].squeeze(-1).numpy() if prepared.is_regression else result.scores[order.numpy()]
        read = _read_whole(ds, documents, prepared.windowed)
        records, counts = _records(outputs, rows, labels, multi, thresholds, kept, read)
        if accelerator.is_main_process:
            write_predictions(output, records, labels, list(kept),
                              separator=label_separator or pcfg.data.label_separator or "|")
        accelerator.wait_for_everyone()
        windows = {"windows": int(read.windows.sum())} if read.windows is not None else {}
        return {"input": str(source), "output": str(output), "model": str(folder), "rows": len(records),
                "labels": counts, **_decision(thresholds, labels, scorer.applied),
                "truncated": int(read.cut.sum()), **windows, "backend": backend,
                "processes": accelerator.num_processes, "seconds": round(seconds, 3)}


def _decision(thresholds: Thresholds, labels: list[str], temperature: float) -> dict[str, Any]:
    """How the summary says probabilities became labels: the threshold (one, or one per label)
    and the temperature, when there are any."""
    out: dict[str, Any] = {}
    if thresholds.values is not None:
        out["threshold"] = thresholds.single if thresholds.single is not None else dict(zip(labels, thresholds.values))
        out["threshold_source"] = thresholds.source
    if temperature != 1.0:
        out["temperature"] = temperature
    return out


@dataclass(frozen=True)
class _Read:
    """How much of each input row the model read."""

    cut: np.ndarray  # not read whole: cut at max_length, or (windows) by data.max_windows
    windows: np.ndarray | None  # windows: the windows each row was read in


def _read_whole(ds, documents: int, windowed: bool) -> _Read:
    import numpy as np

    flags = np.asarray(ds["truncated"], dtype=bool)
    if not windowed:
        return _Read(cut=flags, windows=None)
    of = np.asarray(ds["document"])
    cut = np.zeros(documents, dtype=bool)
    cut[of] = flags  # every window of a document carries its flag
    return _Read(cut=cut, windows=np.bincount(of, minlength=documents))


def _records(outputs, rows: list[int], labels: list[str], multi: bool, thresholds: Thresholds,
             kept: dict[str, list], read: _Read) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One prediction per row (its kept columns, label(s), probabilities, whether its text was cut,
    and with windows how many it was read in), and the counts the summary shows: rows per label,
    or the mean of a regression. `outputs`: each row's probabilities (regression: its value)."""
    import numpy as np

    from ftcli.evaluation.thresholds import decide

    def tail(r: int) -> dict[str, Any]:
        out = {"truncated": bool(read.cut[r])}
        if read.windows is not None:
            out["windows"] = int(read.windows[r])
        return out

    if multi:  # every label at or above the threshold, and each label's probability
        probs = np.asarray(outputs)
        chosen = decide(probs, thresholds, True).astype(bool)
        records = [{"row": r, **{c: v[r] for c, v in kept.items()},
                    "labels": [name for name, on in zip(labels, hit) if on],
                    "probabilities": {name: round(float(p), 6) for name, p in zip(labels, pr)}, **tail(r)}
                   for r, hit, pr in zip(rows, chosen, probs)]
        counts = {name: int(chosen[:, k].sum()) for k, name in enumerate(labels)}
    elif labels:
        probs = np.asarray(outputs)
        ids = decide(probs, thresholds, False)
        records = [{"row": r, **{c: v[r] for c, v in kept.items()}, "label": labels[i], "label_id": int(i),
                    "probabilities": {name: round(float(p), 6) for name, p in zip(labels, pr)}, **tail(r)}
                   for r, i, pr in zip(rows, ids, probs)]
        counts = {name: int((ids == k).sum()) for k, name in enumerate(labels)}
    else:
        values = np.asarray(outputs).reshape(-1)
        records = [{"row": r, **{c: v[r] for c, v in kept.items()}, "prediction": float(p), **tail(r)}
                   for r, p in zip(rows, values)]
        counts = {"mean": float(np.mean(values)) if len(values) else None}
    return records, counts


def _kept_columns(cfg: Config, source: Path, names: list[str] | tuple[str, ...]) -> dict[str, list]:
    """The input columns `predict --keep` carries into its output, read from the raw file."""
    import tempfile

    from ftcli.data import load_raw

    with tempfile.TemporaryDirectory(prefix="ftcli-predict-") as tmp:
        raw = load_raw(cfg.data, Path(tmp))["predict"]
        missing = [n for n in names if n not in raw.column_names]
        if missing:
            raise FtcliError(f"--keep {', '.join(missing)}: no such column in {source} "
                             f"(columns: {', '.join(raw.column_names)})")
        return {n: raw.data.column(n).to_pylist() for n in dict.fromkeys(names)}


def write_predictions(path: Path, records: list[dict[str, Any]], labels: list[str], kept: list[str] = (),
                      separator: str = "|") -> None:
    """JSON Lines, or CSV with the kept input columns and one probability column per label (a
    multi-label row's labels joined by `separator`); written atomically."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                kept = list(kept)
                multi = bool(records) and "labels" in records[0]
                fields = (["row", *kept, "labels"] + [f"p_{n}" for n in labels]) if multi else \
                    (["row", *kept, "label", "label_id"] + [f"p_{n}" for n in labels]) if labels \
                    else ["row", *kept, "prediction"]
                windows = bool(records) and "windows" in records[0]
                writer = csv.writer(f)
                writer.writerow([*fields, "truncated", *(["windows"] if windows else [])])
                for r in records:
                    head = [r["row"], *(r[c] for c in kept)]
                    read = [r["truncated"], *([r["windows"]] if windows else [])]
                    if multi:
                        writer.writerow([*head, separator.join(r["labels"]), *r["probabilities"].values(), *read])
                    elif labels:
                        writer.writerow([*head, r["label"], r["label_id"], *r["probabilities"].values(), *read])
                    else:
                        writer.writerow([*head, r["prediction"], *read])
            else:
                for r in records:
                    f.write(json.dumps(r) + "\n")
