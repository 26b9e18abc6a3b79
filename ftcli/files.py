"""Writing and checking files: atomic writes, sha256, folder checksums.

Shared by the data cache and checkpoints, which both publish a folder only when complete and
verify it, file by file, before they trust it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from ftcli.errors import FtcliError, shorten


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path beside `path` to write; renamed to `path` when the block succeeds, removed
    when it fails. Readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` through a temporary file and a rename (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def checksums(folder: Path, under: str | None = None) -> dict[str, list]:
    """`{relative path: [size, sha256]}` for every file below `folder` (or its subfolder `under`)."""
    root = folder / under if under else folder
    return {str(p.relative_to(folder)): [p.stat().st_size, sha256_file(p)]
            for p in sorted(root.rglob("*")) if p.is_file()}


def verify_checksums(folder: Path, expected: dict[str, list]) -> str | None:
    """None when every listed file is present with its size and sha256; otherwise what is wrong."""
    for rel, (size, digest) in expected.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} is truncated or altered (size {path.stat().st_size}, expected {size})"
        if sha256_file(path) != digest:
            return f"{rel} does not match its checksum"
    return None


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. a filesystem without directory fsync: the rename is still atomic
    finally:
        os.close(fd)


def shorten_path(path) -> str:
    """A path as quoted in an error: whole unless absurdly long."""
    return shorten(str(path), 300)


def check_output(path: Path, what: str, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, before any work, an output file that cannot be written or would destroy an input:
    it is (a link to) one of `inputs`, is a folder, or has a file where a parent folder must go.
    `what` names the option or setting in the message."""
    shown = shorten_path(path)
    try:
        for source in inputs:
            if path.exists() and source.exists() and os.path.samefile(path, source):
                raise FtcliError(f"{what} {shown} is the input file {shorten_path(source)}: writing it would "
                                 "destroy the input; choose another output")
        if path.is_dir():
            raise FtcliError(f"{what} {shown} is a folder; give a file name inside it")
        _check_parents(path, what, shown)
    except OSError as exc:  # a path the filesystem cannot hold (too long, a loop of links)
        raise FtcliError(f"{what} {shown}: {exc.strerror or exc}; choose another output") from None


def check_output_folder(path: Path, what: str) -> None:
    """Like `check_output`, for a folder that ftcli creates or writes into."""
    shown = shorten_path(path)
    try:
        if path.exists() and not path.is_dir():
            raise FtcliError(f"{what} {shown} is a file, not a folder; choose another folder")
        _check_parents(path / "_", what, shown)
    except OSError as exc:
        raise FtcliError(f"{what} {shown}: {exc.strerror or exc}; choose another folder") from None


def _check_parents(path: Path, what: str, shown: str) -> None:
    """The nearest existing parent of `path` is a writable folder (the rest will be created)."""
    for parent in path.parents:  # as given (relative ones end at '.')
        if parent.exists():
            if not parent.is_dir():
                raise FtcliError(f"{what} {shown}: {shorten_path(parent)} is a file, not a folder; "
                                 "choose another place")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise FtcliError(f"{what} {shown}: folder {shorten_path(parent)} is not writable; "
                                 "choose another place")
            return


def replace_folder(tmp: Path, folder: Path) -> None:
    """Put the finished folder `tmp` where `folder` is (or is not yet): a folder already there is
    moved aside first and removed only once the new one is in place, so a reader finds the old
    folder or the new one, never half of either."""
    import os
    import shutil

    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
