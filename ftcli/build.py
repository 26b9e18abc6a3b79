"""Building a prepared dataset: read the raw files, check columns and labels, tokenize.

`build()` writes into a temporary folder that ftcli.cache owns and publishes; reading a file that
does not parse names the file and line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcli import encoding, labels
from ftcli.config import DATA_FORMATS, Config, DataConfig
from ftcli.errors import FtcliError, is_disk_full, shorten
from ftcli.files import atomic_write_text, checksums

if TYPE_CHECKING:  # pragma: no cover
    import datasets


@contextlib.contextmanager
def quiet_datasets():
    """No `datasets` log lines and progress bars while ftcli reports progress itself; the
    caller's settings are restored afterwards."""
    import datasets as hfds
    from datasets.utils import logging as ds_logging

    verbosity, bars_before = ds_logging.get_verbosity(), hfds.is_progress_bar_enabled()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    hfds.disable_progress_bars()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        (hfds.enable_progress_bars if bars_before else hfds.disable_progress_bars)()


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


RAW_BATCH_ROWS = 10_000
"""Rows per record batch of a raw split's Arrow file (datasets writes 1,000). Opening the file
touches each batch's header, and the kernel maps 64 KB around each touch: with 1,000-row batches
that made a million rows' file count ~60 MB in resident memory before a row was read."""


def load_raw(data: DataConfig, cache_dir: Path | None = None) -> dict[str, datasets.Dataset]:
    """The raw splits, as Arrow-backed datasets."""
    if data.path is not None:
        return dict(load_hub_dataset(data.path, data.name, data.revision))
    out = {}
    for split, file in data.files.items():
        suffix = Path(file).suffix.lower()
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        if suffix in (".csv", ".tsv"):
            # CSV has no types: a text cell is the text written, so "NA", "None" or "null" and
            # "007" stay as written. Only the label column reads missing-value words as missing.
            kwargs.update(keep_default_na=False, na_values={data.label_column: MISSING_WORDS},
                          converters={col: str for col in data.text_columns})
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
                    cache_dir=str(cache_dir) if cache_dir else None, writer_batch_size=RAW_BATCH_ROWS, **kwargs,
                )
        except Exception as exc:  # noqa: BLE001 - parse errors of any kind
            if is_disk_full(exc):
                raise  # not the file's fault: ftcli.cache says where the disk is full
            if "corresponds to no data" in str(exc) or (Path(file).is_file() and Path(file).stat().st_size == 0):
                raise FtcliError(f"{file}: split {split!r} has no rows; add data or remove the split") from None
            located = locate_parse_error(Path(file), suffix)
            if located:
                raise FtcliError(f"{file}: {located}") from None
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise FtcliError(f"{file}: cannot read it as {suffix[1:]} ({detail[:200]}); fix the file") from None
        out[split] = _plain_json_column(ds, data.label_column)
    return out


MISSING_WORDS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                 "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
"""Cells of a CSV label column read as "no label" (pandas' defaults, which text cells do not get)."""


def _plain_json_column(ds: datasets.Dataset, column: str) -> datasets.Dataset:
    """A JSON Lines column whose rows mix kinds (a list in one row, a string in another) comes as
    Arrow's JSON type, each cell its JSON text. Give it the form a CSV column of the same labels
    has (a list stays a JSON list, a string becomes itself), so one rule reads both."""
    import pyarrow as pa

    if column not in ds.column_names or getattr(ds.data.column(column).type, "extension_name", "") != "arrow.json":
        return ds
    from datasets import Dataset

    cells = _json_cells(ds.data.column(column))
    plain = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in cells], type=pa.string())
    table = ds.data.table
    return Dataset(table.set_column(table.column_names.index(column), column, plain))


def _json_cells(column) -> list:
    """The values of a column of Arrow's JSON type (each cell stored as its JSON text)."""
    return [None if text is None else json.loads(text) for chunk in column.chunks for text in chunk.storage.to_pylist()]


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


def check_columns(data: DataConfig, raw: dict[str, datasets.Dataset], labels_optional: bool = False) -> None:
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
                problems += _text_problems(ds.data.column(col), col, where)
    if problems:
        raise FtcliError("\n".join(problems))


def _text_problems(column, name: str, where: str) -> list[str]:
    """What is wrong with a text column: not text, or rows without text (missing, or only white
    space, which tokenizes to nothing). Numbers are refused rather than turned into text: a JSON
    or Parquet file that stores a column as numbers more likely names the wrong column (an id)
    than a text; CSV cells are read as the text written, so there it cannot happen."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):  # e.g. a pandas category written to Parquet
        column = pa.chunked_array([c.dictionary_decode() for c in column.chunks], type=column.type.value_type)
    if pa.types.is_null(column.type):  # no row has a value
        column = pa.chunked_array([pa.nulls(len(c), pa.string()) for c in column.chunks], type=pa.string())
    kind = column.type
    if getattr(kind, "extension_name", "") == "arrow.json":  # JSON Lines rows of mixed kinds
        cells = _json_cells(column)
        odd = pa.array([v is not None and not isinstance(v, str) for v in cells])
        return labels.row_lines(odd, lambda row: (
            f"{where}: row {row + 1}: column {name!r} holds {shorten(cells[row])}, not a text; write it as a "
            "string (in quotes) or fix data.text_columns"))
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        shown = "numbers" if pa.types.is_integer(kind) or pa.types.is_floating(kind) else f"values of type {kind}"
        return [f"{where}: column {name!r} holds {shown}, not texts; fix data.text_columns, or write the texts as "
                "strings (in quotes)"]
    column = column.combine_chunks()
    # booleans only (no trimmed copy of the texts: a million rows' worth of memory)
    empty = pc.fill_null(pc.or_(pc.equal(pc.utf8_length(column), 0), pc.utf8_is_space(column)), True)
    return labels.row_lines(empty, lambda row: (
        f"{where}: row {row + 1}: column {name!r} is empty; fill in or drop the row"))


def build(cfg: Config, parts: dict[str, Any], key: str, tmp: Path, raw, labels_optional: bool,
          progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Tokenize every split of the raw data into `tmp/dataset/<split>.arrow` and write
    `tmp/manifest.json`; return the manifest. The caller (ftcli.cache) owns `tmp` and publishes it.
    `progress`: `Reporter.progress`, for a display while a large split is tokenized."""
    import datasets as hfds
    import pyarrow as pa

    from ftcli.modeling import load_tokenizer

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
    encoder = encoding.Encoder(tokenizer, data, parts["settings"]["max_length"])
    if multi:  # a 0/1 row over the labels
        label_feature = hfds.List(hfds.Value("float32"), length=len(names))
    else:
        label_feature = hfds.Value("float32" if model.is_regression else "int64")
    schema = encoding.features(encoder.keep, label_feature).arrow_schema
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
        splits[split] = {
            "rows": done.rows,
            "labeled": labelled,
            "tokens": done.tokens,
            "max_tokens": done.max_tokens,
            "truncated": done.truncated,
            "source": sources[split],
            "classes": class_counts(split_ids, names) if labelled and names else None,
            # multi-label rows whose label set is empty (data.allow_empty_labels)
            "no_label": no_label_rows(split_ids) if labelled and multi else None,
        }
    del raw
    shutil.rmtree(tmp / "raw", ignore_errors=True)
    from importlib.metadata import version

    manifest = {
        "key": key,
        "parts": parts,
        "label_names": names,
        "problem_type": "regression" if model.is_regression else "multi_label" if multi else "single_label",
        "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        "max_length": encoder.max_length,
        "model_input_names": encoder.keep,
        "splits": splits,
        "holdout": holdout,
        "checksums": checksums(tmp, "dataset"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ftcli": version("ftcli") if _installed("ftcli") else "dev",
    }
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def split_texts(cfg: Config, split: str, names: list[str], multi: bool) -> tuple[dict[str, list], list[int]]:
    """The texts of a prepared split's rows, read again from the raw data (the cache keeps only
    token ids), and each row's index in its source file. A held-out split is held out again the
    same way (`hold_out` is deterministic), so row i here is row i of the prepared split."""
    import tempfile

    data = cfg.data
    held = data.holdout is not None and split in (data.train_split, data.validation_name)
    origin = data.train_split if held else split
    with tempfile.TemporaryDirectory(prefix="ftcli-texts-") as tmp:
        with quiet_datasets():
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
