"""Losses against hand-written references (plain Python loops, manual log-softmax), masking, NaN guard,
collapse diagnostics, and the contrastive term end to end in a tiny training step."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interlingua.config import LossConfig
from interlingua.losses import (
    alignment_loss,
    collapse_diagnostics,
    combine_losses,
    compress_teacher_logits,
    contrastive_loss,
    k_token_ce,
    kd_loss,
    kd_loss_topk,
    semantic_anchor_loss,
)

MASK = torch.tensor([[True, True, False], [True, False, False]])  # answers of 2 and 1 tokens, K = 3


def log_softmax_ref(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [x / temperature for x in row]
    top = max(scaled)
    log_norm = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - log_norm for x in scaled]


def kl_ref(teacher: list[float], student: list[float], temperature: float) -> float:
    log_p, log_q = log_softmax_ref(teacher, temperature), log_softmax_ref(student, temperature)
    return sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))


def real_positions(mask):
    return [(b, k) for b in range(mask.shape[0]) for k in range(mask.shape[1]) if mask[b, k]]


# ---- K-token CE -------------------------------------------------------------------------------


def test_k_token_ce_matches_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    targets = torch.tensor([[4, 0, -100], [2, 99, 7]])  # masked positions hold junk ids
    expected = [-log_softmax_ref(logits[b, k].tolist())[targets[b, k]] for b, k in real_positions(MASK)]
    loss = k_token_ce(logits, targets, MASK)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-6)


def test_k_token_ce_ignores_masked_logits():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    changed = logits.clone()
    changed[~MASK] = 1e4
    assert k_token_ce(changed, targets, MASK).item() == pytest.approx(k_token_ce(logits, targets, MASK).item())


def test_k_token_ce_bf16_logits_computed_in_fp32():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    loss = k_token_ce(logits.bfloat16(), targets, MASK)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(k_token_ce(logits.bfloat16().float(), targets, MASK).item())


def test_losses_with_no_real_position_are_zero_with_grad():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    none = torch.zeros(2, 3, dtype=torch.bool)
    ce = k_token_ce(logits, torch.zeros(2, 3, dtype=torch.long), none)
    for loss in (ce, kd_loss(logits, torch.randn(2, 3, 5), none, 2.0)):
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() == 0


# ---- KD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_loss_matches_reference(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    per_position = [
        kl_ref(teacher[b, k].tolist(), student[b, k].tolist(), temperature) for b, k in real_positions(MASK)
    ]
    expected = temperature**2 * sum(per_position) / len(per_position)
    assert kd_loss(student, teacher, MASK, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_teacher_is_detached():
    student = torch.randn(2, 3, 6, requires_grad=True)
    teacher = student.detach().clone().requires_grad_()
    loss = kd_loss(student, teacher, MASK, 2.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    (loss + kd_loss(student * 2, teacher, MASK, 2.0)).backward()
    assert teacher.grad is None and student.grad is not None


def concat_real(tensor, mask):
    """(B, K, ...) -> (1, N, ...) holding only the real positions, in order."""
    return tensor[mask].unsqueeze(0)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4), positions=st.integers(1, 4), vocab=st.integers(2, 7),
    seed=st.integers(0, 10_000), temperature=st.floats(0.5, 3.0),
)
def test_batch_equals_concatenation_of_real_positions(batch, positions, vocab, seed, temperature):
    """Padding contract: a padded batch's loss = the loss on the concatenated real positions (pooled mean,
    so each example weighs by its number of real answer tokens)."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, positions, vocab, generator=generator)
    teacher = torch.randn(batch, positions, vocab, generator=generator)
    targets = torch.randint(0, vocab, (batch, positions), generator=generator)
    mask = torch.rand(batch, positions, generator=generator) < 0.6
    mask[0, 0] = True
    full = torch.ones(1, int(mask.sum()), dtype=torch.bool)
    torch.testing.assert_close(
        kd_loss(student, teacher, mask, temperature),
        kd_loss(concat_real(student, mask), concat_real(teacher, mask), full, temperature),
    )
    torch.testing.assert_close(
        k_token_ce(student, targets, mask), k_token_ce(concat_real(student, mask), concat_real(targets, mask), full)
    )
    # ... which is the mean of per-example losses weighted by their number of real positions
    rows = [slice(b, b + 1) for b in range(batch)]
    per_example = [kd_loss(student[r], teacher[r], mask[r], temperature) * mask[r].sum() for r in rows if mask[r].any()]
    weighted = sum(per_example) / mask.sum()
    torch.testing.assert_close(kd_loss(student, teacher, mask, temperature), weighted)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_topk_equals_kd_loss_when_k_is_vocab(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    compact = compress_teacher_logits(teacher, k=6, temperature=temperature)
    torch.testing.assert_close(
        kd_loss_topk(student, *compact, MASK, temperature), kd_loss(student, teacher, MASK, temperature)
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_topk_matches_reference(temperature):
    """k < V: KL between teacher and student coarsened to the teacher's top-k ids + one 'rest' bucket."""
    torch.manual_seed(0)
    k, vocab = 2, 6
    student, teacher = torch.randn(2, 3, vocab, dtype=torch.float64), torch.randn(2, 3, vocab, dtype=torch.float64)
    per_position = []
    for b, pos in real_positions(MASK):
        log_p = log_softmax_ref(teacher[b, pos].tolist(), temperature)
        log_q = log_softmax_ref(student[b, pos].tolist(), temperature)
        top = sorted(range(vocab), key=lambda i: -teacher[b, pos, i].item())[:k]
        p_rest = 1 - sum(math.exp(log_p[i]) for i in top)
        q_rest = 1 - sum(math.exp(log_q[i]) for i in top)
        kl = sum(math.exp(log_p[i]) * (log_p[i] - log_q[i]) for i in top) + p_rest * math.log(p_rest / q_rest)
        per_position.append(kl)
    expected = temperature**2 * sum(per_position) / len(per_position)
    compact = compress_teacher_logits(teacher, k=k, temperature=temperature)
    got = kd_loss_topk(student, *compact, MASK, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() <= kd_loss(student, teacher, MASK, temperature).item() + 1e-6  # coarsening never adds KL


def test_kd_loss_topk_gradient_is_finite():
    student = torch.randn(2, 3, 6, requires_grad=True)
    for k in (2, 6):
        loss = kd_loss_topk(student, *compress_teacher_logits(torch.randn(2, 3, 6), k, 1.5), MASK, 1.5)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(grad).all()


# ---- alignment and semantic anchor ------------------------------------------------------------


def mse_ref(a: torch.Tensor, b: torch.Tensor) -> float:
    flat_a, flat_b = a.flatten().tolist(), b.flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(flat_a, flat_b)) / len(flat_a)


def test_alignment_loss_three_models_three_pairs():
    torch.manual_seed(0)
    zs = {"a": torch.randn(2, 4), "b": torch.randn(2, 4), "c": torch.randn(2, 4)}
    expected = (mse_ref(zs["a"], zs["b"]) + mse_ref(zs["a"], zs["c"]) + mse_ref(zs["b"], zs["c"])) / 3
    assert alignment_loss(zs).item() == pytest.approx(expected, rel=1e-5)


def test_alignment_loss_single_model_is_zero_and_shapes_must_match():
    assert alignment_loss({"a": torch.randn(2, 4)}).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        alignment_loss({"a": torch.randn(2, 4), "b": torch.randn(2, 5)})


def test_semantic_anchor_loss_matches_reference_and_detaches_target():
    torch.manual_seed(0)
    target = torch.randn(2, 4, requires_grad=True)
    zs = {"a": torch.randn(2, 4), "b": torch.randn(2, 4)}
    expected = (mse_ref(zs["a"], target.detach()) + mse_ref(zs["b"], target.detach())) / 2
    loss = semantic_anchor_loss(zs, target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert not loss.requires_grad  # the only graph input was the target, which is detached


def test_semantic_anchor_loss_compares_slot_mean():
    torch.manual_seed(0)
    z, target = torch.randn(2, 3, 4), torch.randn(2, 4)
    slot_mean = torch.tensor([[sum(z[b, m, d].item() for m in range(3)) / 3 for d in range(4)] for b in range(2)])
    assert semantic_anchor_loss({"a": z}, target).item() == pytest.approx(mse_ref(slot_mean, target), rel=1e-5)


# ---- combine ----------------------------------------------------------------------------------


def test_combine_losses_weights():
    config = LossConfig(w_gen=1.0, w_align=0.5, w_sem=0.1, w_kd=0.3)
    terms = {"gen": torch.tensor(2.0), "align": torch.tensor(4.0), "sem": torch.tensor(10.0), "kd": torch.tensor(1.0)}
    assert combine_losses(terms, config).item() == pytest.approx(2.0 + 2.0 + 1.0 + 0.3)
    zero_kd = LossConfig(w_kd=0.0)
    without_kd = {k: v for k, v in terms.items() if k != "kd"}
    assert combine_losses(without_kd, zero_kd).item() == pytest.approx(2.0 + 2.0 + 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_combine_losses_names_the_non_finite_term(bad):
    terms = {"gen": torch.tensor(1.0), "align": torch.tensor(1.0), "sem": torch.tensor(bad), "kd": torch.tensor(1.0)}
    with pytest.raises(FloatingPointError, match="sem") as error:
        combine_losses(terms, LossConfig())
    assert "gen" not in str(error.value) and "kd" not in str(error.value)


def test_combine_losses_rejects_missing_and_unknown_terms():
    with pytest.raises(KeyError, match="w_kd"):
        combine_losses({"gen": torch.tensor(1.0), "align": torch.tensor(1.0), "sem": torch.tensor(1.0)}, LossConfig())
    with pytest.raises(KeyError, match="gne"):
        combine_losses({"gne": torch.tensor(1.0)}, LossConfig())


# ---- collapse diagnostics ---------------------------------------------------------------------


def test_collapse_diagnostics_identical_rows():
    row = torch.randn(3, 8)
    stats = collapse_diagnostics(row.expand(5, 3, 8))
    assert stats["mean_pairwise_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert stats["mean_dim_variance"] == pytest.approx(0.0, abs=1e-10)
    assert stats["min_dim_variance"] == pytest.approx(0.0, abs=1e-10)


def test_collapse_diagnostics_random_rows():
    torch.manual_seed(0)
    stats = collapse_diagnostics(torch.randn(16, 4096))
    assert abs(stats["mean_pairwise_cosine"]) < 0.02
    assert stats["mean_dim_variance"] == pytest.approx(15 / 16, abs=0.05)  # population variance of N(0, 1)
    assert 0 < stats["min_dim_variance"] < stats["mean_dim_variance"]


def test_collapse_diagnostics_reference_and_single_row():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    cosines = [1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)]  # pairs (0,1), (0,2), (1,2)
    variances = [((1 - 2 / 3) ** 2 * 2 + (2 / 3) ** 2) / 3, (1 + 0 + 1) / 3]
    stats = collapse_diagnostics(z)
    assert stats["mean_pairwise_cosine"] == pytest.approx(sum(cosines) / 3, rel=1e-6)
    assert stats["mean_dim_variance"] == pytest.approx(sum(variances) / 2, rel=1e-6)
    assert stats["min_dim_variance"] == pytest.approx(min(variances), rel=1e-6)
    assert all(math.isnan(v) for v in collapse_diagnostics(torch.randn(1, 4)).values())


# ---- contrastive alignment (InfoNCE) ----------------------------------------------------------


def info_nce_ref(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> float:
    """½·(CE rows + CE columns) of cos(z_a_i, z_b_j) / τ, in plain Python."""
    rows_a = [za[i].flatten().tolist() for i in range(za.shape[0])]
    rows_b = [zb[i].flatten().tolist() for i in range(zb.shape[0])]
    unit = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]  # noqa: E731
    rows_a, rows_b = [unit(v) for v in rows_a], [unit(v) for v in rows_b]
    n = len(rows_a)
    logits = [[sum(x * y for x, y in zip(rows_a[i], rows_b[j])) / temperature for j in range(n)] for i in range(n)]
    a_to_b = sum(-log_softmax_ref(logits[i])[i] for i in range(n)) / n
    b_to_a = sum(-log_softmax_ref([logits[j][i] for j in range(n)])[i] for i in range(n)) / n
    return (a_to_b + b_to_a) / 2


def test_contrastive_loss_matches_reference_over_all_pairs():
    """Three models (three pairs), z with M slots flattened to (B, M·d), τ = 0.5."""
    torch.manual_seed(0)
    zs = {name: torch.randn(3, 2, 4) for name in ("a", "b", "c")}
    expected = sum(info_nce_ref(zs[x], zs[y], 0.5) for x, y in (("a", "b"), ("a", "c"), ("b", "c"))) / 3
    loss = contrastive_loss(zs, temperature=0.5)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_contrastive_loss_is_symmetric_in_the_two_models():
    """Swapping the two models leaves the loss unchanged (both directions are averaged)."""
    torch.manual_seed(1)
    za, zb = torch.randn(4, 6), torch.randn(4, 6)
    forward, backward = contrastive_loss({"a": za, "b": zb}, 0.2), contrastive_loss({"a": zb, "b": za}, 0.2)
    assert forward.item() == pytest.approx(backward.item(), rel=1e-6)


def test_aligned_distinct_z_beat_collapsed_z():
    """The point of the term: MSE alignment is 0 for a collapsed z, InfoNCE is log B (its worst
    uninformative value), while aligned and distinct z score far lower."""
    batch, temperature = 4, 0.1
    distinct = torch.eye(batch, 8)  # orthonormal rows
    collapsed = torch.ones(batch, 8)
    aligned = contrastive_loss({"a": distinct, "b": distinct.clone()}, temperature)
    same = contrastive_loss({"a": collapsed, "b": collapsed.clone()}, temperature)
    assert alignment_loss({"a": collapsed, "b": collapsed.clone()}).item() == 0.0
    assert same.item() == pytest.approx(math.log(batch), rel=1e-6)
    assert aligned.item() == pytest.approx(math.log(1 + (batch - 1) * math.exp(-1 / temperature)), abs=1e-6)
    assert aligned.item() < 0.01 < same.item()


def test_contrastive_loss_gradient_reaches_every_model():
    torch.manual_seed(0)
    zs = {"a": torch.randn(3, 5, requires_grad=True), "b": torch.randn(3, 5, requires_grad=True)}
    contrastive_loss(zs, 0.1).backward()
    for name, z in zs.items():
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0, name


def test_contrastive_loss_single_model_and_bad_inputs():
    z = torch.randn(3, 4, requires_grad=True)
    single = contrastive_loss({"a": z}, 0.1)
    assert single.item() == 0.0 and single.requires_grad
    with pytest.raises(ValueError, match=r"at least 2 examples.*got 1.*train.batch_size"):
        contrastive_loss({"a": torch.randn(1, 4), "b": torch.randn(1, 4)}, 0.1)
    with pytest.raises(ValueError, match="nce_temperature"):
        contrastive_loss({"a": torch.randn(2, 4), "b": torch.randn(2, 4)}, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss({"a": torch.randn(2, 4), "b": torch.randn(2, 5)}, 0.1)


def test_combine_losses_weighs_nce_and_requires_it_when_weighted():
    terms = {"gen": torch.tensor(2.0), "align": torch.tensor(4.0), "sem": torch.tensor(10.0), "kd": torch.tensor(1.0)}
    config = LossConfig(w_nce=0.25)
    assert combine_losses(terms | {"nce": torch.tensor(8.0)}, config).item() == pytest.approx(5.3 + 2.0)
    with pytest.raises(KeyError, match="w_nce"):
        combine_losses(terms, config)


@pytest.mark.parametrize("override, expected", [
    ("loss.w_nce=-1", "loss.w_nce must be >= 0"),
    ("loss.nce_temperature=0", "loss.nce_temperature must be positive"),
])
def test_nce_config_is_validated(override, expected):
    from interlingua.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=expected):
        load_config("tiny", [override])


def _tiny_system(tiny_lms, tiny_config):
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.models.interlingua import InterlinguaModel
    from interlingua.models.system import Interlingua
    from interlingua.training.recipe import interlingua_spec

    encoder = SentenceEncoder("tiny-encoder")
    torch.manual_seed(0)
    return Interlingua(InterlinguaModel(interlingua_spec(tiny_config, tiny_lms, encoder)), tiny_lms, encoder)


def test_batch_loss_computes_nce_only_when_weighted(tiny_lms, tiny_config, monkeypatch):
    import interlingua.training.step as step_module
    from interlingua.data.squad import load_squad
    from interlingua.training.batches import TrainingStream
    from tests.conftest import SQUAD_MINI

    system = _tiny_system(tiny_lms, tiny_config)
    forward = system
    stream = TrainingStream(load_squad("train", str(SQUAD_MINI), None, 0), [lm.tokenizer for lm in tiny_lms.values()],
                            tiny_config.data.max_prompt_tokens, 4, 1, 0)
    micro = stream.micro_batches(0)[0]
    calls = []
    real = step_module.contrastive_loss
    monkeypatch.setattr(step_module, "contrastive_loss", lambda zs, t: calls.append(t) or real(zs, t))
    off = step_module.batch_loss(system, forward, micro, step_module.Stage.QA, LossConfig(w_kd=0.0))
    assert calls == [] and "nce" not in off.terms
    on = step_module.batch_loss(system, forward, micro, step_module.Stage.QA,
                                LossConfig(w_kd=0.0, w_nce=0.5, nce_temperature=0.2))
    assert calls == [0.2]
    expected = real({k: z for k, z in on.zs.items()}, 0.2).item()  # zs are returned detached
    assert on.terms["nce"] == pytest.approx(expected, rel=1e-5)
    assert on.terms["total"] == pytest.approx(off.terms["total"] + 0.5 * expected, rel=1e-5)


@pytest.mark.e2e
def test_training_with_nce_logs_the_term(tmp_path):
    import json

    from interlingua.config import ConfigError, load_config
    from interlingua.constants import METRICS_LOG_FILE
    from interlingua.training.recipe import TrainingRecipe, train
    from tests.conftest import SQUAD_MINI

    overrides = [f"data.source={SQUAD_MINI}", "loss.w_nce=0.5", "train.steps=2", "train.save_every=2"]
    train(load_config("tiny", overrides), tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / METRICS_LOG_FILE).read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]
    for row in rows:
        assert set(row["loss"]) == {"gen", "align", "sem", "kd", "nce", "total"}
        assert 0 < row["loss"]["nce"] <= math.log(4) * 1.5  # B = 4: near log B for an untrained z
    with pytest.raises(ConfigError, match=r"loss.w_nce > 0 .* 1 example\(s\); raise train.batch_size"):
        TrainingRecipe(load_config("tiny", [*overrides, "train.batch_size=1"]), tmp_path / "bad")
