"""The text references of a sweep: every model reads the cells' examples as text (the rows of
``interlingua baselines``: whole prompt, prompt cut to M tokens, question only), once, so each cell's F1
and bytes stand next to the text's."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from interlingua.artifacts.files import run_info
from interlingua.config import Config
from interlingua.constants import METRICS_FILE
from interlingua.data.squad import SquadExample
from interlingua.eval.baselines import evaluate_baselines, summarize
from interlingua.eval.jobs import write_baselines
from interlingua.eval.reuse import BaselineReuseError, load_baseline_rows
from interlingua.models.frozen_lm import FrozenLM
from interlingua.runtime import seed_everything


def text_references(
    config: Config,
    examples: Sequence[SquadExample],
    lms: Mapping[str, FrozenLM],
    folder: Path,
    named: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """``{"from", "prompt_formats", "token_budget", "baselines"}`` of ``examples`` read as text by ``lms``
    under ``config`` (``baselines``: :func:`~interlingua.eval.baselines.summarize`; ``token_budget``: the M
    tokens the token-budget baseline keeps, ``config.interlingua.num_slots``).

    Args:
        folder: a baselines folder (``interlingua baselines`` layout): read when it matches the examples
            and settings, else the references are computed and written there.
        named: ``folder`` was named by the user (``baselines: DIR``): a mismatch is an error, not a recompute.
    Raises:
        BaselineReuseError: ``named`` and ``folder`` does not match (the message says why).
    """
    formats = {key: lm.prompt_format.value for key, lm in lms.items()}
    described = {"from": str(folder), "prompt_formats": formats, "token_budget": config.interlingua.num_slots}
    if named or (folder / METRICS_FILE).is_file():
        try:
            rows = load_baseline_rows(folder, examples, config, formats)
        except BaselineReuseError as err:
            if named:
                raise
            echo(f"text references: {folder} does not match this sweep ({err}); recomputing")
        else:
            echo(f"text references: read from {folder}")
            return {**described, "baselines": summarize(rows)}
    echo(f"text references: every model reads the {len(examples)} validation examples as text")
    seed_everything(config.runtime.seed)
    info = run_info(config, "sweep")
    rows = [row for lm in lms.values() for row in evaluate_baselines(lm, examples, config, progress)]
    return {**described, "baselines": write_baselines(folder, rows, formats, info)}
