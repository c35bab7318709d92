"""The loss of one micro-batch (DESIGN §3): L = w_gen·L_gen + w_align·L_align + w_sem·L_sem + w_kd·L_kd.

    forward = LearnedForward(system)                         # the only module with trainable weights
    norm = loss_norm(system.lms, global_batch_answers, k)   # once per optimizer step
    out = batch_loss(system, forward, micro.texts, micro.answers, config.loss, norm)
    out.total.backward()

**Normalisation.** Each loss term is a mean: L_gen and L_kd over the real answer positions of each
model, L_align and L_sem over examples. A micro-batch's term is scaled by its share of the optimizer
step's *global* batch (its real positions / all real positions for that model; its examples / all
examples), so summing the micro-batch losses of all ``grad_accum`` passes and all processes gives
exactly the loss of the global batch in one pass. Hence ``batch_size=2, grad_accum=2`` takes the same
update as ``batch_size=4, grad_accum=1`` (to float rounding), and 1 or N processes agree too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from interlingua.config import LossConfig
from interlingua.losses import alignment_loss, combine_losses, k_token_ce, semantic_anchor_loss
from interlingua.pipeline import Anchor, InterlinguaSystem


@dataclass
class LossNorm:
    """The size of an optimizer step's global batch, which every micro-batch's terms are divided by."""

    examples: int
    """Examples in the global batch (divides L_align and L_sem)."""
    positions: dict[str, int]
    """Model key -> real answer positions in the global batch (divides L_gen and L_kd of that model)."""


@dataclass
class StepLoss:
    """What one micro-batch produced."""

    total: Tensor
    """fp32 scalar to back-propagate."""
    terms: dict[str, float]
    """The unweighted terms ("gen", "align", "sem", "kd" — those with a non-zero weight) and "total"."""
    zs: dict[str, Tensor]
    """Model key -> z ``(B, d_inter)`` or ``(B, M, d_inter)``, detached (for collapse diagnostics)."""
    soft_prompts: dict[str, Tensor]
    """Model key -> soft prompt ``(B, M, d_m)``, detached."""


class LearnedForward(nn.Module):
    """All of the learned modules' work for one batch in a single call.

    Distributed data parallelism synchronises gradients through the wrapped module's ``forward``, so
    the encoders of every model, every adapter and the anchor target run inside this one call. The
    frozen LLMs and the sentence encoder are reached through ``system`` (a plain attribute): they are
    not submodules, so they are never wrapped, replicated into the optimizer, or saved.

    Args:
        system: the learned model plus the frozen LLMs and encoder.
    """

    def __init__(self, system: InterlinguaSystem):
        super().__init__()
        self.model = system.model  # registered: its parameters are this module's parameters
        self._system = system  # not a Module: stays out of parameters(), state_dict() and DDP

    def forward(self, texts: list[str], anchor: Anchor) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """Returns ``(zs, soft_prompts, anchor_target)``: z and own-model soft prompt per model key,
        and the fixed anchor projection ``(B, d_inter)`` that L_sem compares z with."""
        zs = {key: self._system.encode(key, texts, anchor) for key in self._system.lms}
        soft_prompts = {key: self.model.soft_prompt(key, z) for key, z in zs.items()}
        anchor_target = self.model.aligner.project_anchor(anchor.states, anchor.mask)
        return zs, soft_prompts, anchor_target


def loss_norm(lms: dict, answers: list[str], k_tokens: int) -> LossNorm:
    """The :class:`LossNorm` of a global batch with gold ``answers`` (one per example)."""
    positions = {key: max(int(lm.answer_targets(answers, k_tokens).mask.sum()), 1) for key, lm in lms.items()}
    return LossNorm(examples=len(answers), positions=positions)


def batch_loss(
    system: InterlinguaSystem,
    forward: nn.Module,
    texts: list[str],
    answers: list[str],
    config: LossConfig,
    norm: LossNorm | None = None,
) -> StepLoss:
    """Loss of one micro-batch, over every model of ``system``.

    Args:
        system: learned model + frozen LLMs (all of them are trained together, N >= 2) + encoder.
        forward: :class:`LearnedForward` of ``system``, possibly wrapped for data parallelism.
        texts: ``B`` text prompts (already cut to the token budget).
        answers: ``B`` gold answers (the first of each example).
        config: loss weights, K and the KD temperature. A term with weight 0 is not computed (no
            teacher forward when ``w_kd = 0``).
        norm: the optimizer step's global batch; None = this batch alone (plain means).
    Returns:
        :class:`StepLoss`.
    Raises:
        FloatingPointError: a term is NaN or inf (from :func:`combine_losses`; names the term).
    """
    anchor = system.anchor(texts)  # (B, d_sem) or (B, S, d_sem): frozen, no gradient
    zs, soft_prompts, anchor_target = forward(texts, anchor)
    example_share = len(texts) / norm.examples if norm else 1.0
    needs_logits = config.w_gen or config.w_kd  # L_align and L_sem alone need no LLM forward
    gen, kd = [], []
    for key, lm in system.lms.items() if needs_logits else []:
        targets = lm.answer_targets(answers, config.k_tokens)  # (B, K) ids and mask
        share = int(targets.mask.sum()) / norm.positions[key] if norm else 1.0
        student = lm.target_logits(lm.soft_prefix(soft_prompts[key]), targets)  # (B, K, V) fp32
        if config.w_gen:
            gen.append(k_token_ce(student, targets.ids, targets.mask) * share)
        if config.w_kd:
            # The teacher is the same frozen LLM reading the text prompt (cached top-k when installed).
            teacher = system.kd_teacher(key, config.kd_temperature)
            kd.append(teacher.kd_loss(student, texts, targets) * share)
    terms: dict[str, Tensor] = {}
    if gen:
        terms["gen"] = torch.stack(gen).sum()
    if kd:
        terms["kd"] = torch.stack(kd).sum()
    if config.w_align:
        terms["align"] = alignment_loss(zs) * example_share
    if config.w_sem:
        terms["sem"] = semantic_anchor_loss(zs, anchor_target) * example_share
    total = combine_losses(terms, config)
    floats = {name: float(value.detach()) for name, value in terms.items()} | {"total": float(total.detach())}
    return StepLoss(total, floats, _detached(zs), _detached(soft_prompts))


def _detached(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: tensor.detach() for key, tensor in tensors.items()}
