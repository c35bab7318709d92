"""AlignmentTransformer: shapes, padding (batched == alone, both sides), keys, fixed anchor target, save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from interlingua.config import AnchorKind, InterlinguaConfig, Pooling
from interlingua.losses import semantic_anchor_loss
from interlingua.models.adapter import InterlinguaAdapter
from interlingua.models.aligner import AlignmentTransformer, fixed_projection, module_key

D_SEM = 12
MODEL_DIMS = {"smollm2-135m-instruct": 20, "Qwen/Qwen2.5-7B-Instruct": 12}
KEY_A, KEY_B = MODEL_DIMS
VARIANTS = [(p, a) for p in Pooling for a in AnchorKind]


def tiny_config(pooling=Pooling.MEAN, anchor=AnchorKind.SENTENCE, **changes) -> InterlinguaConfig:
    fields = dict(d_inter=16, num_slots=3, n_heads=2, n_cross_layers=2, n_refine_layers=1)
    fields.update(pooling=pooling, anchor=anchor)
    return InterlinguaConfig(**{**fields, **changes})


def make_aligner(pooling=Pooling.MEAN, anchor=AnchorKind.SENTENCE, **changes) -> AlignmentTransformer:
    torch.manual_seed(0)
    return AlignmentTransformer(MODEL_DIMS, D_SEM, tiny_config(pooling, anchor, **changes)).eval()


def make_anchor(anchor_kind, batch, keys=4):
    """(anchor, anchor_mask) with per-row key counts 4, 3, 2, ... for token anchors."""
    if anchor_kind == AnchorKind.SENTENCE:
        return torch.randn(batch, D_SEM), None
    lengths = torch.tensor([max(1, keys - i) for i in range(batch)])
    mask = torch.arange(keys).unsqueeze(0) < lengths.unsqueeze(1)  # (B, S), right-padded
    return torch.randn(batch, keys, D_SEM), mask


@pytest.mark.parametrize("pooling,anchor_kind", VARIANTS)
def test_output_shapes(pooling, anchor_kind):
    aligner = make_aligner(pooling, anchor_kind)
    anchor, anchor_mask = make_anchor(anchor_kind, batch=2)
    z = aligner(KEY_A, torch.randn(2, 5, 20), torch.ones(2, 5, dtype=torch.bool), anchor, anchor_mask)
    assert z.shape == ((2, 16) if pooling == Pooling.MEAN else (2, 3, 16))
    assert aligner.project_anchor(anchor, anchor_mask).shape == (2, 16)


def pad_batch(sequences: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (T_i, d) tensors with garbage to (B, T_max, d) on the given side; mask True = real."""
    longest = max(len(s) for s in sequences)
    batch = torch.full((len(sequences), longest, sequences[0].shape[-1]), 7.0)  # loud padding: must not leak
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(longest - len(seq), longest)
        batch[row, span], mask[row, span] = seq, True
    return batch, mask


@pytest.mark.parametrize("mode", ["eval", "train"])  # eval may take PyTorch's fused attention fast path
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling,anchor_kind", VARIANTS)
def test_batched_equals_alone(side, pooling, anchor_kind, mode):
    """DESIGN §4.2: an example's z does not depend on the padding it is batched with."""
    aligner = make_aligner(pooling, anchor_kind).train(mode == "train")  # dropout is 0
    torch.manual_seed(1)
    sequences = [torch.randn(3, 20), torch.randn(7, 20), torch.randn(5, 20)]  # shortest first
    anchors = [torch.randn(D_SEM) if anchor_kind == AnchorKind.SENTENCE else torch.randn(s, D_SEM) for s in (2, 4, 1)]
    embeddings, mask = pad_batch(sequences, side)
    if anchor_kind == AnchorKind.SENTENCE:
        anchor, anchor_mask = torch.stack(anchors), None
    else:
        anchor, anchor_mask = pad_batch(anchors, side)
    with torch.no_grad():
        batched = aligner(KEY_A, embeddings, mask, anchor, anchor_mask)
        for row, seq in enumerate(sequences):
            one_mask = None if anchor_mask is None else torch.ones(1, len(anchors[row]), dtype=torch.bool)
            alone = aligner(KEY_A, seq.unsqueeze(0), torch.ones(1, len(seq), dtype=torch.bool),
                            anchors[row].unsqueeze(0), one_mask)
            torch.testing.assert_close(batched[row], alone[0], atol=1e-5, rtol=0)
        target = aligner.project_anchor(anchor, anchor_mask)
        for row in range(len(anchors)):
            alone = aligner.project_anchor(anchors[row].unsqueeze(0))[0]
            torch.testing.assert_close(target[row], alone, atol=1e-5, rtol=0)


def test_hf_attention_mask_accepted():
    aligner = make_aligner()
    embeddings, anchor = torch.randn(2, 4, 20), torch.randn(2, D_SEM)
    long_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        expected = aligner(KEY_A, embeddings, long_mask.bool(), anchor)
        torch.testing.assert_close(aligner(KEY_A, embeddings, long_mask, anchor), expected)


def test_sentence_anchor_cross_attention_adds_one_vector_to_every_token():
    """DESIGN §4.3: softmax over a single key is 1, so the block's output is out_proj(v_proj(key))."""
    aligner = make_aligner()
    attn = aligner.cross_attn[0]
    tokens, key = torch.randn(1, 6, 16), torch.randn(1, 1, 16)
    with torch.no_grad():
        out, _ = attn(tokens, key, key, need_weights=False)  # (1, 6, 16)
        v_weight, v_bias = attn.in_proj_weight[32:], attn.in_proj_bias[32:]
        expected = attn.out_proj(key @ v_weight.T + v_bias)  # (1, 1, 16)
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-5, rtol=0)


def test_unknown_model_key_lists_known_keys():
    aligner = make_aligner()
    with pytest.raises(KeyError, match="smollm2-135m-instruct"):
        aligner("gpt-2", torch.randn(1, 2, 20), torch.ones(1, 2, dtype=torch.bool), torch.randn(1, D_SEM))


def test_model_keys_sanitised_and_clashes_rejected():
    aligner = make_aligner()
    assert set(aligner.input_proj.keys()) == {"smollm2-135m-instruct", "Qwen_Qwen2_5-7B-Instruct"}
    assert module_key("Qwen/Qwen2.5-7B-Instruct") == "Qwen_Qwen2_5-7B-Instruct"
    with pytest.raises(ValueError, match="same module name"):
        AlignmentTransformer({"a.b": 4, "a_b": 4}, D_SEM, tiny_config())


def test_bad_inputs_raise():
    aligner = make_aligner()
    with pytest.raises(ValueError, match="no real position"):
        aligner(KEY_A, torch.randn(2, 3, 20), torch.tensor([[True, True, False], [False] * 3]), torch.randn(2, D_SEM))
    with pytest.raises(ValueError, match=r"\(B, T, 20\)"):
        aligner(KEY_A, torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, D_SEM))
    with pytest.raises(ValueError, match="interlingua.anchor=sentence"):
        aligner(KEY_A, torch.randn(2, 3, 20), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 4, D_SEM))


@pytest.mark.parametrize("d_in,d_out", [(12, 16), (16, 12)])
def test_fixed_projection_keeps_norm(d_in, d_out):
    weight = fixed_projection(d_in, d_out)
    assert weight.shape == (d_out, d_in)
    torch.testing.assert_close(weight, fixed_projection(d_in, d_out))  # seeded: same every time
    x = torch.randn(2000, d_in)
    ratio = (x @ weight.T).norm(dim=-1) / x.norm(dim=-1)
    if d_out >= d_in:
        torch.testing.assert_close(ratio, torch.ones_like(ratio))
    else:
        assert abs(ratio.pow(2).mean().item() - 1) < 0.05


@pytest.mark.parametrize("anchor_kind", list(AnchorKind))
def test_anchor_target_has_no_trainable_path(anchor_kind):
    """DESIGN §4.4: a step on the semantic-anchor loss alone moves z, never the target."""
    aligner = make_aligner(anchor=anchor_kind).train()
    assert "anchor_target_proj" in aligner.state_dict()
    assert all(p is not aligner.anchor_target_proj for p in aligner.parameters())
    anchor, anchor_mask = make_anchor(anchor_kind, batch=3)
    embeddings, mask = torch.randn(3, 5, 20), torch.ones(3, 5, dtype=torch.bool)
    target_before = aligner.project_anchor(anchor, anchor_mask).detach().clone()
    assert not aligner.project_anchor(anchor, anchor_mask).requires_grad
    z_before = aligner(KEY_A, embeddings, mask, anchor, anchor_mask).detach().clone()
    optimizer = torch.optim.SGD(aligner.parameters(), lr=0.5)
    loss = semantic_anchor_loss({KEY_A: aligner(KEY_A, embeddings, mask, anchor, anchor_mask)},
                                aligner.project_anchor(anchor, anchor_mask))
    loss.backward()
    optimizer.step()
    torch.testing.assert_close(aligner.project_anchor(anchor, anchor_mask), target_before, atol=0, rtol=0)
    assert not torch.allclose(aligner(KEY_A, embeddings, mask, anchor, anchor_mask), z_before)


@pytest.mark.parametrize("pooling,anchor_kind", VARIANTS)
def test_gradients_reach_every_trainable_parameter(pooling, anchor_kind):
    aligner = make_aligner(pooling, anchor_kind).train()
    adapter = InterlinguaAdapter(16, 10, num_slots=3, embedding_rms=0.05, pooled=pooling == Pooling.MEAN)
    anchor, anchor_mask = make_anchor(anchor_kind, batch=2)
    mask, loss = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool(), 0.0
    for key, width in MODEL_DIMS.items():  # each model's input projection only sees its own forward
        z = aligner(key, torch.randn(2, 4, width), mask, anchor, anchor_mask)
        loss = loss + adapter(z).pow(2).sum()
    loss.backward()
    for name, param in [*aligner.named_parameters(), *adapter.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pooling,anchor_kind", VARIANTS)
def test_safetensors_round_trip(tmp_path, pooling, anchor_kind):
    aligner = make_aligner(pooling, anchor_kind)
    save_file(aligner.state_dict(), tmp_path / "aligner.safetensors")
    torch.manual_seed(123)  # a different init, overwritten by the load
    restored = AlignmentTransformer(MODEL_DIMS, D_SEM, tiny_config(pooling, anchor_kind)).eval()
    restored.load_state_dict(load_file(tmp_path / "aligner.safetensors"))
    anchor, anchor_mask = make_anchor(anchor_kind, batch=2)
    inputs = (KEY_B, torch.randn(2, 4, 12), torch.ones(2, 4, dtype=torch.bool), anchor, anchor_mask)
    with torch.no_grad():
        torch.testing.assert_close(restored(*inputs), aligner(*inputs), atol=0, rtol=0)
        expected = aligner.project_anchor(anchor, anchor_mask)
        torch.testing.assert_close(restored.project_anchor(anchor, anchor_mask), expected, atol=0, rtol=0)


def test_no_refine_layers():
    aligner = make_aligner(n_refine_layers=0)
    z = aligner(KEY_A, torch.randn(2, 3, 20), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, D_SEM))
    assert aligner.refine is None and z.shape == (2, 16)


# ---- positions (interlingua.positions) ---------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_positions_keep_batched_equal_to_alone(side):
    from interlingua.config import Positions

    aligner = make_aligner(Pooling.QUERIES, positions=Positions.SINUSOIDAL)
    torch.manual_seed(1)
    sequences = [torch.randn(3, 20), torch.randn(7, 20)]
    embeddings, mask = pad_batch(sequences, side)
    anchor = torch.randn(2, D_SEM)
    with torch.no_grad():
        batched = aligner(KEY_A, embeddings, mask, anchor)
        for row, seq in enumerate(sequences):
            alone = aligner(KEY_A, seq.unsqueeze(0), torch.ones(1, len(seq), dtype=torch.bool), anchor[row : row + 1])
            torch.testing.assert_close(batched[row], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", list(Pooling))
def test_only_positions_make_z_depend_on_word_order(pooling):
    from interlingua.config import Positions

    torch.manual_seed(2)
    tokens, anchor = torch.randn(1, 6, 20), torch.randn(1, D_SEM)
    shuffled = tokens[:, torch.tensor([3, 1, 5, 0, 2, 4])]
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.no_grad():
        bag = make_aligner(pooling)
        torch.testing.assert_close(bag(KEY_A, tokens, mask, anchor), bag(KEY_A, shuffled, mask, anchor),
                                   atol=1e-5, rtol=0)
        ordered = make_aligner(pooling, positions=Positions.SINUSOIDAL)
        assert not torch.allclose(ordered(KEY_A, tokens, mask, anchor), ordered(KEY_A, shuffled, mask, anchor),
                                  atol=1e-3)


def test_sinusoidal_positions_count_real_tokens_only():
    from interlingua.models.aligner import sinusoidal_positions

    mask = torch.tensor([[False, False, True, True], [True, True, False, False]])
    encoding = sinusoidal_positions(mask, 6)  # (2, 4, 6)
    torch.testing.assert_close(encoding[0, 2:], encoding[1, :2])
    torch.testing.assert_close(encoding[1, 0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
