"""Output for people: the progress line's rate and ETA."""

from __future__ import annotations

import io

from ftcli.console import Progress, Reporter


def test_a_resumed_run_rates_only_what_this_invocation_did(monkeypatch):
    """Resumed at step 100 of 200 and 10 steps done in 10 s: 1 step/s, so 90 s left (counting the
    100 earlier steps would claim 11 steps/s and an ETA of 8 s)."""
    import ftcli.console as console

    now = [1000.0]
    monkeypatch.setattr(console.time, "perf_counter", lambda: now[0])
    err = io.StringIO()
    bar = Progress(Reporter(mode="plain", err=err), 200, "train", every=10, unit="steps", completed=100)
    now[0] += 10.0
    bar.update(10)
    line = err.getvalue().strip()
    assert line.startswith("train 110/200 steps") and line.endswith("elapsed 10s  eta 1m30s"), line
