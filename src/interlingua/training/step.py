"""The loss of one micro-batch (DESIGN §3): L = w_gen·L_gen + w_align·L_align + w_sem·L_sem + w_kd·L_kd.

    forward = system                                         # or its DistributedDataParallel wrapper
    norm = loss_norm(system.lms, global_batch_answers, k)   # once per optimizer step
    out = batch_loss(system, forward, micro, Stage.QA, config.loss, norm)   # micro: a batches.MicroBatch
    out.total.backward()

**Normalisation.** Each loss term is a mean: L_gen and L_kd over the real answer positions of each
model, L_align and L_sem over examples. A micro-batch's term is scaled by its share of the optimizer
step's *global* batch (its real positions / all real positions for that model; its examples / all
examples), so summing the micro-batch losses of all ``grad_accum`` passes and all processes gives
exactly the loss of the global batch in one pass. Hence ``batch_size=2, grad_accum=2`` takes the same
update as ``batch_size=4, grad_accum=1`` (to float rounding), and 1 or N processes agree too.

One exception: the contrastive term L_nce (``loss.w_nce > 0``) takes its negatives from the other
examples of the *micro-batch* (of this process), so its value depends on the ``batch_size ×
grad_accum`` split and on the number of processes, not only on the global batch. It is scaled by the
example share like L_align, so it stays a mean over the global batch's examples of a per-example
loss whose negatives are that example's micro-batch.

**Stages.** In the reconstruction stage (``stage=Stage.RECONSTRUCT``, ``pretrain.*``) L_gen and
L_kd are replaced by L_rec (weight 1): CE of each frozen LLM predicting the first R tokens of the
text the aligner read after ``[BOS?] + soft prompt + RECONSTRUCTION_CUE``, normalised like L_gen
over the real target positions of the global batch (``LossNorm.rec_positions``). L_align, L_sem and
L_nce apply in both stages; ``loss.w_rec > 0`` also adds L_rec to the QA stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor, nn

from interlingua.config import LossConfig
from interlingua.constants import RECONSTRUCTION_CUE
from interlingua.data.prompts import question_suffix
from interlingua.losses import (
    alignment_loss,
    combine_losses,
    contrastive_loss,
    k_token_ce,
    kd_loss,
    l1_penalty,
    semantic_anchor_loss,
)
from interlingua.models.frozen_lm import FrozenLM, Targets
from interlingua.models.native import NativeInterlingua, summary
from interlingua.models.system import Interlingua
from interlingua.training.batches import MicroBatch


class Stage(str, Enum):
    """What an optimizer step trains (``pretrain.steps`` first, then ``train.steps``)."""

    RECONSTRUCT = "reconstruct"  # L_rec (+ align, sem, nce): repeat the text from the soft prompt
    QA = "qa"  # L_gen + L_kd (+ align, sem, nce): answer the question


@dataclass
class LossNorm:
    """The size of an optimizer step's global batch, which every micro-batch's terms are divided by."""

    examples: int
    """Examples in the global batch (divides L_align, L_sem and L_nce)."""
    positions: dict[str, int]
    """Model key -> real answer positions in the global batch (divides L_gen and L_kd of that model)."""
    rec_positions: dict[str, int] = field(default_factory=dict)
    """Model key -> real reconstruction target positions in the global batch (divides L_rec of that
    model); empty when the step trains no L_rec."""


@dataclass
class StepLoss:
    """What one micro-batch produced."""

    total: Tensor
    """fp32 scalar to back-propagate."""
    terms: dict[str, float]
    """The unweighted terms (those of ``LOSS_TERMS`` the stage computes with a non-zero weight) and "total"."""
    zs: dict[str, Tensor]
    """Model key -> z ``(B, d_inter)`` or ``(B, M, d_inter)``, detached (for collapse diagnostics)."""
    soft_prompts: dict[str, Tensor]
    """Model key -> soft prompt ``(B, M, d_m)``, detached."""


def kd_teacher(system: Interlingua, key: str, temperature: float):
    """The KD teacher of model ``key``: the one the recipe installed (``cache.install_caches``), else the
    exact, uncached one.

    Raises:
        ValueError: the installed teacher has another temperature than the loss asks for.
    """
    from interlingua.cache.teacher import KDTeacher

    teacher = system.teachers.get(key)
    if teacher is None:
        return KDTeacher(system.lms[key], temperature)
    if teacher.temperature != temperature:
        raise ValueError(
            f"{key}: the installed KD teacher has τ={teacher.temperature}, the loss asks for τ={temperature}"
        )
    return teacher


def loss_norm(
    lms: dict, answers: list[str], k_tokens: int, texts: list[str] | None = None, rec_tokens: int = 0
) -> LossNorm:
    """The :class:`LossNorm` of a global batch with gold ``answers`` (one per example) and, when the
    step trains L_rec (``rec_tokens > 0``), the ``texts`` the aligner reads."""
    positions = {key: max(int(lm.answer_targets(answers, k_tokens).mask.sum()), 1) for key, lm in lms.items()}
    rec_positions = {}
    if rec_tokens:
        if texts is None or len(texts) != len(answers):
            raise ValueError("loss_norm with rec_tokens > 0 needs the global batch's texts, one per answer")
        rec_positions = {key: max(int(reconstruction_targets(lm, texts, rec_tokens).mask.sum()), 1)
                         for key, lm in lms.items()}
    return LossNorm(examples=len(answers), positions=positions, rec_positions=rec_positions)


def reconstruction_targets(lm: FrozenLM, texts: list[str], tokens: int) -> Targets:
    """The first ``tokens`` tokens of each text exactly as the aligner read them (``tokenize_plain``:
    no special tokens, so BOS is never a target): ids and mask ``(B, R)``, ``R = min(tokens, longest)``."""
    ids, mask = lm.tokenize_plain(texts)  # (B, T) right-padded
    return Targets(ids[:, :tokens], mask[:, :tokens])


def batch_loss(
    system: Interlingua,
    forward: nn.Module,
    batch: MicroBatch,
    stage: Stage,
    config: LossConfig,
    norm: LossNorm | None = None,
    rec_tokens: int = 0,
) -> StepLoss:
    """Loss of one micro-batch, over every model of ``system``.

    Args:
        system: learned model + frozen LLMs (all of them are trained together, N >= 2) + encoder.
        forward: ``system`` itself, or ``system`` wrapped for data parallelism (its ``forward`` runs the
            learned modules; with ``compression.qat`` the soft prompts read the wire's z).
        batch: ``B`` training items (:class:`~interlingua.training.batches.MicroBatch`): ``texts`` (the text
            prompts, already cut to the token budget: what the KD teacher reads), ``answers`` (the first
            gold answer of each), ``sender_texts`` (what the aligner, the anchor and L_rec's targets read:
            ``Context: …`` alone with ``interlingua.conditioning=hybrid``, else ``texts``) and ``questions``
            (hybrid: what the student reads as text after its soft prompt; None = the answer cue alone).
        stage: ``Stage.QA`` (L_gen, L_kd, and L_rec if ``w_rec > 0``) or ``Stage.RECONSTRUCT`` (L_rec
            with weight 1 instead of L_gen and L_kd). L_align, L_sem, L_nce and L1 apply in both.
        config: ``loss.*``: the weights (L1 = ``w_l1``), K and the KD temperature. A term with weight 0 is
            not computed (no teacher forward when ``w_kd = 0``).
        norm: the optimizer step's global batch; None = this batch alone (plain means).
        rec_tokens: R, the reconstruction targets per text (``pretrain.tokens``); needed when L_rec is
            trained (then ``norm`` must come from ``loss_norm(..., texts, rec_tokens)``).
    Returns:
        :class:`StepLoss`.
    Raises:
        FloatingPointError: a term is NaN or inf (from :func:`combine_losses`; names the term).
        ValueError: L_rec is trained without ``rec_tokens > 0``; ``loss.w_nce > 0`` with B < 2.
    """
    config = _stage_weights(config, Stage(stage))
    if config.w_rec and rec_tokens <= 0:
        raise ValueError(f"L_rec needs rec_tokens > 0 (pretrain.tokens), got {rec_tokens}")
    if isinstance(system.model, NativeInterlingua):
        return native_batch_loss(system, forward, batch, config, norm, rec_tokens)
    texts, answers, sender_texts, questions = batch.texts, batch.answers, batch.sender_texts, batch.questions
    anchor = system.anchor(sender_texts)  # (B, d_sem) or (B, S, d_sem): frozen, no gradient
    zs, soft_prompts, anchor_target = forward(sender_texts, anchor)
    example_share = len(texts) / norm.examples if norm else 1.0
    needs_logits = config.w_gen or config.w_kd  # L_align and L_sem alone need no LLM forward
    gen, kd = [], []
    for key, lm in system.lms.items() if needs_logits else []:
        targets = lm.answer_targets(answers, config.k_tokens)  # (B, K) ids and mask
        share = int(targets.mask.sum()) / norm.positions[key] if norm else 1.0
        prefix = lm.soft_prefix(soft_prompts[key], questions=questions)  # hybrid: the question follows as text
        student = lm.target_logits(prefix, targets)  # (B, K, V) fp32
        if config.w_gen:
            gen.append(k_token_ce(student, targets.ids, targets.mask) * share)
        if config.w_kd:
            # The teacher is the same frozen LLM reading the text prompt (cached top-k when installed).
            teacher = kd_teacher(system, key, config.kd_temperature)
            kd.append(teacher.kd_loss(student, texts, targets) * share)
    terms: dict[str, Tensor] = {}
    if config.w_rec:
        terms["rec"] = _reconstruction_loss(system, soft_prompts, sender_texts, rec_tokens, norm)
    if gen:
        terms["gen"] = torch.stack(gen).sum()
    if kd:
        terms["kd"] = torch.stack(kd).sum()
    return _with_z_terms(terms, zs, anchor_target, config, example_share, soft_prompts)


def _with_z_terms(terms: dict[str, Tensor], zs: dict[str, Tensor], anchor_target: Tensor, config: LossConfig,
                  example_share: float, soft_prompts: dict[str, Tensor]) -> StepLoss:
    """Add the terms on z (align, sem, nce, l1; weighted by the example share) to the token terms and combine."""
    if config.w_align:
        terms["align"] = alignment_loss(zs) * example_share
    if config.w_sem:
        terms["sem"] = semantic_anchor_loss(zs, anchor_target) * example_share
    if config.w_nce:
        terms["nce"] = contrastive_loss(zs, config.nce_temperature) * example_share
    if config.w_l1:
        terms["l1"] = l1_penalty(zs) * example_share
    total = combine_losses(terms, config)
    floats = {name: float(value.detach()) for name, value in terms.items()} | {"total": float(total.detach())}
    return StepLoss(total, floats, _detached(zs), _detached(soft_prompts))


def native_batch_loss(
    system: Interlingua, forward: nn.Module, batch: MicroBatch, config: LossConfig, norm: LossNorm | None,
    rec_tokens: int,
) -> StepLoss:
    """:func:`batch_loss` of the native design (``config`` already weighted for the stage): every receiver
    b reads every sender a's z.

    L_gen and L_kd (from b's own text teacher), L_kd_z (from b reading a's z of the frozen starting
    checkpoint, ``Interlingua.interlingua_teacher``) and L_rec (b repeats the first R tokens of the sent
    text in its own tokenisation after ``soft tokens + RECONSTRUCTION_CUE``, teacher-forced) are means over
    the senders for each receiver, summed over receivers like the seed's per-model terms, so their scale
    does not grow with N. L_align, L_sem, L_nce and L1 compare the senders' masked-mean summaries ``(B, d_inter)``
    (the senders' token sequences differ in length)."""
    texts, answers, sender_texts, questions = batch.texts, batch.answers, batch.sender_texts, batch.questions
    anchor = system.anchor(sender_texts)
    latents, soft, anchor_target = forward(sender_texts, anchor)
    senders = list(latents)
    teacher_soft = None
    if config.w_kd_z:
        if system.interlingua_teacher is None:
            raise RuntimeError("loss.w_kd_z > 0 but no interlingua teacher is installed (the training recipe "
                               "installs the train.init_from checkpoint)")
        with torch.no_grad():
            teacher_soft = system.interlingua_teacher(sender_texts, anchor)[1]
    answer_tails = [question_suffix(q) for q in questions] if questions is not None else [""] * len(texts)
    example_share = len(texts) / norm.examples if norm else 1.0
    gen, kd, kd_z, rec = [], [], [], []
    for receiver, lm in system.lms.items():
        if config.w_gen or config.w_kd or config.w_kd_z:
            targets = lm.answer_targets(answers, config.k_tokens)  # (B, K)
            share = int(targets.mask.sum()) / norm.positions[receiver] if norm else 1.0
            teacher = kd_teacher(system, receiver, config.kd_temperature) if config.w_kd else None
            for sender in senders:
                tokens = soft[(sender, receiver)]
                student = lm.target_logits(lm.soft_tokens_prefix(tokens.embeddings, tokens.mask, answer_tails), targets)
                if config.w_gen:
                    gen.append(k_token_ce(student, targets.ids, targets.mask) * share / len(senders))
                if config.w_kd:
                    kd.append(teacher.kd_loss(student, texts, targets) * share / len(senders))
                if config.w_kd_z:
                    fixed = teacher_soft[(sender, receiver)]
                    with torch.no_grad():
                        reference = lm.target_logits(
                            lm.soft_tokens_prefix(fixed.embeddings, fixed.mask, answer_tails), targets)
                    kd_z.append(kd_loss(student, reference, targets.mask, config.kd_temperature)
                                * share / len(senders))
        if config.w_rec:
            targets = reconstruction_targets(lm, sender_texts, rec_tokens)  # (B, R) in the receiver's tokens
            share = int(targets.mask.sum()) / norm.rec_positions[receiver] if norm else 1.0
            for sender in senders:
                tokens = soft[(sender, receiver)]
                prefix = lm.soft_tokens_prefix(tokens.embeddings, tokens.mask, [RECONSTRUCTION_CUE] * len(texts))
                student = lm.target_logits(prefix, targets)
                rec.append(k_token_ce(student, targets.ids, targets.mask) * share / len(senders))
    # (B, d_inter): a narrow wire's message is compared as the receivers read it, in the space the terms were tuned in
    summaries = {key: summary(system.model.widened(latent)) for key, latent in latents.items()}
    token_terms = (("gen", gen), ("kd", kd), ("kd_z", kd_z), ("rec", rec))
    terms: dict[str, Tensor] = {name: torch.stack(parts).sum() for name, parts in token_terms if parts}
    own = {key: soft[(key, key)].embeddings for key in system.lms}
    return _with_z_terms(terms, summaries, anchor_target, config, example_share, own)


def _stage_weights(config: LossConfig, stage: Stage) -> LossConfig:
    """The weights of ``stage``: the QA stage's are ``config``; the reconstruction stage trains L_rec
    with weight 1 in place of L_gen and the KD terms."""
    if stage == Stage.RECONSTRUCT:
        return dataclasses.replace(config, w_gen=0.0, w_kd=0.0, w_kd_z=0.0, w_rec=1.0)
    return config


def _reconstruction_loss(
    system: Interlingua, soft_prompts: dict[str, Tensor], texts: list[str], tokens: int, norm: LossNorm | None
) -> Tensor:
    """L_rec summed over models: CE of each frozen LLM on the first ``tokens`` tokens of ``texts``
    after ``[BOS?] + soft prompt + RECONSTRUCTION_CUE``, teacher-forced, logits at those positions only."""
    losses = []
    for key, lm in system.lms.items():
        ce, positions = reconstruction_ce(lm, soft_prompts[key], texts, tokens)
        losses.append(ce * (positions / norm.rec_positions[key] if norm else 1.0))
    return torch.stack(losses).sum()


def reconstruction_ce(lm: FrozenLM, soft_prompt: Tensor, texts: list[str], tokens: int) -> tuple[Tensor, int]:
    """CE per target token of ``lm`` on the first ``tokens`` tokens of ``texts`` after ``[BOS?] +
    soft_prompt (B, M, d) + RECONSTRUCTION_CUE``, teacher-forced, logits at those positions only, and
    the number of real target positions it averages over."""
    targets = reconstruction_targets(lm, texts, tokens)  # (B, R) ids and mask
    student = lm.target_logits(lm.soft_prefix(soft_prompt, cue=RECONSTRUCTION_CUE), targets)  # (B, R, V) fp32
    return k_token_ce(student, targets.ids, targets.mask), int(targets.mask.sum())


def _detached(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: tensor.detach() for key, tensor in tensors.items()}
