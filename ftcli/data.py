"""Data: load raw splits, check them, tokenize, cache by content fingerprint, batch.

The prepared dataset lives in `<data.cache_dir>/<name>-<key>/`, where `key` hashes everything
that decides its bytes: the data (file contents, or the Hub dataset revision), the tokenizer's
files, every preprocessing setting and `CACHE_FORMAT`. `manifest.json` beside it records those
parts, the label names and a checksum of every file, so a later run can tell a hit from a miss,
say why it missed, and notice a corrupt cache.

A cache hit costs no import of datasets or transformers: the fingerprint is computed from files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ftcli.config import DATA_FORMATS, Config, DataConfig, resolve_model_path
from ftcli.errors import FtcliError

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import torch

CACHE_FORMAT = 1
"""Bump when the layout or contents of a prepared dataset change: every old cache then misses."""

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model", "chat_template.jinja",
)
"""Files that decide how text is tokenized (hashed into the cache key)."""

UNLABELED = -1
"""Label id of rows without a label (e.g. GLUE test splits, where the label is hidden as -1)."""


# --------------------------------------------------------------------------------------------
# Fingerprint


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tokenizer_folder(cfg: Config) -> Path:
    """A local folder holding the tokenizer's files (downloaded from the Hub when needed)."""
    name = resolve_model_path(cfg.model.tokenizer_name)
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if _looks_like_path(name):
        raise FtcliError(
            f"model.{'tokenizer' if cfg.model.tokenizer else 'name_or_path'}: folder {name!r} does not exist; "
            "fix the path or give a Hub model id"
        )
    return hub_tokenizer_snapshot(name, cfg.model.revision)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def hub_tokenizer_snapshot(repo_id: str, revision: str | None) -> Path:
    """Download (or find in the local Hub cache) the tokenizer files of a Hub model. A seam: tests
    patch it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=list(TOKENIZER_FILES) + ["config.json"])
        )
    except Exception as exc:  # noqa: BLE001 - any Hub failure is reported the same way
        raise FtcliError(
            f"model {repo_id!r}: cannot fetch its tokenizer from the Hugging Face Hub "
            f"({type(exc).__name__}); check the id and your network, or point model.name_or_path at a local folder"
        ) from None


def tokenizer_fingerprint(folder: Path) -> dict[str, str]:
    files = {n: sha256_file(folder / n) for n in TOKENIZER_FILES if (folder / n).is_file()}
    if not files:
        raise FtcliError(f"model folder {str(folder)!r} holds no tokenizer files (tokenizer.json, vocab.txt, ...)")
    return files


class _HashMemo:
    """Remembers file hashes by (size, mtime, inode), as git's index does, so a cache hit on a large
    data file does not re-read it. Stored in the cache folder; a missing or stale memo only costs
    a re-hash."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / "file-hashes.json"
        try:
            self.memo = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.memo = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        st = file.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        key = str(file.resolve())
        hit = self.memo.get(key)
        if hit and hit[0] == stamp:
            return hit[1]
        digest = sha256_file(file)
        self.memo[key] = [stamp, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, json.dumps(self.memo))
            except OSError:
                pass


def _data_fingerprint(data: DataConfig, memo: _HashMemo) -> dict[str, Any]:
    if data.files is not None:
        out = {}
        for split, file in data.files.items():
            path = Path(file)
            if not path.is_file():
                raise FtcliError(
                    f"data.files.{split}: file {file!r} not found (paths are relative to {os.getcwd()}); fix the path"
                )
            try:
                out[split] = {"file": file, "sha256": memo.sha256(path)}
            except OSError as exc:
                raise FtcliError(f"data.files.{split}: cannot read {file!r} ({exc.strerror})") from None
        return {"files": out}
    return {"hub": {"path": data.path, "name": data.name, "revision": hub_dataset_revision(data)}}


def hub_dataset_revision(data: DataConfig) -> str:
    """The commit a Hub dataset reference resolves to (a seam: tests patch it). Offline, a pinned
    40-character revision is trusted as is; otherwise the revision name stands in for it and the
    cache key also carries the loaded data's own fingerprint."""
    rev = data.revision or "main"
    if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev):
        return rev
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(data.path, revision=data.revision).sha or rev
    except Exception:  # noqa: BLE001 - offline or unreachable: fall back to the name
        return f"unresolved:{rev}"


def fingerprint(cfg: Config, memo: _HashMemo | None = None) -> dict[str, Any]:
    """Every input that decides the prepared dataset's bytes."""
    from importlib.metadata import version

    memo = memo or _HashMemo(Path(cfg.data.cache_dir))
    d = cfg.data
    folder = _tokenizer_folder(cfg)
    return {
        "format": CACHE_FORMAT,
        "data": _data_fingerprint(d, memo),
        "tokenizer": tokenizer_fingerprint(folder),
        "settings": {
            "text_columns": d.text_columns,
            "label_column": d.label_column,
            # Resolved, so that a run's saved config (which spells the value out) keys the same cache.
            "max_length": d.max_length or tokenizer_max_length(folder),
            "labels": cfg.model.labels,
            "num_labels": cfg.model.num_labels,
            "tokenizers": version("tokenizers"),
        },
    }


def tokenizer_max_length(folder: Path) -> int:
    """The tokenizer's own limit, capped at 512 (BERT's position embeddings): `model_max_length`
    from tokenizer_config.json, read as a file so a cache hit imports no transformers."""
    try:
        limit = json.loads((folder / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError):
        limit = None
    return min(int(limit), 512) if isinstance(limit, (int, float)) and limit > 0 else 512


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The prepared dataset


@dataclass
class Prepared:
    """A tokenized dataset on disk, described by its manifest."""

    path: Path
    manifest: dict[str, Any]
    hit: bool = False
    why_missed: str | None = None
    seconds: float = 0.0
    _splits: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label_names(self) -> list[str]:
        return self.manifest["label_names"]

    @property
    def is_regression(self) -> bool:
        return self.manifest["label_names"] == []

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def pad_token_id(self) -> int:
        return self.manifest["pad_token_id"]

    @property
    def max_length(self) -> int:
        return self.manifest["max_length"]

    def split_info(self, split: str) -> dict[str, Any]:
        splits = self.manifest["splits"]
        if split not in splits:
            raise FtcliError(
                f"split {split!r} is not in the data (available: {', '.join(splits)}); "
                "fix data.train_split / data.validation_split / eval.split, or add it to data.files"
            )
        return splits[split]

    def split(self, split: str) -> datasets.Dataset:
        """The tokenized rows of a split (memory-mapped Arrow, not Python objects)."""
        self.split_info(split)
        if split not in self._splits:
            from datasets import load_from_disk

            self._splits[split] = load_from_disk(str(self.path / "dataset" / split))
        return self._splits[split]


def prepare(cfg: Config, *, log=print, labels_optional: bool = False) -> Prepared:
    """Return the prepared dataset for `cfg`, building it when the cache has no valid copy.
    `labels_optional`: splits without the label column are unlabelled rather than an error
    (prediction inputs)."""
    start = time.perf_counter()
    cache_dir = Path(cfg.data.cache_dir)
    memo = _HashMemo(cache_dir)
    parts = fingerprint(cfg, memo)
    memo.save()
    raw = None
    if parts["data"].get("hub", {}).get("revision", "").startswith("unresolved:"):
        # Offline with a branch name: the loaded data's own fingerprint stands in for the commit.
        raw = load_raw(cfg.data)
        parts["data"]["hub"]["loaded"] = {s: ds._fingerprint for s, ds in raw.items()}
    key = _key(parts)
    folder = cache_dir / f"{_slug(cfg)}-{key}"
    if verify_cache(folder) is None:  # a hit needs no lock: a published cache is never modified
        manifest = json.loads((folder / "manifest.json").read_text())
        return Prepared(folder, manifest, hit=True, seconds=time.perf_counter() - start)
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    # One builder per key, whether the others are processes of one `accelerate launch` or
    # separate commands: they wait here, then find the finished cache.
    with FileLock(str(cache_dir / f".{key}.lock")):
        problem = verify_cache(folder)
        if problem is None:
            manifest = json.loads((folder / "manifest.json").read_text())
            return Prepared(folder, manifest, hit=True, seconds=time.perf_counter() - start)
        if problem != "missing":
            log(f"cache {folder} is damaged ({problem}); rebuilding it")
            why = "the cached copy was damaged"
        else:
            why = _why_missed(cache_dir, parts)
        manifest = _build(cfg, parts, key, folder, raw, labels_optional)
    return Prepared(folder, manifest, hit=False, why_missed=why, seconds=time.perf_counter() - start)


def _slug(cfg: Config) -> str:
    d = cfg.data
    if d.path:
        base = "-".join(p for p in (d.path.split("/")[-1], d.name) if p)
    else:
        first = next(iter(d.files.values()))
        base = Path(first).parent.name or Path(first).stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:40] or "data"


def verify_cache(folder: Path) -> str | None:
    """None when `folder` holds a complete, intact prepared dataset; otherwise what is wrong."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
        checksums = manifest["checksums"]
    except (OSError, ValueError, KeyError):
        return "manifest.json is unreadable"
    for rel, (size, digest) in checksums.items():
        file = folder / rel
        if not file.is_file():
            return f"{rel} is missing"
        if file.stat().st_size != size or sha256_file(file) != digest:
            return f"{rel} does not match its checksum"
    return None


def _why_missed(cache_dir: Path, parts: dict[str, Any]) -> str:
    """Name what changed against the closest earlier prepared dataset, for the user."""
    best: tuple[int, list[str]] | None = None
    for manifest_path in cache_dir.glob("*/manifest.json"):
        try:
            old = json.loads(manifest_path.read_text())["parts"]
        except (OSError, ValueError, KeyError):
            continue
        changed = []
        for section in ("format", "data", "tokenizer"):
            if old.get(section) != parts[section]:
                changed.append({"format": "cache format", "data": "data", "tokenizer": "tokenizer"}[section])
        for name, value in parts["settings"].items():
            if old.get("settings", {}).get(name) != value:
                changed.append(name)
        if best is None or len(changed) < best[0]:
            best = (len(changed), changed)
    if best is None:
        return "first build"
    return "changed: " + ", ".join(best[1]) if best[1] else "rebuilt"


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` through a temporary file and a rename: readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Building


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
    from datasets import load_dataset
    from datasets.utils import logging as ds_logging

    # datasets logs a full traceback when a file fails to parse; ftcli reports it in one line.
    ds_logging.set_verbosity(ds_logging.CRITICAL)
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
        if split not in data.files:
            raise FtcliError(
                f"split {split!r} is not in data.files (available: {', '.join(data.files)}); "
                f"add it to data.files or fix the split name"
            )


def _split_label(data: DataConfig, split: str) -> str:
    return data.files[split] if data.files else f"{data.path}{'/' + data.name if data.name else ''} split {split!r}"


def _check_columns(data: DataConfig, raw: dict[str, datasets.Dataset], labels_optional: bool = False) -> None:
    problems = []
    for split, ds in raw.items():
        where = _split_label(data, split)
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

                    problems += _row_lines(pc.is_null(column).combine_chunks(), lambda row: (
                        f"{where}: row {row + 1}: column {col!r} is empty; fill in or drop the row"))
    if problems:
        raise FtcliError("\n".join(problems))


def _label_names(cfg: Config, raw: dict[str, datasets.Dataset]) -> list[str]:
    """Label names in id order; [] for regression."""
    if cfg.model.is_regression:
        return []
    if cfg.model.labels:
        return list(cfg.model.labels)
    data = cfg.data
    train = raw.get(data.train_split) or next(iter(raw.values()))
    feature = train.features[data.label_column]
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    values = [v for v in train.unique(data.label_column) if v is not None and v != UNLABELED]
    if all(isinstance(v, str) for v in values):
        names = sorted(values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if sorted(values) != list(range(len(values))) and not (cfg.model.num_labels and max(values) < cfg.model.num_labels):
            raise FtcliError(
                f"{_split_label(data, data.train_split)}: integer labels {sorted(values)[:10]} are not 0..K-1; "
                "declare them with model.labels"
            )
        names = [str(i) for i in range(cfg.model.num_labels or len(values))]
    else:
        raise FtcliError(
            f"{_split_label(data, data.train_split)}: column {data.label_column!r} mixes or has non-label values "
            "(expected names or integer ids); declare model.labels or num_labels: 1 for regression"
        )
    if cfg.model.num_labels is not None and len(names) != cfg.model.num_labels:
        raise FtcliError(
            f"{_split_label(data, data.train_split)}: found {len(names)} labels {names[:10]} but model.num_labels is "
            f"{cfg.model.num_labels}; fix num_labels or list them in model.labels"
        )
    if len(names) < 2:
        raise FtcliError(
            f"{_split_label(data, data.train_split)}: only one label value ({names}) in {data.label_column!r}; "
            "a classifier needs at least two"
        )
    return names


def _label_ids(cfg: Config, ds: datasets.Dataset, split: str, names: list[str]) -> tuple[Any, bool]:
    import pyarrow as pa

    if cfg.data.label_column not in ds.column_names:  # a prediction input without labels
        fill = float("nan") if cfg.model.is_regression else UNLABELED
        return pa.array([fill] * ds.num_rows, type=pa.float32() if cfg.model.is_regression else pa.int64()), False
    return _label_ids_from_column(cfg, ds, split, names)


def _label_ids_from_column(cfg: Config, ds: datasets.Dataset, split: str, names: list[str]) -> tuple[Any, bool]:
    """The label column as ids (an Arrow array), and whether the split is labelled.

    A split whose labels are all missing (null or -1, as in GLUE test sets) is unlabelled: fine for
    `predict`, refused by `eval`. A split with some labels missing is an error naming the row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    data = cfg.data
    where = _split_label(data, split)
    col = ds.data.column(data.label_column).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if cfg.model.is_regression:
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise FtcliError(f"{where}: column {data.label_column!r} must hold numbers for regression (num_labels: 1)")
        missing = pc.is_null(col)
        ids = pc.cast(col, pa.float32())
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        lookup = pa.array(names, type=pa.string())
        ids = pc.index_in(pc.cast(col, pa.string()), value_set=lookup)
        missing = pc.or_(pc.is_null(col), pc.equal(col, ""))
        bad = pc.and_(pc.is_null(ids), pc.invert(missing))
        _raise_for_rows(bad, lambda row: f"{where}: row {row + 1}: label {col[row].as_py()!r} is not one of the "
                                         f"labels {names}; fix the row or the label list in model.labels")
        ids = pc.fill_null(ids, UNLABELED)
    elif pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int64())
        missing = pc.or_kleene(pc.is_null(col), pc.equal(col, UNLABELED))
        missing = pc.fill_null(missing, True)
        bad = pc.and_(pc.invert(missing), pc.or_(pc.less(col, 0), pc.greater_equal(col, len(names))))
        _raise_for_rows(bad, lambda row: f"{where}: row {row + 1}: label {col[row].as_py()} is not a label id "
                                         f"0..{len(names) - 1} (labels: {names}); fix the row or model.labels")
        ids = pc.fill_null(col, UNLABELED)
    else:
        raise FtcliError(
            f"{where}: column {data.label_column!r} has type {col.type}; labels must be names or integer ids"
        )
    n_missing = pc.sum(pc.cast(missing, pa.int64())).as_py() or 0
    if 0 < n_missing < len(col):
        _raise_for_rows(missing, lambda row: f"{where}: row {row + 1}: label is missing while other rows have one; "
                                             "label every row or none")
    if cfg.model.is_regression and n_missing == 0:
        _raise_for_rows(pc.is_nan(ids), lambda row: f"{where}: row {row + 1}: label is NaN; fix the row")
    return ids, n_missing == 0


MAX_ROW_ERRORS = 10
"""Bad rows reported one per line; beyond this many, a count of the rest."""


def _bad_rows(mask) -> tuple[list[int], int]:
    """The first MAX_ROW_ERRORS row indices where the Arrow boolean `mask` is true, and how many in all."""
    import numpy as np

    flags = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
    rows = np.flatnonzero(flags)
    return rows[:MAX_ROW_ERRORS].tolist(), len(rows)


def _raise_for_rows(mask, describe) -> None:
    """One error line per bad row (up to MAX_ROW_ERRORS, then a count of the others)."""
    lines = _row_lines(mask, describe)
    if lines:
        raise FtcliError("\n".join(lines))


def _row_lines(mask, describe) -> list[str]:
    rows, total = _bad_rows(mask)
    lines = [describe(row) for row in rows]
    if total > len(rows):
        lines.append(f"... and {total - len(rows)} more rows like these")
    return lines


def _build(cfg: Config, parts: dict[str, Any], key: str, folder: Path, raw, labels_optional: bool) -> dict[str, Any]:
    import datasets as hfds

    hfds.disable_progress_bars()
    data = cfg.data
    cache_dir = Path(data.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        raw = raw if raw is not None else load_raw(data, tmp / "raw")
        _check_columns(data, raw, labels_optional)
        names = _label_names(cfg, raw)
        from ftcli.modeling import load_tokenizer

        tokenizer = load_tokenizer(cfg)
        max_length = parts["settings"]["max_length"]
        splits = {}
        for split, ds in raw.items():
            ids, labelled = _label_ids(cfg, ds, split, names)
            tokenized = _tokenize(ds, tokenizer, data, max_length, tmp / f"map-{split}.arrow")
            tokenized = tokenized.add_column(
                "labels", ids.to_numpy(zero_copy_only=False),
                feature=hfds.Value("float32" if cfg.model.is_regression else "int64"),
            )
            tokenized.save_to_disk(str(tmp / "dataset" / split))
            lengths = tokenized.data.column("length")
            import pyarrow.compute as pc

            splits[split] = {
                "rows": tokenized.num_rows,
                "labeled": labelled,
                "tokens": int(pc.sum(lengths).as_py()),
                "max_tokens": int(pc.max(lengths).as_py()),
                "truncated": int(pc.sum(pc.cast(pc.greater_equal(lengths, max_length), "int64")).as_py()),
                "source": _split_label(data, split),
            }
            del tokenized
        shutil.rmtree(tmp / "raw", ignore_errors=True)
        for f in tmp.glob("map-*"):
            f.unlink()
        checksums = {
            str(p.relative_to(tmp)): [p.stat().st_size, sha256_file(p)]
            for p in sorted((tmp / "dataset").rglob("*")) if p.is_file()
        }
        from importlib.metadata import version

        manifest = {
            "key": key,
            "parts": parts,
            "label_names": names,
            "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
            "max_length": max_length,
            "model_input_names": [c for c in MODEL_COLUMNS if c in tokenizer.model_input_names],
            "splits": splits,
            "checksums": checksums,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ftcli": version("ftcli") if _installed("ftcli") else "dev",
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
        if folder.exists():
            if verify_cache(folder) is None:  # another process finished the same build first
                return json.loads((folder / "manifest.json").read_text())
            stale = folder.with_name(folder.name + f".stale-{os.getpid()}")
            os.replace(folder, stale)  # a damaged copy: move it aside, then publish ours
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, folder)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def _tokenize(ds, tokenizer, data: DataConfig, max_length: int, cache_file: Path):
    cols = data.text_columns
    keep = [c for c in MODEL_COLUMNS if c in tokenizer.model_input_names]

    def encode(batch):
        texts = [batch[c] for c in cols]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        out = {c: enc[c] for c in keep}
        out["length"] = [len(x) for x in enc["input_ids"]]
        return out

    import datasets as hfds

    features = hfds.Features(
        {**{c: hfds.List(hfds.Value("int32" if c == "input_ids" else "int8")) for c in keep},
         "length": hfds.Value("int32")}
    )
    return ds.map(
        encode,
        batched=True,
        batch_size=1000,
        remove_columns=ds.column_names,
        features=features,
        num_proc=data.num_proc,
        cache_file_name=str(cache_file),
        new_fingerprint=cache_file.stem,
        load_from_cache_file=False,
    )


# --------------------------------------------------------------------------------------------
# Batching


class LengthGroupedSampler:
    """Random order in which neighbouring rows have similar lengths.

    Each epoch: a seeded permutation, cut into megabatches of `megabatch_size` rows, each sorted
    by length (longest first). Consecutive `global_batch` rows then form a batch with little
    padding, while which rows meet stays random. The order depends only on (seed, epoch, global
    batch), never on the number of processes, so 2 processes x 4 rows see the same global batches
    as 1 process x 8. With `group=False` it is a plain seeded permutation.

    The generator is private: drawing from the global torch RNG here would shift dropout masks
    and break exact resume.
    """

    def __init__(self, lengths, global_batch: int, seed: int, group: bool = True, megabatch_factor: int = 50):
        import numpy as np

        self.lengths = np.asarray(lengths)
        self.global_batch = global_batch
        self.seed = seed
        self.group = group
        self.megabatch_size = global_batch * megabatch_factor
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
    regression: bool = False

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
        return batch


def with_row_ids(ds):
    """Add each row's position as `row_id` (for writing predictions back in input order)."""
    import numpy as np

    return ds.add_column("row_id", np.arange(ds.num_rows, dtype=np.int64))
