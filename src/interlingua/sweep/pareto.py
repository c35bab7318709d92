"""Quality vs bytes: the Pareto front of a sweep per model, and its plot (Agg canvas, no pyplot)."""

from __future__ import annotations

import itertools
from pathlib import Path
from statistics import mean
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interlingua.eval.report import MODE_TITLES
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


REFERENCE_MARKERS = {"text": "*", "token_budget": "^", "question_only": "X"}
"""Baseline mode -> plot marker of the text references."""


def reference_points(references: Optional[dict]) -> list[tuple[str, str, float, float]]:
    """``(model, mode, mean prompt UTF-8 bytes, F1)`` of every text reference, in table order."""
    if not references:
        return []
    return [
        (model, mode, entry["mean_prompt_utf8_bytes"], entry["f1"])
        for model, modes in references["baselines"].items()
        for mode, entry in modes.items() if mode in REFERENCE_MARKERS
    ]


def plot_pareto(rows: Sequence[dict], path: Path, references: Optional[dict] = None) -> Path:
    """Write :func:`pareto_figure` to ``path`` (PNG); returns ``path``."""
    pareto_figure(rows, references).savefig(path, dpi=120)
    return path


def pareto_figure(rows: Sequence[dict], references: Optional[dict] = None) -> Figure:
    """F1 vs bytes per message (log x): every cell as a point, one line per model through its Pareto
    front (its cells labelled d_inter×M precision), vertical lines at the text prompt's mean UTF-8 and
    gzip bytes, and with ``references`` each model's text references as markers at their prompt's UTF-8
    bytes, its text-prompt F1 as a dotted line.

    Args:
        rows: :func:`~interlingua.sweep.table.cell_rows`.
        references: the sweep's text references (:func:`~interlingua.sweep.references.text_references`), or None.
    """
    fig = Figure(figsize=(10.0, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labelled = set()  # one label per spot: models often score the same
    colours = dict(zip(models_of(rows), itertools.cycle(f"C{i}" for i in range(10))))
    for model, mode, size, f1 in reference_points(references):
        colour = colours.setdefault(model, f"C{len(colours) % 10}")
        ax.scatter([size], [f1], color=colour, marker=REFERENCE_MARKERS[mode], s=70, edgecolors="black", linewidths=0.5)
        if mode == "text":
            ax.axhline(f1, color=colour, linestyle=":", linewidth=1, label=f"{model} reading the text (F1 {f1:.1f})")
    for mode, marker in REFERENCE_MARKERS.items() if references else ():
        title = MODE_TITLES[mode]
        if mode == "token_budget" and "token_budget" in references:
            title = title.replace("M tokens", f"M = {references['token_budget']} tokens")
        ax.scatter([], [], color="grey", marker=marker, s=70, label=title)  # legend entries only
    for model, colour in colours.items():
        if not any(model in row["scores"] for row in rows):
            continue
        cells = [row for row in rows if model in row["scores"]]
        points = [(row["bytes"], row["scores"][model]["f1"]) for row in cells]
        ax.scatter(*zip(*points), color=colour, alpha=0.55, s=22)
        front = pareto_front(points)
        for index in front:  # the front's cells only: the others are in the table, labels would pile up
            (size, f1), label = points[index], _short_label(cells[index])
            if (size, f1, label) not in labelled:
                labelled.add((size, f1, label))
                ax.annotate(label, (size, f1), fontsize=6, alpha=0.8, xytext=(3, 3), textcoords="offset points")
        ax.plot(*zip(*(points[i] for i in front)), color=colour, marker="o", label=f"{model} (Pareto front)")
    for key, style, name in (("prompt_utf8_bytes", "--", "text z replaces, UTF-8"),
                             ("prompt_gzip_bytes", ":", "text z replaces, gzip")):
        size = mean(row[key] for row in rows)
        ax.axvline(size, color="grey", linestyle=style, label=f"{name} ({size:.0f} B)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per message (log scale)")
    ax.set_ylabel("F1")
    ax.set_title(f"F1 vs message bytes (n = {', '.join(str(n) for n in sorted({r['n'] for r in rows}))})")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _short_label(row: dict) -> str:
    return f"{row['d_inter']}×{row['num_slots']} {row['precision']}"
