"""Metrics, the evaluation loop, `ftcli eval` and `ftcli predict`.

Predictions from every process are collected with `gather_for_metrics`, which drops the rows
Accelerate repeats to even out the last batch: N processes give exactly the 1-process numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ftcli.config import Config, EvalConfig
from ftcli.console import Reporter
from ftcli.errors import FtcliError
from ftcli.files import atomic_path, check_output, check_output_folder
from ftcli.gate import Requirement

METRIC_SCRIPT = Path(__file__).parent / "metrics" / "ftcli_glue.py"


def metric_name(ev: EvalConfig, label_names: list[str], multi_label: bool = False) -> str:
    if multi_label:
        if ev.metric not in ("auto", "multilabel"):
            raise FtcliError(f"eval.metric: {ev.metric!r} scores one label per row, but this data is multi-label; "
                             "use auto or multilabel")
        return "multilabel"
    if ev.metric == "multilabel":
        raise FtcliError("eval.metric: multilabel needs multi-label data (label lists, or "
                         "model.problem_type: multi_label)")
    if ev.metric != "auto":
        return ev.metric
    if not label_names:
        return "regression"
    return "accuracy_f1" if len(label_names) == 2 else "multiclass"


def metric_keys(name: str) -> tuple[str, ...]:
    """The values metric `name` computes (e.g. accuracy, f1)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ftcli_glue_keys", METRIC_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.KINDS[module.kind_of(name)]


def load_metric(name: str):
    """The GLUE-compatible metric shipped with ftcli, through `evaluate` (loaded by path: works
    offline). `keep_in_memory`: processes computing at once never share a cache file."""
    import evaluate

    return evaluate.load(str(METRIC_SCRIPT), name, keep_in_memory=True)


def run_eval(accelerator, model, dataloader, metric, *, regression: bool, progress=None,
             keep_outputs: bool = False, keep_predictions: bool = False, multi_label: bool = False,
             threshold: float = 0.5) -> dict[str, Any]:
    """Evaluate `model` on a prepared dataloader. Returns the metrics, the mean loss and the
    number of rows; with `keep_outputs`, also the gathered logits and row ids (for predict); with
    `keep_predictions`, the predicted and true labels (`_predictions`, `_references`: numpy
    arrays in dataset order, for the per-class report; multi-label: rows x labels of 0/1) and
    `_scores`, each label's probability (softmax; multi-label: sigmoid). Multi-label rows predict
    every label whose probability is at least `threshold`."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    model.eval()
    preds, refs, losses, logits_all, rows_all, scores = [], [], [], [], [], []
    with torch.no_grad():
        for batch in dataloader:
            labels = batch.pop("labels")
            row_ids = batch.pop("row_ids", None)
            with accelerator.autocast():
                logits = model(**batch).logits
            logits = logits.float()
            if regression:
                pred = logits.squeeze(-1)
                loss = F.mse_loss(pred, labels.float(), reduction="none")
            elif multi_label:
                pred = (torch.sigmoid(logits) >= threshold).long()
                loss = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none").mean(-1)
            else:
                pred = logits.argmax(-1)
                loss = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
            want_scores = keep_predictions and not regression
            gathered = accelerator.gather_for_metrics(
                (pred, labels, loss) + ((logits, row_ids) if keep_outputs else ())
                + (((torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)),) if want_scores else ())
            )
            preds.append(gathered[0].cpu())
            refs.append(gathered[1].cpu())
            losses.append(gathered[2].cpu())
            if keep_outputs:
                logits_all.append(gathered[3].cpu())
                rows_all.append(gathered[4].cpu())
            if want_scores:
                scores.append(gathered[-1].cpu())
            if progress is not None:
                progress.update(1)
    model.train()
    p = torch.cat(preds).numpy() if preds else np.zeros(0)
    r = torch.cat(refs).numpy() if refs else np.zeros(0)
    out: dict[str, Any] = {"samples": int(len(p))}
    # Unlabelled splits (GLUE test sets) carry -1 (classification) or NaN (regression).
    labelled = bool(len(r)) and bool((~np.isnan(r)).all() if regression else (r >= 0).all())
    if labelled and len(p) and metric is not None:
        out["loss"] = float(torch.cat(losses).double().mean())
        refs_for_metric = r.astype(np.int64) if multi_label else r
        out.update({k: float(v) for k, v in metric.compute(predictions=p, references=refs_for_metric).items()})
    if keep_outputs:
        out["_logits"] = torch.cat(logits_all) if logits_all else torch.zeros(0)
        out["_rows"] = torch.cat(rows_all) if rows_all else torch.zeros(0, dtype=torch.long)
    if keep_predictions:
        out["_predictions"], out["_references"] = p, r
        if not regression:
            out["_scores"] = torch.cat(scores).numpy() if scores else np.zeros((0, 0))
    return out


def multi_label_report(predictions, references, names: list[str]) -> dict[str, Any]:
    """Each label's precision, recall, F1 and support (rows carrying it), and its counts of true
    and false positives and negatives: a multi-label confusion matrix, one 2 x 2 table per label."""
    import numpy as np

    p, r = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
    tp, fp, fn = (p & r).sum(0), (p & (1 - r)).sum(0), ((1 - p) & r).sum(0)
    tn = len(r) - tp - fp - fn
    counts = {name: {"tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]), "tn": int(tn[i])}
              for i, name in enumerate(names)}
    return {"labels": list(names), "per_class": _per_class(names, tp, fp, fn), "label_confusion": counts}


def best_threshold(scores, references) -> dict[str, float]:
    """The single threshold (0.05 to 0.95 in steps of 0.05) with the best micro F1 on these rows."""
    import numpy as np

    r = np.asarray(references, dtype=np.int64)
    best = {"threshold": 0.5, "f1_micro": -1.0}
    for t in np.round(np.arange(0.05, 0.951, 0.05), 2):
        p = (scores >= t).astype(np.int64)
        tp, fp, fn = int((p & r).sum()), int((p & (1 - r)).sum()), int(((1 - p) & r).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        if f1 > best["f1_micro"] + 1e-12:
            best = {"threshold": float(t), "f1_micro": round(f1, 6)}
    return best


def few_positives_warning(predictions, references, threshold: float, split: str) -> str | None:
    """Multi-label: the warning for a model that predicts (almost) no label at `threshold`, fewer
    than a tenth of the labels the rows carry. With sparse labels that is what an unweighted model
    learns first, and its F1 is 0 while nothing says why."""
    import numpy as np

    predicted, true = int(np.asarray(predictions).sum()), int((np.asarray(references) > 0).sum())
    if true == 0 or predicted >= 0.1 * true:
        return None
    return (f"{split}: the model predicted {predicted:,} label(s) where the rows carry {true:,}, at threshold "
            f"{threshold:.2f}: with sparse labels the probabilities stay below it. Try `ftcli eval --best-threshold "
            "--save-threshold`, a lower eval.threshold, train.class_weights: auto, or more epochs")


THRESHOLD_FILE = "thresholds.json"
"""In a trained model folder: the multi-label threshold `eval --save-threshold` chose, which eval
and predict then use unless eval.threshold is set."""


def save_threshold_file(folder: Path, best: dict[str, float], split: str) -> Path:
    from ftcli.files import atomic_write_text

    path = folder / THRESHOLD_FILE
    atomic_write_text(path, json.dumps({"threshold": best["threshold"], "f1_micro": best["f1_micro"],
                                        "split": split, "chosen_by": "ftcli eval --best-threshold"}, indent=2) + "\n")
    return path


def threshold_for(cfg: Config, folder: Path) -> tuple[float, str]:
    """The multi-label threshold to predict with, and where it comes from: eval.threshold when the
    config or --set gives it, else the one saved with the model (`eval --save-threshold`), else
    the default 0.5."""
    if cfg.origin("eval.threshold") != "default":
        return cfg.eval.threshold, "eval.threshold"
    path = folder / THRESHOLD_FILE
    if path.is_file():
        try:
            value = float(json.loads(path.read_text())["threshold"])
        except (OSError, ValueError, KeyError, TypeError):
            raise FtcliError(f"{path}: unreadable; delete it, or run ftcli eval --best-threshold --save-threshold "
                             "again") from None
        if 0 < value < 1:
            return value, f"saved with the model ({path.name})"
        raise FtcliError(f"{path}: threshold {value} is not between 0 and 1; delete the file or save it again")
    return cfg.eval.threshold, "default"


def per_class_report(predictions, references, names: list[str], multi_label: bool) -> dict[str, Any]:
    """The report `eval` and `train` write: `class_report`, or for multi-label data
    `multi_label_report`."""
    return (multi_label_report if multi_label else class_report)(predictions, references, names)


def _per_class(names: list[str], tp, fp, fn) -> dict[str, dict[str, Any]]:
    """Each label's precision, recall, F1 and support from its true positives, false positives
    and false negatives. A label never predicted has precision 0, one never true recall 0
    (scikit-learn's `zero_division=0`)."""
    import numpy as np

    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    zeros = np.zeros(len(names))
    precision = np.divide(tp, tp + fp, out=zeros.copy(), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=zeros.copy(), where=tp + fn > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=zeros.copy(), where=precision + recall > 0)
    return {name: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                   "f1": round(float(f1[i]), 6), "support": int(tp[i] + fn[i])}
            for i, name in enumerate(names)}


def class_report(predictions, references, names: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: the true
    label, columns: the predicted one)."""
    import numpy as np

    k = len(names)
    p, r = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
    matrix = np.bincount(r * k + p, minlength=k * k).reshape(k, k)
    hits = np.diag(matrix)
    return {"labels": list(names), "per_class": _per_class(names, hits, matrix.sum(0) - hits, matrix.sum(1) - hits),
            "confusion_matrix": matrix.tolist()}


def write_report(folder: Path, report: dict[str, Any], title: str) -> Path:
    """`eval_report.json` and `confusion_matrix.png` (for multi-label data, a 2 x 2 matrix per
    label) in `folder`; returns the JSON's path."""
    from ftcli.files import atomic_write_text
    from ftcli.plot import plot_confusion_matrix, plot_label_confusion

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "eval_report.json", json.dumps(report, indent=2))
    if "confusion_matrix" in report:
        plot_confusion_matrix(report["confusion_matrix"], report["labels"], folder / "confusion_matrix.png", title)
    elif "label_confusion" in report:
        plot_label_confusion(report["label_confusion"], folder / "confusion_matrix.png", title)
    return folder / "eval_report.json"


def report_folder(model_folder: Path, split: str) -> Path:
    """Where `ftcli eval` writes its report by default: `eval/<split>/` in the evaluated model's
    run folder (the folder that holds `model/`)."""
    run = model_folder.parent if model_folder.name == "model" else model_folder
    return run / "eval" / split


def find_model_dir(cfg: Config, model_dir: str | Path | None) -> Path:
    """`--model` as given, or the config's output_dir (its `model/` folder when it has one)."""
    folder = Path(model_dir) if model_dir else Path(cfg.train.output_dir)
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    return folder


def evaluate_model(config: Config | str | Path, *, model_dir: str | Path | None = None, split: str | None = None,
                   require: list[Requirement] = (), reporter: Reporter | None = None,
                   report_dir: str | Path | None = None, find_threshold: bool = False, save_threshold: bool = False,
                   errors_file: str | Path | None = None) -> dict[str, Any]:
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
    the model missed (empty when it passed)."""
    from ftcli import batching, build, cache, gate, modeling
    from ftcli.config import as_config
    from ftcli.runtime import accelerator_session

    cfg = as_config(config)
    folder = find_model_dir(cfg, model_dir)
    if not (folder / "config.json").is_file():
        modeling.load_trained(folder)  # raises the one-line error naming the folder
    split = split or cfg.eval.split
    build.check_splits(cfg.data, split)
    where = Path(report_dir) if report_dir else report_folder(folder, split)
    check_output_folder(where, "--report-dir" if report_dir else "report folder")
    errors_path = Path(errors_file) if errors_file else None
    if errors_path is not None:
        if errors_path.suffix.lower() not in (".jsonl", ".csv"):
            raise FtcliError(f"--errors {errors_path}: write .jsonl or .csv")
        check_output(errors_path, "--errors", inputs=[Path(f) for f in (cfg.data.files or {}).values()])
    find_threshold = find_threshold or save_threshold
    reporter = reporter or Reporter()
    with accelerator_session(cfg.train) as accelerator:
        reporter.enabled = reporter.enabled and accelerator.is_main_process
        # one builder per cache key (file lock)
        prepared = cache.prepare(cfg, log=reporter.info, progress=reporter.progress)
        info = prepared.split_info(split)
        if not info["labeled"]:
            raise FtcliError(
                f"split {split!r} ({info['source']}) has no labels to evaluate against; use `ftcli predict`"
            )
        multi = prepared.is_multi_label
        if find_threshold and not multi:
            raise FtcliError("--best-threshold/--save-threshold: a threshold is chosen for multi-label data only; "
                             "single-label rows take the most probable label")
        if errors_path is not None and prepared.is_regression:
            raise FtcliError("--errors: regression has no misclassified rows; compare predictions from ftcli predict")
        name = metric_name(cfg.eval, prepared.label_names, multi)
        gate.check_names(list(require), ["loss", *metric_keys(name)])
        model = modeling.load_trained(folder, prepared.label_names)
        threshold, threshold_source = threshold_for(cfg, folder) if multi else (cfg.eval.threshold, "")
        metric = load_metric(name)
        dl = batching.eval_dataloader(cfg.data, accelerator, prepared.split(split), prepared,
                                      batch_size=cfg.train.eval_batch_size, workers=cfg.train.dataloader_workers)
        model, dl = accelerator.prepare(model, dl)
        start = time.perf_counter()
        with reporter.progress(len(dl), f"eval {split}", every=1, unit="batches", min_interval=10) as bar:
            result = run_eval(accelerator, model, dl, metric, regression=prepared.is_regression, progress=bar,
                              keep_predictions=True, multi_label=multi, threshold=threshold)
        predictions, references = result.pop("_predictions"), result.pop("_references")
        scores = result.pop("_scores", None)
        extra: dict[str, Any] = {}
        if multi:
            result["threshold"] = threshold
            extra["threshold_source"] = threshold_source
            if warning := few_positives_warning(predictions, references, threshold, split):
                reporter.warn(warning)
            if find_threshold:
                extra["best_threshold"] = best_threshold(scores, references)
                if save_threshold and accelerator.is_main_process:
                    extra["best_threshold"]["saved"] = str(save_threshold_file(folder, extra["best_threshold"], split))
        summary = {
            "split": split,
            "model": str(folder),
            "metric": name,
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
            texts, positions = build.split_texts(cfg, split, prepared.label_names, multi)
            # The evaluation saw the rows longest first (batching.SortedSampler): put them in that order.
            order = batching.SortedSampler(prepared.split(split)["length"]).indices.tolist()
            texts = {c: [v[k] for k in order] for c, v in texts.items()}
            records = error_rows(predictions, references, scores, prepared.label_names, texts,
                                 [positions[k] for k in order], multi)
            if accelerator.is_main_process:
                write_errors(errors_path, records, prepared.label_names, list(texts), multi,
                             separator=cfg.data.label_separator or "|")
            summary["errors"] = {"path": str(errors_path), "rows": len(records)}
        accelerator.wait_for_everyone()
        print_eval(reporter, summary)
        return summary


def print_eval(reporter: Reporter, summary: dict[str, Any]) -> None:
    """What `ftcli eval` (and `evaluate()` in Python) shows: the metrics, the per-class table,
    where the report and the error rows went, and the best threshold."""
    shown = {k: v for k, v in summary.items() if k not in (
        "model", "split", "failed", "gate", "per_class", "report", "best_threshold", "threshold_source", "errors")}
    reporter.results(f"{summary['split']} - {summary['model']}", shown)
    if "per_class" in summary:
        reporter.class_table(summary["per_class"])
        if "report" in summary:
            reporter.info(f"report: {summary['report']} (and confusion_matrix.png beside it)")
    if summary.get("threshold_source") and summary["threshold_source"] != "default":
        reporter.info(f"threshold {summary['threshold']:.2f}: {summary['threshold_source']}")
    if "best_threshold" in summary:
        best = summary["best_threshold"]
        reporter.info(f"best single threshold on {summary['split']}: {best['threshold']:.2f} "
                      f"(f1_micro {best['f1_micro']:.4f}; evaluated at {summary['threshold']:.2f})"
                      + (f"; saved to {best['saved']}: eval and predict use it unless eval.threshold is set"
                         if "saved" in best else "; --save-threshold keeps it with the model"))
    if "errors" in summary:
        errors = summary["errors"]
        reporter.info(f"errors: {errors['rows']:,} misclassified rows -> {errors['path']}")


def error_rows(predictions, references, scores, names: list[str], texts: dict[str, list], positions: list[int],
               multi: bool) -> list[dict[str, Any]]:
    """The rows the model got wrong, most confident mistakes first: their text, true and predicted
    labels and probabilities. Prediction i is of the row with texts `texts[c][i]`, row
    `positions[i]` of its source file: `row`, 0-based, as predict numbers rows. Multi-label rows
    list the labels missed and the ones predicted wrongly."""
    import numpy as np

    p, r = np.asarray(predictions), np.asarray(references)
    if len(p) != len(positions):
        raise RuntimeError(f"{len(p)} predictions for {len(positions)} rows")  # a bug, not bad input
    records = []
    if multi:
        wrong = np.flatnonzero((p != r).any(1))
        # how sure the model was of its mistakes: the largest gap between a wrong label's probability and the truth
        confidence = np.abs(scores - r).max(1) if len(p) else np.zeros(0)
        for i in wrong[np.argsort(-confidence[wrong], kind="stable")].tolist():
            true = [n for n, on in zip(names, r[i]) if on > 0]
            chosen = [n for n, on in zip(names, p[i]) if on]
            records.append({"row": positions[i], **{c: v[i] for c, v in texts.items()}, "true": true,
                            "predicted": chosen, "missed": [n for n in true if n not in chosen],
                            "extra": [n for n in chosen if n not in true],
                            "probabilities": {n: round(float(x), 6) for n, x in zip(names, scores[i])}})
        return records
    wrong = np.flatnonzero(p != r)
    confidence = scores[wrong, p[wrong]] if len(wrong) else np.zeros(0)
    for i in wrong[np.argsort(-confidence, kind="stable")].tolist():
        records.append({"row": positions[i], **{c: v[i] for c, v in texts.items()}, "true": names[int(r[i])],
                        "predicted": names[int(p[i])], "probability": round(float(scores[i, p[i]]), 6),
                        "true_probability": round(float(scores[i, int(r[i])]), 6)})
    return records


def write_errors(path: Path, records: list[dict[str, Any]], names: list[str], text_columns: list[str], multi: bool,
                 separator: str = "|") -> None:
    """`eval --errors`: JSON Lines, or CSV (multi-label label sets joined by `separator`, one
    probability column per label); written atomically."""
    import csv
    import io

    from ftcli.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".csv":
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        return
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    if multi:
        writer.writerow(["row", *text_columns, "true", "predicted", "missed", "extra", *(f"p_{n}" for n in names)])
        for r in records:
            writer.writerow([r["row"], *(r[c] for c in text_columns),
                             *(separator.join(r[k]) for k in ("true", "predicted", "missed", "extra")),
                             *r["probabilities"].values()])
    else:
        writer.writerow(["row", *text_columns, "true", "predicted", "probability", "true_probability"])
        for r in records:
            writer.writerow([r["row"], *(r[c] for c in text_columns), r["true"], r["predicted"], r["probability"],
                             r["true_probability"]])
    atomic_write_text(path, buffer.getvalue())


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
            reporter: Reporter | None = None, label_separator: str | None = None) -> dict[str, Any]:
    """`ftcli predict`: label every row of `input_file` (csv/tsv/json/jsonl/parquet with the
    config's text columns; a label column is not needed) with a trained model, and write the
    predictions in input order as JSON Lines or CSV (by the output's extension).

    `keep_columns`: input columns copied into each prediction, e.g. an id column (`idx`, as GLUE
    submissions need) or the text itself. Multi-label rows get every label whose probability is
    at least the threshold (`threshold_for`: eval.threshold, or the one saved with the model);
    in CSV their `labels` cell joins them with `label_separator` (default: data.label_separator,
    else `|`). Returns a summary: `output`, `rows`, label counts."""
    import numpy as np
    import torch

    from ftcli import batching, cache, modeling
    from ftcli.config import DATA_FORMATS, as_config, config_from_dict
    from ftcli.runtime import accelerator_session

    cfg = as_config(config)
    source = Path(input_file)
    if not source.is_file():
        raise FtcliError(f"--input: file {str(source)!r} not found")
    if source.suffix.lower() not in DATA_FORMATS:
        raise FtcliError(f"--input {source}: unsupported extension {source.suffix!r}; "
                         f"use one of {', '.join(sorted(DATA_FORMATS))}")
    folder = find_model_dir(cfg, model_dir)
    if not (folder / "config.json").is_file():
        modeling.load_trained(folder)  # raises the one-line error naming the folder
    output = Path(output_file) if output_file else Path(cfg.train.output_dir) / "predictions" / f"{source.stem}.jsonl"
    if output.suffix.lower() not in (".jsonl", ".csv"):
        raise FtcliError(f"--output {output}: write .jsonl or .csv")
    check_output(output, "--output", inputs=(source,))  # before the model runs, not after
    if label_separator == "":
        raise FtcliError("--label-separator: give a character such as ',' or '|'")
    labels = trained_labels(folder)
    multi = modeling.read_json(folder / "config.json").get("problem_type") == "multi_label_classification"
    threshold = threshold_for(cfg, folder)[0] if multi else None  # an unreadable thresholds.json: before the work
    raw = cfg.to_dict()
    # One file to label, as it is: no split held out of it.
    raw["data"].update(path=None, name=None, revision=None, files={"predict": str(source)},
                       validation_split="validation")
    raw["model"].update(labels=labels or None, num_labels=1 if not labels else len(labels),
                        problem_type="multi_label" if multi else "auto")
    pcfg = config_from_dict(raw, source=cfg.source_path or "<config>")
    reporter = reporter or Reporter()
    with accelerator_session(pcfg.train) as accelerator:
        reporter.enabled = reporter.enabled and accelerator.is_main_process
        kept = _kept_columns(pcfg, source, keep_columns) if keep_columns else {}
        prepared = cache.prepare(pcfg, log=reporter.info, labels_optional=True, progress=reporter.progress)
        model = modeling.load_trained(folder, labels)
        ds = batching.with_row_ids(prepared.split("predict"))
        dl = batching.eval_dataloader(pcfg.data, accelerator, ds, prepared, batch_size=pcfg.train.eval_batch_size,
                                      workers=pcfg.train.dataloader_workers, with_row_ids=True)
        model, dl = accelerator.prepare(model, dl)
        start = time.perf_counter()
        with reporter.progress(len(dl), "predict", every=1, unit="batches", min_interval=10) as bar:
            result = run_eval(accelerator, model, dl, None, regression=prepared.is_regression, progress=bar,
                              keep_outputs=True)
        seconds = time.perf_counter() - start
        order = torch.argsort(result["_rows"])
        logits = result["_logits"][order]
        rows = result["_rows"][order].tolist()
        if rows != list(range(len(ds))):
            raise RuntimeError(f"gathered {len(rows)} predictions for {len(ds)} rows")  # a bug, not bad input
        # Rows whose text was cut at max_length: the model did not read all of it.
        cut = ds["truncated"] if "truncated" in ds.column_names else [False] * len(rows)
        if multi:  # every label at or above the threshold, and each label's probability
            probs = torch.sigmoid(logits).numpy()
            chosen = probs >= threshold
            records = [{"row": r, **{c: v[r] for c, v in kept.items()},
                        "labels": [name for name, on in zip(labels, hit) if on],
                        "probabilities": {name: round(float(p), 6) for name, p in zip(labels, pr)},
                        "truncated": bool(cut[r])}
                       for r, hit, pr in zip(rows, chosen, probs)]
            counts = {name: int(chosen[:, k].sum()) for k, name in enumerate(labels)}
        elif labels:
            probs = torch.softmax(logits, dim=-1).numpy()
            ids = probs.argmax(-1)
            records = [{"row": r, **{c: v[r] for c, v in kept.items()}, "label": labels[i], "label_id": int(i),
                        "probabilities": {name: round(float(p), 6) for name, p in zip(labels, pr)},
                        "truncated": bool(cut[r])}
                       for r, i, pr in zip(rows, ids, probs)]
            counts = {name: int((ids == k).sum()) for k, name in enumerate(labels)}
        else:
            values = logits.squeeze(-1).numpy()
            records = [{"row": r, **{c: v[r] for c, v in kept.items()}, "prediction": float(p),
                        "truncated": bool(cut[r])} for r, p in zip(rows, values)]
            counts = {"mean": float(np.mean(values)) if len(values) else None}
        if accelerator.is_main_process:
            write_predictions(output, records, labels, list(kept),
                              separator=label_separator or pcfg.data.label_separator or "|")
        accelerator.wait_for_everyone()
        return {"input": str(source), "output": str(output), "model": str(folder), "rows": len(records),
                "labels": counts, **({"threshold": threshold} if multi else {}),
                "truncated": int(sum(bool(c) for c in cut)), "processes": accelerator.num_processes,
                "seconds": round(seconds, 3)}


def _kept_columns(cfg: Config, source: Path, names: list[str] | tuple[str, ...]) -> dict[str, list]:
    """The input columns `predict --keep` carries into its output, read from the raw file."""
    import tempfile

    from ftcli.build import load_raw

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
                writer = csv.writer(f)
                writer.writerow([*fields, "truncated"])
                for r in records:
                    head = [r["row"], *(r[c] for c in kept)]
                    if multi:
                        writer.writerow([*head, separator.join(r["labels"]), *r["probabilities"].values(),
                                         r["truncated"]])
                    elif labels:
                        writer.writerow([*head, r["label"], r["label_id"], *r["probabilities"].values(), r["truncated"]])
                    else:
                        writer.writerow([*head, r["prediction"], r["truncated"]])
            else:
                for r in records:
                    f.write(json.dumps(r) + "\n")

