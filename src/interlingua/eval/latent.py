"""Latent rows of the evaluation protocol (DESIGN §5): answers decoded from the interlingua ``z``.

Every model sends (its text prompt -> ``z``) and every model receives (``z`` -> soft prompt -> answer):

* ``latent``: sender = receiver;
* ``cross``: ``z`` of sender a decoded by receiver b ≠ a (with ``latent`` on the diagonal this is the
  cross-decode matrix);
* ``shuffled``: each example decoded from another example's ``z`` (a fixed seeded derangement, sender =
  receiver). It must fall to the question-only level if the answer really travels through ``z``.

With ``interlingua.conditioning=hybrid`` (read from the checkpoint's spec) the senders encode
``Context: …`` alone and every receiver reads the example's *own* question as text after the soft
prompt, in all three modes. The shuffled row is then "this question + an unrelated context".

Around the scores: cross-model agreement, interlingua distance, collapse diagnostics, and the size of
the message (receiver positions, wire bytes) next to the text prompt it replaces.

    rows, summary = evaluate_latent(system, examples, config, text_rows=baseline_rows)
"""

from __future__ import annotations

import contextlib
import itertools
import random
from statistics import mean
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from interlingua.artifacts.files import gzip_bytes, utf8_bytes
from interlingua.codec.message import message_size
from interlingua.codec.quantize import FLOAT_DTYPES, dequantize, quantize
from interlingua.codec.vocabulary import VocabularyCode
from interlingua.config import CompressionConfig, Conditioning, Config, ConfigError, Precision
from interlingua.data.prompts import sender_prompt, shared_text_prompt
from interlingua.data.squad import SquadExample
from interlingua.eval.baselines import summarize
from interlingua.eval.metrics import normalize_answer, normalized_equal, per_example_scores
from interlingua.losses import collapse_diagnostics
from interlingua.models.batching import generate_batched
from interlingua.models.system import Interlingua

LATENT_MODES = ("latent", "shuffled", "cross")
INFORMATION_FLOW_MARGIN_F1 = 2.0
"""F1 points (×100 scale) latent must beat both the shuffled-z control and question-only by."""


def evaluate_latent(
    system: Interlingua,
    examples: Sequence[SquadExample],
    config: Config,
    text_rows: Sequence[dict] | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Every latent, cross and shuffled-z row, and the summary of the latent evaluation.

    Args:
        system: learned modules + frozen LLMs + encoder (put in eval mode here, then restored).
        examples: validation examples (at least 2, so that the shuffled control exists).
        config: ``eval.batch_size``, ``eval.max_new_tokens``, ``data.max_prompt_tokens``, ``runtime.seed``,
            and ``compression.precision`` / ``group_size``: every z is decoded as the wire delivers it.
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
        texts = sender_texts(system, examples, config)
        # Every receiver decodes z as the wire delivers it at compression.precision (fp32: unchanged).
        zs = {key: received_z(encode_all(system, key, texts, config, progress), config.compression) for key in keys}
        permutation = derangement(len(examples), config.runtime.seed)
        rows: list[dict] = []
        for receiver in keys:
            for sender in keys:
                mode = "latent" if sender == receiver else "cross"
                rows += decode_rows(system, examples, zs[sender], sender, receiver, mode, config, progress)
            shuffled = zs[receiver][permutation]  # (n, ...): example i gets the z of example permutation[i]
            rows += decode_rows(system, examples, shuffled, receiver, receiver, "shuffled", config, progress,
                                z_examples=[examples[j] for j in permutation])
    hybrid = conditioning_of(system) == Conditioning.HYBRID
    summary = latent_summary(
        system, rows, zs, texts, [e.id for e in examples], text_rows, config.runtime.seed,
        questions=[e.question for e in examples] if hybrid else None,
        text_prompts=prompt_texts(system, examples, config) if hybrid else None,
        compression=config.compression,
    )
    return rows, summary


def evaluate_own_latent(
    system: Interlingua,
    examples: Sequence[SquadExample],
    config: Config,
    progress: bool = True,
    sent: Optional[SentZ] = None,
) -> tuple[list[dict], dict]:
    """Only the ``latent`` rows (each model decodes its own z, through the wire at ``compression.*``) and
    their summary: the per-model scores and message sizes of a compression sweep cell, without the
    cross-decode and shuffled-z controls (N decodes per example instead of N·(N+1)).

    Args:
        system, examples, config: as for :func:`evaluate_latent`.
        sent: a memo of what the senders encode, shared by calls that evaluate one checkpoint at several
            wire precisions (a sweep) so each sender encodes the examples once.
    Returns:
        ``n × N`` rows, and the summary of :func:`latent_summary` over them (``scores`` hold ``latent`` only).
    Raises:
        ConfigError: fewer than 2 examples (collapse diagnostics and agreement need two).
    """
    if len(examples) < 2:
        raise ConfigError(f"the latent evaluation needs at least 2 examples, got {len(examples)}; raise eval.limit")
    with _eval_mode(system.model):
        texts = sender_texts(system, examples, config)
        encode = (sent if sent is not None else SentZ()).encoder(system, texts, config, progress)
        zs = {key: received_z(encode(key), config.compression) for key in system.lms}
        rows = [row for key in system.lms
                for row in decode_rows(system, examples, zs[key], key, key, "latent", config, progress)]
    hybrid = conditioning_of(system) == Conditioning.HYBRID
    summary = latent_summary(
        system, rows, zs, texts, [e.id for e in examples], shuffle_seed=config.runtime.seed,
        questions=[e.question for e in examples] if hybrid else None,
        text_prompts=prompt_texts(system, examples, config) if hybrid else None,
        compression=config.compression,
    )
    return rows, summary


# ---- sending and receiving ---------------------------------------------------------------------
def conditioning_of(system: Interlingua) -> Conditioning:
    """``interlingua.conditioning`` the learned modules were trained with."""
    return system.model.spec.interlingua.conditioning


def prompt_texts(system: Interlingua, examples: Sequence[SquadExample], config: Config) -> list[str]:
    """The raw text prompt of each example (``Context: …\\nQuestion: …\\nAnswer:``), the same as training
    reads: cut to fit ``data.max_prompt_tokens`` in every model's tokenizer."""
    tokenizers = [lm.tokenizer for lm in system.lms.values()]
    budget = config.data.max_prompt_tokens
    return [shared_text_prompt(tokenizers, e.context, e.question, budget) for e in examples]


def sender_texts(system: Interlingua, examples: Sequence[SquadExample], config: Config) -> list[str]:
    """What each example sends, the same for every sender and the anchor and the same as training reads:
    :func:`prompt_texts` (``full``) or ``Context: …`` alone (``hybrid``), cut to fit every tokenizer."""
    tokenizers = [lm.tokenizer for lm in system.lms.values()]
    budget, conditioning = config.data.max_prompt_tokens, conditioning_of(system)
    return [sender_prompt(tokenizers, e.context, e.question, budget, conditioning) for e in examples]


def encode_all(system: Interlingua, sender: str, texts: Sequence[str], config: Config, progress: bool) -> Tensor:
    """``z`` of every text read through ``sender`` (:meth:`Interlingua.encode_rows`, ``eval.batch_size``).

    Returns:
        ``(n, d_inter)`` or ``(n, M, d_inter)`` fp32 on the CPU, in the order of ``texts``.
    """
    return torch.stack(system.encode_rows(sender, texts, config.eval.batch_size, progress))


class SentZ:
    """What each sender encodes (fp32 ``z`` before the wire), kept for the checkpoint evaluated last.

    Keyed by the learned modules' fingerprint, the sender and the texts: another checkpoint, other
    examples or other sender texts encode again, and a new checkpoint drops the old one's tensors.
    """

    def __init__(self) -> None:
        self._fingerprint: Optional[str] = None
        self._z: dict[tuple[str, tuple[str, ...]], Tensor] = {}

    def encoder(
        self, system: Interlingua, texts: Sequence[str], config: Config, progress: bool
    ) -> Callable[[str], Tensor]:
        """``sender -> z`` of ``texts``, encoding only what this memo does not hold yet."""
        fingerprint = system.model.fingerprint()
        if fingerprint != self._fingerprint:
            self._fingerprint, self._z = fingerprint, {}
        texts = tuple(texts)

        def encode(sender: str) -> Tensor:
            key = (sender, texts)
            if key not in self._z:
                self._z[key] = encode_all(system, sender, texts, config, progress)
            return self._z[key]

        return encode


def received_z(z: Tensor, compression: CompressionConfig, code: VocabularyCode | None = None) -> Tensor:
    """What a receiver decodes from each row of ``z`` sent at ``compression.precision`` /
    ``group_size``: ``dequantize(quantize(z[i]))``, the wire's own arithmetic (fp32: ``z`` itself).

    Args:
        z: ``(n, ...)`` fp32 on the CPU, one message per row.
        code: the vocabulary code, for ``precision=vocab`` (``Interlingua.vocabulary_code()``).
    Returns:
        fp32 tensor of ``z``'s shape.
    Raises:
        ValueError: a row the precision cannot carry (NaN/inf, out of range); the message says which.
    """
    precision = Precision(compression.precision)
    if precision is Precision.FP32:
        return z
    if precision is Precision.VOCAB:
        if code is None:
            raise ValueError("precision vocab needs the vocabulary code (Interlingua.vocabulary_code())")
        return torch.stack([code.round_trip(row).cpu() for row in z])
    return torch.stack([dequantize(quantize(row, precision, compression.group_size)) for row in z])


def decode_rows(
    system: Interlingua,
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
        z: ``(n, ...)`` interlinguas, row ``i`` decoded for ``examples[i]`` (with ``examples[i]``'s
            question after the soft prompt when the conditioning is ``hybrid``).
        z_examples: the example each ``z`` row was encoded from (default: ``examples``), kept as ``z_id``.
    """
    lm = system.lms[receiver]
    hybrid = conditioning_of(system) == Conditioning.HYBRID

    def generate(indices: list[int]) -> list[str]:
        with torch.no_grad():
            soft = system.soft_prompt(receiver, z[indices].to(system.device))  # (b, M, d_receiver)
        questions = [examples[i].question for i in indices] if hybrid else None
        return lm.generate(lm.soft_prefix(soft, questions=questions), config.eval.max_new_tokens)

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
    system: Interlingua,
    rows: Sequence[dict],
    zs: dict[str, Tensor],
    texts: Sequence[str],
    ids: Sequence[str],
    text_rows: Sequence[dict] | None = None,
    shuffle_seed: int = 0,
    questions: Sequence[str] | None = None,
    text_prompts: Sequence[str] | None = None,
    compression: CompressionConfig | None = None,
) -> dict:
    """Scores, cross-decode matrix, agreement, distance, collapse and message sizes.

    Args:
        texts: what each example sent (the text z replaces).
        questions, text_prompts: ``hybrid`` only: each example's question (read as text by the
            receiver) and its whole text prompt (see :func:`message_sizes`).
        compression: the wire the messages travel on (see :func:`message_sizes`); default fp32.
    Returns:
        ``{"n", "shuffle_seed", "conditioning", "scores": {model: {latent, shuffled}}, "cross_decode":
        {sender: {receiver}}, "agreement": {"latent": [...], "text": [...]}, "distance": [...],
        "collapse": {model}, "messages": {model}}``; scores ×100, agreement shares in [0, 1];
        ``collapse`` holds :func:`changed_by_shuffle` where the rows have the shuffled-z control.
    """
    latent_predictions = predictions_by_model(rows, "latent", ids)
    changed = changed_by_shuffle(rows, ids)
    agreements = {"latent": agreement(latent_predictions)}
    if text_rows:
        agreements["text"] = agreement(predictions_by_model(text_rows, "text", ids))
    return {
        "n": len(ids),
        "shuffle_seed": shuffle_seed,
        "conditioning": conditioning_of(system).value,
        "scores": summarize(r for r in rows if r["mode"] != "cross"),
        "cross_decode": cross_decode_matrix(rows),
        "agreement": agreements,
        "distance": [{"a": a, "b": b, **interlingua_distance(zs[a], zs[b])} for a, b in itertools.combinations(zs, 2)],
        "collapse": {
            key: {**collapse_diagnostics(z), "distinct_prediction_share": distinct_share(latent_predictions[key]),
                  **({"changed_by_shuffle_share": changed[key]} if key in changed else {})}
            for key, z in zs.items()
        },
        "messages": {
            key: message_sizes(system, key, zs[key], texts, text_prompts, questions, compression) for key in zs
        },
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


def changed_by_shuffle(rows: Iterable[dict], ids: Sequence[str]) -> dict[str, float]:
    """Per receiver: the share of examples whose answer changes when it decodes another example's z.

    Near 0: the receiver ignores z (a constant or unread soft prompt), whatever z holds. High while the
    latent F1 equals the shuffled F1: z steers the answers, but not toward the example's own content.
    Models without shuffled rows (a compression-sweep evaluation) are absent.
    """
    rows = list(rows)
    latent, shuffled = predictions_by_model(rows, "latent", ids), predictions_by_model(rows, "shuffled", ids)
    return {
        model: sum(not normalized_equal(a, b) for a, b in zip(latent[model], shuffled[model])) / len(ids)
        for model in latent if model in shuffled
    }


def message_sizes(
    system: Interlingua,
    key: str,
    z: Tensor,
    texts: Sequence[str],
    text_prompts: Sequence[str] | None = None,
    questions: Sequence[str] | None = None,
    compression: CompressionConfig | None = None,
) -> dict:
    """What the receiver reads and what travels, next to the text it replaces.

    Args:
        z: ``(n, ...)``; the shape of one row is the shape of one message's z.
        texts: what was sent through z (the text prompt; ``Context: …`` in hybrid mode).
        text_prompts: the whole text prompts the text baseline reads; default ``texts``.
        questions: hybrid mode: the questions the receiver reads after its soft prompt.
        compression: ``precision`` and ``group_size`` of the wire; default fp32.
    Returns:
        soft-prompt positions (BOS + M + answer cue, or in hybrid mode the mean of BOS + M + question
        suffix, measured on the prefixes the model reads), the text prompt's mean token count (BOS and
        chat template included), the wire precision and group size (null for float precisions), the bytes
        of one whole wire message (``wire.message_size``: header, scales, payload, checksum), and the mean
        UTF-8 / gzip bytes of the raw text ``z`` replaces.
    """
    precision = Precision(compression.precision if compression else Precision.FP32)
    group_size = None if precision in FLOAT_DTYPES else compression.group_size
    lm = system.lms[key]
    slots = system.model.spec.interlingua.num_slots
    probe = torch.zeros(1, slots, lm.hidden_size, device=lm.device, dtype=lm.dtype)  # (1, M, d)
    if questions is None:
        positions = lm.soft_prefix(probe).embeddings.shape[1]
    else:
        positions = mean(lm.soft_prefix(probe, questions=[q]).embeddings.shape[1] for q in questions)
    return {
        "num_slots": slots,
        "soft_prompt_positions": positions,
        "mean_text_prompt_tokens": mean(len(lm.prompt_token_ids(t)) for t in (text_prompts or texts)),
        "wire_precision": precision.value,
        "wire_group_size": group_size,
        "wire_bytes": message_size(tuple(z.shape[1:]), precision, group_size or 0),
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
