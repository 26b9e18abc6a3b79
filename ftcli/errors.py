"""Exceptions that the CLI turns into exit codes.

Library code raises these; only `ftcli.cli` decides how they are printed and which code the
process exits with. Kept free of heavy imports: config errors must not import torch.
"""

from __future__ import annotations

# Documented exit codes (README "Exit codes"); 0 is success.
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_QUALITY_GATE = 3  # `ftcli eval --require`: a metric missed its threshold; an export failed its parity check
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def shorten(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters with its full length said: an error quotes what
    the user gave, and a 10 MB value must not become a 10 MB message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit - 3]}... ({len(text):,} characters)"


class FtcliError(Exception):
    """Bad input the user can fix (config, data, paths, checkpoints).

    The message is complete on its own: it names the file, field or row and says how to fix it.
    The CLI prints it without a traceback and exits with code 2. A message may hold several lines
    when several problems were found at once (one problem per line).
    """

    exit_code = EXIT_BAD_INPUT
    main_process: bool | None = None
    """Set when raised while an Accelerator was up: whether this is the main process (the one
    that reports it). None: raised before; every process of a launch meets the same error."""


class CheckFailed(FtcliError):
    """An output ftcli made failed the check it must pass before it is kept (the ONNX export's
    parity with PyTorch): one line with the figure, exit code 3, nothing written."""

    exit_code = EXIT_QUALITY_GATE


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a checkpoint was written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is "no space left on device". Libraries
    wrap it: datasets in its own error, torch's checkpoint writer in a RuntimeError whose text only
    says `file write failed`."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(where, instead: str = "") -> FtcliError:
    """The one line for a full disk: where ftcli was writing, and what to do (`instead`: the
    setting that moves the writes elsewhere)."""
    return FtcliError(f"no space left on the disk holding {where}: free some space"
                      + (f", or {instead}" if instead else ""))


def first_line(exc: BaseException) -> str:
    """A library exception's first line (at most 300 characters), for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
