"""The figures of reports: accuracy against latency with the Pareto front joined, used by
report.md (pareto.png), the student search (search.png) and `edgekd bench --plot`, and the
training curves of a run (curves.png). matplotlib is optional: without it each function
returns None and the report says so."""

from __future__ import annotations

from pathlib import Path

from edgekd.io.artifacts import atomic_path

# the training stages drawn in curves.png: (stage record, label)
CURVE_STAGES = (("teacher", "teacher"), ("distill", "student"))
CURVE_FIELDS = ("val_top1", "loss", "train_loss")  # per epoch, as edgekd.train.loop records them


def _pyplot():
    """matplotlib.pyplot on the file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def _label(m: dict, varying: tuple[str, ...]) -> str:
    """A point's label: the model's name, and the settings that differ within its panel."""
    short = {"provider": "", "threads": "t"}
    return " ".join([m["name"], *[f"{short[k]}{m.get(k)}" for k in varying]])


def pareto_figure(models: list[dict], *, title: str = "edgekd bench", xlabel: str | None = None):
    """The figure of pareto_plot_models, unsaved: one panel per batch size (latencies of
    different batch sizes are not comparable), side by side; the x-axis starts at 0. None
    without matplotlib or without any entry that has a top-1."""
    plt = _pyplot()
    rows = [m for m in models if m.get("top1") is not None]
    if plt is None or not rows:
        return None
    batches = list(dict.fromkeys(sorted((m.get("batch_size") for m in rows), key=lambda b: (b is None, b))))
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), dpi=120, squeeze=False)
    panels = []
    for ax, batch in zip(axes[0], batches):
        panel = [m for m in rows if m.get("batch_size") == batch]
        varying = tuple(k for k in ("provider", "threads") if len({m.get(k) for m in panel}) > 1)
        points = [(m["latency_ms"]["p50"], m["top1"], _label(m, varying)) for m in panel]
        for latency, top1, _ in points:
            ax.scatter(latency, top1, s=40)
        front = pareto_front(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="gray", linewidth=1, label="Pareto front")
        ax.set_xlabel(xlabel or (f"p50 latency, batch {batch} (ms)" if batch is not None else "p50 latency (ms)"))
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(title if len(batches) == 1 else f"{title}: batch {batch}")
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.25)  # room for the labels
        ax.set_xlim(left=0)  # a latency is never negative
        ax.legend(loc="lower right", fontsize=8)
        panels.append((ax, points))
    fig.tight_layout()  # first: the labels are placed within the axes' final extent
    for ax, points in panels:
        _place_labels(fig, ax, points)
    return fig


def _place_labels(fig, ax, points: list[tuple]) -> None:
    """Annotate each point with its label, trying offsets around it until the label neither
    overlaps one placed before nor leaves the axes (the last try is kept when none fits)."""
    offsets = [(5, 5), (5, -12), (-5, 5), (-5, -12), (5, 16), (-5, 16), (5, -24), (-5, -24)]
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = []
    for latency, top1, name in sorted(points, key=lambda p: (p[0], p[1])):
        text = None
        for dx, dy in offsets:
            if text is not None:
                text.remove()
            text = ax.annotate(name, (latency, top1), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                               ha="left" if dx > 0 else "right", annotation_clip=False)
            box = text.get_window_extent(renderer)
            within = (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1)
            if within and not any(box.overlaps(other) for other in placed):
                break
        placed.append(text.get_window_extent(renderer))


def pareto_plot_models(models: list[dict], path: str | Path, *, title: str = "edgekd bench",
                       xlabel: str | None = None) -> Path | None:
    """Accuracy vs p50 latency, one point per model entry (schema edgekd.bench/1), the
    Pareto front joined, one panel per batch size; points of a threads or provider sweep are
    labelled "name t2" / "name cpu". Returns None without matplotlib or without any entry
    that has a top-1."""
    fig = pareto_figure(models, title=title, xlabel=xlabel)
    return None if fig is None else _save(fig, path)


def pareto_front(points: list[tuple]) -> list[tuple]:
    """Points (latency, accuracy, ...) not beaten on both axes, sorted by latency."""
    front, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


def epoch_series(stages: dict) -> dict[str, list[dict]]:
    """{label: per-epoch history} of the run's training stages that recorded one."""
    series = {}
    for stage, label in CURVE_STAGES:
        epochs = (stages.get(stage) or {}).get("epochs")
        epochs = [e for e in epochs if isinstance(e, dict)] if isinstance(epochs, list) else []
        if any(isinstance(e.get(k), (int, float)) for e in epochs for k in CURVE_FIELDS):
            series[label] = epochs
    return series


def curves_figure(stages: dict, *, title: str = "edgekd: training"):
    """Val top-1 and train loss per epoch of the teacher and the student, side by side
    (unsaved). None without matplotlib or without a per-epoch history."""
    plt = _pyplot()
    series = epoch_series(stages)
    if plt is None or not series:
        return None
    fig, (top1_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for label, epochs in series.items():
        for ax, keys in ((top1_ax, ("val_top1",)), (loss_ax, ("loss", "train_loss"))):
            values = [(e.get("epoch", i + 1), next((e[k] for k in keys if isinstance(e.get(k), (int, float))), None))
                      for i, e in enumerate(epochs)]
            xs, ys = [x for x, y in values if y is not None], [y for _, y in values if y is not None]
            if ys:
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
    top1_ax.set_ylabel("val top-1 (%)")
    loss_ax.set_ylabel("train loss")
    for ax in (top1_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves_plot(stages: dict, path: str | Path, *, title: str = "edgekd: training") -> Path | None:
    """curves.png: see curves_figure. Returns None without matplotlib or without a history."""
    fig = curves_figure(stages, title=title)
    return None if fig is None else _save(fig, path)
