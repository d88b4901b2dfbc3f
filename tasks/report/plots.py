"""The run report's figures: small pure functions from report data to PNG bytes (matplotlib, Agg backend).

Each returns ``None`` when it has nothing to draw, so the page leaves the figure out instead of showing an
empty axis.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from segflow.tasks.documents import Calibration
from segflow.tasks.records import VERDICT_COLOURS as VERDICT_HEX
from segflow.tasks.records import Verdict

__all__ = ["verdict_bars", "pr_grid", "confusion", "class_bars", "stage_seconds", "timeline"]

VERDICT_COLOURS = {v.value: VERDICT_HEX[v] for v in Verdict}  # accept, review, reject


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def verdict_bars(counts: list[dict]) -> bytes | None:
    """Masks per class, stacked by verdict. ``counts``: dicts with ``class``, ``verdict``, ``masks``."""
    if not counts:
        return None
    classes = sorted({r["class"] for r in counts})
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(classes) + 1.2))
    left = np.zeros(len(classes))
    for v, colour in VERDICT_COLOURS.items():
        n = np.array([sum(r["masks"] for r in counts if r["class"] == c and r["verdict"] == v) for c in classes])
        ax.barh(classes, n, left=left, color=colour, label=v)
        left += n
    ax.invert_yaxis()
    ax.set_xlabel("masks")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _png(fig)


def pr_grid(calibration: Calibration | None) -> bytes | None:
    """One precision-recall panel per class (the labels of the gold images by calibrated score), the target
    precision dashed and the operating point (the class's threshold) as a dot."""
    if calibration is None:
        return None
    entries = [(n, e) for n, e in calibration["classes"].items() if e.get("curve")]
    if not entries:
        return None
    target = calibration["target_precision"]
    cols = min(4, len(entries))
    rows = (len(entries) + cols - 1) // cols
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(entries) :]:
        ax.axis("off")
    for ax, (name, e) in zip(axes.flat, entries):
        c = e["curve"]
        ax.plot(c["recall"], c["precision"], color="#3366cc")
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        if "operating" in c:
            ax.plot(c["operating"]["recall"], c["operating"]["precision"], "o", color="#e5413a", markersize=7)
        t = e.get("threshold")
        ax.set_title(f"{name}: {e['status']}" + (f", t={t:.2f}" if t is not None else ""), fontsize=9)
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    return _png(fig)


def _count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:.0f}"


def confusion(classes: list[str], matrix: list[list[float]], xlabel: str, ylabel: str) -> bytes | None:
    """A heat map of a square class confusion matrix, rows normalised, each cell's count written in it; classes
    with neither a row nor a column count are left out (a run's classes without instances)."""
    m = np.asarray(matrix, np.float64)
    if m.size == 0 or m.sum() == 0:
        return None
    keep = np.flatnonzero((m.sum(0) > 0) | (m.sum(1) > 0))
    m, classes = m[np.ix_(keep, keep)], [classes[i] for i in keep]
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    plt = _plt()
    side = 0.55 * len(classes) + 2
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if len(classes) <= 25:
        for i, j in zip(*np.nonzero(m)):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, _count(m[i, j]), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the row")
    return _png(fig)


def class_bars(values: dict[str, dict[str, float | None]], metrics: list[str], title: str) -> bytes | None:
    """Grouped bars: per class, one bar per metric (values in [0, 1])."""
    names = [n for n, v in values.items() if any(v.get(k) is not None for k in metrics)]
    if not names:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) * len(metrics) / 2 + 2), 3.2))
    width = 0.8 / len(metrics)
    x = np.arange(len(names))
    for i, k in enumerate(metrics):
        ax.bar(x + i * width - 0.4 + width / 2, [values[n].get(k) or 0 for n in names], width, label=k)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), title=title)
    ax.legend(fontsize=8, ncols=len(metrics))
    return _png(fig)


def stage_seconds(seconds: dict[str, float]) -> bytes | None:
    """Seconds per phase summed over shards (``read``: waiting for images; each stage; ``commit``)."""
    if not seconds:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(seconds) + 1))
    ax.barh(list(seconds), list(seconds.values()), color="#3366cc")
    ax.invert_yaxis()
    ax.set_xlabel("seconds, summed over shards")
    return _png(fig)


def timeline(spans: list[dict]) -> bytes | None:
    """Shards over workers: one row per worker, one bar per shard from start to commit (``spans``: dicts with
    ``worker``, ``start``, ``end`` in epoch seconds)."""
    if not spans:
        return None
    workers = sorted({s["worker"] for s in spans})
    t0 = min(s["start"] for s in spans)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(workers) + 1.4))
    for i, w in enumerate(workers):
        bars = [(s["start"] - t0, max(s["end"] - s["start"], 1e-3)) for s in spans if s["worker"] == w]
        ax.broken_barh(bars, (i - 0.4, 0.8), facecolors="#3366cc", edgecolors="white", linewidth=0.5)
    ax.set_yticks(range(len(workers)), [w if len(w) < 40 else "..." + w[-37:] for w in workers], fontsize=7)
    ax.set_xlabel("seconds since the first shard started")
    ax.invert_yaxis()
    return _png(fig)
