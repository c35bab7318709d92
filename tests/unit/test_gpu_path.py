"""The GPU path. On a CPU: SDPA attention, gradient checkpointing through the frozen LLMs (same
gradients, layers recomputed, fewer activations kept), and that runtime.gradient_checkpointing reaches
the models in training. Frozen models in bf16, on a CUDA GPU (skipped without one) and on the CPU
(runtime.dtype=bfloat16): a tiny training step and generation, finite and close to the CPU's fp32 results."""

from __future__ import annotations

import json
import math

import pytest
import torch

from interlingua.config import ModelConfig, PromptFormat, load_config
from interlingua.constants import METRICS_LOG_FILE
from interlingua.models.frozen_lm import FrozenLM
from interlingua.training.sharding import decoder_layers
from tests.conftest import SQUAD_MINI, reset_accelerate_state

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny(*overrides: str):
    return load_config("tiny", [f"data.source={SQUAD_MINI}", *overrides])


def test_frozen_models_use_sdpa(tiny_lms):
    assert {lm.model.config._attn_implementation for lm in tiny_lms.values()} == {"sdpa"}


def soft_prompt_backward(lm: FrozenLM, soft: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Backward from the answer logits to a soft prompt ``(2, 4, d)``.

    Returns:
        The soft prompt's gradient, and how many tensors (and bytes) autograd kept for the backward pass.
    """
    targets = lm.answer_targets(["the answer"], 3)
    both = type(targets)(targets.ids.expand(2, -1), targets.mask.expand(2, -1))
    prompt = soft.clone().requires_grad_(True)
    kept = []

    def pack(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    # Inside a checkpointed layer, torch's own hooks replace these: what they do not see is not kept.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = lm.target_logits(lm.soft_prefix(prompt), both).logsumexp(-1).sum()
    loss.backward()
    return prompt.grad, len(kept), sum(kept)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_gradient_checkpointing_gives_the_same_gradient_and_recomputes_layers(name):
    plain = FrozenLM.load(ModelConfig(name, PromptFormat.RAW))
    checkpointed = FrozenLM.load(ModelConfig(name, PromptFormat.RAW))
    checkpointed.enable_gradient_checkpointing()
    soft = torch.randn(2, 4, plain.hidden_size, generator=torch.Generator().manual_seed(0)) * plain.embedding_rms
    results, forwards = {}, {}
    for label, lm in (("plain", plain), ("checkpointed", checkpointed)):
        forwards[label] = 0
        lm.model.model.layers[0].self_attn.register_forward_hook(
            lambda *args, label=label: forwards.__setitem__(label, forwards[label] + 1))
        results[label] = soft_prompt_backward(lm, soft)
    (plain_grad, plain_kept, plain_bytes), (grad, kept, kept_bytes) = results["plain"], results["checkpointed"]
    torch.testing.assert_close(grad, plain_grad, rtol=1e-5, atol=1e-6)
    assert forwards == {"plain": 1, "checkpointed": 2}  # forward once, recomputed once in the backward pass
    # what the flag is for: the layers' activations are not kept (66 tensors -> 10 in both tiny models)
    assert kept < plain_kept / 2 and kept_bytes < plain_bytes / 2, (plain_kept, kept, plain_bytes, kept_bytes)
    assert not any(p.requires_grad for p in checkpointed.model.parameters())
    with torch.no_grad():  # generation is unaffected (no backward: nothing is checkpointed)
        assert checkpointed.generate_ids(checkpointed.soft_prefix(soft), 3).equal(
            plain.generate_ids(plain.soft_prefix(soft), 3))


def test_gradient_checkpointing_refuses_a_model_with_dropout():
    lm = FrozenLM.load(ModelConfig("tiny-llama", PromptFormat.RAW))
    lm.model.config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="dropout"):
        lm.enable_gradient_checkpointing()


def train_and_count_layer_forwards(tmp_path, *overrides: str) -> tuple[dict, list[dict]]:
    """One training step of the tiny config on the CPU; returns how often the attention of each decoder
    layer started a forward with autograd on, keyed by (model, layer index), and the metrics rows."""
    from interlingua.training import recipe

    forwards: dict[tuple[str, int], int] = {}
    load = recipe.load_frozen_models

    def count(key: tuple[str, int]):
        # transformers checkpoints a layer's forward, not its __call__, so the layer's own hooks run once:
        # count its attention. A pre-hook, as torch stops a recomputation once it has what the backward
        # needs. The KD teacher runs without autograd and is not counted.
        def hook(*args):
            forwards[key] = forwards.get(key, 0) + torch.is_grad_enabled()
        return hook

    def load_and_count(*args, **kwargs):
        lms, encoder = load(*args, **kwargs)
        for key, lm in lms.items():
            for index, layer in enumerate(decoder_layers(lm.model)):
                layer.self_attn.register_forward_pre_hook(count((key, index)))
        return lms, encoder

    config = tiny("train.steps=1", "train.save_every=1", "runtime.device=cpu", f"cache.dir={tmp_path / 'cache'}",
                  *overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipe, "load_frozen_models", load_and_count)
        recipe.train(config, tmp_path / "run", progress=False)
    return forwards, [json.loads(line) for line in (tmp_path / "run" / METRICS_LOG_FILE).read_text().splitlines()]


@pytest.mark.e2e
def test_gradient_checkpointing_config_reaches_the_models(tmp_path):
    """runtime.gradient_checkpointing=true recomputes every decoder layer of every model in the backward
    pass (twice the forwards with autograd on) and takes the same step."""
    off, off_rows = train_and_count_layer_forwards(tmp_path / "off")
    on, on_rows = train_and_count_layer_forwards(tmp_path / "on", "runtime.gradient_checkpointing=true")
    assert set(off) == {(key, index) for key in ("tiny-llama", "tiny-qwen2") for index in (0, 1)}
    assert all(off[layer] > 0 for layer in off)
    assert on == {layer: 2 * count for layer, count in off.items()}
    for term, value in off_rows[0]["loss"].items():
        assert on_rows[0]["loss"][term] == pytest.approx(value, rel=1e-5, abs=1e-7), term
    assert on_rows[0]["grad_norm"] == pytest.approx(off_rows[0]["grad_norm"], rel=1e-5)


# ---- bf16 frozen models: on a CUDA GPU (skipped without one), and on the CPU (runtime.dtype) ----------
BF16_RUNS = [
    pytest.param(["runtime.device=cuda"], marks=[pytest.mark.cuda, requires_cuda], id="cuda"),
    pytest.param(["runtime.device=cpu", "runtime.dtype=bfloat16"], id="cpu-bf16"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("bf16", BF16_RUNS)
def test_a_tiny_training_step_with_bf16_frozen_models_matches_fp32_on_cpu(tmp_path, bf16):
    """Frozen LLMs in bf16 (runtime.device=cuda, with bf16 autocast, DESIGN §4.8; or runtime.dtype=bfloat16
    on the CPU). The losses and the gradient norm are finite and close to fp32 on the CPU (bf16 keeps ~3
    significant digits), and the learned weights stay fp32 and take the same first step: from the same
    seeded init, Adam's first update moves each weight by at most lr = 3e-4, so the two runs end within
    2 lr of each other (and the adapters' scale starts at the bf16 weights' embedding RMS, ~5e-7 away
    from fp32's)."""
    from safetensors.torch import load_file

    from interlingua.constants import CHECKPOINT_WEIGHTS_FILE
    from interlingua.training.recipe import train

    runs = {}
    for label, overrides in (("fp32", ["runtime.device=cpu"]), ("bf16", bf16)):
        reset_accelerate_state()  # accelerate refuses a second Accelerator of another device or precision
        out = tmp_path / label
        final = train(tiny("train.steps=1", "train.save_every=1", f"cache.dir={out / 'cache'}", *overrides),
                      out / "run", progress=False)
        row = json.loads((out / "run" / METRICS_LOG_FILE).read_text().splitlines()[0])
        runs[label] = row, load_file(str(final / CHECKPOINT_WEIGHTS_FILE))
    lr = tiny().train.lr  # step 0's rate (1 warmup step)
    (fp32_row, fp32_weights), (bf16_row, bf16_weights) = runs["fp32"], runs["bf16"]
    assert set(bf16_row["loss"]) == set(fp32_row["loss"]) == {"gen", "align", "sem", "kd", "total"}
    for term, value in fp32_row["loss"].items():
        assert math.isfinite(bf16_row["loss"][term]), term
        assert bf16_row["loss"][term] == pytest.approx(value, rel=0.05, abs=0.01), term
    assert math.isfinite(bf16_row["grad_norm"])
    assert bf16_row["grad_norm"] == pytest.approx(fp32_row["grad_norm"], rel=0.1)
    assert bf16_weights.keys() == fp32_weights.keys()
    for name, weight in fp32_weights.items():
        assert bf16_weights[name].dtype == weight.dtype == torch.float32, name
        assert torch.isfinite(bf16_weights[name]).all(), name
        torch.testing.assert_close(bf16_weights[name], weight, rtol=0, atol=2 * lr + 1e-5, msg=name)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda]), "cpu"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_bf16_logits_and_generation_match_fp32_on_cpu(name, device):
    """A soft prompt through a bf16 frozen LLM (on the GPU, or on the CPU): finite logits close to fp32 on
    the CPU at the answer positions (training) and for the next token (generation); greedy decoding picks
    fp32's best first token or one within bf16 rounding of it."""
    cpu = FrozenLM.load(ModelConfig(name, PromptFormat.RAW))
    gpu = FrozenLM.load(ModelConfig(name, PromptFormat.RAW), device=device, dtype=torch.bfloat16)
    soft = torch.randn(2, 4, cpu.hidden_size, generator=torch.Generator().manual_seed(0)) * cpu.embedding_rms
    targets = cpu.answer_targets(["the answer", "four"], 3)
    gpu_targets = type(targets)(targets.ids.to(device), targets.mask.to(device))
    with torch.no_grad():
        expected = cpu.target_logits(cpu.soft_prefix(soft), targets)  # (2, K, V); [:, 0] = the next token
        gpu_prefix = gpu.soft_prefix(soft.to(device))
        logits = gpu.target_logits(gpu_prefix, gpu_targets).float().cpu()  # (2, K, V)
    assert torch.isfinite(logits).all()
    tolerance = 0.05 * expected.abs().max().item()
    torch.testing.assert_close(logits, expected, rtol=0, atol=tolerance)
    generated = gpu.generate_ids(gpu_prefix, 4).cpu()  # (2, n)
    assert generated.shape[0] == 2 and 1 <= generated.shape[1] <= 4
    first = expected[:, 0]  # (2, V)
    picked = first.gather(1, generated[:, :1]).squeeze(1)  # (2,)
    assert (first.max(dim=1).values - picked <= tolerance).all(), generated
