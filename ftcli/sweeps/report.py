"""What a sweep shows: the live table of trials and `sweep.png` (optimization history and
parameter importances)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ftcli.console import Reporter, format_duration
from ftcli.quiet import quiet
from ftcli.sweeps.study import finished


def plot_study(study, path: Path) -> None:
    """Optimization history (each finished trial's value, and the best so far) and, from two
    completed trials on, parameter importances, drawn on a Figure of ftcli's own: full parameter
    names, no legend over the bars, and no pyplot state touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    from ftcli.plot import save_png

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    importances = {}
    if len(complete) >= 2 and complete[0].params:
        import optuna

        with quiet("warnings"):
            try:
                importances = optuna.importance.get_param_importances(study)
            except (ValueError, RuntimeError):
                importances = {}  # e.g. every trial drew the same value
    metric = study.user_attrs.get("ftcli_search", {}).get("metric", "value")
    names = list(importances)
    width = 6.0 + (max(6.0, 2.5 + 0.09 * max(map(len, names)) + 3.0) if names else 0.0)
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if names else 1, squeeze=False, width_ratios=[6.0, width - 6.0] if names else None)[0]
    history = axes[0]
    numbers, values = [t.number for t in complete], [t.value for t in complete]
    better = max if study.direction.name == "MAXIMIZE" else min
    best, running = [], None
    for v in values:
        running = v if running is None else better(running, v)
        best.append(running)
    history.plot(numbers, values, "o", color="#1f77b4", label="trial")
    history.step(numbers, best, where="post", color="#d62728", label="best so far")
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if pruned:  # at the last value each reported before it was stopped
        shown = [t for t in pruned if t.intermediate_values]
        history.plot([t.number for t in shown], [t.intermediate_values[max(t.intermediate_values)] for t in shown],
                     "x", color="#7f7f7f", label="pruned")
    history.set_xlabel("trial")
    history.set_ylabel(metric)
    history.set_title(f"optimization history ({study.direction.name.lower()} {metric})", fontsize=10)
    history.grid(alpha=0.3)
    history.legend(loc="best", fontsize=8)
    if names:
        bars = axes[1]
        shown = names[::-1]  # the most important on top
        bars.barh(range(len(shown)), [importances[n] for n in shown], color="#1f77b4")
        bars.set_yticks(range(len(shown)), shown, fontsize=9)
        for i, n in enumerate(shown):
            bars.annotate(f"{importances[n]:.2f}", (importances[n], i), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=8)
        bars.set_xlim(0, max(importances.values()) * 1.2 or 1)
        bars.set_xlabel(f"importance for {metric}")
        bars.set_title("parameter importances", fontsize=10)
    save_png(fig, path, dpi=100)


class TrialTable:
    """The trials as they run: a live table at a terminal, one line per event in a pipe."""

    def __init__(self, reporter: Reporter, metric: str, wanted: int):
        self.reporter, self.metric, self.wanted = reporter, metric, wanted
        self.rows: dict[int, dict[str, Any]] = {}
        self.live = None
        self.start_time = time.perf_counter()

    def start(self, study, url: str, retried: list[int]) -> None:
        done = finished(study)
        self.reporter.info(f"sweep {study.study_name!r} ({url}): {self.metric} ({study.direction.name.lower()}), "
                           f"{done}/{self.wanted} trials finished"
                           + (f"; retrying failed trial(s) {', '.join(map(str, retried))}" if retried else ""))
        if self.reporter.enabled and self.reporter.mode == "rich":
            from rich.live import Live

            self.live = Live(self._render(), console=self.reporter._console, refresh_per_second=2, transient=False)
            self.live.__enter__()

    def trial_started(self, number: int, values: dict[str, Any]) -> None:
        self.rows[number] = {"values": values, "state": "running", "step": None, "value": None}
        self._event(f"trial {number} started: {format_values(values)}")

    def trial_progress(self, number: int, step: int, value: float) -> None:
        self.rows[number].update(step=step, value=value)
        self._event(f"trial {number} step {step}: {self.metric} {value:.4f}")

    def trial_finished(self, trial) -> None:
        state = trial.state.name.lower()
        row = self.rows.setdefault(trial.number, {"values": trial.params, "step": None, "value": None})
        row.update(state=state, value=trial.value if trial.value is not None else row["value"])
        shown = f"{self.metric} {row['value']:.4f}" if row["value"] is not None else "no result"
        self._event(f"trial {trial.number} {state}: {shown} after {trial.user_attrs.get('steps', '?')} steps "
                    f"(data: {trial.user_attrs.get('data_cache', '?')}, {trial.user_attrs.get('seconds', '?')}s)")

    def close(self) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def finish(self, summary: dict[str, Any]) -> None:
        for row in summary["trials"]:
            if row["number"] in self.rows:
                self.rows[row["number"]].update(state=row["state"], value=row["value"] or self.rows[row["number"]]["value"])
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(None, None, None)
        best = summary["best"]
        self.reporter.info(
            f"sweep done: {summary['finished']} finished ({summary['pruned']} pruned, {summary['failed']} failed) "
            f"in {format_duration(time.perf_counter() - self.start_time)}"
            + (f"; best trial {best['number']}: {self.metric} {best['value']:.4f} {format_values(best['params'])}; "
               f"train it again with: ftcli train --config {best['config']}" if best else ""))

    def _event(self, line: str) -> None:
        if self.live is not None:
            self.live.update(self._render())
        else:
            self.reporter.info(line)

    def _render(self):
        from rich.table import Table

        table = Table(title=f"trials ({self.metric})", title_justify="left")
        for column in ("trial", "state", "step", self.metric, "values"):
            table.add_column(column)
        for number, row in sorted(self.rows.items()):
            table.add_row(str(number), row["state"], str(row["step"] or ""),
                          f"{row['value']:.4f}" if row["value"] is not None else "", format_values(row["values"]))
        return table


def format_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in values.items())
