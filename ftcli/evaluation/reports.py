"""What an evaluation writes for people: per-class reports with confusion matrices, and the
misclassified rows (`eval --errors`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftcli.evaluation.metrics import per_label_scores
from ftcli.files import atomic_write_text


def per_class_report(predictions, references, names: list[str], multi_label: bool) -> dict[str, Any]:
    """The report `eval` and `train` write: `class_report`, or for multi-label data
    `multi_label_report`."""
    return (multi_label_report if multi_label else class_report)(predictions, references, names)


def class_report(predictions, references, names: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: the true
    label, columns: the predicted one)."""
    import numpy as np

    k = len(names)
    p, r = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
    matrix = np.bincount(r * k + p, minlength=k * k).reshape(k, k)
    hits = np.diag(matrix)
    return {"labels": list(names), "per_class": per_label_scores(names, hits, matrix.sum(0) - hits, matrix.sum(1) - hits),
            "confusion_matrix": matrix.tolist()}


def multi_label_report(predictions, references, names: list[str]) -> dict[str, Any]:
    """Each label's precision, recall, F1 and support (rows carrying it), and its counts of true
    and false positives and negatives: a multi-label confusion matrix, one 2 x 2 table per label."""
    import numpy as np

    p, r = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
    tp, fp, fn = (p & r).sum(0), (p & (1 - r)).sum(0), ((1 - p) & r).sum(0)
    tn = len(r) - tp - fp - fn
    counts = {name: {"tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]), "tn": int(tn[i])}
              for i, name in enumerate(names)}
    return {"labels": list(names), "per_class": per_label_scores(names, tp, fp, fn), "label_confusion": counts}


def write_report(folder: Path, report: dict[str, Any], title: str) -> Path:
    """`eval_report.json` and `confusion_matrix.png` (for multi-label data, a 2 x 2 matrix per
    label) in `folder`; returns the JSON's path."""
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
    run folder (the folder that holds `model/`); for an export, `eval/<split>-<export folder>/`."""
    from ftcli.evaluation.backends import ONNX_FILE

    if (model_folder / ONNX_FILE).is_file():  # an export (eval --backend onnx): beside the PyTorch model's
        return model_folder.parent / "eval" / f"{split}-{model_folder.name}"
    run = model_folder.parent if model_folder.name == "model" else model_folder
    return run / "eval" / split


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
