"""The training curves a run writes next to its checkpoints (``training_curves.png``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def loss_terms(rows: list[dict]) -> list[str]:
    """Every loss term logged in ``metrics.jsonl`` rows, in first-seen order (the reconstruction and QA
    stages log different terms)."""
    return list(dict.fromkeys(term for row in rows for term in row["loss"]))


def plot_training_curves(metrics_log: Path, path: Path) -> Path:
    """Training curves from ``metrics.jsonl``: each loss term (log scale) and, per model, the mean
    pairwise cosine of z across different prompts (collapse shows as a climb to 1).

    Args:
        metrics_log: the run's ``metrics.jsonl``.
        path: PNG to write.
    Returns:
        ``path``.
    """
    rows = [json.loads(line) for line in Path(metrics_log).read_text().splitlines() if line.strip()]
    steps = [row["step"] for row in rows]
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    losses, collapse = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for term in loss_terms(rows):
        values = [row["loss"].get(term) for row in rows]
        losses.plot(steps, [np.nan if v is None else v for v in values], label=term)
    losses.set_yscale("log")
    losses.set_xlabel("step")
    losses.set_title("loss terms")
    losses.legend()
    for model in rows[0]["models"]:
        cosine = [row["models"][model]["z_mean_pairwise_cosine"] for row in rows]
        collapse.plot(steps, [np.nan if v is None else v for v in cosine], label=model)
    collapse.set_ylim(-0.05, 1.05)
    collapse.set_xlabel("step")
    collapse.set_title("mean pairwise cosine of z across prompts")
    collapse.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
