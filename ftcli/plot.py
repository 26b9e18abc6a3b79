"""Learning curves from a run's metrics.jsonl: training loss per step, evaluation metrics per
evaluation. Written at the end of `ftcli train`; `ftcli plot RUN_DIR` redraws it at any time,
also while the run is in progress."""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.errors import FtcliError

NOT_PLOTTED = {"type", "time", "step", "epoch", "split", "samples", "windows", "seconds", "loss"}


def read_log(run_dir: Path) -> tuple[list[dict], list[dict]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FtcliError(f"{run_dir}: no metrics.jsonl here; give a train.output_dir of a run that has started")
    train, evals = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line a running training is writing right now
        (train if record.get("type") == "train" else evals if record.get("type") == "eval" else []).append(record)
    if not train and not evals:
        raise FtcliError(f"{path}: no training or evaluation records yet")
    return train, evals


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw `learning_curves.png` (or `output`) for the run in `run_dir`; returns its path."""
    # A Figure with the Agg canvas, not pyplot: no backend switch, no global figure registry, so a
    # notebook's inline plots are left as they were.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    train, evals = read_log(run_dir)
    output = Path(output) if output else run_dir / "learning_curves.png"
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    if train:
        steps = [r["step"] for r in train]
        left.plot(steps, [r["loss"] for r in train], color="#1f77b4", linewidth=1, alpha=0.5, label="train loss")
        smooth, value = [], None
        for r in train:
            value = r["loss"] if value is None else 0.9 * value + 0.1 * r["loss"]
            smooth.append(value)
        left.plot(steps, smooth, color="#1f77b4", linewidth=2, label="train loss (smoothed)")
    if evals and "loss" in evals[0]:
        left.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", color="#d62728", label="validation loss")
    left.set_xlabel("optimizer step")
    left.set_ylabel("loss")
    left.set_title("loss")
    left.grid(alpha=0.3)
    left.legend()

    names = [k for k in (evals[0] if evals else {}) if k not in NOT_PLOTTED and isinstance(evals[0][k], (int, float))]
    for name in names:
        right.plot([e["step"] for e in evals], [e[name] for e in evals], "o-", label=name)
        last = evals[-1]
        right.annotate(f"{last[name]:.3f}", (last["step"], last[name]), textcoords="offset points", xytext=(4, 4))
    right.set_xlabel("optimizer step")
    right.set_title(f"validation ({evals[0].get('split', '')})" if evals else "no evaluation yet")
    right.grid(alpha=0.3)
    if names:
        right.legend()
    fig.suptitle(str(run_dir))
    return save_png(fig, output, dpi=110)


def _tick_label(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "\u2026"


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], output: Path, title: str) -> Path:
    """The confusion matrix: each cell's row count, coloured (and, up to 12 labels, also labelled)
    by its share of the true label's rows, so a class of 2 rows does not look as solid as one of
    120. Predicted labels are slanted so long names do not run together; the figure grows with
    the number of labels and the length of their names, so 30 classes stay readable."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=float)
    k = len(labels)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    names = [_tick_label(n) for n in labels]
    font = 10 if k <= 10 else 8 if k <= 20 else 7
    cell = 0.9 if k <= 6 else 0.55 if k <= 15 else 0.45  # inches per cell: room for "120" and its share
    margin = 0.075 * font / 10 * max(map(len, names), default=1) + 1.0  # tick labels and axis title
    side = cell * k
    fig = Figure(figsize=(side + margin + 1.6, side + margin + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true label's rows")
    ax.set_xticks(range(k), names, rotation=45 if k > 1 else 0, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(k), [f"{n} ({int(r)})" for n, r in zip(names, rows[:, 0])], fontsize=font)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label (rows)")
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                text = f"{int(counts[i, j])}\n{share[i, j]:.0%}" if k <= 12 else f"{int(counts[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=font - 1 if k <= 12 else 6,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    return save_png(fig, Path(output), dpi=100)


def plot_label_confusion(counts: dict[str, dict[str, int]], output: Path, title: str) -> Path:
    """Multi-label data: a 2 x 2 confusion matrix per label (true positives, false positives,
    false negatives, true negatives), each normalized by true value like the single-label picture,
    in a grid of panels; 30 labels stay readable."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(counts)
    columns = min(len(names), 6)
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(2.3 * columns + 1.2, 2.3 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    image = None
    for ax, name in zip(axes, names):
        c = counts[name]
        matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], dtype=float)
        totals = matrix.sum(1, keepdims=True)
        share = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{share[i, j]:.2f}\n({int(matrix[i, j])})", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks([0, 1], ["no", "yes"], fontsize=8)
        ax.set_yticks([0, 1], ["no", "yes"], fontsize=8)
        ax.set_title(name, fontsize=9)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    for ax in axes[::columns]:
        ax.set_ylabel("true", fontsize=8)
    for ax in axes[(rows - 1) * columns:]:
        ax.set_xlabel("predicted", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.6, label="share of the rows with that true value")
    fig.suptitle(title, fontsize=10)
    return save_png(fig, Path(output), dpi=100)


def plot_reliability(before, after, temperature: float, output: Path, title: str) -> Path:
    """The reliability diagram of `ftcli calibrate`: per confidence bin, the share of right
    predictions against the mean confidence, before and after temperature scaling (a calibrated
    model lies on the diagonal), with how many predictions each bin holds below.
    `before`/`after`: (counts, mean confidence, accuracy) per bin (ftcli.evaluation.reliability)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 6.6), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    bins = len(before[0])
    centers = (np.arange(bins) + 0.5) / bins
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for (counts, confidence, accuracy), name, color in ((before, "before (T = 1)", "#d62728"),
                                                        (after, f"after (T = {temperature:.3g})", "#1f77b4")):
        filled = counts > 0
        top.plot(confidence[filled], accuracy[filled], "o-", color=color, label=name)
    top.set_ylabel("share right")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    top.set_title(title, fontsize=10)
    width = 0.4 / bins
    bottom.bar(centers - width / 2, before[0], width=width, color="#d62728", label="before")
    bottom.bar(centers + width / 2, after[0], width=width, color="#1f77b4", label="after")
    bottom.set_xlabel("confidence (predicted probability)")
    bottom.set_ylabel("predictions")
    return save_png(fig, Path(output), dpi=100)


def save_png(fig, output: Path, dpi: int) -> Path:
    """Write the figure to `output` as PNG, atomically: a reader never sees half a PNG."""
    from ftcli.files import atomic_path

    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(output)
