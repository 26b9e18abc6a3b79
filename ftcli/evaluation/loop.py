"""The evaluation loop: a model over a prepared dataloader, on every process.

Predictions from every process are collected with `gather_for_metrics`, which drops the rows
Accelerate repeats to even out the last batch: N processes give exactly the 1-process numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


@dataclass
class EvalResult:
    """What `run_eval` measured, in dataset order (the dataloader's)."""

    rows: int
    metrics: dict[str, float] = field(default_factory=dict)  # `loss` and the metric's values; empty unlabelled
    predictions: np.ndarray | None = None  # predicted label ids (multi-label: rows x labels of 0/1)
    references: np.ndarray | None = None  # true label ids (multi-label: rows x labels)
    scores: np.ndarray | None = None  # each label's probability (softmax; multi-label: sigmoid)
    logits: torch.Tensor | None = None  # keep_outputs: the raw outputs, for predict
    row_ids: torch.Tensor | None = None  # keep_outputs: each output's row in the dataset

    def values(self) -> dict[str, Any]:
        """The metrics with the number of rows, as logged and reported (`samples`: rows)."""
        return {"samples": self.rows, **self.metrics}


def run_eval(accelerator, model, dataloader, metric, *, regression: bool, progress=None,
             keep_outputs: bool = False, keep_predictions: bool = False, multi_label: bool = False,
             threshold: float = 0.5) -> EvalResult:
    """Evaluate `model` on a prepared dataloader: the metrics and mean loss (labelled rows and a
    `metric`), with `keep_outputs` the gathered logits and row ids (for predict), with
    `keep_predictions` the predicted and true labels and the probabilities. Multi-label rows
    predict every label whose probability is at least `threshold`."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    model.eval()
    kept: dict[str, list] = {}
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
            step = {"predictions": pred, "references": labels, "loss": loss}
            if keep_outputs:
                step.update(logits=logits, row_ids=row_ids)
            if keep_predictions and not regression:
                step["scores"] = torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)
            for name, value in accelerator.gather_for_metrics(step).items():
                kept.setdefault(name, []).append(value.cpu())
            if progress is not None:
                progress.update(1)
    model.train()

    def joined(name: str, empty):
        return torch.cat(kept[name]) if kept.get(name) else empty

    p = joined("predictions", torch.zeros(0)).numpy()
    r = joined("references", torch.zeros(0)).numpy()
    result = EvalResult(rows=int(len(p)))
    # Unlabelled splits (GLUE test sets) carry -1 (classification) or NaN (regression).
    labelled = bool(len(r)) and bool((~np.isnan(r)).all() if regression else (r >= 0).all())
    if labelled and len(p) and metric is not None:
        result.metrics["loss"] = float(joined("loss", torch.zeros(0)).double().mean())
        refs_for_metric = r.astype(np.int64) if multi_label else r
        result.metrics.update({k: float(v) for k, v in metric.compute(predictions=p, references=refs_for_metric).items()})
    if keep_outputs:
        result.logits = joined("logits", torch.zeros(0))
        result.row_ids = joined("row_ids", torch.zeros(0, dtype=torch.long))
    if keep_predictions:
        result.predictions, result.references = p, r
        if not regression:
            result.scores = joined("scores", torch.zeros(0, 0)).numpy()
    return result
