"""What training logs: one JSON line per logged step, collapse diagnostics included (DESIGN §4.1, §4.4).

    {"step": 0, "lr": 0.0003, "loss": {"gen": 5.1, "align": 0.4, "sem": 1.0, "kd": 0.2, "total": 5.5},
     "grad_norm": 1.9, "examples_per_s": 41.0,
     "models": {"tiny-llama": {"z_mean_pairwise_cosine": 0.31, "z_mean_dim_variance": 0.8,
                               "z_min_dim_variance": 0.1, "soft_prompt_rms": 0.02, "embedding_rms": 0.02}, ...}}

Step ``s`` is the ``(s+1)``-th optimizer update: its losses, z and soft prompts come from the weights
*before* that update, so the line of step 0 shows the untrained model. Collapse shows as the mean
pairwise cosine of z across different prompts going to 1 and the per-dimension variance going to 0;
a soft prompt far louder or quieter than the model's real embeddings shows in the two RMS values.
Losses and the gradient norm are those of the whole global batch; the per-model diagnostics are
computed over the main process's first micro-batch (``batch_size / processes`` prompts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from interlingua.losses import collapse_diagnostics
from interlingua.training.step import StepLoss


def model_diagnostics(out: StepLoss, embedding_rms: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """Per model: collapse diagnostics of z over the batch and the soft prompt's RMS next to the
    model's embedding RMS. Values that need two examples are None for a batch of one."""
    report = {}
    for key, z in out.zs.items():
        collapse = {f"z_{name}": value for name, value in collapse_diagnostics(z).items()}
        soft_rms = out.soft_prompts[key].float().pow(2).mean().sqrt().item()
        report[key] = _json_safe({**collapse, "soft_prompt_rms": soft_rms, "embedding_rms": embedding_rms[key]})
    return report


class MetricsLog:
    """Append-only JSONL of logged steps (``metrics.jsonl``).

    Args:
        path: the file.
        start_step: first step this run will log; lines of later steps left by an interrupted run
            (logged after its last checkpoint) are dropped, so a resumed run does not repeat them.
    """

    def __init__(self, path: Path, start_step: int = 0):
        self.path = Path(path)
        kept = [line for line in self._lines() if json.loads(line)["step"] < start_step]
        self.path.write_text("".join(kept))
        self._file = self.path.open("a")

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(_json_safe(row)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _lines(self) -> list[str]:
        if not self.path.is_file():
            return []
        return [line + "\n" for line in self.path.read_text().splitlines() if line.strip()]


def _json_safe(value):
    """NaN and inf -> None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
