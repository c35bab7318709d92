"""Reuse the baseline rows of an earlier run instead of recomputing them (they cost more than the
latent rows on a CPU), but only when they were produced under the same settings (``BASELINE_ROWS`` of
:mod:`interlingua.settings`), models and prompt formats, for the same examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from interlingua.config import Config
from interlingua.constants import METRICS_FILE, PREDICTIONS_FILE
from interlingua.data.squad import SquadExample
from interlingua.errors import BaselineReuseError
from interlingua.eval.baselines import BASELINE_MODES
from interlingua.settings import Artifact, settings_differences, show


def load_baseline_rows(
    baselines_dir: Path, examples: Sequence[SquadExample], config: Config, prompt_formats: dict[str, str]
) -> list[dict]:
    """Rows of every model × baseline mode for ``examples``, taken from an earlier run's folder.

    Args:
        baselines_dir: folder of an earlier ``baselines`` or ``eval`` run (metrics.json + predictions.jsonl).
        examples: the examples being evaluated now; each needs a stored row per model and mode.
        config: the config in use now.
        prompt_formats: ``{model: format}`` in use now.
    Returns:
        the rows, grouped by model then mode, in the order of ``examples``.
    Raises:
        BaselineReuseError: missing files, other models or prompt formats, other settings, or missing examples.
    """
    metrics_path, rows_path = Path(baselines_dir) / METRICS_FILE, Path(baselines_dir) / PREDICTIONS_FILE
    if not metrics_path.is_file() or not rows_path.is_file():
        raise BaselineReuseError(f"{baselines_dir}: needs {METRICS_FILE} and {PREDICTIONS_FILE} from a baselines run")
    stored = json.loads(metrics_path.read_text())
    _check_same_settings(stored, config, prompt_formats, baselines_dir)
    by_key = {}
    with rows_path.open() as f:
        for line in f:
            row = json.loads(line)
            if row.get("mode") in BASELINE_MODES:
                by_key[(row["model"], row["mode"], row["id"])] = row
    rows, missing = [], []
    for model in prompt_formats:
        for mode in BASELINE_MODES:
            for example in examples:
                row = by_key.get((model, mode, example.id))
                if row is None:
                    missing.append((model, mode, example.id))
                else:
                    rows.append(row)
    if missing:
        raise BaselineReuseError(
            f"{rows_path}: {len(missing)} of {len(examples) * len(prompt_formats) * len(BASELINE_MODES)} needed rows "
            f"are missing (first: {missing[0]}); run the baselines on at least these examples (same data.seed, "
            "a larger --limit) or drop --baselines"
        )
    return rows


def _check_same_settings(stored: dict, config: Config, prompt_formats: dict[str, str], where: Path) -> None:
    if stored.get("prompt_formats") is None or "run" not in stored:
        raise BaselineReuseError(f"{where}/{METRICS_FILE}: not written by `interlingua baselines` or `eval`")
    stored_formats = stored["prompt_formats"]
    if any(stored_formats.get(model) != fmt for model, fmt in prompt_formats.items()):
        raise BaselineReuseError(
            f"{where}: baselines were run with models/prompt formats {stored_formats}, this evaluation uses "
            f"{prompt_formats}; rerun the baselines or drop --baselines"
        )
    changed = settings_differences(Artifact.BASELINE_ROWS, stored["run"]["config"], config)
    if changed:
        listed = "; ".join(f"baselines used {d.key}={show(d.saved)}, this evaluation uses {show(d.current)}"
                           for d in changed)
        raise BaselineReuseError(f"{where}: {listed}; rerun the baselines or drop --baselines")
