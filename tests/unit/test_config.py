from pathlib import Path

import pytest

from interlingua.config import SHIPPED_CONFIG_DIR, Config, ConfigError, PromptFormat, load_config, save_config

SHIPPED = sorted(SHIPPED_CONFIG_DIR.glob("*.yaml"))


def test_three_configs_are_shipped():
    assert {p.stem for p in SHIPPED} >= {"tiny", "embedded", "llama-qwen"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_starts_with_its_command(path: Path):
    config = load_config(str(path))
    assert isinstance(config, Config) and config.models
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run:") and "interlingua" in first


def test_load_by_name_equals_load_by_path():
    assert load_config("embedded") == load_config(str(SHIPPED_CONFIG_DIR / "embedded.yaml"))


def test_overrides_are_typed_and_reach_list_entries():
    config = load_config("embedded", ["train.lr=1e-4", "eval.limit=null", "models.1.prompt_format=chat"])
    assert config.train.lr == pytest.approx(1e-4) and isinstance(config.train.lr, float)
    assert config.eval.limit is None
    assert config.models[1].prompt_format is PromptFormat.CHAT


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=1", "unknown key 'train.lrr'"),
        ("nope.x=1", "unknown key 'nope.x'"),
        ("train.lr=fast", "train.lr"),
        ("models.0.prompt_format=html", "models.0.prompt_format"),
        ("interlingua.d_inter=100", "interlingua.d_inter (100) must be divisible by interlingua.n_heads"),
        ("train.steps=0", "train.steps must be positive"),
        ("train.warmup_steps=999", "train.warmup_steps"),
        ("runtime.device=tpu", "runtime.device"),
        ("eval.limit=-3", "eval.limit"),
        ("justtext", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config("embedded", [override])
    assert expected in str(info.value)


def test_unknown_key_in_yaml_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodels: [{spec: tiny-llama}]\ntrain:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "learning_rate" in str(info.value) and str(path) in str(info.value)


def test_missing_config_lists_shipped_ones():
    with pytest.raises(ConfigError) as info:
        load_config("does-not-exist")
    assert "embedded" in str(info.value) and "tiny" in str(info.value)


def test_empty_models_and_duplicates_are_rejected(tmp_path):
    for text, expected in [("name: x\nmodels: []\n", "models is empty"),
                           ("name: x\nmodels: [{spec: a}, {spec: a}]\n", "same spec twice")]:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            load_config(str(path))


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config("tiny", ["train.lr=0.002"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == config


def test_stored_configs_write_enum_values_and_still_read_old_enum_names(tmp_path):
    from interlingua.config import config_from_dict, config_to_dict

    config = load_config("tiny", ["interlingua.conditioning=hybrid", "compression.precision=int8"])
    stored = config_to_dict(config)
    assert stored["interlingua"]["conditioning"] == "hybrid" and stored["compression"]["precision"] == "int8"
    save_config(config, tmp_path / "config.yaml")
    assert "conditioning: hybrid" in (tmp_path / "config.yaml").read_text()
    # checkpoints before the change
    old = {**stored, "interlingua": {**stored["interlingua"], "conditioning": "HYBRID"}}
    assert config_from_dict(old) == config


def test_the_full_size_run_is_the_embedded_default_with_the_old_command_lines_overrides():
    """configs/embedded-full.yaml = what docs/usage.md ran as `interlingua run --config embedded
    pretrain.steps=100 train.steps=150 train.save_every=25 --limit 1000` (the run folder's name aside)."""
    import dataclasses

    full = load_config("embedded-full")
    old = load_config("embedded", ["pretrain.steps=100", "train.steps=150", "train.save_every=25", "eval.limit=1000"])
    assert full.name == "embedded-full" and dataclasses.replace(full, name=old.name) == old
    assert load_config("embedded-full", ["train.steps=7"]).train.steps == 7  # overrides apply after extends


def test_the_full_size_native_run_is_the_native_config_with_the_launch_overrides():
    """configs/native-full.yaml = the command the trained native run was started with (docs/results.md)."""
    import dataclasses

    full = load_config("native-full")
    old = load_config("native", ["train.steps=250", "train.save_every=5", "train.warmup_steps=10",
                                 "train.log_every=5", "eval.limit=1000",
                                 "eval.conditionings=[hybrid,full]",
                                 "runtime.dtype=auto"])  # it trained with runtime.dtype=bfloat16 on the command line
    assert full.name == "native-full" and dataclasses.replace(full, name=old.name) == old


def test_the_documented_command_of_the_trained_native_run_resolves_to_its_committed_config():
    """docs/results.md's `interlingua train --config native-full …` line, run today, trains what was committed
    (results/native-s250-n1000/train/config.yaml): a default that changes later must show up in that command."""
    import dataclasses
    import shlex

    root = SHIPPED_CONFIG_DIR.parent
    line = next(line for line in (root / "docs" / "results.md").read_text().splitlines()
                if line.startswith("interlingua train --config native-full"))
    words = shlex.split(line)
    overrides = [word for word in words if "=" in word and not word.startswith("-")]
    documented = load_config("native-full", overrides)
    committed = load_config(str(root / "results" / "native-s250-n1000" / "train" / "config.yaml"))
    output_dir = words[words.index("-o") + 1]
    assert committed.runtime.output_dir == output_dir
    assert dataclasses.replace(documented, runtime=dataclasses.replace(documented.runtime, output_dir=output_dir)) \
        == committed


def test_a_config_extends_another_nested_keys_merge_and_lists_replace(tmp_path):
    (tmp_path / "parent.yaml").write_text("name: parent\nmodels: [{spec: tiny-llama}, {spec: tiny-qwen2}]\n"
                                          "train: {steps: 9, lr: 0.5, warmup_steps: 1}\n")
    (tmp_path / "child.yaml").write_text("extends: parent\ntrain: {steps: 3}\nmodels: [{spec: tiny-llama}]\n")
    (tmp_path / "grandchild.yaml").write_text(f"extends: {tmp_path / 'child.yaml'}\nname: g\n")
    child = load_config(str(tmp_path / "child.yaml"))
    assert (child.name, child.train.steps, child.train.lr) == ("parent", 3, 0.5)  # looked up next to the file
    assert [m.spec for m in child.models] == ["tiny-llama"]
    assert load_config(str(tmp_path / "grandchild.yaml")).name == "g"
    shipped = tmp_path / "shipped.yaml"
    shipped.write_text("extends: tiny\ntrain: {steps: 20}\n")  # a name not beside the file: as --config finds it
    assert load_config(str(shipped)).models == load_config("tiny").models


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"a": "extends: b\n", "b": "extends: a\n"}, "extends forms a cycle"),
        ({"a": "extends: nowhere\n"}, "extends: config 'nowhere' not found"),
        ({"a": "extends: [tiny]\n"}, "extends must name a config"),
        ({"a": "extends: tiny\ntrain: {stepz: 3}\n"}, "stepz"),
    ],
)
def test_a_bad_extends_is_refused_naming_the_file(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(str(tmp_path / "a.yaml"))
    assert str(tmp_path / "a.yaml") in str(info.value) or "cycle" in str(info.value)


def test_runtime_dtype_chooses_the_frozen_models_precision():
    import torch

    from interlingua.runtime import frozen_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert load_config("tiny").runtime.dtype == "auto"
    assert (frozen_dtype(cpu), frozen_dtype(cuda)) == (torch.float32, torch.bfloat16)  # auto
    assert frozen_dtype(cpu, load_config("tiny", ["runtime.dtype=bfloat16"]).runtime.dtype) == torch.bfloat16
    assert frozen_dtype(cuda, "float32") == torch.float32
    with pytest.raises(ConfigError, match="runtime.dtype must be one of auto, float32, bfloat16, got 'fp8'"):
        load_config("tiny", ["runtime.dtype=fp8"])
