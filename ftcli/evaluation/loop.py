"""The evaluation loop: a model over a prepared dataloader, on every process.

Predictions from every process are collected with `gather_for_metrics`, which drops the rows
Accelerate repeats to even out the last batch: N processes give exactly the 1-process numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


@dataclass
class EvalResult:
    """What `run_eval` measured: one row per dataset row in the dataloader's order, or with
    windows one row per document in document order."""

    rows: int  # rows evaluated: documents, with windows
    metrics: dict[str, float] = field(default_factory=dict)  # `loss` and the metric's values; empty unlabelled
    predictions: np.ndarray | None = None  # predicted label ids (multi-label: rows x labels of 0/1)
    references: np.ndarray | None = None  # true label ids (multi-label: rows x labels)
    scores: np.ndarray | None = None  # each label's probability (softmax; multi-label: sigmoid)
    logits: torch.Tensor | None = None  # keep_outputs: the raw outputs (pooled per document; None for
    # multi-label windows, which are pooled as probabilities: see `scores`)
    row_ids: torch.Tensor | None = None  # keep_outputs: each output's row in the dataset (windows: its document)
    windows: np.ndarray | None = None  # windows: how many windows each document's row pools
    window_logits: torch.Tensor | None = None  # keep_outputs with windows: every window's logits, unpooled
    window_documents: torch.Tensor | None = None  # and the document of each

    def values(self) -> dict[str, Any]:
        """The metrics with the number of rows, as logged and reported (`samples`: rows, or
        documents; `windows`: the windows they were read in)."""
        read = {"windows": int(self.windows.sum())} if self.windows is not None else {}
        return {"samples": self.rows, **read, **self.metrics}


def run_eval(accelerator, model, dataloader, metric, *, regression: bool, progress=None,
             keep_outputs: bool = False, keep_predictions: bool = False, multi_label: bool = False,
             threshold: float | Sequence[float] = 0.5, binary_threshold: float | None = None,
             temperature: float = 1.0, pooling: str = "mean") -> EvalResult:
    """Evaluate `model` on a prepared dataloader: the metrics and mean loss (labelled rows and a
    `metric`), with `keep_outputs` the gathered logits and row ids (for predict), with
    `keep_predictions` the predicted and true labels and the probabilities. Logits are divided by
    `temperature` (ftcli.evaluation.calibration) before anything else. Multi-label rows predict
    every label whose probability is at least `threshold` (one for all labels, or one per label);
    single-label rows the most probable label, or with `binary_threshold` the second label when
    its probability reaches it. Batches that carry `documents` (windows of long texts) are pooled
    per document (`pooling`: mean or max, see ftcli.evaluation.windows) after every window is
    gathered: metrics, loss and outputs are then per document. `model` is a torch module, or any
    callable with the same batch-to-`.logits` contract (an ONNX Runtime session:
    ftcli.evaluation.backends)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ftcli.evaluation.windows import pool

    model.eval()
    kept: dict[str, list] = {}
    with torch.no_grad():
        for batch in dataloader:
            step = {"references": batch.pop("labels")}
            for name in ("row_ids", "documents"):
                if name in batch:
                    step[name] = batch.pop(name)
            with accelerator.autocast():
                step["logits"] = model(**batch).logits.float()
            for name, value in accelerator.gather_for_metrics(step).items():
                kept.setdefault(name, []).append(value.cpu())
            if progress is not None:
                progress.update(1)
    model.train()

    def joined(name: str, empty):
        return torch.cat(kept[name]) if kept.get(name) else empty

    logits, r = joined("logits", torch.zeros(0, 1)), joined("references", torch.zeros(0))
    if temperature != 1.0 and not regression:
        logits = logits / temperature
    row_ids = joined("row_ids", torch.zeros(0, dtype=torch.long)) if "row_ids" in kept else None
    pooled = None
    if "documents" in kept:
        # multi-label windows pool probabilities: a mean of logits would not be a mean of beliefs
        pooled = pool(torch.sigmoid(logits) if multi_label else logits, joined("documents", None), pooling)
        r, row_ids = r[pooled.first], torch.from_numpy(pooled.documents)
        window_documents = joined("documents", None)
    probabilities = None
    if regression:
        values = pooled.values if pooled is not None else logits
        pred = values.squeeze(-1)
        loss = F.mse_loss(pred, r.float(), reduction="none")
    elif multi_label:
        targets = r.float().clamp(min=0)
        if pooled is not None:
            probabilities = pooled.values
            loss = F.binary_cross_entropy(probabilities.double(), targets.double(), reduction="none").mean(-1)
        else:
            probabilities = torch.sigmoid(logits)
            loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)
        pred = (probabilities >= torch.as_tensor(threshold, dtype=probabilities.dtype)).long()
    else:
        values = pooled.values if pooled is not None else logits
        loss = F.cross_entropy(values, r.long().clamp(min=0), reduction="none")
        probabilities = torch.softmax(values, -1)
        pred = values.argmax(-1) if binary_threshold is None else (probabilities[:, 1] >= binary_threshold).long()
    p, refs = pred.numpy(), r.numpy()
    result = EvalResult(rows=int(len(p)), windows=pooled.windows if pooled is not None else None)
    # Unlabelled splits (GLUE test sets) carry -1 (classification) or NaN (regression).
    labelled = bool(len(refs)) and bool((~np.isnan(refs)).all() if regression else (refs >= 0).all())
    if labelled and len(p) and metric is not None:
        result.metrics["loss"] = float(loss.double().mean())
        refs_for_metric = refs.astype(np.int64) if multi_label else refs
        result.metrics.update({k: float(v) for k, v in metric.compute(predictions=p, references=refs_for_metric).items()})
    if keep_outputs:
        result.logits = None if pooled is not None and multi_label else (pooled.values if pooled is not None else logits)
        result.row_ids = row_ids if row_ids is not None else torch.zeros(0, dtype=torch.long)
        if pooled is not None:
            result.window_logits, result.window_documents = logits, window_documents
    if keep_predictions or keep_outputs:
        result.predictions, result.references = p, refs
        if probabilities is not None:
            result.scores = probabilities.numpy()
    return result


class OneProcess:
    """What `run_eval` and `eval_dataloader` ask of an Accelerator, for evaluating in this process
    alone, in float32 on the CPU, whatever the machine and its launch: the ONNX export's parity
    check compares its graph with exactly that PyTorch computation (no autocast, no TF32)."""

    num_processes = 1
    is_main_process = True

    def __init__(self):
        import torch
        from accelerate.utils import DistributedType

        self.device = torch.device("cpu")
        self.distributed_type = DistributedType.NO

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def gather_for_metrics(self, value):
        return value
