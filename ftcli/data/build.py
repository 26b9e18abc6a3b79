"""Building a prepared dataset: check the columns and labels of the raw splits, hold out a
validation split if asked, tokenize, count, and write the manifest.

`build()` writes into a temporary folder that ftcli.data.cache owns and publishes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcli.config import Config, DataConfig
from ftcli.data import encoding, labels
from ftcli.data.manifest import Manifest, SplitStats
from ftcli.data.reading import check_columns, load_raw
from ftcli.errors import FtcliError
from ftcli.files import atomic_write_text, checksums
from ftcli.quiet import quiet

if TYPE_CHECKING:  # pragma: no cover
    import datasets


def build(cfg: Config, parts: dict[str, Any], key: str, tmp: Path, raw, labels_optional: bool,
          progress: Callable[..., Any] | None = None) -> Manifest:
    """Tokenize every split of the raw data into `tmp/dataset/<split>.arrow` and write
    `tmp/manifest.json`; return the manifest. The caller (ftcli.data.cache) owns `tmp` and publishes it.
    `progress`: `Reporter.progress`, for a display while a large split is tokenized."""
    import datasets as hfds
    import pyarrow as pa

    from ftcli.data import pad_token
    from ftcli.data.sources import load_tokenizer

    data, model = cfg.data, cfg.model
    raw = raw if raw is not None else load_raw(data, tmp / "raw")
    pa.default_memory_pool().release_unused()  # what parsing the files used, before tokenizing
    check_columns(data, raw, labels_optional)
    names = labels.label_names(model, data, raw)
    multi = labels.is_multi_label(model, data, raw)
    sources = {split: labels.split_source(data, split) for split in raw}
    # each output split: the raw split its rows come from, and which of its rows (None: all)
    plan: dict[str, tuple[str, Any]] = {split: (split, None) for split in raw}
    label_cache: dict[str, tuple[Any, bool]] = {}  # raw split -> its label ids, parsed once

    def label_ids(split: str) -> tuple[Any, bool]:
        if split not in label_cache:
            label_cache[split] = labels.label_ids(model, data, raw[split], split, names, multi)
        return label_cache[split]

    holdout = None
    if data.holdout is not None:
        holdout, rows = hold_out(data, raw, names, label_ids(data.train_split)[0])
        plan.update({split: (data.train_split, positions) for split, positions in rows.items()})
        sources[data.train_split] = f"{sources[data.train_split]} ({holdout['train_rows']:,} rows kept for training)"
        sources[data.validation_name] = (f"{labels.split_source(data, data.train_split)} "
                                         f"({holdout['rows']:,} rows held out, seed {data.split_seed})")
    tokenizer = load_tokenizer(model)
    # The model config's pad and EOS ids, as the fingerprint read them (no second read).
    model_pad, model_eos = parts["settings"]["model_pad"]
    pad = pad_token.resolve(tokenizer, {"pad_token_id": model_pad, "eos_token_id": model_eos})
    encoder = encoding.Encoder(tokenizer, data, parts["settings"]["max_length"])
    if multi:  # a 0/1 row over the labels
        label_feature = hfds.List(hfds.Value("float32"), length=len(names))
    else:
        label_feature = hfds.Value("float32" if model.is_regression else "int64")
    schema = encoding.features(encoder.keep, label_feature, windows=encoder.windows).arrow_schema
    (tmp / "dataset").mkdir()
    splits = {}
    for split, (origin, positions) in plan.items():
        ds = raw[origin]
        ids, labelled = label_ids(origin)
        rows = ds.num_rows if positions is None else len(positions)
        with (progress(rows, f"tokenizing {split}", every=1, unit="rows", min_interval=10.0)
              if progress and rows >= LARGE_SPLIT else contextlib.nullcontext()) as bar:
            done = encoding.encode_split(
                ds, encoder, tmp / "dataset" / f"{split}.arrow", schema, ids, positions=positions,
                threads=threads_for(data, rows), source=labels.split_source(data, origin),
                advance=bar.update if bar is not None else None)
        split_ids = ids if positions is None else (ids[positions] if multi else ids.take(positions))
        splits[split] = SplitStats(
            rows=done.rows, labeled=labelled, tokens=done.tokens, max_tokens=done.max_tokens, truncated=done.truncated,
            source=sources[split], classes=class_counts(split_ids, names) if labelled and names else None,
            no_label=no_label_rows(split_ids) if labelled and multi else None,
            documents=done.documents if encoder.windows else None,
            most_windows=done.most_windows if encoder.windows else None,
        )
    del raw
    shutil.rmtree(tmp / "raw", ignore_errors=True)
    from importlib.metadata import version

    manifest = Manifest(
        key=key, parts=parts, label_names=names,
        problem_type="regression" if model.is_regression else "multi_label" if multi else "single_label",
        pad_token_id=pad.id, pad_token_source=pad.source,
        max_length=encoder.max_length, model_input_names=encoder.keep, splits=splits, holdout=holdout,
        long_texts=data.long_texts, stride=encoder.stride if encoder.windows else None,
        max_windows=data.max_windows if encoder.windows else None,
        checksums=checksums(tmp, "dataset"), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        ftcli=version("ftcli") if _installed("ftcli") else "dev",
    )
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest.to_json(), indent=2))
    return manifest


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


LARGE_SPLIT = 50_000
"""Rows from which a split is tokenized by a thread per core (`num_proc: auto`) and shows progress."""


def threads_for(data: DataConfig, rows: int) -> int:
    """Tokenizer threads for a split of `rows` rows (`data.num_proc`)."""
    import os

    if data.num_proc != "auto":
        return data.num_proc or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if rows >= LARGE_SPLIT else 1


def class_counts(ids, names: list[str]) -> dict[str, int]:
    """Rows per label name (labelled rows; for multi-label data, rows carrying each label)."""
    import numpy as np

    if isinstance(ids, np.ndarray) and ids.ndim == 2:
        return {name: int(n) for name, n in zip(names, (ids > 0).sum(0))}
    values = np.asarray(ids.to_numpy(zero_copy_only=False))
    counts = np.bincount(values[values >= 0], minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


def no_label_rows(ids) -> int:
    """Multi-label rows (a rows x labels 0/1 array) whose label set is empty."""
    return int((ids.sum(1) == 0).sum())


def hold_out(data: DataConfig, raw: dict[str, datasets.Dataset], names: list[str], ids):
    """Split `data.holdout` rows off the training split into `data.validation_name`: per class
    (each class gives its share, rounded so the total is exact; a multi-label row counts under its
    rarest label), at random with `split_seed`. `ids`: the training split's label ids (as
    `labels.label_ids` gives them). Both parts keep the file's row order. Returns what the
    manifest records, and each part's row indices in the training split (sorted)."""
    import numpy as np

    train = raw[data.train_split]
    source = labels.split_source(data, data.train_split)
    n = train.num_rows
    want = data.holdout if isinstance(data.holdout, int) else round(data.holdout * n)
    if not 1 <= want < n:
        raise FtcliError(f"{source}: data.validation_split {data.holdout} would hold out {want} of its {n:,} rows; "
                         f"give a fraction or a row count between 1 and {n - 1}")
    if data.validation_name in raw:
        raise FtcliError(f"data.validation_split: the data already has a split {data.validation_name!r}; use it "
                         f"(validation_split: {data.validation_name}) instead of holding out training rows")
    rng = np.random.default_rng(data.split_seed)
    if names and isinstance(ids, np.ndarray) and ids.ndim == 2:  # multi-label: rows x labels, 0/1
        rarity = np.where(ids > 0, (ids > 0).sum(0)[None, :], np.iinfo(np.int64).max)
        groups = np.where((ids > 0).any(1), rarity.argmin(1), -1)
    elif names:  # classification: stratified
        groups = np.asarray(ids.to_numpy(zero_copy_only=False))
    else:
        groups = np.zeros(n, dtype=np.int64)
    held = []
    members = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
    quotas = _quotas({g: len(m) for g, m in members.items()}, want)
    for g, rows in members.items():
        held.append(rng.permutation(rows)[:quotas[g]])
    held = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(n), held, assume_unique=True)
    info = {"of": data.train_split, "rows": int(len(held)), "train_rows": int(len(kept)),
            "requested": data.holdout, "seed": data.split_seed, "stratified": bool(names)}
    return info, {data.train_split: kept, data.validation_name: held}


def _quotas(sizes: dict[Any, int], want: int) -> dict[Any, int]:
    """Rows each group gives to a held-out split of `want` rows: shares of `want` by group size,
    rounded by largest remainder so they add up to `want` exactly. A group of one row stays whole
    in training when it can (a class seen only in validation cannot be learned)."""
    total = sum(sizes.values())
    exact = {g: want * n / total for g, n in sizes.items()}
    quotas = {g: min(int(x), max(sizes[g] - 1, 0)) for g, x in exact.items()}
    order = sorted(sizes, key=lambda g: (quotas[g] - exact[g], g))  # largest remainders first
    short = want - sum(quotas.values())
    for keep in (1, 0):  # first leaving every group a training row, then as needed
        while short:
            grown = [g for g in order if sizes[g] - quotas[g] > keep][:short]
            if not grown:
                break
            for g in grown:
                quotas[g] += 1
            short -= len(grown)
    return quotas


def split_texts(cfg: Config, split: str, names: list[str], multi: bool) -> tuple[dict[str, list], list[int]]:
    """The texts of a prepared split's rows, read again from the raw data (the cache keeps only
    token ids), and each row's index in its source file. A held-out split is held out again the
    same way (`hold_out` is deterministic), so row i here is row i of the prepared split."""
    import tempfile

    data = cfg.data
    held = data.holdout is not None and split in (data.train_split, data.validation_name)
    origin = data.train_split if held else split
    with tempfile.TemporaryDirectory(prefix="ftcli-texts-") as tmp:
        with quiet("datasets"):
            raw = load_raw(data, Path(tmp))
        if origin not in raw:
            raise FtcliError(f"split {split!r} is not in the data (available: {', '.join(raw)})")
        ds = raw[origin]
        positions = list(range(ds.num_rows))
        if held:
            ids = labels.label_ids(cfg.model, data, ds, origin, names, multi)[0]
            positions = hold_out(data, raw, names, ids)[1][split].tolist()
        texts = {c: ds.data.column(c).take(positions).to_pylist() for c in data.text_columns}
    return texts, positions
