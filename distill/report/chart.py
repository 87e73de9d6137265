"""The report's chart: metric vs CPU latency, one labelled bubble per model, area ∝ size on disk; a sparse
model's label gives its share of zero weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPARSE = 0.01  # labels say "N% zeros" from 1% of zero weights on


def x_axis(rows: list[dict[str, Any]]) -> str:
    """``latency_ms`` when any row was timed, else ``size_mb``."""
    return "latency_ms" if any(r.get("latency_ms") is not None for r in rows) else "size_mb"


def chart_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every point the chart draws, in x order: ``{"model", "x", "y", "size_mb", "label"}`` (rows without an x
    value are left out)."""
    x_key = x_axis(rows)
    points = []
    for row in sorted((r for r in rows if r.get(x_key) is not None), key=lambda r: r[x_key]):
        size = row.get("size_mb") or 0.0
        zeros = f", {row['sparsity']:.0%} zeros" if (row.get("sparsity") or 0.0) >= SPARSE else ""
        points.append({"model": row["model"], "x": row[x_key], "y": row["score"] if row.get("score") is not None
                       else 0.0, "size_mb": size, "label": f"{row['model']}\n{size:.1f} MB{zeros}"})
    return points


def plot_report(rows: list[dict[str, Any]], path: str | Path, metric: str = "score") -> Path:
    """Write the chart to ``path`` (PNG). Without measured latency the x axis is the size on disk."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x_key = x_axis(rows)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    biggest = max((r.get("size_mb") or 0.0 for r in rows), default=0.0) or 1.0
    points = chart_points(rows)
    for i, p in enumerate(points):
        ax.scatter([p["x"]], [p["y"]], s=40 + 2000 * p["size_mb"] / biggest, alpha=0.45, edgecolors="k")
        # neighbours along x get labels above / below in turn, so close points stay readable
        ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 10 if i % 2 == 0 else -26),
                    fontsize=8)
    xs = [p["x"] for p in points if p["x"] > 0]
    if xs and max(xs) / min(xs) > 8:  # int8 students and the teacher differ by 10-30x
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.2)
    log_x = ", log scale" if ax.get_xscale() == "log" else ""
    ax.set_xlabel(f"CPU latency, ms per example (batch 1{log_x})" if x_key == "latency_ms"
                  else f"size on disk, MB (speed not measured{log_x})")
    ax.set_ylabel(metric)
    ax.set_title(f"Metric vs {'latency' if x_key == 'latency_ms' else 'size'} (bubble area ∝ size on disk)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)
