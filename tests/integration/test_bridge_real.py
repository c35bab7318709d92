"""The vocabulary bridge on the real embedded pair: shared-vocabulary normalisation of SmolLM2's byte-level
BPE (``Ġ``) and Gemma-3's SentencePiece-style vocabulary (``▁``, ``<0xNN>``), and the fitted bridge's
quality (DESIGN §8).

Run: pytest -m integration tests/integration/test_bridge_real.py  (the fit takes ~1 min, then it is cached)
"""

from __future__ import annotations

import pytest
import torch

from interlingua.config import ModelConfig, PromptFormat
from interlingua.models.bridge.fit import BridgeSettings, load_or_fit_bridge
from interlingua.models.bridge.vocab import id_bytes, shared_strings, token_bytes
from interlingua.models.frozen_lm import FrozenLM

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIR = ("smollm2-135m-instruct", "gemma3-270m")
TEXT = "Context: Beyoncé's 1905 café — naïve “quotes”, 東京 and\n\ttabs  twice.\nQuestion: Who?\nAnswer:"


@pytest.fixture(scope="module")
def real_lms():
    return {key: FrozenLM.load(ModelConfig(key, PromptFormat.RAW)) for key in PAIR}


@pytest.mark.parametrize("key", PAIR)
def test_normalised_tokens_spell_the_text_back(real_lms, key):
    tokenizer = real_lms[key].tokenizer
    names = id_bytes(tokenizer)
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    assert b"".join(names[i] for i in ids) == TEXT.encode("utf-8")
    assert all(i not in names for i in tokenizer.all_special_ids)


def test_both_tokenizers_meet_on_the_same_strings(real_lms):
    smol, gemma = (real_lms[k].tokenizer for k in PAIR)
    shared = shared_strings([smol, gemma])
    assert 45_000 < len(shared) < 48_000  # 46,145 on 2026-12-02
    smol_table, gemma_table = token_bytes(smol), token_bytes(gemma)
    assert smol.convert_ids_to_tokens(smol_table[b" the"]) == "\u0120the"  # Ġthe
    assert gemma.convert_ids_to_tokens(gemma_table[b" the"]) == "\u2581the"  # ▁the
    assert gemma.convert_ids_to_tokens(gemma_table[b","]) == ","  # the regular token, not <0x2C>
    assert b"\xc3" in shared  # a byte-level partial token meets Gemma's <0xC3> byte fallback
    assert gemma.convert_ids_to_tokens(gemma_table[b"\xc3"]) == "<0xC3>"


def test_fitted_bridge_finds_the_same_token_across_families(real_lms, tmp_path):
    fit = load_or_fit_bridge(real_lms, BridgeSettings(d_inter=512))
    pairs, own = fit.metrics["pairs"], fit.metrics["own"]
    assert fit.metrics["shared_strings"] > 45_000
    # measured 2026-12-02: 0.946 (Gemma -> SmolLM2) and 0.911 (SmolLM2 -> Gemma) over each receiver's vocabulary
    assert pairs["gemma3-270m -> smollm2-135m-instruct"]["vocab_nn1"] > 0.9
    assert pairs["smollm2-135m-instruct -> gemma3-270m"]["vocab_nn1"] > 0.85
    assert all(v["vocab_nn1"] == 1.0 for v in own.values())
    assert torch.isfinite(fit.encoders[PAIR[0]].weight).all()
