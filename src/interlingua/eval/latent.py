"""Latent rows of the evaluation protocol (DESIGN §5): answers decoded from the interlingua ``z``.

Every model sends (its text prompt -> ``z``) and every model receives (``z`` -> soft prompt -> answer):

* ``latent``: sender = receiver;
* ``cross``: ``z`` of sender a decoded by receiver b ≠ a (with ``latent`` on the diagonal this is the
  cross-decode matrix);
* ``shuffled``: each example decoded from another example's ``z`` (a fixed seeded derangement, sender =
  receiver). It must fall to the question-only level if the answer really travels through ``z``.

Around the scores: cross-model agreement, interlingua distance, collapse diagnostics, and the size of
the message (receiver positions, wire bytes) next to the text prompt it replaces.

    rows, summary = evaluate_latent(system, examples, config, text_rows=baseline_rows)
"""

from __future__ import annotations

import contextlib
import itertools
import random
from statistics import mean
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from interlingua.config import Config, ConfigError
from interlingua.data.prompts import shared_text_prompt
from interlingua.data.squad import SquadExample
from interlingua.eval.artifacts import gzip_bytes, utf8_bytes
from interlingua.eval.baselines import summarize
from interlingua.eval.generation import generate_batched
from interlingua.eval.metrics import normalize_answer, normalized_equal, per_example_scores
from interlingua.losses import collapse_diagnostics
from interlingua.pipeline import InterlinguaSystem

LATENT_MODES = ("latent", "shuffled", "cross")
INFORMATION_FLOW_MARGIN_F1 = 2.0
"""F1 points (×100 scale) latent must beat both the shuffled-z control and question-only by."""
FP32_BYTES = 4  # wire precision until the compression codec exists: raw fp32 values


def evaluate_latent(
    system: InterlinguaSystem,
    examples: Sequence[SquadExample],
    config: Config,
    text_rows: Sequence[dict] | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Every latent, cross and shuffled-z row, and the summary of the latent evaluation.

    Args:
        system: learned modules + frozen LLMs + encoder (put in eval mode here, then restored).
        examples: validation examples (at least 2, so that the shuffled control exists).
        config: ``eval.batch_size``, ``eval.max_new_tokens``, ``data.max_prompt_tokens``, ``runtime.seed``.
        text_rows: baseline rows (mode ``text``) of the same examples; adds text-baseline agreement.
    Returns:
        ``n × N·(N+1)`` rows for N models (``N`` latent + ``N`` shuffled + ``N·(N−1)`` cross per
        example), and the summary (see :func:`latent_summary`).
    Raises:
        ConfigError: fewer than 2 examples.
    """
    if len(examples) < 2:
        raise ConfigError(f"the shuffled-z control needs at least 2 examples, got {len(examples)}; raise eval.limit")
    keys = list(system.lms)
    with _eval_mode(system.model):
        texts = prompt_texts(system, examples, config)
        zs = {key: encode_all(system, key, texts, config, progress) for key in keys}
        permutation = derangement(len(examples), config.runtime.seed)
        rows: list[dict] = []
        for receiver in keys:
            for sender in keys:
                mode = "latent" if sender == receiver else "cross"
                rows += decode_rows(system, examples, zs[sender], sender, receiver, mode, config, progress)
            shuffled = zs[receiver][permutation]  # (n, ...): example i gets the z of example permutation[i]
            rows += decode_rows(system, examples, shuffled, receiver, receiver, "shuffled", config, progress,
                                z_examples=[examples[j] for j in permutation])
    return rows, latent_summary(system, rows, zs, texts, [e.id for e in examples], text_rows, config.runtime.seed)


# ---- sending and receiving ---------------------------------------------------------------------
def prompt_texts(system: InterlinguaSystem, examples: Sequence[SquadExample], config: Config) -> list[str]:
    """The raw text prompt each example sends, the same for every sender and the anchor and the same as
    training reads: cut to fit ``data.max_prompt_tokens`` in every model's tokenizer."""
    tokenizers = [lm.tokenizer for lm in system.lms.values()]
    budget = config.data.max_prompt_tokens
    return [shared_text_prompt(tokenizers, e.context, e.question, budget) for e in examples]


def encode_all(system: InterlinguaSystem, sender: str, texts: Sequence[str], config: Config, progress: bool) -> Tensor:
    """``z`` of every text read through ``sender``, batched by ``eval.batch_size``.

    Returns:
        ``(n, d_inter)`` or ``(n, M, d_inter)`` fp32 on the CPU, in the order of ``texts``.
    """
    def encode(batch: list[str]) -> list[Tensor]:
        with torch.no_grad():
            z = system.encode(sender, batch, system.anchor(batch))  # (b, ...) on system.device
        return list(z.float().cpu())

    rows = generate_batched(
        texts, encode, config.eval.batch_size, length=len, desc=f"{sender} encode", progress=progress
    )
    return torch.stack(rows)  # (n, d_inter) or (n, M, d_inter)


def decode_rows(
    system: InterlinguaSystem,
    examples: Sequence[SquadExample],
    z: Tensor,
    sender: str,
    receiver: str,
    mode: str,
    config: Config,
    progress: bool,
    z_examples: Sequence[SquadExample] | None = None,
) -> list[dict]:
    """Greedy answers of ``receiver`` from ``z[i]`` for each example ``i``, scored; one row each.

    Args:
        z: ``(n, ...)`` interlinguas, row ``i`` decoded for ``examples[i]``.
        z_examples: the example each ``z`` row was encoded from (default: ``examples``), kept as ``z_id``.
    """
    lm = system.lms[receiver]

    def generate(indices: list[int]) -> list[str]:
        with torch.no_grad():
            soft = system.soft_prompt(receiver, z[indices].to(system.device))  # (b, M, d_receiver)
        return lm.generate_from_soft_prompt(soft, config.eval.max_new_tokens)

    predictions = generate_batched(
        list(range(len(examples))), generate, config.eval.batch_size,
        desc=f"{sender} -> {receiver} {mode}", progress=progress,
    )
    z_examples = z_examples or examples
    return [
        _row(example, receiver, sender, mode, prediction, source.id)
        for example, prediction, source in zip(examples, predictions, z_examples)
    ]


def _row(example: SquadExample, receiver: str, sender: str, mode: str, prediction: str, z_id: str) -> dict:
    em, f1 = per_example_scores(prediction, example.answers)
    return {
        "id": example.id, "model": receiver, "sender": sender, "mode": mode, "prediction": prediction,
        "answers": list(example.answers), "exact_match": em, "f1": f1, "z_id": z_id,
    }


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (Sattolo's algorithm: one n-cycle).

    Raises:
        ValueError: ``n < 2`` (no derangement exists).
    """
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    permutation = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i (never i itself) is what makes the result a single cycle
        permutation[i], permutation[j] = permutation[j], permutation[i]
    return permutation


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Evaluate without dropout; give the module back in the mode it came in (e.g. mid-training)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# ---- summary -----------------------------------------------------------------------------------
def latent_summary(
    system: InterlinguaSystem,
    rows: Sequence[dict],
    zs: dict[str, Tensor],
    texts: Sequence[str],
    ids: Sequence[str],
    text_rows: Sequence[dict] | None = None,
    shuffle_seed: int = 0,
) -> dict:
    """Scores, cross-decode matrix, agreement, distance, collapse and message sizes.

    Returns:
        ``{"n", "shuffle_seed", "scores": {model: {latent, shuffled}}, "cross_decode": {sender: {receiver}},
        "agreement": {"latent": [...], "text": [...]}, "distance": [...], "collapse": {model},
        "messages": {model}}``; scores ×100, agreement shares in [0, 1].
    """
    latent_predictions = predictions_by_model(rows, "latent", ids)
    agreements = {"latent": agreement(latent_predictions)}
    if text_rows:
        agreements["text"] = agreement(predictions_by_model(text_rows, "text", ids))
    return {
        "n": len(ids),
        "shuffle_seed": shuffle_seed,
        "scores": summarize(r for r in rows if r["mode"] != "cross"),
        "cross_decode": cross_decode_matrix(rows),
        "agreement": agreements,
        "distance": [{"a": a, "b": b, **interlingua_distance(zs[a], zs[b])} for a, b in itertools.combinations(zs, 2)],
        "collapse": {
            key: {**collapse_diagnostics(z), "distinct_prediction_share": distinct_share(latent_predictions[key])}
            for key, z in zs.items()
        },
        "messages": {key: message_sizes(system, key, zs[key], texts) for key in zs},
    }


def cross_decode_matrix(rows: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """``{sender: {receiver: {n, exact_match, f1}}}`` ×100 from the latent (diagonal) and cross rows."""
    # summarize groups by (model, mode): feed it (sender, receiver) in those two slots.
    pairs = ({**r, "model": r["sender"], "mode": r["model"]} for r in rows if r["mode"] in ("latent", "cross"))
    return summarize(pairs)


def predictions_by_model(rows: Iterable[dict], mode: str, ids: Sequence[str]) -> dict[str, list[str]]:
    """``{model: [prediction of ids[0], ids[1], ...]}`` for the rows of one mode."""
    by_model: dict[str, dict[str, str]] = {}
    for row in rows:
        if row["mode"] == mode:
            by_model.setdefault(row["model"], {})[row["id"]] = row["prediction"]
    return {model: [predictions[i] for i in ids] for model, predictions in by_model.items()}


def agreement(predictions: dict[str, Sequence[str]]) -> list[dict]:
    """Share of examples where two models' normalised predictions match, for every pair of models.

    Args:
        predictions: ``{model: predictions}``, all in the same example order.
    Returns:
        ``[{"a", "b", "share"}]`` per unordered pair, ``share`` in [0, 1].
    """
    return [
        {"a": a, "b": b, "share": mean(normalized_equal(p, q) for p, q in zip(predictions[a], predictions[b]))}
        for a, b in itertools.combinations(predictions, 2)
    ]


def interlingua_distance(z_a: Tensor, z_b: Tensor) -> dict[str, float]:
    """Mean L2 distance and mean cosine similarity between ``z_a[i]`` and ``z_b[i]`` (same example).

    Args:
        z_a, z_b: ``(B, d)`` or ``(B, M, d)``; flattened to ``(B, M·d)``.
    """
    flat_a = z_a.detach().float().reshape(z_a.shape[0], -1)  # (B, M·d)
    flat_b = z_b.detach().float().reshape(z_b.shape[0], -1)  # (B, M·d)
    return {
        "mean_l2": (flat_a - flat_b).norm(dim=-1).mean().item(),
        "mean_cosine": F.cosine_similarity(flat_a, flat_b, dim=-1).mean().item(),
    }


def distinct_share(predictions: Sequence[str]) -> float:
    """Distinct normalised predictions / predictions: near 0 when every input gets the same answer."""
    return len({normalize_answer(p) for p in predictions}) / len(predictions)


def message_sizes(system: InterlinguaSystem, key: str, z: Tensor, texts: Sequence[str]) -> dict:
    """What the receiver reads and what travels, next to the text prompt it replaces.

    Returns:
        soft-prompt positions (BOS + M + answer cue, measured on the prefix the model reads), the text
        prompt's mean token count (BOS and chat template included), wire bytes of one ``z`` (fp32),
        and the mean UTF-8 / gzip bytes of the raw prompt text.
    """
    lm = system.lms[key]
    slots = system.model.spec.interlingua.num_slots
    probe = torch.zeros(1, slots, lm.hidden_size, device=lm.device, dtype=lm.dtype)  # (1, M, d)
    return {
        "num_slots": slots,
        "soft_prompt_positions": lm.soft_prefix(probe).embeddings.shape[1],
        "mean_text_prompt_tokens": mean(len(lm.prompt_token_ids(t)) for t in texts),
        "wire_precision": "fp32",
        "wire_bytes": z[0].numel() * FP32_BYTES,
        "mean_prompt_utf8_bytes": mean(utf8_bytes(t) for t in texts),
        "mean_prompt_gzip_bytes": mean(gzip_bytes(t) for t in texts),
    }


def information_flow(baselines: dict, latent: dict, margin: float = INFORMATION_FLOW_MARGIN_F1) -> dict[str, dict]:
    """Per model: does the answer travel through ``z``? Latent F1 must beat both the shuffled-z control
    and the question-only baseline by more than ``margin`` F1 points.

    Args:
        baselines: :func:`~interlingua.eval.baselines.summarize` of the baseline rows.
        latent: the summary from :func:`evaluate_latent`.
    Returns:
        ``{model: {"latent_f1", "shuffled_f1", "question_only_f1", "margin_f1", "flows"}}``.
    """
    verdicts = {}
    for model, scores in latent["scores"].items():
        latent_f1, shuffled_f1 = scores["latent"]["f1"], scores["shuffled"]["f1"]
        question_only_f1 = baselines[model]["question_only"]["f1"]
        verdicts[model] = {
            "latent_f1": latent_f1, "shuffled_f1": shuffled_f1, "question_only_f1": question_only_f1,
            "margin_f1": margin,
            "flows": latent_f1 > shuffled_f1 + margin and latent_f1 > question_only_f1 + margin,
        }
    return verdicts
