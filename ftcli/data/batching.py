"""Batching: samplers, the collator, and the dataloaders built from them.

Every loader yields *micro batches*: rows for one forward pass over all processes
(`batch_size x processes`), which Accelerate splits so each process gets `batch_size` rows
(`split_batches=True`). The order of rows therefore never depends on the process count. An
optimizer step takes `gradient_accumulation_steps` micro batches (the *step batch*).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from ftcli.config import DataConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ftcli.data.cache import Prepared


class LengthGroupedSampler:
    """Random order in which neighbouring rows have similar lengths.

    Each epoch: a seeded permutation, cut into megabatches of `megabatch_size` rows, each sorted
    by length (longest first). Consecutive `micro_batch` rows then form a batch with little
    padding, while which rows meet stays random. The order depends only on (seed, epoch, micro
    batch), never on the number of processes, so 2 processes x 4 rows see the same global batches
    as 1 process x 8. With `group=False` it is a plain seeded permutation.

    `micro_batch`: rows per micro-step over all processes (batch_size x processes); Accelerate
    splits each such batch among the processes.

    The generator is private: drawing from the global torch RNG here would shift dropout masks
    and break exact resume.
    """

    def __init__(self, lengths, micro_batch: int, seed: int, group: bool = True, megabatch_factor: int = 50):
        import numpy as np

        self.lengths = np.asarray(lengths)
        self.micro_batch = micro_batch
        self.seed = seed
        self.group = group
        self.megabatch_size = micro_batch * megabatch_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int):
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.lengths))
        if not self.group:
            return perm
        chunks = [perm[i : i + self.megabatch_size] for i in range(0, len(perm), self.megabatch_size)]
        # Stable sort on negated lengths: longest first, ties keep their random order.
        return np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch).tolist())

    def __len__(self) -> int:
        return len(self.lengths)


class SortedSampler:
    """Rows longest first, for evaluation and prediction: batches pad little, and the first batch
    is the largest, so an out-of-memory error comes at once rather than at the end."""

    def __init__(self, lengths):
        import numpy as np

        self.indices = np.argsort(-np.asarray(lengths), kind="stable")

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Collator:
    """Pads a list of tokenized rows into tensors.

    `padding`: `dynamic` pads to the longest row of the batch, `max_length` to `max_length`,
    `buckets` to the smallest bucket that fits (static shapes for XLA). `multiple_of` rounds up.
    """

    pad_token_id: int
    padding: str = "dynamic"
    max_length: int = 512
    buckets: tuple[int, ...] = (32, 64, 128, 256, 512)
    multiple_of: int | None = None
    with_row_ids: bool = False
    regression: bool = False  # float labels: regression targets, or multi-label rows of 0/1

    def padded_length(self, longest: int) -> int:
        if self.padding == "max_length":
            return self.max_length
        if self.padding == "buckets":
            fitting = [b for b in self.buckets if b >= longest and b <= self.max_length]
            length = fitting[0] if fitting else self.max_length
        else:
            length = longest
        if self.multiple_of:
            length = int(math.ceil(length / self.multiple_of) * self.multiple_of)
        return length

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import numpy as np
        import torch

        n = len(rows)
        length = self.padded_length(max(r["length"] for r in rows))
        batch = {}
        for name, fill in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if name not in rows[0]:
                continue
            arr = np.full((n, length), fill, dtype=np.int64)
            for i, r in enumerate(rows):
                seq = r[name]
                arr[i, : len(seq)] = seq
            batch[name] = torch.from_numpy(arr)
        labels = [r["labels"] for r in rows]
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if self.regression else torch.long)
        if self.with_row_ids:
            batch["row_ids"] = torch.tensor([r["row_id"] for r in rows], dtype=torch.long)
        if "document" in rows[0]:  # windows: which document each row is a window of
            batch["documents"] = torch.tensor([r["document"] for r in rows], dtype=torch.long)
        if "weight" in rows[0]:  # train.window_weight: document
            batch["weights"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
        return batch


def with_row_ids(ds):
    """Add each row's position as `row_id` (for writing predictions back in input order)."""
    import numpy as np

    return ds.add_column("row_id", np.arange(ds.num_rows, dtype=np.int64))



def padding_mode(data: DataConfig, accelerator) -> str:
    from accelerate.utils import DistributedType

    if data.padding == "dynamic" and accelerator.distributed_type == DistributedType.XLA:
        return "buckets"  # every new shape recompiles the XLA graph
    return data.padding


def pad_multiple(data: DataConfig) -> int | None:
    """`auto`: 8. Tensor cores want multiples of 8 on GPUs, and on CPU oneDNN's bf16 matmuls ran
    ~8% faster per step with lengths rounded to 8 (MiniLM, MRPC: 128 -> 118 ms per batch of 8)."""
    return 8 if data.pad_to_multiple_of == "auto" else data.pad_to_multiple_of


def loader_options(workers: int | str, accelerator) -> dict:
    """Workers and pinned memory help on GPUs; on CPU the cores are busy with the model, and a
    worker process only competes with it."""
    if accelerator.device.type != "cuda":
        return {"num_workers": 0 if workers == "auto" else workers}
    auto = max(0, min(4, (os.cpu_count() or 1) // max(1, accelerator.num_processes) - 1))
    n = auto if workers == "auto" else workers
    return {"num_workers": n, "pin_memory": True, "persistent_workers": n > 0}


def collator(data: DataConfig, accelerator, prepared: Prepared, *, with_row_ids: bool = False) -> Collator:
    return Collator(
        pad_token_id=prepared.pad_token_id, padding=padding_mode(data, accelerator), max_length=prepared.max_length,
        buckets=tuple(data.pad_buckets), multiple_of=pad_multiple(data), with_row_ids=with_row_ids,
        regression=prepared.is_regression or prepared.is_multi_label,  # float targets
    )


def train_dataloader(data: DataConfig, train: TrainConfig, accelerator, ds, prepared: Prepared):
    """Length-grouped micro batches in a seeded order (see LengthGroupedSampler)."""
    import torch
    from torch.utils.data import DataLoader

    micro_batch = train.batch_size * accelerator.num_processes
    columns = prepared.manifest.model_input_names + ["labels", "length"]
    if prepared.windowed and train.window_weight == "document":
        ds = ds.add_column("weight", document_weights(ds["document"]))
        columns.append("weight")
    return DataLoader(
        ds.select_columns(columns),
        batch_size=micro_batch,
        sampler=LengthGroupedSampler(ds["length"], micro_batch, train.seed, group=train.group_by_length),
        collate_fn=collator(data, accelerator, prepared),
        generator=torch.Generator(),  # see eval_dataloader: keep the global RNG for dropout only
        **loader_options(train.dataloader_workers, accelerator),
    )


def document_weights(documents):
    """`train.window_weight: document`: each window's loss weight, 1/windows of its document,
    scaled so that the mean over the split is 1 (a batch's loss keeps the scale of unweighted
    training, and so does the learning rate that suits it)."""
    import numpy as np

    documents = np.asarray(documents)
    windows = np.bincount(documents)
    present = int((windows > 0).sum())
    return ((len(documents) / present) / windows[documents]).astype(np.float32)


def eval_dataloader(data: DataConfig, accelerator, ds, prepared: Prepared, *, batch_size: int,
                    workers: int | str = "auto", with_row_ids: bool = False):
    """Rows sorted by length, in micro batches of batch_size x processes (split by Accelerate)."""
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        ds,
        batch_size=batch_size * accelerator.num_processes,
        sampler=SortedSampler(ds["length"]),
        collate_fn=collator(data, accelerator, prepared, with_row_ids=with_row_ids),
        # A private generator: creating this loader's iterator must not draw from the global RNG
        # (that would change dropout masks in training and break exact resume).
        generator=torch.Generator(),
        **loader_options(workers, accelerator),
    )
