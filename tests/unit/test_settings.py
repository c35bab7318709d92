"""One declaration of the settings that determine each artifact (interlingua.settings), the one check of it
that every reuse check goes through, and configs / checkpoint specs serialised through OmegaConf."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from enum import Enum
from pathlib import Path
from types import SimpleNamespace

import pytest

from interlingua import settings as settings_module
from interlingua.cache import cache_settings_hash
from interlingua.config import (
    AnchorKind,
    Conditioning,
    Config,
    Design,
    InterlinguaConfig,
    NativeDecoder,
    Pooling,
    PoolMode,
    Positions,
    Precision,
    PromptFormat,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from interlingua.constants import TRAINER_STATE_FILE, TRAINER_STATE_VERSION
from interlingua.errors import BaselineReuseError, CheckpointError
from interlingua.models.interlingua import FrozenModelInfo, InterlinguaModel, InterlinguaSpec
from interlingua.settings import (
    ABSENT,
    DETERMINANTS,
    Artifact,
    Determinants,
    settings_differences,
    settings_hash,
    settings_of,
    show,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny(*overrides: str) -> Config:
    return load_config("tiny", list(overrides))


# ---- the declaration: per artifact, a key that matters and one that does not ---------------------------
CASES = [
    # kind, a key that changes the artifact, keys that do not
    (Artifact.CHECKPOINT_SHAPE, "interlingua.d_inter=16",
     ["interlingua.dropout=0.1", "models.0.prompt_format=chat", "train.lr=1e-5", "eval.limit=3"]),
    (Artifact.CHECKPOINT_SHAPE, "interlingua.conditioning=hybrid", ["loss.w_sem=0.2"]),
    (Artifact.CHECKPOINT_SHAPE, "encoder=other-encoder", ["compression.precision=int8"]),
    (Artifact.TRAINING_RUN, "train.lr=1e-5",
     ["eval.limit=3", "eval.max_new_tokens=3", "runtime.output_dir=elsewhere", "runtime.device=cpu",
      "runtime.shard_frozen=true", "runtime.gradient_checkpointing=true", "train.keep_checkpoints=1",
      "cache.dir=/elsewhere"]),
    (Artifact.TRAINING_RUN, "loss.w_sem=0.2", ["eval.batch_size=2"]),
    (Artifact.TRAINING_RUN, "models.1.prompt_format=raw", []),
    (Artifact.SWEEP_CELL, "eval.limit=3",
     ["runtime.output_dir=elsewhere", "runtime.shard_frozen=true", "train.keep_checkpoints=1"]),
    (Artifact.SWEEP_CELL, "compression.precision=int4", []),
    (Artifact.BASELINE_ROWS, "eval.max_new_tokens=3", ["train.lr=1e-5", "interlingua.d_inter=16", "eval.limit=3"]),
    (Artifact.BASELINE_ROWS, "data.max_prompt_tokens=64", []),
    (Artifact.BASELINE_ROWS, "interlingua.num_slots=2", []),
    (Artifact.BASELINE_ROWS, "runtime.dtype=bfloat16", ["runtime.device=cpu"]),
    (Artifact.TEACHER_CACHE, "loss.kd_temperature=2.0", ["loss.w_kd=0.5", "cache.anchor=false", "train.lr=1e-5"]),
    (Artifact.TEACHER_CACHE, "cache.teacher_top_k=8", []),
    (Artifact.ANCHOR_CACHE, "interlingua.anchor=tokens", ["interlingua.d_inter=16", "loss.w_sem=0.2"]),
    (Artifact.BRIDGE_FIT, "interlingua.bridge_ridge=0.1", ["interlingua.vocab_top_k=4", "interlingua.num_slots=2"]),
    (Artifact.BRIDGE_FIT, "interlingua.d_inter=16", []),
    (Artifact.NATIVE_PASS, "compression.precision=int8", ["eval.batch_size=2", "eval.limit=3", "train.lr=1e-5"]),
    (Artifact.NATIVE_PASS, "runtime.seed=1", []),
    (Artifact.NATIVE_PASS, "runtime.dtype=bfloat16", []),
]


@pytest.mark.parametrize("kind, matters, ignored", CASES, ids=[f"{c[0].name}-{c[1]}" for c in CASES])
def test_a_key_that_matters_is_found_and_one_that_does_not_is_ignored(kind, matters, ignored):
    base = tiny()
    changed = settings_differences(kind, base, tiny(matters))
    key, _, value = matters.partition("=")
    names = {DETERMINANTS[kind].names.get(key, key)}
    assert {d.key for d in changed} == names
    (difference,) = changed
    assert str(difference) == f"{difference.key}: {show(difference.saved)} -> {show(difference.current)}"
    assert show(difference.current) in (value, str(float(value)) if value[0].isdigit() else value)
    assert settings_differences(kind, base, tiny(*ignored)) == []
    assert settings_differences(kind, config_to_dict(tiny(matters)), base)  # a stored dict reads the same


def test_every_artifact_kind_is_declared():
    assert set(DETERMINANTS) == set(Artifact)
    assert all(isinstance(d, Determinants) and d.keys for d in DETERMINANTS.values())
    known = set(settings_module._flatten(config_to_dict(tiny())))  # every key the config has
    for kind, declared in DETERMINANTS.items():
        for key in [*declared.keys, *declared.ignored, *declared.names]:
            if key != "*":
                assert any(k == key or k.startswith(key + ".") or "*" in key for k in known), (kind, key)


def test_differences_read_as_key_saved_current():
    changed = settings_differences(Artifact.TRAINING_RUN, tiny(), tiny("loss.w_sem=0.2", "pretrain.lr=0.001"))
    assert [str(d) for d in changed] == ["loss.w_sem: 0.1 -> 0.2", "pretrain.lr: null -> 0.001"]
    stored = config_to_dict(tiny())
    del stored["loss"]  # a key a stored config lacks entirely, on a config that no longer loads
    stored["models"] = []
    missing = settings_differences(Artifact.SWEEP_CELL, stored, tiny())
    assert "models.0.spec: (not set) -> tiny-llama" in [str(d) for d in missing]
    assert next(d for d in missing if d.key == "loss.w_sem").saved is ABSENT


def test_stored_settings_keep_their_on_disk_names():
    """Cache folders and the native evaluation's passes are named / stamped by these dicts."""
    config = tiny("loss.kd_temperature=2.0", "cache.teacher_top_k=16", "interlingua.anchor=tokens",
                  "compression.precision=int8")
    assert settings_of(Artifact.TEACHER_CACHE, config) == {"temperature": 2.0, "top_k": 16}
    assert settings_of(Artifact.ANCHOR_CACHE, config) == {"anchor": "tokens"}
    assert settings_of(Artifact.BRIDGE_FIT, config) == {"d_inter": 32, "ridge": 0.01}
    assert settings_of(Artifact.NATIVE_PASS, config) == {
        "max_new_tokens": 4, "max_prompt_tokens": 1024, "precision": "int8", "group_size": 32, "seed": 0,
        "dtype": "auto"}
    # the hash that names a cache folder is the one written before: 16 hex digits of sha256, sorted keys
    expected = hashlib.sha256(json.dumps({"a": 1, "b": [1, 2]}, sort_keys=True).encode()).hexdigest()[:16]
    assert settings_hash({"b": [1, 2], "a": 1}) == expected == cache_settings_hash({"a": 1, "b": [1, 2]})


def test_committed_passes_still_match_their_settings():
    """results/native-step0-n1000/passes can be copied back and resumed: its stamp reads as today's."""
    stamp = json.loads((REPO_ROOT / "results" / "native-step0-n1000" / "passes" / "settings.json").read_text())
    config = tiny()
    config = config_from_dict(config_to_dict(config), ["eval.max_new_tokens=16", "data.max_prompt_tokens=1024"])
    declared = settings_of(Artifact.NATIVE_PASS, config)
    assert set(stamp) == {"fingerprint", "ids", "formats", *declared}
    assert {key: stamp[key] for key in declared} == declared


def _stored_configs():
    for path in sorted((REPO_ROOT / "results").rglob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            continue
        for node in (data.get("run", {}), data):
            if isinstance(node, dict) and isinstance(node.get("config"), dict) and "models" in node["config"]:
                yield path, node["config"]
                break


def test_configs_stored_in_committed_results_read_as_today():
    found = list(_stored_configs())
    assert found, "results/ holds run configs"
    for path, stored in found:
        config = config_from_dict(stored)  # enum names (MEAN, QUERIES), keys added since take defaults
        for kind in Artifact:
            assert settings_differences(kind, stored, config) == [], (path, kind)


def test_a_cell_stored_with_enum_names_is_still_recognised_as_the_same_settings():
    config = tiny("compression.precision=int8")
    stored = config_to_dict(config)
    stored["compression"]["precision"] = "INT8"  # as configs were stored before enum values
    assert settings_differences(Artifact.SWEEP_CELL, stored, config) == []
    stored["compression"]["precision"] = "int4"
    assert [d.key for d in settings_differences(Artifact.SWEEP_CELL, stored, config)] == ["compression.precision"]


def test_settings_that_do_not_change_a_result_do_not_force_a_retraining():
    config = tiny("train.keep_checkpoints=1")
    stored = config_to_dict(config)
    del stored["train"]["keep_checkpoints"]  # a run stored before the setting existed
    stored["runtime"]["output_dir"] = "elsewhere"
    stored["runtime"]["shard_frozen"] = True  # trained with the frozen layers sharded: the same updates
    assert settings_differences(Artifact.TRAINING_RUN, stored, config) == []
    stored["train"]["lr"] = 1e-5
    assert [d.key for d in settings_differences(Artifact.TRAINING_RUN, stored, config)] == ["train.lr"]


# ---- every former checker goes through the one declaration ------------------------------------------------
@pytest.fixture
def spy(monkeypatch):
    """``spy(module, name)``: records the artifact kinds ``module.name`` (settings_of / settings_differences)
    is called with, and still answers."""
    calls: list[Artifact] = []

    def install(module, name: str):
        real = getattr(settings_module, name)
        monkeypatch.setattr(module, name, lambda kind, *a, **k: calls.append(kind) or real(kind, *a, **k))
        return calls

    return install


def _spec(config: Config) -> InterlinguaSpec:
    return InterlinguaSpec(models=[FrozenModelInfo(m.spec, 8, 1.0) for m in config.models], encoder=config.encoder,
                           d_sem=8, interlingua=config.interlingua)


def test_resume_checks_the_checkpoint_shape_through_the_declaration(spy, monkeypatch, tmp_path):
    from interlingua.training import checkpoint

    calls = spy(checkpoint, "settings_differences")
    saved = _spec(tiny())
    checkpoint.check_same_config(saved, tiny("interlingua.dropout=0.1", "train.lr=1e-5"), tmp_path)
    with pytest.raises(CheckpointError, match=r"interlingua\.num_slots: checkpoint 4, config 2.*resume with"):
        checkpoint.check_same_config(saved, tiny("interlingua.num_slots=2"), tmp_path)
    with pytest.raises(CheckpointError, match="trained with encoder 'tiny-encoder', the config has 'x'"):
        checkpoint.check_same_config(saved, tiny("encoder=x"), tmp_path)
    checkpoint.check_same_spec(saved, _spec(tiny("interlingua.dropout=0.1")), tmp_path)
    assert calls and set(calls) == {Artifact.CHECKPOINT_SHAPE}
    # the declaration, not the checker, says dropout may change
    shape = DETERMINANTS[Artifact.CHECKPOINT_SHAPE]
    monkeypatch.setitem(DETERMINANTS, Artifact.CHECKPOINT_SHAPE, replace(shape, ignored={}))
    with pytest.raises(CheckpointError, match=r"interlingua\.dropout: checkpoint 0.0, config 0.1"):
        checkpoint.check_same_config(saved, tiny("interlingua.dropout=0.1"), tmp_path)


def test_evaluating_a_checkpoint_reads_the_declaration(spy, caplog):
    from interlingua.models import system

    calls = spy(system, "settings_differences")
    config = tiny()
    spec = replace(_spec(config), interlingua=replace(config.interlingua, n_cross_layers=1, n_refine_layers=0))
    model = InterlinguaModel(spec)
    with caplog.at_level(logging.WARNING, logger="interlingua.models.system"):
        checked = system.check_checkpoint_config(model, config, Path("ckpt"))
    assert checked.interlingua == spec.interlingua and calls == [Artifact.CHECKPOINT_SHAPE]
    assert "interlingua.n_cross_layers: 1 -> 2" in caplog.text
    reordered = config_from_dict(config_to_dict(config), ["models.0.spec=tiny-qwen2", "models.1.spec=tiny-llama"])
    system.check_checkpoint_config(model, reordered, Path("ckpt"))  # evaluation reads the models in any order
    with pytest.raises(CheckpointError, match="trained with models"):
        system.check_checkpoint_config(model, tiny("encoder=x"), Path("ckpt"))


def test_resume_warnings_read_the_training_run_declaration(spy, caplog):
    from interlingua.training import recipe

    calls = spy(recipe, "settings_differences")
    saved = config_to_dict(tiny("interlingua.conditioning=hybrid"))
    saved["interlingua"]["conditioning"] = "HYBRID"  # as older checkpoints stored it
    with caplog.at_level(logging.WARNING, logger="interlingua.training.recipe"):
        recipe._warn_config_changes(saved, tiny("interlingua.conditioning=hybrid", "eval.limit=3",
                                                "runtime.device=cpu"))
        assert not caplog.records
        recipe._warn_config_changes(saved, tiny("train.lr=1e-5"))
    assert calls == [Artifact.TRAINING_RUN] * 2
    assert "train.lr: 0.0003 -> 1e-05" in caplog.text and "interlingua.conditioning: hybrid -> full" in caplog.text


def test_baseline_reuse_reads_the_declaration(spy, monkeypatch, tmp_path):
    from interlingua.eval import reuse

    calls = spy(reuse, "settings_differences")
    formats = {"tiny-llama": "raw"}
    stored = {"prompt_formats": formats, "run": {"config": config_to_dict(tiny())}}
    reuse._check_same_settings(stored, tiny("train.lr=1e-5"), formats, tmp_path)
    with pytest.raises(BaselineReuseError, match=r"baselines used eval\.max_new_tokens=4, this evaluation uses 3; "
                                                 r"rerun the baselines or drop --baselines"):
        reuse._check_same_settings(stored, tiny("eval.max_new_tokens=3"), formats, tmp_path)
    assert calls == [Artifact.BASELINE_ROWS] * 2
    rows = DETERMINANTS[Artifact.BASELINE_ROWS]
    monkeypatch.setitem(DETERMINANTS, Artifact.BASELINE_ROWS, replace(rows, keys=(*rows.keys, "train.lr")))
    with pytest.raises(BaselineReuseError, match=r"train\.lr"):
        reuse._check_same_settings(stored, tiny("train.lr=1e-5"), formats, tmp_path)


def test_the_sweep_reads_the_declaration_for_cells_and_trainings(spy, tmp_path):
    from interlingua.sweep import runner
    from interlingua.training.recipe import total_steps

    calls = spy(runner, "settings_differences")
    config = tiny("runtime.output_dir=" + str(tmp_path / "train"))
    planned = SimpleNamespace(eval_config=config, train_config=config, train_dir=tmp_path / "train",
                              fixed_checkpoint=None)
    cell = tmp_path / "cell.json"
    cell.write_text(json.dumps({"config": config_to_dict(tiny("runtime.output_dir=elsewhere")), "n": 8}))
    assert runner._finished_result(cell, planned)["n"] == 8
    cell.write_text(json.dumps({"config": config_to_dict(tiny("eval.limit=3")), "n": 3}))
    assert runner._finished_result(cell, planned) is None
    final = tmp_path / "train" / f"step_{total_steps(config):06d}"
    final.mkdir(parents=True)
    state = {"format_version": TRAINER_STATE_VERSION, "step": total_steps(config)}
    (final / TRAINER_STATE_FILE).write_text(json.dumps({**state, "config": config_to_dict(tiny("eval.limit=3"))}))
    assert runner._trained_checkpoint(planned, False, print, lambda: None) == final
    (final / TRAINER_STATE_FILE).write_text(json.dumps({**state, "config": config_to_dict(tiny("loss.w_sem=0.2"))}))
    with pytest.raises(CheckpointError, match=r"other settings \(loss\.w_sem: 0\.2 -> 0\.1\); delete"):
        runner._trained_checkpoint(planned, False, print, lambda: None)
    assert calls == [Artifact.SWEEP_CELL] * 2 + [Artifact.TRAINING_RUN] * 2


def test_native_passes_are_stamped_with_the_declared_settings(spy):
    from interlingua.eval import native

    calls = spy(native, "settings_of")
    system = SimpleNamespace(model=SimpleNamespace(fingerprint=lambda: "abc"),
                             lms={"tiny-llama": SimpleNamespace(prompt_format=PromptFormat.RAW)})
    stamp = native.pass_settings(system, [SimpleNamespace(id="q1")], tiny("compression.precision=int8"))
    assert stamp == {"fingerprint": "abc", "ids": ["q1"], "max_new_tokens": 4, "max_prompt_tokens": 1024,
                     "precision": "int8", "group_size": 32, "seed": 0, "dtype": "auto",
                     "formats": {"tiny-llama": "raw"}}
    assert calls == [Artifact.NATIVE_PASS]


def test_the_bridge_fits_with_the_declared_settings(spy):
    from interlingua.models.bridge import fit

    calls = spy(fit, "settings_of")
    settings = fit.BridgeSettings.of(tiny("interlingua.bridge_ridge=0.05"))
    assert settings == fit.BridgeSettings(d_inter=32, ridge=0.05) and calls == [Artifact.BRIDGE_FIT]
    assert asdict(settings) == {"d_inter": 32, "ridge": 0.05, "holdout": 0.1, "seed": 0}  # the cache key's input


def test_frozen_caches_are_opened_with_the_declared_settings(spy, tiny_lms, tmp_path):
    from interlingua.cache import AnchorCache, KDTeacher
    from interlingua.cache import install as install_module
    from interlingua.models.encoder import SentenceEncoder

    calls = spy(install_module, "settings_of")
    lm = tiny_lms["tiny-llama"]
    encoder = SentenceEncoder("tiny-encoder")
    system = SimpleNamespace(lms={"tiny-llama": lm}, teachers={}, encoder=encoder, anchor_cache=None)
    config = tiny(f"cache.dir={tmp_path}", "cache.teacher_top_k=8", "loss.kd_temperature=2.0",
                  "interlingua.anchor=tokens")
    teacher_store, anchor_store = install_module.install_caches(system, config)
    assert calls == [Artifact.TEACHER_CACHE, Artifact.ANCHOR_CACHE]
    assert teacher_store.directory == tmp_path / "teacher" / settings_hash(KDTeacher.settings(lm, 2.0, 8))
    assert anchor_store.directory == tmp_path / "anchor" / settings_hash(AnchorCache.settings(encoder, "tokens"))
    assert system.teachers["tiny-llama"].temperature == 2.0 and system.anchor_cache.kind == AnchorKind.TOKENS


def test_the_old_ignore_lists_are_gone():
    from interlingua.eval import reuse
    from interlingua.sweep import grid
    from interlingua.training import checkpoint

    assert not hasattr(checkpoint, "_SHAPE_FREE_KEYS") and not hasattr(reuse, "_SETTINGS")
    assert not any(hasattr(grid, name) for name in ("IGNORED_FOR_REUSE", "comparable", "differences"))


# ---- serialisation through OmegaConf -----------------------------------------------------------------------
def _every_enum_off_default() -> InterlinguaConfig:
    return InterlinguaConfig(d_inter=16, num_slots=2, n_heads=4, pooling=Pooling.QUERIES, anchor=AnchorKind.TOKENS,
                             positions=Positions.SINUSOIDAL, conditioning=Conditioning.HYBRID, design=Design.NATIVE,
                             decoder=NativeDecoder.LINEAR, pool_window="2", pool_mode=PoolMode.PREFIX)


def _enum_fields(node) -> int:
    return sum(_enum_fields(v) for v in vars(node).values()) if hasattr(node, "__dataclass_fields__") else (
        sum(_enum_fields(v) for v in node) if isinstance(node, list) else isinstance(node, Enum))


def test_spec_round_trips_with_every_enum_field(tmp_path):
    spec = InterlinguaSpec(models=[FrozenModelInfo("a", 8, 0.125), FrozenModelInfo("b", 6, 1.5)], encoder="e",
                           d_sem=4, interlingua=_every_enum_off_default())
    assert _enum_fields(spec) == 7  # pooling, anchor, positions, conditioning, design, decoder, pool_mode
    stored = json.loads(json.dumps(spec.to_json()))
    assert stored["format_version"] == 1 and stored["interlingua"]["pooling"] == "queries"
    assert stored["interlingua"]["decoder"] == "linear" and stored["models"][0] == asdict(spec.models[0])
    assert InterlinguaSpec.from_json(stored) == spec
    # older checkpoints: enum names, and keys written before they existed are absent
    names = {**stored, "interlingua": {**stored["interlingua"], "pooling": "QUERIES", "anchor": "TOKENS"}}
    assert InterlinguaSpec.from_json(names) == spec
    old = {**stored, "interlingua": {k: v for k, v in stored["interlingua"].items()
                                     if k not in ("conditioning", "positions", "design", "decoder", "pool_window")}}
    read = InterlinguaSpec.from_json(old).interlingua
    assert (read.conditioning, read.positions, read.design, read.decoder, read.pool_window) == (
        Conditioning.FULL, Positions.NONE, Design.POOLED, NativeDecoder.VOCAB, "1")
    with pytest.raises(CheckpointError, match="pooling"):
        InterlinguaSpec.from_json({**stored, "interlingua": {**stored["interlingua"], "pooling": "max"}})


def test_config_round_trips_with_every_enum_field(tmp_path):
    config = tiny("models.0.prompt_format=chat", "models.1.prompt_format=auto", "compression.precision=int4")
    config = replace(config, interlingua=_every_enum_off_default())
    assert _enum_fields(config) == 10  # 2 prompt formats, 7 interlingua enums, the precision
    stored = json.loads(json.dumps(config_to_dict(config)))
    assert stored["compression"]["precision"] == "int4" and stored["models"][1]["prompt_format"] == "auto"
    assert stored["interlingua"]["design"] == "native"
    assert config_from_dict(stored) == config
    save_config(config, tmp_path / "config.yaml")
    assert "precision: int4" in (tmp_path / "config.yaml").read_text()
    assert load_config(str(tmp_path / "config.yaml")) == config
    by_name = json.loads(json.dumps(stored))
    by_name["compression"]["precision"] = Precision.INT4.name
    by_name["models"][0]["prompt_format"] = PromptFormat.CHAT.name
    by_name["interlingua"] = {k: getattr(v, "name", v) for k, v in vars(config.interlingua).items()}
    assert by_name["interlingua"]["conditioning"] == "HYBRID"
    assert config_from_dict(by_name) == config
