"""InterlinguaModel: save/load round trip, bad checkpoints, model-set checks, input calibration."""

import json

import pytest
import torch

from interlingua.config import InterlinguaConfig, Pooling
from interlingua.constants import CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHTS_FILE
from interlingua.models.interlingua import CheckpointError, FrozenModelInfo, InterlinguaModel, InterlinguaSpec

D_SEM = 12


def make_spec(pooling=Pooling.MEAN, d_inter=16) -> InterlinguaSpec:
    return InterlinguaSpec(
        models=[FrozenModelInfo("org/model-a", 24, 0.02), FrozenModelInfo("model-b", 20, 1.0)],
        encoder="tiny-encoder", d_sem=D_SEM,
        interlingua=InterlinguaConfig(d_inter=d_inter, num_slots=3, n_heads=4, n_cross_layers=1, n_refine_layers=1,
                                      pooling=pooling),
    )


def inputs(width: int, batch: int = 2, length: int = 5, scale: float = 1.0):
    torch.manual_seed(0)
    return (torch.randn(batch, length, width) * scale, torch.ones(batch, length, dtype=torch.bool),
            torch.randn(batch, D_SEM))


@pytest.mark.parametrize("pooling", list(Pooling))
def test_save_load_round_trip_is_exact(tmp_path, pooling):
    model = InterlinguaModel(make_spec(pooling)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = InterlinguaModel.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.spec == model.spec
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    embeddings, mask, anchor = inputs(24)
    z = model.encode("org/model-a", embeddings, mask, anchor)
    torch.testing.assert_close(loaded.soft_prompt("model-b", z), model.soft_prompt("model-b", z), rtol=0, atol=0)
    assert loaded.fingerprint() == model.fingerprint()


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path):
    first, second = InterlinguaModel(make_spec()), InterlinguaModel(make_spec())
    first.save_pretrained(tmp_path / "ckpt")
    second.save_pretrained(tmp_path / "ckpt")
    assert InterlinguaModel.from_pretrained(tmp_path / "ckpt").fingerprint() == second.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_fingerprint_changes_with_the_weights():
    model = InterlinguaModel(make_spec())
    before = model.fingerprint()
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert model.fingerprint() != before


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / CHECKPOINT_WEIGHTS_FILE).unlink(), "model.safetensors is missing"),
        (lambda d: (d / CHECKPOINT_CONFIG_FILE).unlink(), "interlingua_config.json is missing"),
        (lambda d: (d / CHECKPOINT_WEIGHTS_FILE).write_bytes((d / CHECKPOINT_WEIGHTS_FILE).read_bytes()[:500]),
         "truncated or corrupt"),
        (lambda d: (d / CHECKPOINT_CONFIG_FILE).write_text("{not json"), "unreadable checkpoint config"),
        (lambda d: (d / CHECKPOINT_CONFIG_FILE).write_text(
            json.dumps({**json.loads((d / CHECKPOINT_CONFIG_FILE).read_text()), "format_version": 99})),
         "format_version"),
        (lambda d: (d / CHECKPOINT_CONFIG_FILE).write_text(
            (d / CHECKPOINT_CONFIG_FILE).read_text().replace('"d_inter": 16', '"d_inter": 32')),
         "weights do not match"),
    ],
)
def test_bad_checkpoints_are_rejected_clearly(tmp_path, damage, expected):
    InterlinguaModel(make_spec()).save_pretrained(tmp_path / "ckpt")
    damage(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=expected):
        InterlinguaModel.from_pretrained(tmp_path / "ckpt")


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not an interlingua checkpoint"):
        InterlinguaModel.from_pretrained(tmp_path)


def test_frozen_model_check_names_both_sets():
    model = InterlinguaModel(make_spec())
    model.check_frozen_models([FrozenModelInfo("org/model-a", 24, 0.02), FrozenModelInfo("model-b", 20, 1.0)])
    with pytest.raises(CheckpointError, match=r"trained for models \['model-b', 'org/model-a'\]"):
        model.check_frozen_models([FrozenModelInfo("org/model-a", 24, 0.02), FrozenModelInfo("model-c", 20, 1.0)])
    with pytest.raises(CheckpointError, match="hidden size 21"):
        model.check_frozen_models([FrozenModelInfo("org/model-a", 24, 0.02), FrozenModelInfo("model-b", 21, 1.0)])


def test_unknown_receiver_lists_the_known_models():
    model = InterlinguaModel(make_spec())
    with pytest.raises(KeyError, match="org/model-a, model-b"):
        model.soft_prompt("model-x", torch.zeros(1, 16))


def test_inputs_are_calibrated_by_the_embedding_rms():
    """Token embeddings are divided by the model's embedding RMS, so a model whose embeddings are
    50x quieter (RMS 0.02) gives its aligner the same input scale as one at RMS 1."""
    model = InterlinguaModel(make_spec()).eval()
    embeddings, mask, anchor = inputs(24, scale=1.0)
    calibrated = model.encode("org/model-a", embeddings * 0.02, mask, anchor)
    direct = model.aligner("org/model-a", embeddings, mask, anchor)
    torch.testing.assert_close(calibrated, direct, rtol=1e-5, atol=1e-5)


def test_checkpoint_spec_carries_positions(tmp_path):
    from interlingua.config import Positions
    from interlingua.models.interlingua import InterlinguaSpec

    spec = InterlinguaSpec.from_json(_positions_spec_json(Positions.SINUSOIDAL))
    assert spec.interlingua.positions == Positions.SINUSOIDAL
    old = _positions_spec_json(Positions.SINUSOIDAL)
    del old["interlingua"]["positions"]  # a checkpoint written before the key existed
    assert InterlinguaSpec.from_json(old).interlingua.positions == Positions.NONE


def _positions_spec_json(positions):
    import dataclasses

    from interlingua.config import InterlinguaConfig
    from interlingua.models.interlingua import FrozenModelInfo, InterlinguaSpec

    spec = InterlinguaSpec(models=[FrozenModelInfo("a", 8, 1.0), FrozenModelInfo("b", 6, 0.5)], encoder="e", d_sem=4,
                           interlingua=dataclasses.replace(InterlinguaConfig(d_inter=16, n_heads=2),
                                                           positions=positions))
    return spec.to_json()
