"""The parts of the GPU path that can be checked on a CPU: SDPA attention, gradient checkpointing
through the frozen LLMs (same gradients, layers recomputed), bf16 autocast of the learned modules."""

from __future__ import annotations

import pytest
import torch

from interlingua.config import ModelConfig, PromptFormat, load_config
from interlingua.models.frozen_lm import FrozenLM
from tests.conftest import SQUAD_MINI


def test_frozen_models_use_sdpa(tiny_lms):
    assert {lm.model.config._attn_implementation for lm in tiny_lms.values()} == {"sdpa"}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_gradient_checkpointing_gives_the_same_gradient_and_recomputes_layers(name):
    plain = FrozenLM.load(ModelConfig(name, PromptFormat.RAW))
    checkpointed = FrozenLM.load(ModelConfig(name, PromptFormat.RAW))
    checkpointed.enable_gradient_checkpointing()
    targets = plain.answer_targets(["the answer"], 3)
    soft = torch.randn(2, 4, plain.hidden_size, generator=torch.Generator().manual_seed(0)) * plain.embedding_rms
    calls = []
    attention = checkpointed.model.model.layers[0].self_attn
    attention.register_forward_hook(lambda *args: calls.append(1))
    grads = []
    for lm in (plain, checkpointed):
        prompt = soft.clone().requires_grad_(True)
        both = type(targets)(targets.ids.expand(2, -1), targets.mask.expand(2, -1))
        lm.target_logits(lm.soft_prefix(prompt), both).logsumexp(-1).sum().backward()
        grads.append(prompt.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    assert len(calls) == 2  # forward once, recomputed once in the backward pass
    assert not any(p.requires_grad for p in checkpointed.model.parameters())
    with torch.no_grad():  # generation is unaffected (no backward: nothing is checkpointed)
        assert checkpointed.generate_ids(checkpointed.soft_prefix(soft), 3).equal(
            plain.generate_ids(plain.soft_prefix(soft), 3))


def test_gradient_checkpointing_refuses_a_model_with_dropout():
    lm = FrozenLM.load(ModelConfig("tiny-llama", PromptFormat.RAW))
    lm.model.config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="dropout"):
        lm.enable_gradient_checkpointing()


def test_gradient_checkpointing_config_reaches_the_models(tmp_path):
    from interlingua.training.recipe import train

    config = load_config("tiny", [f"data.source={SQUAD_MINI}", "train.steps=1", "train.save_every=1",
                                  "runtime.gradient_checkpointing=true", f"cache.dir={tmp_path / 'cache'}"])
    assert train(config, tmp_path / "run", progress=False).name == "step_000001"
