"""Quality vs bytes: the Pareto front of a sweep per model, and its plot (Agg canvas, no pyplot)."""

from __future__ import annotations

import itertools
from pathlib import Path
from statistics import mean
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interlingua.sweep.table import models_of


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: none has fewer-or-equal bytes and a higher-or-equal
    score with at least one strictly better. Of identical points the first is kept.

    Args:
        points: ``(bytes, score)`` pairs.
    Returns:
        Indices into ``points``, by increasing bytes (and so increasing score).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], float("-inf")
    for index in order:
        if points[index][1] > best:
            front.append(index)
            best = points[index][1]
    return front


def plot_pareto(rows: Sequence[dict], path: Path) -> Path:
    """F1 vs bytes per message (log x): every cell as a point, one line per model through its Pareto
    front, and vertical lines at the text prompt's mean UTF-8 and gzip bytes.

    Args:
        rows: :func:`~interlingua.sweep.table.cell_rows`.
        path: PNG to write.
    Returns:
        ``path``.
    """
    fig = Figure(figsize=(8.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labelled = set()  # one label per spot: models often score the same
    for model, colour in zip(models_of(rows), itertools.cycle(f"C{i}" for i in range(10))):
        cells = [row for row in rows if model in row["scores"]]
        points = [(row["bytes"], row["scores"][model]["f1"]) for row in cells]
        ax.scatter(*zip(*points), color=colour, alpha=0.55, s=22)
        for (size, f1), row in zip(points, cells):
            if (size, f1, _short_label(row)) in labelled:
                continue
            labelled.add((size, f1, _short_label(row)))
            ax.annotate(_short_label(row), (size, f1), fontsize=6, alpha=0.7, xytext=(3, 2), textcoords="offset points")
        front = [points[i] for i in pareto_front(points)]
        ax.plot(*zip(*front), color=colour, marker="o", label=f"{model} (Pareto front)")
    for key, style, name in (("prompt_utf8_bytes", "--", "prompt UTF-8"), ("prompt_gzip_bytes", ":", "prompt gzip")):
        size = mean(row[key] for row in rows)
        ax.axvline(size, color="grey", linestyle=style, label=f"{name} ({size:.0f} B)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per message (log scale)")
    ax.set_ylabel("F1")
    ax.set_title(f"F1 vs message bytes (n = {', '.join(str(n) for n in sorted({r['n'] for r in rows}))})")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _short_label(row: dict) -> str:
    return f"{row['d_inter']}×{row['num_slots']} {row['precision']}"
