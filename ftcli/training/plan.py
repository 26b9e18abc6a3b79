"""Step arithmetic and the loss of one micro batch: what makes N processes train like one.

Batch sizes, by name (ftcli.data.batching): `batch_size` rows per process and micro-step; a
*micro batch* is that times the processes (one forward pass over all processes); a *step batch*
is a micro batch times `gradient_accumulation_steps` (one optimizer step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftcli.config import TrainConfig


@dataclass
class Plan:
    """Step arithmetic, computed once from the prepared dataloader (the truth on N processes)."""

    processes: int
    batch_size: int  # rows per process and micro-step
    accumulation: int
    micro_batches_per_epoch: int  # len(train dataloader): Accelerate splits each among the processes
    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup_steps: int
    capped: bool = False  # train.max_steps decides the length, not train.epochs

    @property
    def micro_batch(self) -> int:
        return self.batch_size * self.processes

    @property
    def step_batch(self) -> int:
        return self.micro_batch * self.accumulation

    def describe(self) -> str:
        """The start-up summary's `steps` line."""
        if self.capped:
            return (f"{self.total_steps} optimizer steps (train.max_steps; {self.total_steps / self.steps_per_epoch:.3g} "
                    f"epochs of {self.steps_per_epoch} steps)")
        return f"{self.steps_per_epoch} per epoch x {self.epochs} epoch(s) = {self.total_steps} optimizer steps"

    def epoch_label(self, epoch: int) -> str:
        """The progress bar's description in (0-based) `epoch`."""
        if self.capped:
            return f"epoch {epoch + 1} of {self.total_steps / self.steps_per_epoch:.3g} (max_steps {self.total_steps})"
        return f"epoch {epoch + 1}/{self.epochs}"


def make_plan(t: TrainConfig, micro_batches_per_epoch: int, processes: int) -> Plan:
    steps = math.ceil(micro_batches_per_epoch / t.gradient_accumulation_steps)
    total = t.max_steps if t.max_steps is not None else t.epochs * steps
    warmup = t.warmup_steps if t.warmup_ratio is None else math.ceil(t.warmup_ratio * total)
    return Plan(
        processes=processes, batch_size=t.batch_size, accumulation=t.gradient_accumulation_steps,
        micro_batches_per_epoch=micro_batches_per_epoch, steps_per_epoch=steps, total_steps=total,
        epochs=math.ceil(total / steps), warmup_steps=min(warmup, total), capped=t.max_steps is not None,
    )


def batch_loss(logits, labels, index: int, plan: Plan, process: int, rows: int, regression: bool,
               class_weights=None, *, multi_label: bool = False, weights=None):
    """This process's share of the mean loss over the real rows of micro batch `index`.
    `class_weights` weigh each row's loss by its label, and `weights` (one per row: a window's
    share of its document, `train.window_weight: document`) each row as given; the mean is still
    over rows, not over weights: a batch's loss does not depend on which other rows share it.

    Accelerate splits each micro batch of M rows into equal per-process slices; a last, short
    batch is padded with rows from the start of the epoch so every process gets a full slice. Those
    repeated rows get weight 0 here, and the real ones P/n (n real rows in the micro batch, P
    processes), so that DDP's average over processes is exactly the mean over the n real rows:
    N processes x B rows train exactly like 1 process x N*B rows, last batch included.
    Returns (loss, number of real rows in this process's slice).
    """
    import torch.nn.functional as F

    if regression:
        per_row = F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="none")
    elif multi_label:  # each label on its own; a row's loss is the mean over its labels
        per_row = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=class_weights,
                                                     reduction="none").mean(-1)
    else:
        per_row = F.cross_entropy(logits.float(), labels, weight=class_weights, reduction="none")
    if weights is not None:
        per_row = per_row * weights
    in_batch = min(plan.micro_batch, rows - index * plan.micro_batch)  # real rows in this micro batch
    real = max(0, min(len(per_row), in_batch - process * plan.batch_size))
    if real == len(per_row) and in_batch == plan.micro_batch:
        return per_row.mean(), real  # the usual case: a full batch
    return per_row[:real].sum() * (plan.processes / in_batch), real
