"""Caches of frozen work: the tensor store, the cached KD teacher, the cached anchor, and their
invalidation (issue #5)."""

from __future__ import annotations

import logging

import pytest
import torch

from interlingua.cache import AnchorCache, KDTeacher, TensorStore
from interlingua.cache.install import install_caches
from interlingua.config import AnchorKind, load_config
from interlingua.losses import kd_loss
from interlingua.models.encoder import SentenceEncoder
from interlingua.models.frozen_lm import lm_fingerprint
from interlingua.models.system import Interlingua
from interlingua.training.step import kd_teacher
from tests.conftest import SQUAD_MINI

TEXTS = ["Context: The cat sat on the mat.\nQuestion: Where did the cat sit?\nAnswer:",
         "Context: Paris is the capital of France.\nQuestion: What is the capital of France?\nAnswer:",
         "Context: Water boils at 100 degrees.\nQuestion: When does water boil?\nAnswer:"]
ANSWERS = ["on the mat", "Paris", "at 100 degrees"]


# ---- store -------------------------------------------------------------------------------------
def test_store_round_trips_and_persists_across_instances(tmp_path):
    settings = {"model": "m", "top_k": 4}
    store = TensorStore.open(tmp_path, "teacher", settings, flush_every=2)
    a = {"logits": torch.randn(3, 4), "ids": torch.arange(12, dtype=torch.int32).view(3, 4)}
    store.put("a", a)
    assert store.get("a")["logits"].equal(a["logits"])  # pending entries are readable
    store.put("b", {"logits": torch.zeros(2)})  # second entry: flushes a shard
    store.put("c", {"logits": torch.ones(2)})
    store.flush()
    reopened = TensorStore.open(tmp_path, "teacher", settings)
    assert len(reopened) == 3 and "c" in reopened
    stored = reopened.get("a")
    assert all(stored[name].equal(value) and stored[name].dtype == value.dtype for name, value in a.items())
    assert reopened.get("missing") is None
    assert (reopened.hits, reopened.misses) == (1, 1)
    assert len(list(store.directory.glob("shard-*.safetensors"))) == 2


def test_other_settings_get_another_folder(tmp_path):
    one = TensorStore.open(tmp_path, "teacher", {"temperature": 1.0})
    two = TensorStore.open(tmp_path, "teacher", {"temperature": 2.0})
    one.put("x", {"v": torch.ones(1)})
    one.flush()
    assert one.directory != two.directory
    assert TensorStore.open(tmp_path, "teacher", {"temperature": 2.0}).get("x") is None


def test_folder_of_other_settings_is_refused(tmp_path):
    TensorStore(tmp_path / "s", {"a": 1})
    with pytest.raises(ValueError, match="other settings"):
        TensorStore(tmp_path / "s", {"a": 2})


def test_damaged_shard_is_skipped_not_read(tmp_path, caplog):
    store = TensorStore(tmp_path / "s", {"a": 1})
    store.put("x", {"v": torch.ones(4)})
    store.flush()
    shard = next(store.directory.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:20])  # truncated
    with caplog.at_level(logging.WARNING):
        reopened = TensorStore(tmp_path / "s", {"a": 1})
    assert reopened.get("x") is None and "unreadable cache shard" in caplog.text


def test_keys_with_the_separator_are_refused(tmp_path):
    with pytest.raises(ValueError, match="may not contain"):
        TensorStore(tmp_path / "s", {}).put("a/b", {"v": torch.ones(1)})


# ---- KD teacher --------------------------------------------------------------------------------
def _student(lm, targets, seed=0):
    generator = torch.Generator().manual_seed(seed)
    vocab = lm.model.get_output_embeddings().out_features
    return torch.randn(*targets.ids.shape, vocab, generator=generator)


@pytest.mark.parametrize("key", ["tiny-llama", "tiny-qwen2"])
def test_cached_teacher_at_full_vocabulary_equals_exact_kd(tiny_lms, tmp_path, key):
    lm = tiny_lms[key]
    targets = lm.answer_targets(ANSWERS, 4)
    student = _student(lm, targets)
    vocab = student.shape[-1]
    store = TensorStore.open(tmp_path, "teacher", KDTeacher.settings(lm, 2.0, vocab))
    cached = KDTeacher(lm, 2.0, top_k=vocab, store=store).kd_loss(student, TEXTS, targets)
    exact = KDTeacher(lm, 2.0).kd_loss(student, TEXTS, targets)
    with torch.no_grad():
        reference = kd_loss(student, lm.target_logits(lm.text_prefix(TEXTS), targets), targets.mask, 2.0)
    torch.testing.assert_close(exact, reference)
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-6)


def test_cached_teacher_runs_the_model_once_per_example(tiny_lms, tmp_path, monkeypatch):
    lm = tiny_lms["tiny-llama"]
    targets = lm.answer_targets(ANSWERS, 4)
    student = _student(lm, targets)
    settings = KDTeacher.settings(lm, 1.0, 8)
    teacher = KDTeacher(lm, 1.0, top_k=8, store=TensorStore.open(tmp_path, "teacher", settings))
    first = teacher.kd_loss(student, TEXTS, targets)
    teacher.store.flush()
    rows_computed = []
    original = lm.target_logits
    monkeypatch.setattr(lm, "target_logits", lambda prefix, t: rows_computed.append(len(prefix)) or original(prefix, t))
    # A later run (new store object on the same folder) with one new example: only that row runs.
    again = KDTeacher(lm, 1.0, top_k=8, store=TensorStore.open(tmp_path, "teacher", settings))
    texts, answers = TEXTS + ["Context: Snow is white.\nQuestion: What colour is snow?\nAnswer:"], ANSWERS + ["white"]
    more_targets = lm.answer_targets(answers, 4)
    more = again.kd_loss(_student(lm, more_targets), texts, more_targets)
    assert rows_computed == [1]
    torch.testing.assert_close(again.kd_loss(student, TEXTS, targets), first)
    assert more.isfinite()


@pytest.mark.parametrize("others_miss", [False, True])
def test_cached_teacher_joins_a_forward_another_process_needs(tiny_lms, tmp_path, monkeypatch, others_miss):
    # runtime.shard_frozen: a sharded layer's forward is a collective, so a process whose rows are all
    # cached still runs one forward when any other process has to compute its misses
    lm = tiny_lms["tiny-llama"]
    targets = lm.answer_targets(ANSWERS, 4)
    student = _student(lm, targets)
    settings = KDTeacher.settings(lm, 1.0, 8)
    first = KDTeacher(lm, 1.0, top_k=8, store=TensorStore.open(tmp_path, "teacher", settings))
    expected = first.kd_loss(student, TEXTS, targets)  # fills the cache
    asked = []
    teacher = KDTeacher(lm, 1.0, top_k=8, store=first.store,
                        any_process=lambda flag: asked.append(flag) or flag or others_miss)
    forwards = []
    original = lm.target_logits
    monkeypatch.setattr(lm, "target_logits", lambda prefix, t: forwards.append(len(prefix)) or original(prefix, t))
    torch.testing.assert_close(teacher.kd_loss(student, TEXTS, targets), expected)  # the cache answers
    assert asked == [False] and forwards == ([1] if others_miss else [])
    more = lm.answer_targets(["white"], 4)  # a miss here: computed, and the other processes are told
    teacher.kd_loss(_student(lm, more), ["Context: Snow is white.\nQuestion: What colour is snow?\nAnswer:"], more)
    assert asked == [False, True] and forwards[-1] == 1


def test_teacher_cache_is_invalidated_by_what_changes_the_teacher(tiny_lms, tmp_path):
    lm = tiny_lms["tiny-llama"]
    base = KDTeacher.settings(lm, 1.0, 8)
    assert KDTeacher.settings(lm, 2.0, 8) != base and KDTeacher.settings(lm, 1.0, 16) != base
    weights = lm.model.get_input_embeddings().weight
    saved = weights.detach().clone()
    try:
        with torch.no_grad():
            weights[0] += 1.0  # a changed model: the fingerprint (and so the folder) changes
        assert KDTeacher.settings(lm, 1.0, 8)["fingerprint"] != base["fingerprint"]
    finally:
        with torch.no_grad():
            weights.copy_(saved)
    assert KDTeacher.settings(lm, 1.0, 8) == base
    # Entries are keyed by the exact token ids read: another prompt text, answer or K is another entry.
    store = TensorStore.open(tmp_path, "teacher", base)
    teacher = KDTeacher(lm, 1.0, top_k=8, store=store)
    teacher.targets(TEXTS[:1], lm.answer_targets(ANSWERS[:1], 4))
    for texts, answers, k in [(TEXTS[:1], ANSWERS[:1], 4), ([TEXTS[0] + " "], ANSWERS[:1], 4),
                              (TEXTS[:1], ["under the mat"], 4), (TEXTS[:1], ANSWERS[:1], 2)]:
        before = store.misses
        teacher.targets(texts, lm.answer_targets(answers, k))
        assert store.misses - before == (0 if (texts, answers, k) == (TEXTS[:1], ANSWERS[:1], 4) else 1)


def test_fingerprint_is_stable(tiny_lms):
    lm = tiny_lms["tiny-qwen2"]
    assert lm_fingerprint(lm.model) == lm_fingerprint(lm.model)
    assert lm_fingerprint(lm.model) != lm_fingerprint(tiny_lms["tiny-llama"].model)


def test_caching_needs_top_k(tiny_lms, tmp_path):
    with pytest.raises(ValueError, match="top_k > 0"):
        KDTeacher(tiny_lms["tiny-llama"], 1.0, top_k=0, store=TensorStore(tmp_path, {}))


# ---- anchor ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [AnchorKind.SENTENCE, AnchorKind.TOKENS])
def test_cached_anchor_equals_the_encoder(tmp_path, kind, monkeypatch):
    encoder = SentenceEncoder("tiny-encoder")
    store = TensorStore.open(tmp_path, "anchor", AnchorCache.settings(encoder, kind))
    cache = AnchorCache(encoder, kind, store)
    states, mask = cache(TEXTS[:2])
    if kind == AnchorKind.SENTENCE:
        torch.testing.assert_close(states, encoder.encode(TEXTS[:2]))
        assert mask is None
    else:
        expected_states, expected_mask = encoder.encode_tokens(TEXTS[:2])
        assert mask.equal(expected_mask)
        torch.testing.assert_close(states, expected_states)
    monkeypatch.setattr(encoder, "encode", lambda texts: pytest.fail("encoder ran for a cached text"))
    monkeypatch.setattr(encoder, "encode_tokens", lambda texts: pytest.fail("encoder ran for a cached text"))
    again, _ = cache(list(reversed(TEXTS[:2])))
    torch.testing.assert_close(again[0], states[1][: again.shape[1]])


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.e2e
def test_training_with_the_cache_matches_exact_kd_and_reuses_it(tmp_path):
    """Top-k = full vocabulary: the cached run takes the same steps as the uncached exact one; a second
    run reads every teacher and anchor from the cache."""
    from interlingua.training.recipe import train
    from tests.unit.test_training import metrics_rows, tensors_of

    common = [f"data.source={SQUAD_MINI}", "train.steps=2", "train.save_every=2", f"cache.dir={tmp_path / 'cache'}"]
    exact = train(load_config("tiny", common + ["cache.teacher=false", "cache.teacher_top_k=0", "cache.anchor=false"]),
                  tmp_path / "exact", progress=False)
    cached = train(load_config("tiny", common + ["cache.teacher_top_k=100000"]), tmp_path / "cached", progress=False)
    for name, value in tensors_of(exact).items():
        torch.testing.assert_close(tensors_of(cached)[name], value, rtol=1e-4, atol=1e-5, msg=name)
    for row_exact, row_cached in zip(metrics_rows(tmp_path / "exact"), metrics_rows(tmp_path / "cached")):
        assert row_cached["loss"]["kd"] == pytest.approx(row_exact["loss"]["kd"], rel=1e-4)
    # Every example the second run reads is in the cache: no teacher forward, no encoder call.
    config = load_config("tiny", common + ["cache.teacher_top_k=100000"])
    from interlingua.training.recipe import TrainingRecipe

    recipe = TrainingRecipe(config, tmp_path / "again", progress=False)
    recipe.setup(resume=False)
    for store in recipe.caches:
        store.hits = store.misses = 0
    recipe.train()
    recipe.cleanup(True)
    assert all(store.misses == 0 and store.hits > 0 for store in recipe.caches)


def test_install_caches_follows_the_config(tiny_lms, tmp_path):
    config = load_config("tiny", [f"cache.dir={tmp_path}", "cache.anchor=false", "loss.kd_temperature=2.0"])
    encoder = SentenceEncoder("tiny-encoder")
    from interlingua.models.interlingua import InterlinguaModel
    from interlingua.training.recipe import interlingua_spec

    system = Interlingua(InterlinguaModel(interlingua_spec(config, tiny_lms, encoder)), tiny_lms, encoder)
    stores = install_caches(system, config)
    assert len(stores) == 2 and system.anchor_cache is None
    assert all(t.top_k == 256 or t.top_k == t.lm.model.get_output_embeddings().out_features
               for t in system.teachers.values())
    with pytest.raises(ValueError, match="τ"):
        kd_teacher(system, "tiny-llama", 1.0)
    assert system.anchor(TEXTS[:1]).states.shape[0] == 1


def test_config_refuses_a_cached_full_vocabulary_teacher():
    from interlingua.config import ConfigError

    with pytest.raises(ConfigError, match="cache.teacher_top_k"):
        load_config("tiny", ["cache.teacher_top_k=0"])
