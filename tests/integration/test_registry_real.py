"""The real embedded models: GGUF conversion into the default cache (reused across runs), loading,
greedy answers, and the real sentence encoder.

Run: pytest -m integration tests/integration/test_registry_real.py  (first run converts, ~1.5 min)
"""

from __future__ import annotations

import time

import pytest
import torch

from interlingua.constants import TEXT_PROMPT_TEMPLATE
from interlingua.models import registry
from interlingua.models.encoder import SentenceEncoder
from interlingua.models.registry import load_causal_lm, resolve_model_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = TEXT_PROMPT_TEMPLATE.format(
    context="Paris is the capital of France.", question="What is the capital of France?"
)


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_embedded_llm_converts_once_loads_frozen_and_answers(name, monkeypatch):
    resolve_model_path(name)  # converts on the first run ever, reuses the cache afterwards

    def no_reconversion(*args, **kwargs):
        raise AssertionError(f"{name} was converted again although its cache is complete")

    monkeypatch.setattr(registry, "convert_gguf", no_reconversion)
    start = time.perf_counter()
    resolve_model_path(name)
    assert time.perf_counter() - start < 2.0

    model, tokenizer = load_causal_lm(name)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())

    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_real_sentence_encoder_gives_unit_norm_embeddings():
    encoder = SentenceEncoder("all-minilm-l6-v2")
    embeddings = encoder.encode(["Paris is the capital of France.", "The river reaches the sea."])
    assert embeddings.shape == (2, 384) and encoder.dim == 384
    assert embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))

    states, mask = encoder.encode_tokens(["Paris is the capital of France.", "Hi"])
    assert states.shape[:2] == mask.shape and states.shape[2] == 384
    assert mask.dtype == torch.bool and mask[0].all() and not mask[1].all()
