"""Text-prompt rows of the evaluation protocol (DESIGN §5), per model:

* ``text``: the full prompt ``Context/Question/Answer:`` (raw or in the chat template);
* ``token_budget``: the same prompt cut to M tokens (question and cue kept whole, context truncated) —
  what a text message of the interlingua's length can carry;
* ``question_only``: no context at all — the floor every latent result must beat.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from interlingua.artifacts.files import gzip_bytes, utf8_bytes
from interlingua.config import Config
from interlingua.data.prompts import BudgetedPrompt, budgeted_text_prompt, question_only_prompt
from interlingua.data.squad import SquadExample
from interlingua.eval.metrics import per_example_scores
from interlingua.models.batching import generate_batched
from interlingua.models.frozen_lm import FrozenLM

log = logging.getLogger(__name__)

BASELINE_MODES = ("text", "token_budget", "question_only")


@dataclass(frozen=True)
class PromptCase:
    example: SquadExample
    prompt: BudgetedPrompt
    token_ids: list[int]  # what the model reads (BOS and chat template included)


def baseline_prompt(lm: FrozenLM, example: SquadExample, mode: str, config: Config) -> BudgetedPrompt:
    if mode == "text":
        return budgeted_text_prompt(lm.tokenizer, example.context, example.question, config.data.max_prompt_tokens)
    if mode == "token_budget":
        return budgeted_text_prompt(lm.tokenizer, example.context, example.question, config.interlingua.num_slots)
    if mode == "question_only":
        return BudgetedPrompt(question_only_prompt(example.question), context_truncated=False)
    raise ValueError(f"unknown baseline mode {mode!r}; known: {', '.join(BASELINE_MODES)}")


def evaluate_text_mode(
    lm: FrozenLM, examples: Sequence[SquadExample], mode: str, config: Config, progress: bool = True
) -> list[dict]:
    """Greedy answers of ``lm`` for every example under one text mode; one row per example."""
    cases = []
    for example in examples:
        prompt = baseline_prompt(lm, example, mode, config)
        cases.append(PromptCase(example, prompt, lm.prompt_token_ids(prompt.text)))
    return evaluate_cases(lm, cases, mode, config, progress)


def evaluate_cases(lm: FrozenLM, cases: Sequence[PromptCase], mode: str, config: Config,
                   progress: bool = True) -> list[dict]:
    """Greedy answers of ``lm`` to prepared text prompts, one row per case (``mode`` labels the rows)."""

    def generate(batch: list[PromptCase]) -> list[str]:
        return lm.generate(lm.ids_prefix([c.token_ids for c in batch]), config.eval.max_new_tokens)

    predictions = generate_batched(
        cases, generate, config.eval.batch_size, length=lambda c: len(c.token_ids),
        desc=f"{lm.key} {mode}", progress=progress,
    )
    return [_row(lm, mode, case, prediction) for case, prediction in zip(cases, predictions)]


def _row(lm: FrozenLM, mode: str, case: PromptCase, prediction: str) -> dict:
    em, f1 = per_example_scores(prediction, case.example.answers)
    return {
        "id": case.example.id,
        "model": lm.key,
        "mode": mode,
        "prediction": prediction,
        "answers": list(case.example.answers),
        "exact_match": em,
        "f1": f1,
        "prompt_tokens": len(case.token_ids),
        "prompt_utf8_bytes": utf8_bytes(case.prompt.text),
        "prompt_gzip_bytes": gzip_bytes(case.prompt.text),
        "context_truncated": case.prompt.context_truncated,
    }


def summarize(rows: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """``{model: {mode: {n, exact_match, f1, mean_* ...}}}`` with scores ×100."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["model"], row["mode"]), []).append(row)
    summary: dict[str, dict[str, dict]] = {}
    for (model, mode), group in grouped.items():
        n = len(group)
        entry = {
            "n": n,
            "exact_match": 100.0 * sum(r["exact_match"] for r in group) / n,
            "f1": 100.0 * sum(r["f1"] for r in group) / n,
        }
        for key in ("prompt_tokens", "prompt_utf8_bytes", "prompt_gzip_bytes"):
            if key in group[0]:
                entry[f"mean_{key}"] = sum(r[key] for r in group) / n
        if "context_truncated" in group[0]:
            entry["n_context_truncated"] = sum(bool(r["context_truncated"]) for r in group)
        summary.setdefault(model, {})[mode] = entry
    return summary


def run_baselines(
    config: Config, examples: Sequence[SquadExample], device: torch.device, dtype: torch.dtype, progress: bool = True
) -> tuple[list[dict], dict[str, str]]:
    """All baseline rows for every model in ``config.models`` (loaded one at a time).

    Returns:
        the rows, and ``{model: prompt format used}``.
    """
    rows: list[dict] = []
    formats: dict[str, str] = {}
    for model_config in config.models:
        lm = FrozenLM.load(model_config, device=device, dtype=dtype)
        formats[lm.key] = lm.prompt_format.value
        rows += evaluate_baselines(lm, examples, config, progress=progress)
        del lm
        gc.collect()
    return rows, formats


def evaluate_baselines(lm: FrozenLM, examples: Sequence[SquadExample], config: Config,
                       progress: bool = True) -> list[dict]:
    """Rows of every mode in :data:`BASELINE_MODES` for one loaded model (``len(examples)`` per mode)."""
    rows: list[dict] = []
    for mode in BASELINE_MODES:
        rows += evaluate_text_mode(lm, examples, mode, config, progress=progress)
    return rows
