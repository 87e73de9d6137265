"""The report's chart: metric vs CPU latency, one labelled bubble per model, area ∝ size on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_report(rows: list[dict[str, Any]], path: str | Path, metric: str = "score") -> Path:
    """Write the chart to ``path`` (PNG). Without measured latency the x axis is the size on disk."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x_key = "latency_ms" if any(r.get("latency_ms") is not None for r in rows) else "size_mb"
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    sizes = [r.get("size_mb") or 0.0 for r in rows]
    biggest = max(sizes, default=0.0) or 1.0
    placed = [(row, size) for row, size in zip(rows, sizes, strict=True) if row.get(x_key) is not None]
    for i, (row, size) in enumerate(sorted(placed, key=lambda p: p[0][x_key])):
        x, y = row[x_key], row.get("score") if row.get("score") is not None else 0.0
        ax.scatter([x], [y], s=40 + 2000 * size / biggest, alpha=0.45, edgecolors="k")
        # neighbours along x get labels above / below in turn, so close points stay readable
        ax.annotate(f"{row['model']}\n{size:.1f} MB", (x, y), textcoords="offset points",
                    xytext=(6, 10 if i % 2 == 0 else -26), fontsize=8)
    xs = [row[x_key] for row, _ in placed if row[x_key] > 0]
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
