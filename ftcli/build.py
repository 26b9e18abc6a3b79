"""Building a prepared dataset: read the raw files, check columns and labels, tokenize.

`build()` writes into a temporary folder that ftcli.cache owns and publishes; reading a file that
does not parse names the file and line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcli import labels
from ftcli.config import DATA_FORMATS, Config, DataConfig
from ftcli.errors import FtcliError
from ftcli.files import atomic_write_text, checksums

if TYPE_CHECKING:  # pragma: no cover
    import datasets


@contextlib.contextmanager
def quiet_datasets(bars: bool = False):
    """No `datasets` log lines, and no progress bars unless `bars`, while ftcli reports progress
    itself; the caller's settings are restored afterwards."""
    import datasets as hfds
    from datasets.utils import logging as ds_logging

    verbosity, bars_before = ds_logging.get_verbosity(), hfds.is_progress_bar_enabled()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    (hfds.enable_progress_bars if bars else hfds.disable_progress_bars)()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        (hfds.enable_progress_bars if bars_before else hfds.disable_progress_bars)()


MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def load_hub_dataset(path: str, name: str | None, revision: str | None):
    """`datasets.load_dataset` for a Hub dataset (a seam: tests patch it)."""
    from datasets import load_dataset

    try:
        return load_dataset(path, name, revision=revision)
    except Exception as exc:  # noqa: BLE001 - every Hub failure gets the same advice
        raise FtcliError(
            f"data.path: cannot load Hub dataset {path!r}{f' ({name})' if name else ''}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; check the name and your network, "
            "or use data.files with local files"
        ) from None


def load_raw(data: DataConfig, cache_dir: Path | None = None) -> dict[str, datasets.Dataset]:
    """The raw splits, as Arrow-backed datasets."""
    if data.path is not None:
        return dict(load_hub_dataset(data.path, data.name, data.revision))
    out = {}
    for split, file in data.files.items():
        suffix = Path(file).suffix.lower()
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        if suffix in (".csv", ".tsv"):
            # The CSV reader fills a short row with nulls without a word: check every row's
            # field count first (a cache miss only; ~1 s per 250k rows).
            located = locate_parse_error(Path(file), suffix)
            if located:
                raise FtcliError(f"{file}: {located}")
        try:
            with quiet_datasets():  # it logs a full traceback when a file fails to parse; ftcli says it in one line
                from datasets import load_dataset

                ds = load_dataset(
                    DATA_FORMATS[suffix], data_files=str(file), split="train",
                    cache_dir=str(cache_dir) if cache_dir else None, **kwargs,
                )
        except Exception as exc:  # noqa: BLE001 - parse errors of any kind
            if "corresponds to no data" in str(exc) or (Path(file).is_file() and Path(file).stat().st_size == 0):
                raise FtcliError(f"{file}: split {split!r} has no rows; add data or remove the split") from None
            located = locate_parse_error(Path(file), suffix)
            if located:
                raise FtcliError(f"{file}: {located}") from None
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise FtcliError(f"{file}: cannot read it as {suffix[1:]} ({detail[:200]}); fix the file") from None
        out[split] = ds
    return out


def locate_parse_error(path: Path, suffix: str) -> str | None:
    """Where a text data file that failed to load is broken, in words ("line 7: 4 fields, but the
    header has 3 ..."), or None when this finds nothing: `datasets` only says that generating the
    dataset failed. Reads the file once more, as the standard library parses it."""
    import csv

    try:
        if suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f, delimiter=delimiter)
                header = next(reader, None)
                if header is None:
                    return None
                for row in reader:
                    if row and len(row) != len(header):
                        name = "tab" if delimiter == "\t" else "comma"
                        return (f"line {reader.line_num}: {len(row)} fields, but the header has {len(header)} "
                                f"({', '.join(header)}); quote fields that contain a {name} or a line break, "
                                "or fix the row")
        elif suffix == ".jsonl" or suffix == ".json":
            with open(path, encoding="utf-8") as f:
                if f.read(64).lstrip().startswith("["):
                    return None  # one JSON array, not JSON Lines: datasets' own message says more
                f.seek(0)
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError as exc:
                        return f"line {number}: not valid JSON ({exc.msg}, character {exc.pos + 1}); fix the line"
                    if not isinstance(record, dict):
                        return f"line {number}: a JSON Lines row must be an object {{\"column\": value, ...}}"
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
    except (OSError, csv.Error) as exc:
        return f"cannot read it ({exc})"
    return None


def check_splits(data: DataConfig, *splits: str) -> None:
    """Fail early, before any tokenization, when a needed split is not among local data files."""
    if data.files is None:
        return  # a Hub dataset's splits are known once it is loaded
    for split in splits:
        if split == data.validation_name and data.holdout is not None:
            continue  # held out of the training split when the data is prepared
        if split not in data.files:
            raise FtcliError(
                f"split {split!r} is not in data.files (available: {', '.join(data.files)}); "
                f"add it to data.files or fix the split name"
            )


def _check_columns(data: DataConfig, raw: dict[str, datasets.Dataset], labels_optional: bool = False) -> None:
    problems = []
    for split, ds in raw.items():
        where = labels.split_source(data, split)
        if ds.num_rows == 0:
            problems.append(f"{where}: split {split!r} has no rows; add data or remove the split")
            continue
        needed = data.text_columns if labels_optional else (*data.text_columns, data.label_column)
        for col in needed:
            if col not in ds.column_names:
                setting = "data.label_column" if col == data.label_column else "data.text_columns"
                problems.append(
                    f"{where}: column {col!r} not found (columns: {', '.join(ds.column_names)}); fix {setting}"
                )
        for col in data.text_columns:
            if col in ds.column_names:
                column = ds.data.column(col)
                if column.null_count:
                    import pyarrow.compute as pc

                    problems += labels.row_lines(pc.is_null(column).combine_chunks(), lambda row: (
                        f"{where}: row {row + 1}: column {col!r} is empty; fill in or drop the row"))
    if problems:
        raise FtcliError("\n".join(problems))


def build(cfg: Config, parts: dict[str, Any], key: str, tmp: Path, raw, labels_optional: bool) -> dict[str, Any]:
    """Tokenize every split of the raw data into `tmp/dataset/<split>` and write `tmp/manifest.json`;
    return the manifest. The caller (ftcli.cache) owns `tmp` and publishes it."""
    import datasets as hfds
    import pyarrow.compute as pc

    from ftcli.modeling import load_tokenizer

    data, model = cfg.data, cfg.model
    raw = raw if raw is not None else load_raw(data, tmp / "raw")
    _check_columns(data, raw, labels_optional)
    names = labels.label_names(model, data, raw)
    multi = labels.is_multi_label(model, data, raw)
    sources = {split: labels.split_source(data, split) for split in raw}
    holdout, origins = None, {}
    if data.holdout is not None:
        with quiet_datasets():
            raw, holdout, origins = hold_out(data, model, raw, names, multi)
        sources[data.train_split] = f"{sources[data.train_split]} ({holdout['train_rows']:,} rows kept for training)"
        sources[data.validation_name] = (f"{labels.split_source(data, data.train_split)} "
                                         f"({holdout['rows']:,} rows held out, seed {data.split_seed})")
    tokenizer = load_tokenizer(model)
    max_length = parts["settings"]["max_length"]
    splits = {}
    for split, ds in raw.items():
        ids, labelled = labels.label_ids(model, data, ds, split, names, multi)
        workers = processes_for(data, ds.num_rows)
        with quiet_datasets(bars=ds.num_rows >= LARGE_SPLIT and _at_terminal()):
            tokenized = _tokenize(ds, tokenizer, data, max_length, tmp / f"map-{split}.arrow",
                                  labels.split_source(data, data.train_split) if split in origins else sources[split],
                                  origins.get(split), workers, f"tokenizing {split}")
            if multi:  # a 0/1 row over the labels
                tokenized = tokenized.add_column("labels", list(ids), feature=hfds.List(hfds.Value("float32"),
                                                                                         length=len(names)))
            else:
                tokenized = tokenized.add_column(
                    "labels", ids.to_numpy(zero_copy_only=False),
                    feature=hfds.Value("float32" if model.is_regression else "int64"),
                )
            # Shards of at most 64 MB: save_to_disk holds a shard in memory while writing it, so
            # the default 500 MB shards made peak memory grow with the data.
            tokenized.save_to_disk(str(tmp / "dataset" / split), max_shard_size="64MB")
        lengths = tokenized.data.column("length")
        splits[split] = {
            "rows": tokenized.num_rows,
            "labeled": labelled,
            "tokens": int(pc.sum(lengths).as_py()),
            "max_tokens": int(pc.max(lengths).as_py()),
            "truncated": int(pc.sum(pc.cast(tokenized.data.column("truncated"), "int64")).as_py()),
            "source": sources[split],
            "classes": class_counts(ids, names) if labelled and names else None,
        }
        del tokenized
    shutil.rmtree(tmp / "raw", ignore_errors=True)
    for f in tmp.glob("map-*"):
        f.unlink()
    from importlib.metadata import version

    manifest = {
        "key": key,
        "parts": parts,
        "label_names": names,
        "problem_type": "regression" if model.is_regression else "multi_label" if multi else "single_label",
        "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        "max_length": max_length,
        "model_input_names": [c for c in MODEL_COLUMNS if c in tokenizer.model_input_names],
        "splits": splits,
        "holdout": holdout,
        "checksums": checksums(tmp, "dataset"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ftcli": version("ftcli") if _installed("ftcli") else "dev",
    }
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


LARGE_SPLIT = 50_000
"""Rows from which a split is tokenized by several processes (`num_proc: auto`) and shows a bar."""


def processes_for(data: DataConfig, rows: int) -> int | None:
    """`data.num_proc` for a split of `rows` rows (None: tokenize in this process)."""
    import os

    if data.num_proc != "auto":
        return data.num_proc if data.num_proc and data.num_proc > 1 else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if rows >= LARGE_SPLIT and cores > 1 else None


def _at_terminal() -> bool:
    import sys

    return sys.stderr.isatty()


def _tokenize(ds, tokenizer, data: DataConfig, max_length: int, cache_file: Path, source: str, origin=None,
              workers: int | None = None, description: str | None = None):
    """Tokenize a split. `source` and `origin` (each row's index in the file, when the split is
    part of one) name a row that cannot be tokenized."""
    cols = data.text_columns
    keep = [c for c in MODEL_COLUMNS if c in tokenizer.model_input_names]

    def encode(batch, indices):
        texts = [batch[c] for c in cols]
        try:
            enc = tokenizer(*texts, truncation=data.truncation, max_length=max_length)
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            rows = indices if origin is None else [int(origin[i]) for i in indices]
            raise _truncation_error(tokenizer, texts, rows, data, max_length, source, exc) from None
        out = {c: enc[c] for c in keep}
        out["length"] = [len(x) for x in enc["input_ids"]]
        # A fast tokenizer keeps what it cut off; a slow one does not, and a row that fills
        # max_length exactly is then counted as cut.
        out["truncated"] = ([bool(e.overflowing) for e in enc.encodings] if enc.encodings is not None
                            else [n >= max_length for n in out["length"]])
        return out

    import datasets as hfds

    features = hfds.Features(
        {**{c: hfds.List(hfds.Value("int32" if c == "input_ids" else "int8")) for c in keep},
         "length": hfds.Value("int32"), "truncated": hfds.Value("bool")}
    )
    return ds.map(
        encode,
        batched=True,
        with_indices=True,
        batch_size=1000,
        remove_columns=ds.column_names,
        features=features,
        num_proc=workers,
        desc=description,
        cache_file_name=str(cache_file),
        new_fingerprint=cache_file.stem,
        load_from_cache_file=False,
    )


def _truncation_error(tokenizer, texts, indices, data: DataConfig, max_length: int, source: str, exc: Exception):
    """The row a batch failed on, in words: `only_first`/`only_second` cannot fit a row whose
    other text alone fills max_length."""
    for i, row in enumerate(indices):
        try:
            tokenizer(*[[t[i]] for t in texts], truncation=data.truncation, max_length=max_length)
        except Exception:  # noqa: BLE001
            return FtcliError(f"{source}: row {row + 1}: truncation {data.truncation} cannot fit it into max_length "
                              f"{max_length} (the text it may not cut is that long alone); use truncation: "
                              "longest_first or a larger data.max_length")
    return FtcliError(f"{source}: tokenization failed ({str(exc).splitlines()[0][:200]})")


def class_counts(ids, names: list[str]) -> dict[str, int]:
    """Rows per label name (labelled rows; for multi-label data, rows carrying each label)."""
    import numpy as np

    if isinstance(ids, np.ndarray) and ids.ndim == 2:
        return {name: int(n) for name, n in zip(names, (ids > 0).sum(0))}
    values = np.asarray(ids.to_numpy(zero_copy_only=False))
    counts = np.bincount(values[values >= 0], minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


def hold_out(data: DataConfig, model, raw: dict[str, datasets.Dataset], names: list[str], multi_label: bool = False):
    """Split `data.holdout` rows off the training split into `data.validation_name`: per class
    (each class gives its share, rounded so the total is exact; a multi-label row counts under its
    rarest label), at random with `split_seed`. Both parts keep the file's row order. Returns the
    new splits, what the manifest records, and each part's row indices in the file."""
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
    if names and multi_label:
        hot, _ = labels.label_ids(model, data, train, data.train_split, names, True)
        rarity = np.where(hot > 0, (hot > 0).sum(0)[None, :], np.iinfo(np.int64).max)
        groups = np.where((hot > 0).any(1), rarity.argmin(1), -1)
    elif names:  # classification: stratified
        ids, _ = labels.label_ids(model, data, train, data.train_split, names)
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
    out = {split: ds for split, ds in raw.items() if split != data.train_split}
    # flatten_indices: the parts become tables of their own (label checks read the Arrow table).
    out[data.train_split] = train.select(kept).flatten_indices()
    out[data.validation_name] = train.select(held).flatten_indices()
    info = {"of": data.train_split, "rows": int(len(held)), "train_rows": int(len(kept)),
            "requested": data.holdout, "seed": data.split_seed, "stratified": bool(names)}
    return out, info, {data.train_split: kept, data.validation_name: held}


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
