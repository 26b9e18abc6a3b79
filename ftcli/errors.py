"""Exceptions that the CLI turns into exit codes.

Library code raises these; only `ftcli.cli` decides how they are printed and which code the
process exits with. Kept free of heavy imports: config errors must not import torch.
"""

from __future__ import annotations

# Documented exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_QUALITY_GATE = 3  # `ftcli eval --require`: a metric missed its threshold
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


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


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a checkpoint was written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
