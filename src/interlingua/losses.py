"""Training losses on tensors (DESIGN §3), all computed in fp32, plus collapse diagnostics (DESIGN §4.4).

    L = w_gen·L_gen + w_align·L_align + w_sem·L_sem + w_kd·L_kd          (combine_losses)
        [+ w_nce·L_nce]      contrastive alignment (InfoNCE), loss.w_nce > 0
        [+ w_rec·L_rec]      reconstruction (k_token_ce on text tokens): weight 1 in the pretraining
                             stage (pretrain.*), loss.w_rec in the QA stage (default 0)
        [+ w_l1·mean|z|]     L1 sparsity of z (l1_penalty), loss.w_l1 > 0

The LLM forwards that produce logits at the K answer positions live in the training recipe; here
every loss takes those logits (B, K, V) and a (B, K) mask of real positions. "Mean over real
positions" is pooled over the batch: the loss of a padded batch equals the loss of the concatenation
of its real positions, so an example with more answer tokens weighs more.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from interlingua.config import LossConfig

LOSS_TERMS = ("gen", "align", "sem", "kd", "nce", "rec", "l1", "kd_z")
"""Keys of :func:`combine_losses`' terms; term ``x`` is weighted by ``loss.w_x``."""


def k_token_ce(logits: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the first K answer tokens, mean over real positions.

    Args:
        logits: (B, K, V) next-token logits at the K answer positions.
        targets: (B, K) long answer token ids (tokenised without special tokens); any value where masked.
        target_mask: (B, K) True = real answer token (positions beyond an answer's length are False).
    Returns:
        fp32 scalar; 0 (connected to the graph, not NaN) when no position is real.
    """
    _check_positions(logits, target_mask, "logits")
    if tuple(targets.shape) != tuple(target_mask.shape):
        raise ValueError(f"targets must be (B, K) = {tuple(target_mask.shape)}, got {tuple(targets.shape)}")
    mask = target_mask.bool()
    real_logits = logits[mask].float()  # (N, V), N = real positions
    if real_logits.shape[0] == 0:
        return real_logits.sum()  # 0, with a grad_fn
    return F.cross_entropy(real_logits, targets[mask])


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """τ²·KL(teacher ‖ student) at temperature τ, mean over real positions; the teacher is detached.

    Args:
        student_logits: (B, K, V) logits after the soft prompt.
        teacher_logits: (B, K, V) logits of the same frozen LLM reading the text prompt.
        mask: (B, K) True = real position.
        temperature: τ > 0; both distributions are softmax(logits / τ).
    Returns:
        fp32 scalar; 0 with a grad_fn when no position is real.
    """
    _check_positions(student_logits, mask, "student_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} must match student_logits {tuple(student_logits.shape)}"
        )
    mask = mask.bool()
    student_logp = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)  # (N, V)
    teacher_logp = F.log_softmax(teacher_logits[mask].detach().float() / temperature, dim=-1)  # (N, V)
    kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="none").sum(-1)  # (N,)
    return _mean_or_zero(kl, student_logp) * temperature**2


def compress_teacher_logits(
    teacher_logits: torch.Tensor, k: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compact teacher that :func:`kd_loss_topk` reads (e.g. to cache teachers on disk).

    Args:
        teacher_logits: (B, K, V)
    Returns:
        topk_logits (B, K, k) raw logits, topk_ids (B, K, k), logsumexp (B, K) of ``teacher_logits / τ``.
    """
    teacher_logits = teacher_logits.detach().float()
    topk_logits, topk_ids = teacher_logits.topk(k, dim=-1)  # (B, K, k) each
    return topk_logits, topk_ids, torch.logsumexp(teacher_logits / temperature, dim=-1)  # (B, K)


def kd_loss_topk(
    student_logits: torch.Tensor,
    teacher_topk_logits: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_logsumexp: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """:func:`kd_loss` against a teacher kept as its top-k logits plus one bucket for the rest.

    With p = softmax(teacher / τ), q = softmax(student / τ) and S the teacher's top-k ids, each
    position contributes

        τ² · [ Σ_{i∈S} p_i (log p_i − log q_i)  +  p_rest (log p_rest − log q_rest) ]
        p_i = exp(teacher_i / τ − teacher_logsumexp)
        p_rest = 1 − Σ_{i∈S} p_i,   q_rest = 1 − Σ_{i∈S} q_i

    i.e. the exact KL between the two distributions coarsened to k + 1 outcomes. It is ≤ the full KL,
    and equal to it when k = V (the rest bucket is then empty and dropped).

    Args:
        student_logits: (B, K, V)
        teacher_topk_logits: (B, K, k) raw teacher logits (not divided by τ), distinct ids per position.
        teacher_topk_ids: (B, K, k) their vocabulary ids.
        teacher_logsumexp: (B, K) logsumexp over the FULL vocabulary of teacher_logits / τ — at the same
            τ (see :func:`compress_teacher_logits`).
        mask: (B, K) True = real position.
        temperature: τ.
    Returns:
        fp32 scalar, mean over real positions.
    """
    _check_positions(student_logits, mask, "student_logits")
    k, vocab = teacher_topk_ids.shape[-1], student_logits.shape[-1]
    if teacher_topk_logits.shape != teacher_topk_ids.shape or teacher_topk_ids.shape[:2] != mask.shape:
        raise ValueError(
            f"teacher_topk_logits {tuple(teacher_topk_logits.shape)} and teacher_topk_ids "
            f"{tuple(teacher_topk_ids.shape)} must both be (B, K, k) with (B, K) = {tuple(mask.shape)}"
        )
    mask = mask.bool()
    student_logp = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)  # (N, V)
    ids = teacher_topk_ids[mask]  # (N, k)
    teacher_logp = teacher_topk_logits[mask].detach().float() / temperature  # (N, k)
    teacher_logp = teacher_logp - teacher_logsumexp[mask].detach().float().unsqueeze(-1)  # (N, k) log p_i
    student_logp_topk = student_logp.gather(-1, ids)  # (N, k) log q_i
    kl = (teacher_logp.exp() * (teacher_logp - student_logp_topk)).sum(-1)  # (N,)
    if k < vocab:
        # log p_rest = log(1 − Σ p_i), clamped at 0 against rounding; log q_rest from the student's
        # logits outside S directly (exact, and finite because S misses at least one id).
        p_rest = (-torch.expm1(torch.logsumexp(teacher_logp, dim=-1))).clamp_min(0.0)  # (N,)
        outside = student_logp.scatter(-1, ids, float("-inf"))  # (N, V), top-k ids removed
        student_logp_rest = torch.logsumexp(outside, dim=-1)  # (N,) log q_rest
        kl = kl + torch.xlogy(p_rest, p_rest) - p_rest * student_logp_rest  # (N,)
    return _mean_or_zero(kl, student_logp) * temperature**2


def alignment_loss(zs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the N·(N−1)/2 pairs of models of MSE(z_a, z_b); 0 for a single model.

    Args:
        zs: model key -> z of one shape for all models, (B, d_inter) or (B, M, d_inter).
    """
    _check_same_shapes(zs)
    pairs = list(itertools.combinations(zs.values(), 2))
    if not pairs:
        return next(iter(zs.values())).new_zeros((), dtype=torch.float32)
    return torch.stack([F.mse_loss(za.float(), zb.float()) for za, zb in pairs]).mean()


def semantic_anchor_loss(zs: dict[str, torch.Tensor], anchor_target: torch.Tensor) -> torch.Tensor:
    """Mean over models of MSE(z_m, anchor_target), the target detached.

    Args:
        zs: model key -> z, (B, d_inter) or (B, M, d_inter) (then its mean over the M slots is compared).
        anchor_target: (B, d_inter), from ``AlignmentTransformer.project_anchor``.
    """
    _check_same_shapes(zs)
    target = anchor_target.detach().float()  # (B, d_inter)
    losses = []
    for z in zs.values():
        pooled = z.float().mean(dim=1) if z.dim() == 3 else z.float()  # (B, d_inter)
        if pooled.shape != target.shape:
            raise ValueError(f"anchor_target {tuple(target.shape)} does not fit z {tuple(z.shape)}")
        losses.append(F.mse_loss(pooled, target))
    return torch.stack(losses).mean()


def contrastive_loss(zs: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """InfoNCE between the interlinguas of every pair of models; the other examples are the negatives.

    For a pair (a, b) with ẑ = z flattened to (B, M·d) and L2-normalised, ``logits = ẑ_a ẑ_bᵀ / τ``
    (B, B) and the loss is ½·[CE(logits, diag) + CE(logitsᵀ, diag)]: example i of model a must pick
    example i of model b among the batch, and vice versa. Unlike L_align, a collapsed z (every row
    alike) cannot satisfy it: it then scores log B.

    Args:
        zs: model key -> z of one shape for all models, (B, d_inter) or (B, M, d_inter).
        temperature: τ > 0.
    Returns:
        fp32 scalar, the mean over the N·(N−1)/2 pairs; 0 (connected to the graph) for a single model.
    Raises:
        ValueError: B < 2 (no negatives), τ <= 0, or z of different shapes.
    """
    _check_same_shapes(zs)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (loss.nce_temperature), got {temperature}")
    batch = next(iter(zs.values())).shape[0]
    if batch < 2:
        raise ValueError(
            f"contrastive_loss needs at least 2 examples per batch (the other examples are the negatives), "
            f"got {batch}; raise train.batch_size or set loss.w_nce=0"
        )
    units = {key: F.normalize(z.float().reshape(batch, -1), dim=-1) for key, z in zs.items()}  # (B, M·d) each
    pairs = list(itertools.combinations(units.values(), 2))
    if not pairs:
        return next(iter(units.values())).sum() * 0.0
    labels = torch.arange(batch, device=next(iter(units.values())).device)
    losses = []
    for unit_a, unit_b in pairs:
        logits = unit_a @ unit_b.T / temperature  # (B, B): row i = a's example i against every b
        losses.append((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)
    return torch.stack(losses).mean()


def l1_penalty(zs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of |z| over models and elements: the L1 sparsity term "l1" (weight ``loss.w_l1``).

    Args:
        zs: model key -> z of one shape for all models, (B, d_inter) or (B, M, d_inter).
    Returns:
        fp32 scalar.
    """
    _check_same_shapes(zs)
    return torch.stack([z.float().abs().mean() for z in zs.values()]).mean()


def combine_losses(terms: dict[str, torch.Tensor], config: LossConfig) -> torch.Tensor:
    """Σ w_<term>·term over :data:`LOSS_TERMS` (w_gen·gen + w_align·align + w_sem·sem + w_kd·kd + …).

    Args:
        terms: any of :data:`LOSS_TERMS` -> scalar; a term whose weight is 0 may be left out.
        config: the weights (``loss.w_*``).
    Raises:
        FloatingPointError: a term is NaN or inf; the message names it (stop, keep the last good checkpoint).
        KeyError: an unknown term, or a term with a non-zero weight is missing.
        ValueError: a term is not a scalar.
    """
    weights = {name: (f"loss.w_{name}", getattr(config, f"w_{name}")) for name in LOSS_TERMS}
    unknown = sorted(set(terms) - set(weights))
    if unknown:
        raise KeyError(f"unknown loss terms {unknown}; expected some of {list(weights)}")
    not_scalar = {name: tuple(t.shape) for name, t in terms.items() if t.dim() != 0}
    if not_scalar:
        raise ValueError(f"loss terms must be scalars, got shapes {not_scalar}")
    bad = [f"{name}={terms[name].item()}" for name in weights if name in terms and not _finite(terms[name])]
    if bad:
        raise FloatingPointError(f"non-finite loss term(s): {', '.join(bad)}")
    total = None
    for name, (key, weight) in weights.items():
        if name not in terms:
            if weight != 0:
                raise KeyError(f"loss term {name!r} has weight {key}={weight} but was not computed")
            continue
        weighted = weight * terms[name].float()
        total = weighted if total is None else total + weighted
    if total is None:
        raise KeyError("no loss terms given")
    return total


@torch.no_grad()
def collapse_diagnostics(z: torch.Tensor) -> dict[str, float]:
    """How alike the interlinguas of different prompts are (collapse shows as cosine -> 1, variance -> 0).

    Args:
        z: (B, d) or (B, M, d); flattened to (B, M·d).
    Returns:
        mean_pairwise_cosine (over the B·(B−1) off-diagonal pairs), mean_dim_variance and
        min_dim_variance (population variance across the batch, per dimension). NaN when B < 2.
    """
    flat = z.detach().float().reshape(z.shape[0], -1)  # (B, M·d)
    batch = flat.shape[0]
    if batch < 2:
        return {"mean_pairwise_cosine": math.nan, "mean_dim_variance": math.nan, "min_dim_variance": math.nan}
    unit = F.normalize(flat, dim=-1)  # (B, M·d)
    cosine = unit @ unit.T  # (B, B)
    off_diagonal = cosine.sum() - cosine.diagonal().sum()
    variance = flat.var(dim=0, unbiased=False)  # (M·d,)
    return {
        "mean_pairwise_cosine": (off_diagonal / (batch * (batch - 1))).item(),
        "mean_dim_variance": variance.mean().item(),
        "min_dim_variance": variance.min().item(),
    }


def _check_positions(logits: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(mask.shape):
        raise ValueError(
            f"{name} must be (B, K, V) with (B, K) = mask shape {tuple(mask.shape)}, got {tuple(logits.shape)}"
        )


def _mean_or_zero(per_position: torch.Tensor, graph_anchor: torch.Tensor) -> torch.Tensor:
    """Mean of (N,) losses; with N = 0 a zero that still has a grad_fn (sum of an empty tensor)."""
    return per_position.mean() if per_position.numel() else graph_anchor.sum()


def _check_same_shapes(zs: dict[str, torch.Tensor]) -> None:
    if not zs:
        raise ValueError("zs is empty: pass model key -> z for at least one model")
    shapes = {key: tuple(z.shape) for key, z in zs.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"all z must have the same shape, got {shapes}")


def _finite(term: torch.Tensor) -> bool:
    return bool(torch.isfinite(term.detach()).all())
