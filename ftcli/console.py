"""Output for people and for scripts.

Progress, log lines and warnings go to stderr; results (tables, `--json`) go to stdout, so
`ftcli eval --json > m.json` captures only the JSON. A live rich display is used when both
streams are terminals; otherwise (CI logs, pipes, files, `--quiet`) output is plain lines.
Only the main process prints: other processes get a silent Reporter.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Iterable


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return "0" if value == 0 else f"{value:.4g}"
    return str(value)


def format_metric(value: Any) -> str:
    """A result as the log lines print it: four decimals (`1.0000`, not `1`); a tiny non-zero
    value in scientific notation rather than as `0.0000`."""
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-4 else f"{value:.4f}"
    return str(value)


class Reporter:
    """What a command tells the user. `mode`: `rich` (live display), `plain` (lines) or `quiet`
    (no progress lines). `enabled=False` (non-main processes) prints nothing at all."""

    def __init__(self, mode: str | None = None, enabled: bool = True, err=None, out=None):
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        if mode is None:
            mode = "rich" if _isatty(self.err) and _isatty(self.out) else "plain"
        self.mode = mode
        self.enabled = enabled
        self._console = None
        if mode == "rich" and enabled:
            from rich.console import Console

            self._console = Console(file=self.err, highlight=False)

    # -- lines ------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.enabled or self.mode == "quiet":
            return
        if self._console is not None:
            self._console.print(message, markup=False)
        else:
            print(message, file=self.err, flush=True)

    def warn(self, message: str) -> None:
        if not self.enabled:
            return
        if self._console is not None:
            self._console.print(f"[yellow]warning:[/yellow] {_escape(message)}")
        else:
            print(f"warning: {message}", file=self.err, flush=True)

    # -- tables -----------------------------------------------------------------------------
    def summary(self, title: str, rows: Iterable[tuple[str, Any]]) -> None:
        """A key/value block (start-up summary) on stderr."""
        if not self.enabled or self.mode == "quiet":
            return
        rows = [(k, format_value(v)) for k, v in rows]
        if self._console is not None:
            from rich.table import Table

            table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
            table.add_column(style="bold cyan")
            table.add_column()
            for k, v in rows:
                table.add_row(k, v)
            self._console.print(table)
        else:
            width = max((len(k) for k, _ in rows), default=0)
            print(title, file=self.err)
            for k, v in rows:
                print(f"  {k:<{width}}  {v}", file=self.err)
            self.err.flush()

    def results(self, title: str, metrics: dict[str, Any], stream=None) -> None:
        """A metrics table on stdout (the result a person came for)."""
        if not self.enabled:
            return
        stream = stream or self.out
        rows = [(k, format_metric(v)) for k, v in metrics.items()]
        if self.mode == "rich" and _isatty(stream):
            from rich.console import Console
            from rich.table import Table

            table = Table()
            table.add_column("metric", style="bold")
            table.add_column("value", justify="right")
            for k, v in rows:
                table.add_row(k, v)
            console = Console(file=stream, highlight=False)
            console.print(title, style="bold", markup=False)  # a table title would wrap to the table's width
            console.print(table)
        else:
            width = max((len(k) for k, _ in rows), default=6)
            print(title, file=stream)
            for k, v in rows:
                print(f"  {k:<{width}}  {v:>10}", file=stream)
            stream.flush()

    def class_table(self, per_class: dict[str, dict[str, Any]], stream=None) -> None:
        """Precision, recall, F1 and support of each label on stdout."""
        if not self.enabled:
            return
        stream = stream or self.out
        columns = ("precision", "recall", "f1", "support")
        if self.mode == "rich" and _isatty(stream):
            from rich.console import Console
            from rich.table import Table

            table = Table()
            table.add_column("label", style="bold")
            for c in columns:
                table.add_column(c, justify="right")
            for name, row in per_class.items():
                table.add_row(name, *(f"{row[c]:.4f}" if c != "support" else f"{row[c]:,}" for c in columns))
            Console(file=stream, highlight=False).print(table)
        else:
            width = max((len(n) for n in per_class), default=5)
            print(f"  {'label':<{width}}  " + "  ".join(f"{c:>9}" for c in columns), file=stream)
            for name, row in per_class.items():
                print(f"  {name:<{width}}  " + "  ".join(f"{row[c]:>9.4f}" if c != "support" else f"{row[c]:>9,}"
                                                       for c in columns), file=stream)
            stream.flush()

    # -- progress ---------------------------------------------------------------------------
    def progress(self, total: int, description: str, *, every: int = 10, unit: str = "steps",
                 min_interval: float = 0.0, completed: int = 0) -> Progress:
        """Plain mode prints a line every `every` updates, but no more often than once per
        `min_interval` seconds, and always at the end. `completed`: where a resumed run starts;
        the rate and ETA count only what this invocation does."""
        return Progress(self, total, description, every=every, unit=unit, min_interval=min_interval,
                        completed=completed)


class Progress:
    """A progress display: a live bar (rich), a line every `every` updates (plain), or nothing
    (quiet / non-main). `fields` (loss, lr, ...) are shown beside it."""

    def __init__(self, reporter: Reporter, total: int, description: str, *, every: int, unit: str,
                 min_interval: float = 0.0, completed: int = 0):
        self.reporter = reporter
        self.total = total
        self.description = description
        self.every = max(1, every)
        self.unit = unit
        self.min_interval = min_interval
        self._last_line = 0.0
        self.done = self.initial = completed
        self.fields: dict[str, Any] = {}
        self.start = time.perf_counter()
        self._bar = None
        self._task = None

    def __enter__(self) -> Progress:
        r = self.reporter
        if r.enabled and r.mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=r._console,
                transient=False,
                refresh_per_second=4,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done, info="")
        return self

    def set_description(self, description: str) -> None:
        self.description = description
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def update(self, advance: int = 1, **fields: Any) -> None:
        self.done += advance
        self.fields.update(fields)
        r = self.reporter
        if not r.enabled or r.mode == "quiet":
            return
        if self._bar is not None:
            info = "  ".join(f"{k} {format_value(v)}" for k, v in self.fields.items())
            self._bar.update(self._task, advance=advance, info=info)
        elif self.done == self.total or (
            self.done % self.every == 0 and time.perf_counter() - self._last_line >= self.min_interval
        ):
            self._last_line = time.perf_counter()
            r.info(self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        info = "  ".join(f"{k} {format_value(v)}" for k, v in self.fields.items())
        return (
            f"{self.description} {self.done}/{self.total} {self.unit}  {info}  "
            f"elapsed {format_duration(elapsed)}  eta {format_duration(eta)}"
        ).replace("   ", "  ")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
