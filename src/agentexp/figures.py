"""Report figures as PNG bytes: best metric vs cycle, leaderboard bars, per-class accuracy of the best run."""

from __future__ import annotations

import io

from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

from agentexp.ranking import Entry, better

SUMMARY_KEYS = ("accuracy", "macro avg", "weighted avg")
"""Entries of sklearn's classification report that are not classes."""


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def best_vs_cycle(points: list[tuple[float, float]], direction: str, metric: str, x_label: str) -> bytes:
    """Every finished run as a dot and the best so far as a step line, in start order."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    key, best, steps = better(direction), None, []
    for x, value in points:
        best = value if best is None or key(value) < key(best) else best
        steps.append((x, best))
    if points:
        ax.scatter(*zip(*points, strict=True), s=12, alpha=0.5, label="run")
        ax.step(*zip(*steps, strict=True), where="post", color="C1", label="best so far")
        ax.legend(loc="best")
    ax.set(xlabel=x_label, ylabel=metric, title=f"{metric} ({direction}) over the loop")
    ax.grid(alpha=0.3)
    return png(fig)


def leaderboard_bars(entries: list[Entry]) -> bytes:
    """The ranked configurations' means, seed std as error bars, best at the top."""
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(entries)), layout="constrained")
    ax = fig.add_subplot()
    labels = [f"{e.rank}. {e.run_label}" for e in entries][::-1]
    means = [e.mean for e in entries][::-1]
    errors = [e.std or 0.0 for e in entries][::-1]
    ax.barh(labels, means, xerr=errors, color="C0", capsize=3)
    if means:
        low, high = min(m - s for m, s in zip(means, errors, strict=True)), max(means)
        span = max(high - low, 1e-6)
        ax.set_xlim(low - 0.2 * span, high + 0.2 * span)
    ax.set(xlabel=entries[0].metric if entries else "metric", title="Leaderboard (mean ± std over seeds)")
    return png(fig)


def per_class(report: dict, run_label: str) -> bytes:
    """Recall per class (the accuracy on that class) of one run, from its per_class_report.json."""
    classes = [(k, row) for k, row in report.items() if k not in SUMMARY_KEYS and isinstance(row, dict)]
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar([name for name, _ in classes], [row.get("recall", 0.0) for _, row in classes], color="C2")
    ax.set(ylim=(0, 1.05), ylabel="accuracy (recall)", title=f"Per-class accuracy of {run_label}")
    ax.tick_params(axis="x", labelrotation=45 if len(classes) > 12 else 0)
    return png(fig)
