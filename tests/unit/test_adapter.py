"""InterlinguaAdapter: shapes, soft-prompt RMS at init (DESIGN §4.1), gradients, save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from interlingua.models.adapter import InterlinguaAdapter


def make_adapter(pooled=True, embedding_rms=0.02, d_model=24) -> InterlinguaAdapter:
    torch.manual_seed(0)
    return InterlinguaAdapter(d_inter=16, d_model=d_model, num_slots=4, embedding_rms=embedding_rms, pooled=pooled)


def make_z(pooled, batch=3):
    return torch.randn(batch, 16) if pooled else torch.randn(batch, 4, 16)


@pytest.mark.parametrize("pooled", [True, False])
def test_output_shape(pooled):
    assert make_adapter(pooled)(make_z(pooled)).shape == (3, 4, 24)


@pytest.mark.parametrize("pooled", [True, False])
@pytest.mark.parametrize("embedding_rms", [0.01, 0.05, 1.0])
def test_soft_prompt_rms_matches_embedding_rms_at_init(pooled, embedding_rms):
    adapter = make_adapter(pooled, embedding_rms, d_model=64)
    assert adapter.scale.requires_grad and adapter.scale.item() == pytest.approx(embedding_rms)
    with torch.no_grad():
        soft_prompt = adapter(make_z(pooled, batch=8))
    rms = soft_prompt.pow(2).mean().sqrt().item()
    assert abs(rms / embedding_rms - 1) < 0.1


@pytest.mark.parametrize("pooled", [True, False])
def test_different_inputs_give_different_soft_prompts_at_init(pooled):
    adapter = make_adapter(pooled)
    with torch.no_grad():
        soft_prompt = adapter(make_z(pooled, batch=2))
    unit = torch.nn.functional.normalize(soft_prompt.flatten(1), dim=-1)
    assert (unit[0] @ unit[1]).item() < 0.9


@pytest.mark.parametrize("pooled", [True, False])
def test_gradients_reach_every_parameter(pooled):
    adapter = make_adapter(pooled)
    z = make_z(pooled).requires_grad_()
    adapter(z).pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    for name, param in adapter.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pooled", [True, False])
def test_safetensors_round_trip(tmp_path, pooled):
    adapter = make_adapter(pooled)
    save_file(adapter.state_dict(), tmp_path / "adapter.safetensors")
    torch.manual_seed(99)
    restored = InterlinguaAdapter(16, 24, num_slots=4, embedding_rms=0.5, pooled=pooled)
    restored.load_state_dict(load_file(tmp_path / "adapter.safetensors"))
    z = make_z(pooled)
    with torch.no_grad():
        torch.testing.assert_close(restored(z), adapter(z), atol=0, rtol=0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        make_adapter(pooled=True)(torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match=r"\(B, 4, 16\)"):
        make_adapter(pooled=False)(torch.randn(2, 16))
    with pytest.raises(ValueError, match="embedding_rms"):
        InterlinguaAdapter(16, 24, 4, embedding_rms=0.0)
