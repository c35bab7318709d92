"""The native interlingua (DESIGN §8) on tiny models: the vocabulary bridge and its cache, step 0 equal to
the fitted bridge, window pooling, the receiver prefix, checkpoints, training and evaluation with N = 3."""

from __future__ import annotations

import json

import pytest
import torch

from interlingua.config import (
    ConfigError,
    ModelConfig,
    PoolMode,
    PromptFormat,
    config_from_dict,
    config_to_dict,
    load_config,
)
from interlingua.data.prompts import context_prompt, question_suffix, text_prompt
from interlingua.data.squad import load_squad
from interlingua.eval.jobs import eval_job
from interlingua.models.bridge.fit import (
    BRIDGE_METRICS_FILE,
    BridgeSettings,
    bridge_cache_key,
    fit_bridge,
    load_or_fit_bridge,
    unit_embeddings,
)
from interlingua.models.bridge.vocab import id_bytes, shared_strings, token_bytes
from interlingua.models.frozen_lm import FrozenLM
from interlingua.models.interlingua import InterlinguaModel
from interlingua.models.native import Latent, NativeInterlingua, WindowPool, Wire
from interlingua.models.system import Interlingua
from interlingua.training.recipe import initial_model, train
from tests.conftest import SQUAD_MINI

THREE = ("tiny-llama", "tiny-qwen2", "tiny-gemma")
TEXTS = ["Context: The river flows through the old city.", "Context: In 1905 the scientist published four papers."]


@pytest.fixture(scope="module")
def three_lms():
    formats = {"tiny-llama": PromptFormat.RAW, "tiny-qwen2": PromptFormat.CHAT, "tiny-gemma": PromptFormat.RAW}
    return {key: FrozenLM.load(ModelConfig(key, formats[key])) for key in THREE}


def native_config(*overrides: str):
    """The tiny config with the native design and a third model (tiny-gemma)."""
    data = config_to_dict(load_config("tiny", [f"data.source={SQUAD_MINI}", "interlingua.design=native"]))
    data["models"].append({"spec": "tiny-gemma", "prompt_format": "raw"})
    return config_from_dict(data, list(overrides))


@pytest.fixture(scope="module")
def three_system(three_lms):
    from interlingua.models.encoder import SentenceEncoder

    config = native_config()
    encoder = SentenceEncoder(config.encoder)
    torch.manual_seed(0)
    model = initial_model(config, three_lms, encoder)
    return Interlingua(model, three_lms, encoder, config), config


# ---- vocabulary ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", THREE)
def test_token_bytes_spell_the_text_back(three_lms, key):
    """Concatenating the normalised bytes of a text's tokens gives the text: Ġ, ▁ and <0xNN> decoded alike."""
    tokenizer = three_lms[key].tokenizer
    text = "Hello the river, café 1905 — naïve?"
    names = id_bytes(tokenizer)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert b"".join(names[i] for i in ids) == text.encode("utf-8")
    assert all(i not in names for i in tokenizer.all_special_ids)


def test_shared_strings_meet_across_schemes(three_lms):
    tables = [token_bytes(lm.tokenizer) for lm in three_lms.values()]
    shared = shared_strings([lm.tokenizer for lm in three_lms.values()])
    assert shared == sorted(set(tables[0]) & set(tables[1]) & set(tables[2]))
    # tiny-llama holds all 256 bytes; tiny-gemma reaches each through <0xNN>; tiny-qwen2 through its byte alphabet
    assert len(shared) == 256 and b"\xc3" in shared
    gemma = three_lms["tiny-gemma"].tokenizer
    assert gemma.convert_ids_to_tokens(token_bytes(gemma)[b"\xc3"]) == "<0xC3>"
    assert gemma.convert_ids_to_tokens(token_bytes(gemma)[b" the"]) == "\u2581the"  # a regular token wins


# ---- the fit and its cache --------------------------------------------------------------------------
def test_fit_reports_quality_and_round_trips_own_vocabulary(three_lms):
    fit = fit_bridge(three_lms, BridgeSettings(d_inter=32))
    metrics = fit.metrics
    assert metrics["shared_strings"] == 256 and metrics["models"] == list(THREE)
    assert len(metrics["pairs"]) == 6 and set(metrics["own"]) == set(THREE)
    for key in THREE:  # d_inter=32 is below every width: still each token's own key is its nearest
        assert metrics["own"][key]["vocab_nn1"] == 1.0
        assert fit.encoders[key].weight.shape == (32, three_lms[key].hidden_size)
        assert fit.decoders[key].weight.shape == (three_lms[key].hidden_size, 32)
    json.dumps(metrics)


def test_fit_refuses_a_width_above_the_models(three_lms):
    with pytest.raises(ValueError, match="exceeds the models' summed widths"):
        fit_bridge(three_lms, BridgeSettings(d_inter=1000))
    with pytest.raises(ValueError, match="share only"):
        fit_bridge(three_lms, BridgeSettings(d_inter=100))


def test_cached_fit_is_reused_and_rebuilt_when_a_model_changes(tmp_path, monkeypatch):
    lms = {key: FrozenLM.load(ModelConfig(key, PromptFormat.RAW)) for key in ("tiny-llama", "tiny-gemma")}
    settings = BridgeSettings(d_inter=16)
    first = load_or_fit_bridge(lms, settings, cache_dir=tmp_path)
    calls = []
    import interlingua.models.bridge.fit as fit_module

    real_fit = fit_module.fit_bridge
    monkeypatch.setattr(fit_module, "fit_bridge", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    again = load_or_fit_bridge(lms, settings, cache_dir=tmp_path)
    assert not calls
    torch.testing.assert_close(again.encoders["tiny-llama"].weight, first.encoders["tiny-llama"].weight)
    key_before = bridge_cache_key(lms, settings)
    with torch.no_grad():  # a changed model (e.g. another quantisation) must not read the old fit
        lms["tiny-gemma"].model.get_input_embeddings().weight.mul_(1.5).add_(0.01)
    lms["tiny-gemma"].__dict__.pop("embedding_rms", None)
    assert bridge_cache_key(lms, settings) != key_before
    refit = load_or_fit_bridge(lms, settings, cache_dir=tmp_path)
    assert calls == [1]
    assert not torch.equal(refit.encoders["tiny-gemma"].weight, first.encoders["tiny-gemma"].weight)
    assert bridge_cache_key(lms, BridgeSettings(d_inter=8)) != bridge_cache_key(lms, settings)
    (tmp_path / bridge_cache_key(lms, settings) / BRIDGE_METRICS_FILE).write_text("{broken")
    load_or_fit_bridge(lms, settings, cache_dir=tmp_path)  # a damaged cache entry is fitted again
    assert calls == [1, 1]


# ---- step 0 = the fitted bridge ----------------------------------------------------------------------
def _embedded(lm, texts):
    ids, mask = lm.tokenize_plain(texts)
    return lm.embed(ids).float(), mask


def test_step_zero_encoder_is_the_fitted_map(three_system):
    system, _ = three_system
    fit = load_or_fit_bridge(system.lms, BridgeSettings(d_inter=system.model.spec.interlingua.d_inter))
    for key, lm in system.lms.items():
        embeddings, mask = _embedded(lm, TEXTS)
        with torch.no_grad():
            latent = system.encode_z(key, TEXTS)
        expected = fit.encode(key, embeddings / lm.embedding_rms) * mask.unsqueeze(-1)
        assert isinstance(latent, Latent) and torch.equal(latent.mask, mask)
        torch.testing.assert_close(latent.z, expected, rtol=0, atol=0)  # refiner output projection starts at 0


def test_step_zero_vocabulary_decoder_returns_own_embeddings(three_system):
    """Own decoding at step 0 reproduces the receiver's own token embeddings (nearest key = the token)."""
    system, _ = three_system
    for key, lm in system.lms.items():
        embeddings, mask = _embedded(lm, TEXTS)
        with torch.no_grad():
            soft = system.model.soft_prompt(key, system.encode_z(key, TEXTS))
        torch.testing.assert_close(soft.embeddings[mask], embeddings[mask], rtol=1e-4, atol=1e-5 * lm.embedding_rms)


def test_the_bf16_vocabulary_search_picks_the_exact_top_k():
    """The receiver head's search scores the vocabulary in bf16 (where that is fast) and rescores its best
    candidates in fp32: the same top-k as the exact fp32 search, also where keys differ below bf16's
    resolution (there a bf16-only search ties and picks arbitrarily)."""
    from interlingua.config import NativeDecoder
    from interlingua.models.native import ReceiverHead

    generator = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(500, 32, generator=generator), dim=-1)
    near = base[:50] + 1e-2 * torch.randn(50, 32, generator=generator)  # twins bf16 cannot tell apart
    keys = torch.nn.functional.normalize(torch.cat([base, near, torch.randn(4000, 32, generator=generator)]), dim=-1)
    queries = torch.nn.functional.normalize(torch.cat([base[:50], torch.randn(200, 32, generator=generator)]), dim=-1)
    head = ReceiverHead(32, 16, 1.0, NativeDecoder.VOCAB, top_k=4, temperature=0.01)
    exact = (queries @ keys.T).topk(4, dim=-1).indices
    assert torch.equal(head._top_k(queries, keys), exact)  # no bf16 keys: the exact search
    head._search_keys = keys.to(torch.bfloat16)
    assert torch.equal(head._top_k(queries, keys), exact)
    bf16_only = (queries.bfloat16() @ keys.bfloat16().T).topk(4, dim=-1).indices
    assert not torch.equal(bf16_only, exact)  # the case the rescoring is there for


def test_step_zero_linear_decoder_is_the_fitted_map(three_lms):
    from interlingua.models.encoder import SentenceEncoder

    config = native_config("interlingua.decoder=linear")
    encoder = SentenceEncoder(config.encoder)
    model = initial_model(config, three_lms, encoder)
    fit = load_or_fit_bridge(three_lms, BridgeSettings(d_inter=config.interlingua.d_inter))
    system = Interlingua(model, three_lms, encoder)
    lm = three_lms["tiny-gemma"]
    with torch.no_grad():
        latent = system.encode_z("tiny-llama", TEXTS)
        soft = model.soft_prompt("tiny-gemma", latent)
    expected = fit.decode("tiny-gemma", latent.z) * lm.embedding_rms * latent.mask.unsqueeze(-1)
    torch.testing.assert_close(soft.embeddings, expected, rtol=1e-5, atol=1e-6)


def test_soft_tokens_of_own_embeddings_read_like_the_text_prompt(tiny_lms):
    """head + own embeddings of ``Context: …`` + question suffix + tail = the text baseline's prompt."""
    for lm in tiny_lms.values():
        question = "Where does the river flow?"
        embeddings, mask = _embedded(lm, TEXTS[:1])
        prefix = lm.soft_tokens_prefix(embeddings, mask, [question_suffix(question)])
        text = lm.text_prefix([text_prompt(TEXTS[0].removeprefix("Context: "), question)])
        assert prefix.embeddings.shape == text.embeddings.shape
        torch.testing.assert_close(prefix.embeddings, text.embeddings)
        assert lm.generate(prefix, 4) == lm.generate(text, 4)
    assert context_prompt("x") == "Context: x"


def test_window_pool_starts_as_the_mean_and_respects_the_mask():
    z = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pooled, pooled_mask = WindowPool(2)(z, mask)
    assert pooled.shape == (2, 3, 3) and pooled_mask.tolist() == [[True, True, True], [True, True, False]]
    torch.testing.assert_close(pooled[0, 0], z[0, :2].mean(0))
    torch.testing.assert_close(pooled[0, 2], z[0, 4])  # a partial window averages its real members
    torch.testing.assert_close(pooled[1, 1], z[1, 2])
    whole, whole_mask = WindowPool(None)(z, mask)
    torch.testing.assert_close(whole[1, 0], z[1, :3].mean(0))
    assert whole.shape == (2, 1, 3) and whole_mask.all()
    one, _ = WindowPool(1)(z, mask)
    assert one is z


def test_prefix_pool_keeps_the_first_ceil_t_over_k_positions_of_each_example():
    z = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pool = WindowPool(2, PoolMode.PREFIX)
    assert pool.logits is None and not list(pool.parameters())  # nothing to learn: the refiner does the work
    kept, kept_mask = pool(z, mask)
    assert kept.shape == (2, 3, 3) and kept_mask.tolist() == [[True, True, True], [True, True, False]]
    torch.testing.assert_close(kept[0], z[0, :3])
    torch.testing.assert_close(kept[1, :2], z[1, :2])
    assert kept[1, 2].abs().sum() == 0  # beyond ceil(3 / 2) = 2: padding
    kept4, mask4 = WindowPool(4, PoolMode.PREFIX)(z, mask)
    assert kept4.shape == (2, 2, 3) and mask4.tolist() == [[True, True], [True, False]]


def test_pool_window_config_is_checked():
    with pytest.raises(ConfigError, match="interlingua.pool_window"):
        load_config("tiny", ["interlingua.pool_window=zero"])
    assert load_config("tiny", ["interlingua.pool_window=all"]).interlingua.pool_size is None
    assert load_config("tiny", ["interlingua.pool_window=4"]).interlingua.pool_size == 4
    assert load_config("tiny", ["interlingua.pool_mode=prefix"]).interlingua.pool_mode == PoolMode.PREFIX
    with pytest.raises(ConfigError, match="interlingua.pool_mode"):
        load_config("tiny", ["interlingua.pool_mode=middle"])
    with pytest.raises(ConfigError, match="eval.conditionings"):
        load_config("tiny", ["eval.conditionings=[sideways]"])


def test_d_wire_config_is_checked():
    native = ["interlingua.design=native", "interlingua.d_inter=32"]
    assert load_config("tiny", [*native, "interlingua.d_wire=8"]).interlingua.d_wire == 8
    assert load_config("tiny", [*native, "interlingua.d_wire=null"]).interlingua.d_wire is None
    with pytest.raises(ConfigError, match="narrows the native design's message.*drop interlingua.d_wire"):
        load_config("tiny", ["interlingua.d_wire=8"])  # the pooled design
    for width in (32, 0, 40):
        with pytest.raises(ConfigError, match="interlingua.d_wire must be between 1 and d_inter - 1 = 31"):
            load_config("tiny", [*native, f"interlingua.d_wire={width}"])
    with pytest.raises(ConfigError, match="interlingua.wire_fit_examples must be positive"):
        load_config("tiny", [*native, "interlingua.wire_fit_examples=0"])


@pytest.mark.e2e
def test_a_resumed_wire_run_restores_its_wire_without_fitting_it_again(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from interlingua.training import init

    out = tmp_path / "run"
    run = [f"data.source={SQUAD_MINI}", "interlingua.design=native", "interlingua.d_wire=8", "train.save_every=1",
           f"runtime.output_dir={out}"]
    first = train(load_config("tiny", [*run, "train.steps=1"]), out, progress=False)
    monkeypatch.setattr(init, "fit_wire", lambda *a, **k: pytest.fail("a resumed run fitted its wire again"))
    final = train(load_config("tiny", [*run, "train.steps=2"]), out, resume=True, progress=False)
    assert final.name == "step_000002"
    before, after = load_file(str(first / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert not torch.equal(before["wire.down.weight"], after["wire.down.weight"])  # trained on from the restored wire
    assert (final / "wire_fit.json").read_text() == (first / "wire_fit.json").read_text()  # its fit stays with it


def test_the_wire_fit_is_the_whitened_pca_of_its_rows():
    """Message coordinates: decorrelated, unit variance, ordered by the variance they carry; the way back is
    the best rank-d_wire reconstruction (its error is the variance left out, below any other rank-4 map's)."""
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16)).Q
    spread = torch.tensor([5.0, 3.0, 2.0, 1.0] + [0.1] * 12)
    rows = (torch.randn(4000, 16) * spread) @ basis.T + 3.0
    wire = Wire(16, 4)
    metrics = wire.fit(rows)
    with torch.no_grad():
        coords, back = wire.down(rows), wire.up(wire.down(rows))
    torch.testing.assert_close(coords.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(coords.T), torch.eye(4), atol=1e-4, rtol=0)
    centred = rows - rows.mean(0)
    left_out = ((back - rows) ** 2).sum() / (centred**2).sum()
    assert metrics["rows"] == 4000 and metrics["explained_variance"] == pytest.approx(1 - float(left_out), abs=1e-4)
    assert metrics["explained_variance"] == pytest.approx(39 / 39.12, abs=0.002)  # variances 25, 9, 4, 1 of 39.12
    directions = torch.linalg.qr(torch.randn(16, 4)).Q  # any other rank-4 projection reconstructs worse
    other = centred @ directions @ directions.T
    assert ((other - centred) ** 2).sum() > ((back - rows) ** 2).sum()
    with pytest.raises(ValueError, match="needs more than d_wire = 4 z vectors, got 4"):
        Wire(16, 4).fit(rows[:4])
    with pytest.raises(ValueError, match="all equal"):
        Wire(16, 4).fit(torch.ones(50, 16))


def test_a_narrow_wire_starts_fitted_on_the_z_of_the_trained_start(three_lms, tmp_path, monkeypatch):
    """interlingua.d_wire: every trained tensor of train.init_from is kept, the wire is fitted on the z that
    start encodes, messages carry d_wire values per position, and the receivers read them back to d_inter."""
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.training import init
    from interlingua.training.recipe import starting_model

    encoder = SentenceEncoder("tiny-encoder")
    torch.manual_seed(0)
    trained = initial_model(native_config(), three_lms, encoder)
    with torch.no_grad():
        trained.refiner.out_proj.weight.normal_()  # stands for a trained residual
    trained.save_pretrained(tmp_path / "start")
    config = native_config("interlingua.d_wire=8", f"train.init_from={tmp_path / 'start'}")
    narrow = starting_model(config, three_lms, encoder)
    assert torch.equal(narrow.refiner.out_proj.weight, trained.refiner.out_proj.weight)
    assert narrow.z_shape == (-1, 8)
    metrics = narrow.wire_metrics
    assert metrics["examples"] == len(load_squad("train", SQUAD_MINI)) and metrics["senders"] == list(THREE)
    assert 0 < metrics["explained_variance"] < 1
    with pytest.raises(ConfigError, match="needs more than d_wire = 8 z vectors, got 6; raise interlingua.wire_fit"):
        starting_model(native_config("interlingua.d_wire=8", "interlingua.pool_window=1000",  # one position each
                                     "interlingua.pool_mode=prefix", "interlingua.wire_fit_examples=2"),
                       three_lms, encoder)  # 2 prompts x 3 senders
    again = starting_model(config, three_lms, encoder)  # the fit is deterministic
    assert all(torch.equal(a, b) for a, b in zip(again.wire.state_dict().values(), narrow.wire.state_dict().values()))

    system = Interlingua(narrow, three_lms, encoder, config)
    with torch.no_grad():
        message = system.encode_z("tiny-qwen2", TEXTS)
        with narrow.wire_bypassed():
            whole = system.encode_z("tiny-qwen2", TEXTS)
        read = narrow.widened(message)
        soft = system.soft_prompt("tiny-gemma", message)
    assert message.z.shape[-1] == 8 and whole.z.shape[-1] == 32 and read.z.shape == whole.z.shape
    assert torch.equal(message.mask, whole.mask) and soft.embeddings.shape[-1] == three_lms["tiny-gemma"].hidden_size
    centred = whole.z[whole.mask] - whole.z[whole.mask].mean(0)
    residual = ((read.z - whole.z)[whole.mask] ** 2).sum() / (centred**2).sum()
    assert residual < 1.0  # the receivers read z, up to the variance the 8 directions leave out

    # saved and loaded, with its fit; a start that already has a wire keeps it instead of refitting
    narrow.save_pretrained(tmp_path / "narrow")
    loaded = InterlinguaModel.from_pretrained(tmp_path / "narrow")
    assert loaded.wire_metrics == metrics
    assert all(torch.equal(a, b) for a, b in zip(loaded.wire.state_dict().values(), narrow.wire.state_dict().values()))
    monkeypatch.setattr(init, "fit_wire", lambda *a, **k: pytest.fail("refitted a wire the start already has"))
    resumed = starting_model(native_config("interlingua.d_wire=8", f"train.init_from={tmp_path / 'narrow'}"),
                             three_lms, encoder)
    assert all(torch.equal(a, b) for a, b in zip(resumed.wire.state_dict().values(), narrow.wire.state_dict().values()))


def test_native_checkpoint_round_trip(three_system, tmp_path):
    system, _ = three_system
    system.model.save_pretrained(tmp_path / "step_000000")
    loaded = InterlinguaModel.from_pretrained(tmp_path / "step_000000")
    assert isinstance(loaded, NativeInterlingua)
    assert loaded.bridge_metrics == system.model.bridge_metrics
    for name, tensor in system.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    loaded.attach_vocabularies(system.lms)
    latent = system.encode_z("tiny-qwen2", TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.soft_prompt("tiny-gemma", latent).embeddings,
                                   system.model.soft_prompt("tiny-gemma", latent).embeddings)


def test_decoding_batched_equals_one_at_a_time(three_system):
    system, _ = three_system
    with torch.no_grad():
        latent = system.encode_z("tiny-gemma", TEXTS)
        batched = system.model.soft_prompt("tiny-llama", latent)
        for i in range(len(TEXTS)):
            alone = system.model.soft_prompt("tiny-llama", Latent.from_rows([latent.rows()[i]]))
            torch.testing.assert_close(batched.embeddings[i][batched.mask[i]], alone.embeddings[0][alone.mask[0]])


# ---- training and evaluation, N = 3 ------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
def test_three_models_train_every_pair_and_evaluate(tmp_path):
    config = native_config("train.steps=2", "train.save_every=2", "eval.limit=4", "loss.w_rec=0.5",
                           "pretrain.tokens=8", f"runtime.output_dir={tmp_path / 'run'}")
    final = train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"gen", "kd", "rec", "align"} <= set(rows[0]["loss"])
    out = eval_job(final, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    flow = metrics["native"]["information_flow"]
    assert set(flow) == {"hybrid", "full"}
    assert len(flow["hybrid"]) == 9  # every (sender, receiver) pair, cross pairs included
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    shuffled = {(r["sender"], r["model"], r["conditioning"]) for r in predictions if r["mode"] == "shuffled"}
    assert len(shuffled) == 18  # a shuffled-z row for every pair in both conditionings
    assert (out / "cross_decode_hybrid.png").is_file()
    assert "Vocabulary bridge" in (out / "report.md").read_text()


@pytest.mark.e2e
def test_training_changes_only_the_residual_branches_when_maps_are_fixed(three_lms, tmp_path):
    config = native_config("train.steps=1", "train.save_every=1", "interlingua.train_maps=false",
                           f"runtime.output_dir={tmp_path / 'run'}")
    final = train(config, tmp_path / "run", progress=False)
    trained = InterlinguaModel.from_pretrained(final)
    fit = load_or_fit_bridge(three_lms, BridgeSettings(d_inter=config.interlingua.d_inter))
    for key in THREE:
        torch.testing.assert_close(trained.encoders[key].weight, fit.encoders[key].weight, rtol=0, atol=0)
    assert trained.refiner.out_proj.weight.abs().sum() > 0  # the residual branch moved off zero
    assert unit_embeddings(three_lms["tiny-llama"]).pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)


def test_native_messages_cross_the_wire_and_decode_as_in_memory(three_system, tmp_path):
    """encode / generate of a saved native checkpoint (each side loading only its own models) give the
    in-memory system's answers; each message is one (T_i, d_inter) z per prompt, also at int8."""
    from interlingua.config import Conditioning, save_config
    from interlingua.wire.service import encode_texts, generate_from_messages

    system, config = three_system
    step = tmp_path / "step_000000"
    system.model.save_pretrained(step)
    save_config(config, tmp_path / "config.yaml")
    hybrid = system.conditioning == Conditioning.HYBRID
    prompts = ["Context: the river runs north to the sea.", "Context: café prices rose in 1905."]
    questions = ["Where does it run?", "When?"] if hybrid else None
    with torch.no_grad():
        message = system.encode(prompts, sender="tiny-llama")
        direct = system.generate(message, receiver="tiny-gemma", question=questions)
    lengths = [len(system.lms["tiny-llama"].tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    assert [tuple(z.shape) for z in message.z] == [(n, config.interlingua.d_inter) for n in lengths]
    payloads = encode_texts(step, prompts, sender="tiny-llama")
    assert payloads == message.payloads  # the same bytes from a sender that loaded nothing but its own model
    assert generate_from_messages(step, payloads, "tiny-gemma", questions=questions) == direct
    int8 = encode_texts(step, prompts, sender="tiny-llama", overrides=["compression.precision=int8"])
    assert sum(map(len, int8)) < 0.4 * message.nbytes
    assert len(generate_from_messages(step, int8, "tiny-gemma", questions=questions)) == 2


def test_vocab_messages_carry_one_id_per_vocabulary_and_decode_the_same_on_both_sides(three_system, tmp_path):
    """precision=vocab: ids of the nearest key of every receiver head, bit-packed, and an fp16 norm per
    position; the receiver reads the code's round trip, in memory and from a saved checkpoint alike."""
    import math

    from interlingua.codec.message import message_size
    from interlingua.config import Conditioning, Precision, save_config
    from interlingua.wire.service import encode_texts, generate_from_messages

    system, config = three_system
    step = tmp_path / "step_000000"
    system.model.save_pretrained(step)
    save_config(config, tmp_path / "config.yaml")
    prompts = ["Context: the river runs north to the sea.", "Context: café prices rose in 1905."]
    questions = ["Where does it run?", "When?"] if system.conditioning == Conditioning.HYBRID else None
    code = system.vocabulary_code()
    heads = [system.model.receivers[key] for key in THREE]
    assert code.widths == tuple(math.ceil(math.log2(len(h._keys))) for h in heads)
    with torch.no_grad():
        message = system.encode(prompts, sender="tiny-llama", precision="vocab")
        dense = system.encode(prompts, sender="tiny-llama", precision="int4")
        direct = system.generate(message, receiver="tiny-gemma", question=questions)
    for z, payload, received in zip(message.z, message.payloads, message.received()):
        assert len(payload) == message_size(tuple(z.shape), Precision.VOCAB, code.bits_per_position)
        torch.testing.assert_close(received, code.round_trip(z))
        unit = torch.nn.functional.normalize(z, dim=-1)
        ids, _ = code.encode(z)
        for book, head in enumerate(heads):
            assert torch.equal(ids[:, book], (unit @ head._keys.T).argmax(-1))  # the nearest key, exactly
    assert message.nbytes < dense.nbytes
    payloads = encode_texts(step, prompts, sender="tiny-llama", overrides=["compression.precision=vocab"])
    assert payloads == message.payloads
    assert generate_from_messages(step, payloads, "tiny-gemma", questions=questions) == direct


def test_the_evaluation_reads_vocab_messages_and_counts_their_bytes(three_system, monkeypatch):
    from statistics import mean

    import interlingua.eval.native as native_eval
    from interlingua.codec.message import encode_message
    from interlingua.eval.jobs import validation_examples

    system, config = three_system
    config = config_from_dict(config_to_dict(config), ["eval.limit=2", "eval.conditionings=[hybrid]",
                                                       "compression.precision=vocab"])
    examples = validation_examples(config)
    code = system.vocabulary_code()
    seen = []
    real = native_eval.received_rows
    monkeypatch.setattr(native_eval, "received_rows", lambda rows, cfg, c=None: seen.append(rows) or real(rows, cfg, c))
    rows, summary = native_eval.evaluate_native(system, examples, config, progress=False)
    assert len(rows) == 2 * 9 * 2
    sent = seen[0]  # the first sender's z, as encoded
    sizes = next(iter(summary["messages"]["hybrid"].values()))
    assert sizes["wire_precision"] == "vocab"
    assert sizes["mean_wire_bytes"] == mean(len(encode_message(z, "vocab", 32, "0" * 16, code)) for z in sent)


def test_quantisation_aware_training_reads_the_vocabulary_code(three_system):
    system, config = three_system
    qat = config_from_dict(config_to_dict(config), ["compression.precision=vocab", "compression.qat=true"])
    trainer = Interlingua(system.model, system.lms, system.encoder, qat)
    latent = trainer.encode_z("tiny-qwen2", TEXTS)
    delivered = trainer.delivered(latent)
    code = trainer.vocabulary_code()
    for row, z, mask in zip(delivered.z, latent.z, latent.mask):
        torch.testing.assert_close(row[mask].detach(), code.round_trip(z[mask].detach()))
        assert not row[~mask].any()
    delivered.z.sum().backward()  # straight through: the refiner gets a gradient
    assert system.model.refiner.out_proj.weight.grad is not None
    system.model.zero_grad(set_to_none=True)


@pytest.mark.e2e
def test_bridge_command_writes_a_step_zero_checkpoint_that_eval_reads(tmp_path, capsys):
    from interlingua.cli import main

    out = tmp_path / "bridge"
    assert main(["bridge", "--config", "tiny", "interlingua.design=native", f"data.source={SQUAD_MINI}",
                 "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert '"shared_strings"' in printed and "step_000000" in printed
    assert main(["eval", "--checkpoint", str(out / "step_000000"), "--limit", "3", "eval.conditionings=[hybrid]",
                 "eval.decoders=[linear]", "-q"]) == 0
    folder = out / "eval" / "step_000000"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["native"]["information_flow"]) == {"hybrid"}
    pairs = set(metrics["native"]["information_flow"]["hybrid"])
    assert set(metrics["native"]["heads"]["linear"]["paired"]["hybrid"]) == pairs
    assert "Receiver head `linear` against the checkpoint's `vocab`" in (folder / "report.md").read_text()
    own = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    linear = [json.loads(line) for line in (folder / "predictions_linear_head.jsonl").read_text().splitlines()]
    assert not any("decoder" in row for row in own) and {row["decoder"] for row in linear} == {"linear"}
    assert len(linear) == 4 * 2 * 3  # 2 senders x 2 receivers, read and shuffled, 3 examples
    assert metrics["native"]["bridge_fit"]["models"] == ["tiny-llama", "tiny-qwen2"]
    assert main(["bridge", "--config", "tiny", f"data.source={SQUAD_MINI}", "-o", str(out)]) == 2  # pooled design

    # with train.init_from: the new shape as training would start it (here a trained-looking residual)
    start = InterlinguaModel.from_pretrained(out / "step_000000")
    with torch.no_grad():
        start.refiner.out_proj.weight.normal_()
    start.save_pretrained(tmp_path / "trained")
    assert main(["bridge", "--config", "tiny", "interlingua.design=native", f"data.source={SQUAD_MINI}",
                 "interlingua.pool_window=4", "interlingua.pool_mode=prefix", f"train.init_from={tmp_path / 'trained'}",
                 "-o", str(tmp_path / "prefix"), "-q"]) == 0
    prefix = InterlinguaModel.from_pretrained(tmp_path / "prefix" / "step_000000")
    assert prefix.spec.interlingua.pool_window == "4" and prefix.spec.interlingua.pool_mode.value == "prefix"
    assert torch.equal(prefix.refiner.out_proj.weight, start.refiner.out_proj.weight)


def test_receiver_heads_are_compared_in_one_evaluation(three_system, tmp_path, monkeypatch):
    """eval.decoders=[vocab, linear] on a vocab checkpoint: the linear rows are exactly those of the same model
    evaluated with the linear head as its own, every pair has its shuffled row and a paired ΔF1 against the
    own head, the own head is back afterwards, and a second run reads the head's passes instead of decoding."""
    import interlingua.eval.native as native_eval
    from interlingua.config import NativeDecoder
    from interlingua.eval.compare import paired_difference
    from interlingua.eval.jobs import validation_examples

    system, config = three_system
    plain = config_from_dict(config_to_dict(config), ["eval.limit=3", "eval.conditionings=[hybrid]"])
    both = config_from_dict(config_to_dict(plain), ["eval.decoders=[vocab,linear]"])
    examples = validation_examples(plain)
    rows, summary = native_eval.evaluate_native(system, examples, both, progress=False, passes_dir=tmp_path)
    heads = list(system.model.receivers.values())
    assert all(head.decoder == NativeDecoder.VOCAB for head in heads) and set(summary["heads"]) == {"linear"}
    own = [r for r in rows if "decoder" not in r]
    linear = [r for r in rows if r.get("decoder") == "linear"]
    assert len(own) == len(linear) == 9 * 2 * 3

    for head in heads:
        head.decoder = NativeDecoder.LINEAR
    try:
        direct, direct_summary = native_eval.evaluate_native(system, examples, plain, progress=False)
    finally:
        for head in heads:
            head.decoder = NativeDecoder.VOCAB
    assert [{k: v for k, v in r.items() if k != "decoder"} for r in linear] == direct
    result = summary["heads"]["linear"]
    assert result["information_flow"]["hybrid"].keys() == direct_summary["information_flow"]["hybrid"].keys()
    for pair, v in direct_summary["information_flow"]["hybrid"].items():
        assert result["information_flow"]["hybrid"][pair]["latent_f1"] == v["latent_f1"]
        assert result["information_flow"]["hybrid"][pair]["shuffled_f1"] == v["shuffled_f1"]
        sender, receiver = pair.split(" -> ")
        read = {"own": {}, "linear": {}}
        for r in rows:
            if r["sender"] == sender and r["model"] == receiver and r["mode"] != "shuffled":
                read["linear" if "decoder" in r else "own"][r["id"]] = r["f1"]
        expected = paired_difference(read["linear"], read["own"])
        assert result["paired"]["hybrid"][pair] == dict(zip(("delta_f1", "se", "n"), expected))

    calls = []
    monkeypatch.setattr(native_eval, "decode_pair", lambda *a, **k: calls.append(a) or [])
    again, _ = native_eval.evaluate_native(system, examples, both, progress=False, passes_dir=tmp_path)
    assert calls == [] and again == rows
    with pytest.raises(ConfigError, match="eval.decoders lists receiver heads"):
        config_from_dict(config_to_dict(plain), ["eval.decoders=[nearest]"])


@pytest.mark.e2e
def test_a_stopped_evaluation_resumes_from_its_finished_passes(three_system, tmp_path, monkeypatch):
    import interlingua.eval.native as native_eval
    from interlingua.config import replace

    real_decode_pair = native_eval.decode_pair
    from interlingua.eval.jobs import validation_examples

    system, config = three_system
    config = config_from_dict(config_to_dict(config), ["eval.limit=3", "eval.conditionings=[hybrid]"])
    examples = validation_examples(config)
    rows, summary = native_eval.evaluate_native(system, examples, config, progress=False, passes_dir=tmp_path)
    assert len(list(tmp_path.glob("*.jsonl"))) == 9
    table = native_eval.finished_passes_table(tmp_path).splitlines()
    assert len(table) == 2 + 9
    own = summary["information_flow"]["hybrid"]["tiny-gemma -> tiny-gemma"]
    own_row = next(r for r in table if "tiny-gemma -> tiny-gemma" in r)
    assert f"| {own['latent_f1']:.1f} | {own['shuffled_f1']:.1f} |" in own_row
    monkeypatch.setattr(native_eval, "decode_pair", lambda *a, **k: pytest.fail("a finished pass was decoded again"))
    again, _ = native_eval.evaluate_native(system, examples, config, progress=False, passes_dir=tmp_path)
    assert again == rows
    calls = []
    monkeypatch.setattr(native_eval, "decode_pair",
                        lambda *a, **k: calls.append((a[3], a[4])) or real_decode_pair(*a, **k))  # (sender, receiver)
    other = replace(config, eval=config_from_dict(config_to_dict(config), ["eval.max_new_tokens=2"]).eval)
    native_eval.evaluate_native(system, examples, other, progress=False, passes_dir=tmp_path)
    assert len(set(calls)) == len(calls) == 9  # other decoding settings: nothing stale is read
    assert all(a != b for a, b in calls[:6]) and all(a == b for a, b in calls[6:])  # cross pairs first


def test_publish_script_copies_the_passes_and_writes_their_table(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    from interlingua.eval.native import PassStore

    passes = tmp_path / "eval" / "passes"
    store = PassStore(passes, {"fingerprint": "abc"})
    row = {"id": "q1", "model": "tiny-gemma", "sender": "tiny-llama", "conditioning": "hybrid", "f1": 1.0}
    store.put("hybrid tiny-llama -> tiny-gemma", [{**row, "mode": "cross"}, {**row, "mode": "shuffled", "f1": 0.0}])
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    text_row = {"id": "q1", "model": "tiny-gemma", "mode": "text", "f1": 0.5}
    (baselines / "predictions.jsonl").write_text(json.dumps(text_row))
    script = str(SQUAD_MINI.parents[2] / "scripts" / "publish_native_passes.py")
    argv = [script, str(tmp_path / "eval"), str(tmp_path / "out"), "--baselines", str(baselines)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(script, run_name="__main__")
    assert (tmp_path / "out" / "passes" / "settings.json").is_file()
    table = (tmp_path / "out" / "passes.md").read_text()
    assert "| hybrid | tiny-llama -> tiny-gemma | 1 | 100.0 | 0.0 | 100.0 | 50.0 | 200 % |" in table


def test_a_native_sweep_base_needs_the_uncompressed_checkpoint_to_start_from(tmp_path):
    from interlingua.sweep.grid import load_sweep, plan_sweep

    sweep = load_sweep("tiny", ["base.interlingua.design=native", "grid.num_slots=null"])
    with pytest.raises(ConfigError, match="base.train.init_from"):
        plan_sweep(sweep, tmp_path)


def test_a_compressed_shape_starts_from_the_uncompressed_checkpoint(three_lms, tmp_path):
    """train.init_from copies every tensor whose name and shape match; the rest keep their step-0 values
    (window weights at the mean, the fitted bridge at a smaller d_inter with its residual at zero)."""
    from interlingua.errors import CheckpointError
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.training.recipe import starting_model

    encoder = SentenceEncoder("tiny-encoder")
    torch.manual_seed(0)
    trained = initial_model(native_config(), three_lms, encoder)
    with torch.no_grad():
        trained.refiner.out_proj.weight.normal_()  # stands for a trained residual
        next(iter(trained.receivers.values())).residual.weight.normal_()
    trained.save_pretrained(tmp_path / "step_000100")
    source = f"train.init_from={tmp_path / 'step_000100'}"

    pooled = starting_model(native_config("interlingua.pool_window=2", source), three_lms, encoder)
    assert torch.equal(pooled.refiner.out_proj.weight, trained.refiner.out_proj.weight)
    assert all(torch.equal(a, b) for a, b in zip(pooled.receivers.state_dict().values(),
                                                   trained.receivers.state_dict().values()))
    assert torch.equal(pooled.pool.logits, torch.zeros(2))  # the new window weights start as the mean

    # prefix: at the start the kept positions are exactly the uncompressed z's first ceil(T / k)
    prefix = starting_model(native_config("interlingua.pool_window=3", "interlingua.pool_mode=prefix", source),
                            three_lms, encoder)
    for key in THREE:
        with torch.no_grad():
            whole = Interlingua(trained, three_lms, encoder).encode_z(key, TEXTS)
            kept = Interlingua(prefix, three_lms, encoder).encode_z(key, TEXTS)
        lengths = whole.mask.sum(1)
        assert kept.mask.sum(1).tolist() == ((lengths + 2) // 3).tolist()
        for row, whole_row in zip(kept.rows(), whole.rows()):
            torch.testing.assert_close(row, whole_row[: len(row)])

    narrow = starting_model(native_config("interlingua.d_inter=16", source), three_lms, encoder)
    fresh = initial_model(native_config("interlingua.d_inter=16"), three_lms, encoder)
    assert all(torch.equal(a, b) for a, b in zip(narrow.encoders.state_dict().values(),
                                                   fresh.encoders.state_dict().values()))
    assert narrow.refiner.out_proj.weight.abs().sum() == 0  # the residual of another width starts at zero

    with pytest.raises(CheckpointError, match="native-design interlingua, this run is pooled"):
        starting_model(native_config("interlingua.design=pooled", source), three_lms, encoder)
    with pytest.raises(CheckpointError, match="not an interlingua checkpoint"):
        starting_model(native_config(f"train.init_from={tmp_path / 'nowhere'}"), three_lms, encoder)


def test_kd_from_the_uncompressed_interlingua_is_zero_at_its_own_shape_and_not_when_pooled(tmp_path):
    """loss.w_kd_z: the teacher is the receiver reading the train.init_from checkpoint's z. A run that starts
    from that checkpoint at the same shape is the teacher at step 0 (KL 0); pooled pairs of z are not."""
    common = [f"data.source={SQUAD_MINI}", "interlingua.design=native", "interlingua.dropout=0", "train.steps=1",
              "train.save_every=1", "train.log_every=1"]
    start = train(load_config("tiny", [*common, f"runtime.output_dir={tmp_path / 'start'}"]), tmp_path / "start",
                  progress=False)
    first_kd_z = {}
    for window in (1, 2):
        out = tmp_path / f"k{window}"
        config = load_config("tiny", [*common, f"interlingua.pool_window={window}", f"train.init_from={start}",
                                      "loss.w_kd_z=1.0", f"runtime.output_dir={out}"])
        train(config, out, progress=False)
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        first_kd_z[window] = first["loss"]["kd_z"]
    assert first_kd_z[1] == pytest.approx(0.0, abs=1e-5)
    assert first_kd_z[2] > 1e-3


def test_kd_from_the_interlingua_needs_a_native_start(tmp_path):
    with pytest.raises(ConfigError, match="loss.w_kd_z=0.5 distils from the interlingua of train.init_from"):
        load_config("tiny", ["interlingua.design=native", "loss.w_kd_z=0.5"])
    with pytest.raises(ConfigError, match="interlingua.design=native"):
        load_config("tiny", [f"train.init_from={tmp_path}", "loss.w_kd_z=0.5"])
