"""The prepared-data cache: a content fingerprint, a hit or a miss, and publishing a build.

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
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcli.data.build import build
from ftcli.data.encoding import window_stride
from ftcli.data.manifest import Manifest, SplitStats
from ftcli.data.reading import load_raw
from ftcli.config import Config, DataConfig
from ftcli.errors import FtcliError, disk_full_error, is_disk_full
from ftcli.files import atomic_write_text, sha256_file, verify_checksums
from ftcli.data.sources import TOKENIZER_FILES, model_config_json, position_limit, tokenizer_folder

if TYPE_CHECKING:  # pragma: no cover
    import datasets


CACHE_FORMAT = 5
"""Bump when the layout or contents of a prepared dataset change: every old cache then misses.
2: a `truncated` flag per row; class counts and the held-out split in the manifest.
3: one Arrow stream file per split (`dataset/<split>.arrow`) instead of `save_to_disk` shards.
4: the pad token is resolved (tokenizer, model config, EOS) and the manifest says which.
5: `data.long_texts: windows` writes a row per window with its `document`."""


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
    folder = tokenizer_folder(cfg.model)
    model_config = model_config_json(cfg.model)
    max_length = resolved_max_length(cfg, folder, model_config)
    return {
        "format": CACHE_FORMAT,
        "data": _data_fingerprint(d, memo),
        "tokenizer": tokenizer_fingerprint(folder),
        "settings": {
            "text_columns": d.text_columns,
            "label_column": d.label_column,
            # Resolved, so that a run's saved config (which spells the value out) keys the same cache.
            "max_length": max_length,
            "truncation": d.truncation,
            # windows: the overlap (resolved, as max_length) and the cap; None when texts are cut
            "windows": [window_stride(d, max_length), d.max_windows] if d.long_texts == "windows" else None,
            # Which rows are validated on when they are held out of the training split.
            "validation_split": [d.holdout, d.split_seed] if d.holdout is not None else None,
            "labels": cfg.model.labels,
            "problem_type": cfg.model.problem_type,
            "label_separator": d.label_separator,
            "allow_empty_labels": d.allow_empty_labels,
            "num_labels": cfg.model.num_labels,
            "tokenizers": version("tokenizers"),
            # What the pad token falls back to when the tokenizer has none (ftcli.data.pad_token).
            "model_pad": [model_config.get("pad_token_id"), model_config.get("eos_token_id")],
        },
    }


def check_windows(cfg: Config) -> None:
    """`data.long_texts: windows` can be made with this tokenizer and stride (a fast tokenizer; a
    stride that leaves each window new tokens): what `prepare` would refuse, without tokenizing.
    Pairs whose first text leaves no room are found by `prepare`, row by row."""
    from ftcli.data.encoding import Encoder
    from ftcli.data.sources import load_tokenizer

    if cfg.data.long_texts != "windows":
        return
    Encoder(load_tokenizer(cfg.model), cfg.data, resolved_max_length(cfg))


def resolved_max_length(cfg: Config, folder: Path | None = None, model_config: dict | None = None) -> int:
    """`data.max_length`, or its default for the model (`default_max_length`). `folder` and
    `model_config`: the tokenizer folder and config.json when the caller has read them already."""
    if cfg.data.max_length:
        return cfg.data.max_length
    folder = folder if folder is not None else tokenizer_folder(cfg.model)
    return default_max_length(folder, model_config if model_config is not None else model_config_json(cfg.model))


DEFAULT_MAX_LENGTH = 512
"""The longest default `data.max_length`: longer inputs cost quadratic attention time, and most
classification texts fit. A longer one is asked for by setting `data.max_length`."""


def default_max_length(folder: Path, model_config: dict) -> int:
    """`data.max_length` when the config leaves it out: the least of the tokenizer's limit
    (`model_max_length` in tokenizer_config.json), the model's position limit (config.json:
    decoder tokenizers often report an enormous limit that the model cannot take) and
    DEFAULT_MAX_LENGTH. Both read as files, so a cache hit imports no transformers."""
    try:
        limit = json.loads((folder / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError):
        limit = None
    limits = [DEFAULT_MAX_LENGTH, position_limit(model_config) or DEFAULT_MAX_LENGTH]
    if isinstance(limit, (int, float)) and limit > 0:
        limits.append(int(min(limit, 1e9)))
    return min(limits)


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Prepared:
    """A tokenized dataset on disk, described by its manifest."""

    path: Path
    manifest: Manifest
    hit: bool = False
    why_missed: str | None = None
    seconds: float = 0.0
    _splits: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label_names(self) -> list[str]:
        return self.manifest.label_names

    @property
    def is_regression(self) -> bool:
        return self.manifest.label_names == []

    @property
    def is_multi_label(self) -> bool:
        return self.manifest.problem_type == "multi_label"

    @property
    def pad_token_id(self) -> int:
        return self.manifest.pad_token_id

    @property
    def pad_token_source(self) -> str:
        return self.manifest.pad_token_source

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def split_info(self, split: str) -> SplitStats:
        splits = self.manifest.splits
        if split not in splits:
            raise FtcliError(
                f"split {split!r} is not in the data (available: {', '.join(splits)}); "
                "fix data.train_split / data.validation_split / eval.split, or add it to data.files"
            )
        return splits[split]

    @property
    def windowed(self) -> bool:
        """Rows are windows of documents (`data.long_texts: windows`), each with its `document`."""
        return self.manifest.windowed

    def describe(self, split: str) -> str:
        """One line on a split: rows (with windows: documents and their windows), tokens, rows cut at
        max_length (or documents cut by max_windows), classes."""
        i = self.split_info(split)
        docs = i.docs
        if self.windowed:
            line = (f"{split}: {docs:,} documents in {i.rows:,} windows (mean {i.mean_windows or 0:.2f}, "
                    f"most {i.most_windows}), {i.tokens:,} tokens")
            if i.truncated:
                line += (f", {i.truncated:,} documents cut at max_windows {self.manifest.max_windows} "
                         f"({i.truncated / docs:.1%})")
        else:
            line = f"{split}: {i.rows:,} rows, {i.tokens:,} tokens (longest {i.max_tokens})"
            if i.truncated:
                line += f", {i.truncated:,} cut at max_length {self.max_length} ({i.truncated / i.rows:.1%})"
        if not i.labeled:
            return line + ", unlabelled"
        rows = "documents" if self.windowed else "rows"
        if i.classes:
            line += "; classes: " + ", ".join(f"{name} {n:,} ({n / docs:.0%})" for name, n in i.classes.items())
        if i.no_label is not None:  # multi-label
            line += f"; {i.no_label:,} {rows} ({i.no_label / docs:.0%}) with no label"
        return line

    def summary(self, validation: str) -> dict[str, Any]:
        """What `ftcli prepare --json` prints: hit or built (and why), where, the labels, and each
        split's rows, tokens, cut rows, classes and rows with no label; with windows, each split's
        documents, mean and most windows per document, and `truncated` counts the documents
        `max_windows` cut."""
        splits = self.manifest.splits
        windows = None
        if self.windowed:
            windows = {"stride": self.manifest.stride, "max_windows": self.manifest.max_windows,
                       "max_length": self.max_length}

        def split_summary(i: SplitStats) -> dict[str, Any]:
            out = {k: getattr(i, k) for k in ("rows", "labeled", "tokens", "max_tokens", "truncated", "classes",
                                              "no_label")}
            if self.windowed:
                out.update(documents=i.docs, windows=i.rows, mean_windows=round(i.mean_windows or 0, 4),
                           most_windows=i.most_windows)
            return out

        return {
            "cache": "hit" if self.hit else "built",  # as train's summary says it
            "why": self.why_missed,
            "path": str(self.path),
            "key": self.manifest.key,
            "labels": self.label_names,
            "seconds": round(self.seconds, 3),
            "long_texts": self.manifest.long_texts,
            **({"windows": windows} if windows else {}),
            "splits": {s: split_summary(i) for s, i in splits.items()},
            "holdout": self.manifest.holdout,
            "absent_from_validation": self.absent_classes(validation),
        }

    def report_lines(self) -> list[str]:
        """What `ftcli prepare` prints for people: hit or tokenized (and why), then a line a split."""
        state = "cache hit" if self.hit else f"tokenized ({self.why_missed})"
        return [f"{state} in {self.seconds:.2f}s: {self.path}",
                *(f"  {self.describe(split)}" for split in self.manifest.splits)]

    def absent_classes(self, split: str) -> list[str]:
        """Labels with no row in a labelled split (their recall cannot be measured there)."""
        stats = self.manifest.splits.get(split)
        classes = stats.classes if stats is not None and stats.classes else {}
        return [name for name, n in classes.items() if n == 0]

    def absence_warning(self, split: str) -> str | None:
        """The one-line warning `prepare` and `train` give when labels have no rows in `split`."""
        absent = self.absent_classes(split)
        return f"no {split} rows of class(es) {', '.join(absent)}: their recall and F1 are not measured" \
            if absent else None

    def split(self, split: str) -> datasets.Dataset:
        """The tokenized rows of a split (memory-mapped Arrow, not Python objects)."""
        self.split_info(split)
        if split not in self._splits:
            from datasets import Dataset

            self._splits[split] = Dataset.from_file(str(self.path / "dataset" / f"{split}.arrow"))
        return self._splits[split]


def prepare(cfg: Config, *, log=print, labels_optional: bool = False, progress=None) -> Prepared:
    """Return the prepared dataset for `cfg`, building it when the cache has no valid copy.
    `labels_optional`: splits without the label column are unlabelled rather than an error
    (prediction inputs). `progress`: `Reporter.progress`, to show a large split's tokenization."""
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
    folder = cache_dir / f"{_slug(cfg.data)}-{key}"
    if verify_cache(folder) is None:  # a hit needs no lock: a published cache is never modified
        return Prepared(folder, Manifest.read(folder / "manifest.json"), hit=True, seconds=time.perf_counter() - start)
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    # One builder per key, whether the others are processes of one `accelerate launch` or
    # separate commands: they wait here, then find the finished cache.
    with FileLock(str(cache_dir / f".{key}.lock")):
        problem = verify_cache(folder)
        if problem is None:
            return Prepared(folder, Manifest.read(folder / "manifest.json"), hit=True,
                            seconds=time.perf_counter() - start)
        if problem != "missing":
            log(f"cache {folder} is damaged ({problem}); rebuilding it")
            why = "the cached copy was damaged"
        else:
            why = _why_missed(cache_dir, parts)
        for leftover in remove_orphans(cache_dir):
            log(f"removed {leftover}, left by a prepare that was killed")
        tmp = cache_dir / f"{TMP_PREFIX}{key}-{_owner_tag()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            manifest = build(cfg, parts, key, tmp, raw, labels_optional, progress)
            if folder.exists():  # damaged (we hold the lock, so no other builder is publishing)
                stale = folder.with_name(f"{folder.name}.stale-{_owner_tag()}")
                os.replace(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, folder)
        except Exception as exc:
            if is_disk_full(exc):
                raise disk_full_error(f"data.cache_dir {str(cache_dir)!r}",
                                      instead="set data.cache_dir to a folder on another disk") from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Prepared(folder, manifest, hit=False, why_missed=why, seconds=time.perf_counter() - start)


TMP_PREFIX = ".tmp-"
"""A cache folder being built: `.tmp-<key>-<pid>@<host>`, renamed to its final name when complete."""


def _owner_tag() -> str:
    """`<pid>@<host>`, the end of a folder this process builds (read back by `remove_orphans`)."""
    return f"{os.getpid()}@{socket.gethostname()}"


def remove_orphans(cache_dir: Path) -> list[Path]:
    """Delete the half-built folders whose builder process is gone (killed mid-build; they can
    hold gigabytes). Folders of builders still running, or on other hosts, are left alone."""
    from ftcli import owners

    removed = []
    for path in cache_dir.iterdir():
        name = path.name
        if name.startswith(TMP_PREFIX):
            tail = name[len(TMP_PREFIX):].partition("-")[2]  # the key is hex: the first "-" ends it
        elif ".stale-" in name:
            tail = name.rpartition(".stale-")[2]
        else:
            continue
        pid, _, host = tail.partition("@")  # no host: written by a version that did not record it
        if not pid.isdigit() or not path.is_dir():
            continue
        if owners.gone({"host": host or socket.gethostname(), "pid": int(pid)}):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _slug(d: DataConfig) -> str:
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
        expected = json.loads(manifest_path.read_text())["checksums"]
    except (OSError, ValueError, KeyError):
        return "manifest.json is unreadable"
    return verify_checksums(folder, expected)


def _why_missed(cache_dir: Path, parts: dict[str, Any]) -> str:
    """Name what changed against the closest earlier prepared dataset, for the user."""
    best: tuple[int, list[str]] | None = None
    for manifest_path in cache_dir.glob("*/manifest.json"):
        try:
            old = json.loads(manifest_path.read_text())["parts"]
        except (OSError, ValueError, KeyError):
            continue
        if _source(old.get("data")) != _source(parts["data"]):
            continue  # a cache of other data says nothing about this build
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


def _source(data: dict[str, Any] | None) -> Any:
    """Where a fingerprint's data comes from (its files' paths, or the Hub dataset), not its
    contents: an edited file is changed data; another file is another dataset."""
    data = data or {}
    if "files" in data:
        return {split: str(Path(f["file"]).resolve()) for split, f in data["files"].items()}
    hub = data.get("hub") or {}
    return (hub.get("path"), hub.get("name"))
