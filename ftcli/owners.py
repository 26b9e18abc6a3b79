"""Who owns a leftover (a half-built cache folder, a running sweep trial): the host and process
that made it, and whether that process is gone.

A process is identified by its id and its start time (Linux's /proc), so an id the system
reused for a new process does not count as the old owner still running.
"""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # the command name (field 2) may hold spaces and parentheses: split after its last ')'
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict[str, str | int | None]:
    """The identity to record with something this process owns."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def gone(owner: dict) -> bool:
    """Whether the owner recorded by `this_process()` has certainly exited: it ran on this host and
    its process id is free, or now belongs to a process started at another time. An owner on
    another host is never judged gone from here."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    pid = owner["pid"]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    started = owner.get("started")
    return started is not None and _start_time(pid) not in (None, started)
