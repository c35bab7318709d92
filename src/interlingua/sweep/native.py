"""The native sweep's own parts (DESIGN §8, docs/compression.md): the evaluation of one cell (every
pair beside its shuffled-z row, through the wire at the cell's precision) and the text it is measured
against at the same receiver positions.

The token-budget reference of a ``pool_window = k`` cell: receiver b reads its text prompt with the
context cut to ``ceil(T_b / k)`` tokens, where ``T_b`` is the length of what b's own message encodes
(``Context: …`` in b's tokenizer): exactly the number of positions b's own z gives it in that cell, and
the question after it as text, as in the hybrid latent rows. It is the fair discrete competitor: the same
receiver, the same positions, the context's own tokens instead of z.

    rows = window_budget_references(config, examples, lms, windows=[1, 4, 16], folder=sweep_dir / "window_budget")
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

from interlingua.artifacts.files import gzip_bytes, utf8_bytes, write_json, write_jsonl
from interlingua.config import Conditioning, Config, config_to_dict
from interlingua.data.prompts import BudgetedPrompt, budgeted_context_prompt, question_suffix, sender_prompt
from interlingua.data.squad import SquadExample
from interlingua.eval.baselines import PromptCase, evaluate_cases, summarize
from interlingua.eval.native import PassStore, evaluate_native
from interlingua.models.frozen_lm import FrozenLM
from interlingua.models.system import Interlingua
from interlingua.settings import Artifact, settings_of

WINDOW_BUDGET_MODE = "window_budget"
"""``mode`` of the token-budget reference rows; each row also carries its ``window`` and ``context_positions``."""


def window_budget_cases(lm: FrozenLM, examples: Sequence[SquadExample], tokenizers: Sequence, window: int,
                        config: Config) -> list[tuple[PromptCase, dict]]:
    """Per example, the text prompt whose context keeps as many tokens as ``lm``'s own z has positions at
    ``pool_window = window``, and what it is measured by: that number, and the UTF-8 / gzip bytes of the
    cut ``Context: …`` (the text the message competes with; the question is text on both sides)."""
    cases = []
    for example in examples:
        sent = sender_prompt(tokenizers, example.context, example.question, config.data.max_prompt_tokens,
                             Conditioning.HYBRID)
        encoded = len(lm.tokenizer(sent, add_special_tokens=False).input_ids)
        positions = math.ceil(encoded / window)
        context = budgeted_context_prompt(lm.tokenizer, example.context, positions)
        prompt = BudgetedPrompt(context.text + question_suffix(example.question), context.context_truncated)
        measures = {"window": window, "context_positions": positions,
                    "context_utf8_bytes": utf8_bytes(context.text), "context_gzip_bytes": gzip_bytes(context.text)}
        cases.append((PromptCase(example, prompt, lm.prompt_token_ids(prompt.text)), measures))
    return cases


def window_budget_references(config: Config, examples: Sequence[SquadExample], lms: Mapping[str, FrozenLM],
                             windows: Sequence[int], folder: Path, progress: bool = True,
                             echo: Callable[[str], None] = print) -> list[dict]:
    """The token-budget rows of every model at every window, kept per (model, window) in ``folder`` (a
    stopped sweep resumes them; other examples or settings recompute them)."""
    settings = {"ids": [e.id for e in examples], **settings_of(Artifact.BASELINE_ROWS, config),
                "formats": {key: lm.prompt_format.value for key, lm in lms.items()}}
    store = PassStore(folder, settings)
    tokenizers = [lm.tokenizer for lm in lms.values()]
    rows = []
    for window in windows:
        for key, lm in lms.items():
            name = f"{key} k{window}"
            done = store.get(name)
            if done is None:
                echo(f"token budget at pool_window={window}: {key} reads {len(examples)} cut text prompts")
                cases = window_budget_cases(lm, examples, tokenizers, window, config)
                answered = evaluate_cases(lm, [case for case, _ in cases], WINDOW_BUDGET_MODE, config, progress)
                done = [{**row, **measures} for row, (_, measures) in zip(answered, cases)]
                store.put(name, done)
            rows += done
    return rows


def window_budget_summary(rows: Sequence[dict]) -> dict:
    """``{window: {model: {n, f1, exact_match, mean_prompt_tokens, mean_context_positions,
    mean_context_utf8_bytes, mean_context_gzip_bytes, ...}}}``."""
    out: dict = {}
    for window in sorted({r["window"] for r in rows}):
        group = [r for r in rows if r["window"] == window]
        for model, modes in summarize(group).items():
            own = [r for r in group if r["model"] == model]
            means = {f"mean_{key}": sum(r[key] for r in own) / len(own)
                     for key in ("context_positions", "context_utf8_bytes", "context_gzip_bytes")}
            out.setdefault(window, {})[model] = {**modes[WINDOW_BUDGET_MODE], **means}
    return out


def evaluate_native_cell(system: Interlingua, examples: Sequence[SquadExample], planned, config: Config,
                         info: dict, checkpoint: Path, passes_dir: Path, progress: bool) -> tuple[list[dict], dict]:
    """The rows and the result record (``cells/<cell>.json``) of one native cell, evaluated under ``config``
    (the checkpoint's config as the cell's evaluation resolves it; ``info``: its ``run_info``); each
    finished pass is kept in ``passes_dir`` so that a stopped cell resumes pass by pass."""
    rows, summary = evaluate_native(system, examples, config, progress=progress, passes_dir=passes_dir)
    conditioning = Conditioning(config.eval.conditionings[0]).value
    result = {
        "cell": planned.cell.as_dict(),
        "config": config_to_dict(planned.eval_config),
        "run": info,
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "fingerprint": system.model.fingerprint(),
                       "trained_with_qat": config.compression.qat,
                       "trained_in_sweep": planned.fixed_checkpoint is None},
        "n": len(examples),
        "conditioning": conditioning,
        "pairs": summary["information_flow"][conditioning],
        "messages": summary["messages"][conditioning],
        "summary": summary,
    }
    return rows, result


def write_cell(path: Path, rows: list[dict], result: dict) -> None:
    """``cells/<cell>.predictions.jsonl`` and then ``cells/<cell>.json`` (its existence marks the cell done);
    the cell's kept passes go."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path.with_suffix(".predictions.jsonl"), rows)
    write_json(path, result)
    shutil.rmtree(path.with_suffix(".passes"), ignore_errors=True)  # the same rows, now in predictions.jsonl
