"""The model card: `model/README.md` with the Hub's model-card metadata (huggingface_hub's card
API), written from what the model folder holds, so it is the same whoever writes it: `ftcli
train` when it finishes, `ftcli calibrate` and `ftcli export` after they add to the model.

It says what the model was made from (base model, data and its fingerprint, the resolved
config), how it did on validation (metrics, per-class table, confusion matrix), how its
probabilities are calibrated and which thresholds it predicts with, and how to use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ftcli.deploy.artifacts import TRAINING_FACTS
from ftcli.files import atomic_write_text

CARD_FILE = "README.md"
CONFUSION_IMAGE = "confusion_matrix.png"


@dataclass(frozen=True)
class TrainingFacts:
    """What `ftcli train` knows that the model card tells (kept as `ftcli_run.json`)."""

    base_model: str
    base_revision: str | None
    data_source: str  # a Hub dataset name, or the data files
    data_fingerprint: str  # the prepared cache's key: the data, tokenizer and settings it was built from
    splits: dict[str, int]  # rows of each split
    labels: list[str]
    problem_type: str
    text_columns: list[str]
    max_length: int | None
    long_texts: str
    config: dict[str, Any]  # the run's resolved config
    eval_split: str | None
    eval_step: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, dict[str, Any]] | None = None
    ftcli_version: str = ""

    def save(self, folder: Path) -> Path:
        path = folder / TRAINING_FACTS
        atomic_write_text(path, json.dumps(asdict(self), indent=2, default=str) + "\n")
        return path


def read_facts(folder: Path) -> TrainingFacts | None:
    try:
        data = json.loads((folder / TRAINING_FACTS).read_text())
        return TrainingFacts(**{k: data[k] for k in TrainingFacts.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError):
        return None


def _hub_id(name: str | None) -> str | None:
    """`name` when it is a Hub repository id (`org/name` or `name`), not a path or package."""
    import re

    if not name or name.startswith(("package:", "/", ".", "~")) or Path(name).exists():
        return None
    return name if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) else None


def card_text(folder: Path) -> str:
    """The card for the model in `folder`: metadata (YAML front matter) and body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ftcli.evaluation import load_calibration, read_export, trained_labels

    facts = read_facts(folder)
    calibration = load_calibration(folder)
    thresholds = _read_json(folder / "thresholds.json")
    labels = trained_labels(folder)
    name = folder.parent.name if folder.name == "model" else folder.name
    base = facts.base_model if facts else None
    dataset = facts.data_source if facts else None
    metrics = {k: v for k, v in (facts.metrics if facts else {}).items()
               if isinstance(v, (int, float)) and k not in ("samples", "windows", "seconds", "step", "epoch")}
    results = [EvalResult(task_type="text-classification", dataset_type=_hub_id(dataset) or "local",
                          dataset_name=dataset or "local data", metric_type=k, metric_value=round(float(v), 6),
                          dataset_split=facts.eval_split) for k, v in metrics.items()] if facts else []
    data = ModelCardData(
        model_name=name, library_name="transformers", pipeline_tag="text-classification",
        tags=["ftcli", "text-classification", *([] if labels else ["regression"])],
        base_model=_hub_id(base), datasets=[_hub_id(dataset)] if _hub_id(dataset) else None,
        metrics=sorted(metrics) or None, eval_results=results or None)
    exports = [read_export(p) for p in sorted(folder.parent.glob("onnx*")) if (p / "export.json").is_file()] \
        if folder.name == "model" else []
    body = "\n".join(_body(name, folder, facts, labels, calibration, thresholds, exports))
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def write_card(folder: Path) -> Path:
    """Write (or refresh) `folder/README.md`; returns its path."""
    path = folder / CARD_FILE
    atomic_write_text(path, card_text(folder))
    return path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows), ""]


def _body(name, folder: Path, facts: TrainingFacts | None, labels, calibration, thresholds, exports) -> list[str]:
    import yaml

    kind = ("multi-label classification" if facts and facts.problem_type == "multi_label"
            else "regression" if not labels else "text classification")
    lines = [f"# {name}", ""]
    if facts:
        source = facts.base_model + (f" (revision {facts.base_revision})" if facts.base_revision else "")
        lines += [f"A {kind} model fine-tuned with ftcli from `{source}` on {facts.data_source}.",
                  ""]
    else:
        lines += [f"A {kind} model.", ""]
    lines += ["## Intended use", ""]
    if facts:
        texts = " and ".join(f"`{c}`" for c in facts.text_columns)
        read = ("read whole in overlapping windows" if facts.long_texts == "windows"
                else f"cut at {facts.max_length} tokens" if facts.max_length else "cut at the model's limit")
        lines += [f"Labels texts like those it was trained on ({texts}; longer texts are {read}) with "
                  + (f"one of: {', '.join(f'`{n}`' for n in labels)}." if labels and facts.problem_type != "multi_label"
                     else f"any of: {', '.join(f'`{n}`' for n in labels)}." if labels else "a value."), ""]
    lines += ["It was measured only on the validation split below: check it on data of your own before relying on "
              "it, and do not use it for decisions about people without a review of its errors.", ""]
    if facts and facts.metrics:
        lines += [f"## Evaluation ({facts.eval_split}" + (f", step {facts.eval_step}" if facts.eval_step else "") + ")",
                  ""]
        shown = {k: v for k, v in facts.metrics.items() if isinstance(v, (int, float))}
        lines += _table(list(shown), [list(shown.values())])
        if facts.per_class:
            lines += _table(["label", "precision", "recall", "f1", "support"],
                            [[n, r["precision"], r["recall"], r["f1"], r["support"]] for n, r in facts.per_class.items()])
        if (folder / CONFUSION_IMAGE).is_file():
            lines += [f"![confusion matrix]({CONFUSION_IMAGE})", ""]
    lines += ["## Calibration", ""]
    if calibration:
        lines += [f"Temperature scaling fitted on {calibration.split} ({calibration.rows:,} rows): T = "
                  f"{calibration.temperature:.4f}. Expected calibration error ({calibration.bins} bins) "
                  f"{calibration.ece_before:.4f} before, {calibration.ece_after:.4f} after; NLL "
                  f"{calibration.nll_before:.4f} before, {calibration.nll_after:.4f} after.", "",
                  "`ftcli predict` and the ONNX export divide logits by T (`calibration.json`); "
                  "`transformers.pipeline` does not, and gives the uncalibrated probabilities.", ""]
        if (folder / "reliability_diagram.png").is_file():
            lines += ["![reliability diagram](reliability_diagram.png)", ""]
    else:
        lines += ["Not calibrated: the probabilities are the model's softmax (multi-label: sigmoid) as trained. "
                  "`ftcli calibrate` fits a temperature.", ""]
    lines += ["## Thresholds", ""]
    if thresholds:
        if thresholds.get("kind") == "binary":
            lines += [f"`{thresholds['positive_label']}` is predicted when its probability is at least "
                      f"{thresholds['threshold']:.2f}, chosen for {thresholds.get('metric', 'f1')} on "
                      f"{thresholds.get('split', 'validation')}.", ""]
        elif thresholds.get("kind") == "per_label":
            lines += _table(["label", "threshold"], [[k, v] for k, v in thresholds["thresholds"].items()])
        else:
            lines += [f"Every label is predicted when its probability is at least {thresholds['threshold']:.2f}.", ""]
        if thresholds.get("before") and thresholds.get("after"):
            lines += _table(["metric", "at 0.5 / most probable", "with these thresholds"],
                            [[k, thresholds["before"][k], v] for k, v in thresholds["after"].items()])
            lines += [f"Both measured on {thresholds.get('split')}, the split the thresholds were tuned on.", ""]
        lines += ["`ftcli predict`, `ftcli eval` and the ONNX export use `thresholds.json`; `transformers.pipeline` "
                  "does not.", ""]
    else:
        lines += ["None saved: " + ("a label is predicted at probability 0.5." if facts and facts.problem_type == "multi_label"
                                    else "the most probable label is predicted."), ""]
    lines += ["## How to use", "", "```python", "from transformers import pipeline", "",
              f'classify = pipeline("text-classification", model="{folder}")  # or the Hub repository id', 'print(classify("some text"))',
              "```", "", "or, with the thresholds and temperature applied:", "", "```bash",
              f"ftcli predict --config config.yaml --model {folder} --input rows.csv", "```", ""]
    for info in exports:
        q = f" ({info.quantize})" if info.quantize else ""
        lines += [f"An ONNX export{q} checked against PyTorch on {info.parity.get('split')}: largest logit difference "
                  f"{info.parity.get('max_abs_diff', 0):.2e}. `ftcli predict --backend onnx` runs it.", ""]
    if facts:
        lines += ["## Training", "", f"- base model: `{facts.base_model}`", f"- data: {facts.data_source}",
                  f"- data fingerprint: `{facts.data_fingerprint}`",
                  f"- rows: {', '.join(f'{k} {v:,}' for k, v in facts.splits.items())}",
                  f"- ftcli {facts.ftcli_version}", "", "The resolved config:", "", "```yaml",
                  yaml.safe_dump(facts.config, sort_keys=False).rstrip(), "```", ""]
    return lines
