"""PNG plots next to report.md. Figures are drawn on the Agg canvas directly (no pyplot, no global
backend state), so plotting works headless and from any thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from interlingua.eval.report import EVAL_ROWS, MODE_TITLES, row_scores


def plot_cross_decode(matrix: dict[str, dict[str, dict]], path: Path) -> Path:
    """Heatmap of cross-decode F1, sender rows × receiver columns, each cell annotated.

    Args:
        matrix: ``{sender: {receiver: {"f1", ...}}}`` (F1 ×100).
        path: PNG to write.
    Returns:
        ``path``.
    """
    senders = list(matrix)
    receivers = list(next(iter(matrix.values())))
    f1 = np.array([[matrix[s][r]["f1"] for r in receivers] for s in senders])  # (senders, receivers)
    size = 1.6 + 1.3 * len(receivers)
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmax = max(float(f1.max()), 1.0)  # colours relative to the best pair; the numbers say the rest
    image = ax.imshow(f1, cmap="viridis", vmin=0.0, vmax=vmax)
    for i, j in np.ndindex(f1.shape):
        colour = "white" if f1[i, j] < vmax / 2 else "black"  # readable on dark and light cells
        ax.text(j, i, f"{f1[i, j]:.1f}", ha="center", va="center", color=colour)
    ax.set_xticks(range(len(receivers)), receivers, rotation=30, ha="right")
    ax.set_yticks(range(len(senders)), senders)
    ax.set_xlabel("receiver")
    ax.set_ylabel("sender")
    ax.set_title("Cross-decode F1")
    fig.colorbar(image, ax=ax, label="F1")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_f1_by_row(baselines: dict, latent: dict, path: Path) -> Path:
    """Grouped bars: one group per model, one bar per report row (text … shuffled-z).

    Args:
        baselines: summary of the baseline rows (``{model: {mode: {"f1", ...}}}``).
        latent: the latent summary (its ``scores`` hold latent and shuffled).
        path: PNG to write.
    Returns:
        ``path``.
    """
    models = list(latent["scores"])
    width = 0.8 / len(EVAL_ROWS)
    fig = Figure(figsize=(3.5 + 2.2 * len(models), 4.0))  # room for the legend on the right
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, mode in enumerate(EVAL_ROWS):
        heights = [dict(row_scores(baselines, latent, m)).get(mode, {}).get("f1", np.nan) for m in models]
        positions = np.arange(len(models)) + (index - (len(EVAL_ROWS) - 1) / 2) * width
        ax.bar(positions, heights, width, label=MODE_TITLES[mode])
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("F1")
    ax.set_title(f"SQuAD v1.1 validation F1 (n = {latent['n']})")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
