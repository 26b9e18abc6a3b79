"""SIGINT/SIGTERM during training: finish the step, write a checkpoint, exit 130/143.

The handlers are installed for the loop only and the previous ones restored after it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopFlag:
    """SIGINT/SIGTERM: finish the current step, write a checkpoint, exit 130/143. A second
    SIGINT stops at once (KeyboardInterrupt). Processes agree on stopping at the same step."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def agreed(self, acc, due: bool) -> bool:
        """Whether any process was signalled. One process reads its own flag at every step. Several
        agree only where `due` (the same steps on every process: the log cadence, checkpoints and
        the last step) with one tiny all-reduce, since reading its result is a host-device sync
        that would stall a GPU's queue at every step; a signal is acted on at the next such step."""
        if acc.num_processes == 1:
            return self.signum is not None
        if not due:
            return False
        import torch

        code = torch.tensor([float(self.signum or 0)], device=acc.device)
        code = acc.reduce(code, reduction="sum")
        if code.item() and self.signum is None:
            self.signum = signal.SIGTERM
        return bool(code.item())
