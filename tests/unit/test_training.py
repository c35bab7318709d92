"""Training recipe on the tiny config: end to end, exact resume, frozen weights, NaN stop, bad
checkpoints, gradient accumulation, batching, checkpoint serialisation, and 2-process DDP on CPU."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from interlingua.cli import main as cli_main
from interlingua.config import ConfigError, load_config
from interlingua.constants import (
    CHECKPOINT_CONFIG_FILE,
    CHECKPOINT_WEIGHTS_FILE,
    LATEST_CHECKPOINT_FILE,
    METRICS_LOG_FILE,
    OPTIMIZER_STATE_FILE,
    RESOLVED_CONFIG_FILE,
    RUN_INFO_FILE,
    TRAINER_STATE_FILE,
    TRAINING_CURVES_PLOT,
)
from interlingua.data.squad import load_squad
from interlingua.models.interlingua import CheckpointError, InterlinguaModel
from interlingua.training import recipe
from interlingua.training.batches import MicroBatch, TrainingStream
from interlingua.training.checkpoint import (
    optimizer_state_from_safe,
    optimizer_state_to_safe,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from interlingua.training.recipe import (
    TrainingDivergedError,
    interlingua_spec,
    lr_factor,
    stage_lr_factor,
    stage_of,
    train,
)
from interlingua.training.step import Stage, batch_loss, loss_norm, reconstruction_targets
from tests.conftest import REPO_ROOT, SQUAD_MINI


def tiny(*overrides: str):
    return load_config("tiny", [f"data.source={SQUAD_MINI}", *overrides])


def tensors_of(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {f"model/{k}": v for k, v in load_file(str(directory / CHECKPOINT_WEIGHTS_FILE)).items()}
    return tensors | {f"optim/{k}": v for k, v in load_file(str(directory / OPTIMIZER_STATE_FILE)).items()}


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_LOG_FILE).read_text().splitlines()]


def folder_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """configs/tiny.yaml as shipped (4 steps, checkpoints at 2 and 4), trained once for several tests."""
    out = tmp_path_factory.mktemp("straight")
    started = time.perf_counter()
    final = train(tiny(), out, progress=False)
    return out, final, time.perf_counter() - started


# ---- end to end --------------------------------------------------------------------------------
@pytest.mark.e2e
def test_tiny_config_trains_end_to_end(straight_run):
    out, final, _ = straight_run
    assert final == out / "step_000004"
    assert (out / LATEST_CHECKPOINT_FILE).read_text().strip() == "step_000004"
    assert {p.name for p in out.iterdir()} == {
        "step_000002", "step_000004", LATEST_CHECKPOINT_FILE, METRICS_LOG_FILE, RESOLVED_CONFIG_FILE, RUN_INFO_FILE,
        TRAINING_CURVES_PLOT,
    }
    assert (out / TRAINING_CURVES_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in final.iterdir()} == {
        CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHTS_FILE, OPTIMIZER_STATE_FILE, TRAINER_STATE_FILE,
    }
    assert load_config(str(out / RESOLVED_CONFIG_FILE)).train.steps == 4
    assert json.loads((out / RUN_INFO_FILE).read_text())["command"] == "train"
    state = json.loads((final / TRAINER_STATE_FILE).read_text())
    assert (state["step"], state["world_size"], state["epoch"], state["epoch_offset"]) == (4, 1, 2, 0)
    assert InterlinguaModel.from_pretrained(final).model_keys == ["tiny-llama", "tiny-qwen2"]


@pytest.mark.e2e
def test_metrics_log_every_step_with_collapse_diagnostics_from_step_0(straight_run):
    rows = metrics_rows(straight_run[0])
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    first = rows[0]
    assert set(first["loss"]) == {"gen", "align", "sem", "kd", "total"}
    assert first["lr"] == pytest.approx(3e-4) and first["grad_norm"] > 0 and first["examples_per_s"] > 0
    for key in ("tiny-llama", "tiny-qwen2"):
        diagnostics = first["models"][key]
        assert -1 <= diagnostics["z_mean_pairwise_cosine"] <= 1
        assert diagnostics["z_mean_dim_variance"] > 0
        assert diagnostics["soft_prompt_rms"] == pytest.approx(diagnostics["embedding_rms"], rel=0.1)
    assert rows[-1]["lr"] < rows[0]["lr"]  # cosine decay


# ---- exact resume ------------------------------------------------------------------------------
@pytest.mark.e2e
def test_resume_continues_exactly(tmp_path, monkeypatch):
    """2 steps, a crash during step 3 (after the metrics line of step 2), resume, 2 more steps ==
    4 steps straight: every weight and optimizer tensor equal, and the same logged losses. Dropout
    is on, so the RNG streams must be restored too."""
    config = tiny("interlingua.dropout=0.1")
    straight = train(config, tmp_path / "straight", progress=False)
    original = recipe.TrainingRecipe._forward_backward

    class SimulatedCrash(Exception):
        pass

    def crash_at_step_3(self, step):
        if step == 3:
            raise SimulatedCrash
        return original(self, step)

    monkeypatch.setattr(recipe.TrainingRecipe, "_forward_backward", crash_at_step_3)
    with pytest.raises(SimulatedCrash):
        train(config, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / LATEST_CHECKPOINT_FILE).read_text().strip() == "step_000002"
    monkeypatch.setattr(recipe.TrainingRecipe, "_forward_backward", original)

    resumed = train(config, tmp_path / "resumed", resume=True, progress=False)
    expected, got = tensors_of(straight), tensors_of(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    straight_rows, resumed_rows = metrics_rows(tmp_path / "straight"), metrics_rows(tmp_path / "resumed")
    assert [r["step"] for r in resumed_rows] == [0, 1, 2, 3]  # the step-2 line of the crashed run is not repeated
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in straight_rows]


def test_prune_keeps_the_newest_and_never_the_latest_pointer_target(tmp_path):
    for step in (2, 4, 10, 12):
        (tmp_path / f"step_{step:06d}").mkdir()
    (tmp_path / "step_notes").mkdir()  # not a checkpoint name: left alone
    (tmp_path / LATEST_CHECKPOINT_FILE).write_text("step_000004\n")  # e.g. a re-saved earlier step
    assert prune_checkpoints(tmp_path, 0) == []
    assert {p.name for p in prune_checkpoints(tmp_path, 2)} == {"step_000002"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "step_000004", "step_000010", "step_000012", "step_notes"]


@pytest.mark.e2e
def test_keep_checkpoints_bounds_the_folders_and_resume_still_works(tmp_path, monkeypatch):
    config = tiny("train.steps=4", "train.save_every=1", "train.keep_checkpoints=1")
    straight = train(config, tmp_path / "straight", progress=False)
    assert [p.name for p in (tmp_path / "straight").glob("step_*")] == ["step_000004"]
    original = recipe.TrainingRecipe._forward_backward

    def crash_at_step_3(self, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return original(self, step)

    monkeypatch.setattr(recipe.TrainingRecipe, "_forward_backward", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, tmp_path / "resumed", progress=False)
    assert [p.name for p in (tmp_path / "resumed").glob("step_*")] == ["step_000003"]
    monkeypatch.setattr(recipe.TrainingRecipe, "_forward_backward", original)
    resumed = train(config, tmp_path / "resumed", resume=True, progress=False)
    expected, got = tensors_of(straight), tensors_of(resumed)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        tiny("train.keep_checkpoints=-1")


# ---- frozen is frozen, gradients reach the learned modules -------------------------------------
def test_step_changes_only_learned_weights(tiny_lms, tiny_config):
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.models.system import Interlingua

    encoder = SentenceEncoder("tiny-encoder")
    torch.manual_seed(0)
    model = InterlinguaModel(interlingua_spec(tiny_config, tiny_lms, encoder))
    system = Interlingua(model, tiny_lms, encoder)
    forward = system
    assert {id(p) for p in forward.parameters()} == {id(p) for p in model.parameters()}
    frozen = {f"{key}/{n}": t.clone() for key, lm in tiny_lms.items() for n, t in lm.model.state_dict().items()}
    frozen |= {f"encoder/{n}": t.clone() for n, t in encoder.model.state_dict().items()}
    learned = {n: t.clone() for n, t in model.state_dict().items()}

    stream = _stream(tiny_config, tiny_lms, batch_size=4, grad_accum=1)
    micro = stream.micro_batches(0)[0]
    out = batch_loss(system, forward, micro, Stage.QA, tiny_config.loss)
    out.total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    for module in [*model.aligner.input_proj.values(), model.aligner.anchor_proj, *model.adapters.values()]:
        assert sum(p.grad.abs().sum() for p in module.parameters()) > 0
    torch.optim.AdamW(forward.parameters(), lr=1e-3).step()

    now = {f"{key}/{n}": t for key, lm in tiny_lms.items() for n, t in lm.model.state_dict().items()}
    now |= {f"encoder/{n}": t for n, t in encoder.model.state_dict().items()}
    assert all(torch.equal(frozen[n], now[n]) for n in frozen)
    assert all(p.grad is None for lm in tiny_lms.values() for p in lm.model.parameters())
    changed = [n for n, t in model.state_dict().items() if not torch.equal(learned[n], t)]
    assert "aligner.anchor_target_proj" not in changed  # the fixed anchor target never trains
    assert len(changed) == len([n for n, _ in model.named_parameters()])


def test_zero_weight_skips_the_teacher(tiny_lms, tiny_config, monkeypatch):
    from interlingua.config import LossConfig
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.models.system import Interlingua

    encoder = SentenceEncoder("tiny-encoder")
    system = Interlingua(InterlinguaModel(interlingua_spec(tiny_config, tiny_lms, encoder)), tiny_lms, encoder)
    calls = []
    for lm in tiny_lms.values():
        monkeypatch.setattr(lm, "text_prefix", lambda prompts: calls.append(prompts))
    micro = _stream(tiny_config, tiny_lms, batch_size=2, grad_accum=1).micro_batches(0)[0]
    out = batch_loss(system, system, micro, Stage.QA, LossConfig(w_kd=0.0))
    assert calls == [] and set(out.terms) == {"gen", "align", "sem", "total"}


# ---- NaN ---------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import interlingua.training.step as step_module

    calls = {"n": 0}
    real_alignment_loss = step_module.alignment_loss

    def nan_at_step_2(zs):
        calls["n"] += 1
        loss = real_alignment_loss(zs)
        return loss * float("nan") if calls["n"] == 3 else loss  # one micro-batch per step: call 3 = step 2

    snapshots = {}
    real_save = recipe.save_checkpoint

    def save_and_snapshot(output_dir, *args, **kwargs):
        path = real_save(output_dir, *args, **kwargs)
        snapshots[path.name] = folder_bytes(path)
        return path

    monkeypatch.setattr(step_module, "alignment_loss", nan_at_step_2)
    monkeypatch.setattr(recipe, "save_checkpoint", save_and_snapshot)
    with pytest.raises(TrainingDivergedError, match=r"step 2 .*align=nan.*step_000002, is kept"):
        train(tiny("train.steps=3", "train.save_every=2"), tmp_path, progress=False)
    assert list(snapshots) == ["step_000002"]
    assert folder_bytes(tmp_path / "step_000002") == snapshots["step_000002"]
    assert (tmp_path / LATEST_CHECKPOINT_FILE).read_text().strip() == "step_000002"
    assert sorted(p.name for p in tmp_path.glob("*step_*")) == ["step_000002"]  # no temp or later folders


@pytest.mark.e2e
def test_non_finite_gradient_norm_stops_before_the_update(tmp_path, monkeypatch):
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda self, parameters, max_norm: torch.tensor(float("inf")))
    with pytest.raises(TrainingDivergedError, match="step 0 .*gradient norm is inf; no checkpoint had been written"):
        train(tiny("train.steps=2"), tmp_path, progress=False)
    assert not list(tmp_path.glob("*step_*")) and not (tmp_path / LATEST_CHECKPOINT_FILE).exists()


# ---- bad resumes -------------------------------------------------------------------------------
@pytest.fixture
def copied_run(straight_run, tmp_path):
    shutil.copytree(straight_run[0], tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.e2e
def test_resume_with_changed_interlingua_shape_is_refused(copied_run):
    with pytest.raises(CheckpointError, match=r"interlingua\.d_inter: checkpoint 32, config 16"):
        train(tiny("interlingua.d_inter=16", "train.steps=6"), copied_run, resume=True, progress=False)


@pytest.mark.e2e
def test_resume_with_a_different_model_set_is_refused(copied_run):
    config_path = copied_run / "step_000004" / CHECKPOINT_CONFIG_FILE
    config_path.write_text(config_path.read_text().replace('"tiny-qwen2"', '"tiny-mistral"'))
    expected = (r"trained for models \['tiny-llama', 'tiny-mistral'\] \(in this order\), "
                r"but the config has \['tiny-llama', 'tiny-qwen2'\]")
    with pytest.raises(CheckpointError, match=expected):
        train(tiny("train.steps=6"), copied_run, resume=True, progress=False)


@pytest.mark.e2e
@pytest.mark.parametrize("damaged", [CHECKPOINT_WEIGHTS_FILE, OPTIMIZER_STATE_FILE])
def test_resume_from_truncated_files_is_refused(copied_run, damaged):
    path = copied_run / "step_000004" / damaged
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(tiny("train.steps=6"), copied_run, resume=True, progress=False)


@pytest.mark.e2e
def test_fresh_run_into_a_folder_with_checkpoints_is_refused(copied_run, capsys):
    code = cli_main(["train", "--config", "tiny", f"data.source={SQUAD_MINI}", "-o", str(copied_run), "-q"])
    assert code == 2
    assert "already holds checkpoints (latest: step_000004); pass --resume" in capsys.readouterr().err


# ---- gradient accumulation -------------------------------------------------------------------
@pytest.mark.e2e
def test_grad_accum_matches_one_big_batch(tmp_path):
    """Loss terms are normalised by the step's global batch (training/step.py), so 2 × 2 == 4 × 1.

    K = 8 makes answers differ in their number of real target positions: averaging two micro-batch
    means would then give a different L_gen (and a sign-flipped first Adam update on some weights)."""
    common = ("train.steps=1", "train.save_every=1", "train.warmup_steps=1", "loss.k_tokens=8")
    big = train(tiny(*common, "train.batch_size=4", "train.grad_accum=1"), tmp_path / "big", progress=False)
    accum = train(tiny(*common, "train.batch_size=2", "train.grad_accum=2"), tmp_path / "accum", progress=False)
    expected, got = tensors_of(big), tensors_of(accum)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)
    big_row, accum_row = metrics_rows(tmp_path / "big")[0], metrics_rows(tmp_path / "accum")[0]
    for term, value in big_row["loss"].items():
        assert accum_row["loss"][term] == pytest.approx(value, rel=1e-5, abs=1e-7), term
    assert accum_row["grad_norm"] == pytest.approx(big_row["grad_norm"], rel=1e-5)


# ---- batching (no models) --------------------------------------------------------------------
def _stream(config, lms, batch_size: int, grad_accum: int, seed: int = 0) -> TrainingStream:
    examples = load_squad("train", str(SQUAD_MINI), None, 0)
    return TrainingStream(examples, [lm.tokenizer for lm in lms.values()], config.data.max_prompt_tokens,
                          batch_size, grad_accum, seed)


def test_batches_are_a_function_of_seed_and_step(tiny_lms, tiny_config):
    a, b = _stream(tiny_config, tiny_lms, 3, 1), _stream(tiny_config, tiny_lms, 3, 1)
    assert [a.global_batch(s) for s in range(5)] == [b.global_batch(s) for s in reversed(range(5))][::-1]
    assert a.global_batch(0) != _stream(tiny_config, tiny_lms, 3, 1, seed=1).global_batch(0)
    n = len(a.examples)  # 8: every epoch is a permutation, and epochs differ
    stream = [item for s in range(n) for item in a.global_batch(s)]  # 3n items = 3 epochs
    epochs = [stream[i * n:(i + 1) * n] for i in range(3)]
    assert all(sorted(e, key=lambda it: it.text) == sorted(epochs[0], key=lambda it: it.text) for e in epochs)
    assert epochs[0] != epochs[1]
    assert a.position(3) == {"epoch": 1, "epoch_offset": 1, "examples_seen": 9}


def test_batches_split_the_same_global_batch(tiny_lms, tiny_config):
    one = _stream(tiny_config, tiny_lms, 4, 1)
    accum = _stream(tiny_config, tiny_lms, 2, 2)
    assert one.global_batch(1) == accum.global_batch(1)
    assert one.global_answers(1) == [item.answer for item in one.global_batch(1)]
    rank0, rank1 = one.micro_batches(1, 0, 2), one.micro_batches(1, 1, 2)
    assert sorted(rank0[0].texts + rank1[0].texts) == sorted(one.micro_batches(1)[0].texts)
    with pytest.raises(ValueError, match="multiple of 2"):
        _stream(tiny_config, tiny_lms, 3, 1).micro_batches(0, 0, 2)


def test_prompts_fit_every_tokenizer(tiny_lms, tiny_config):
    """One text per example for every model and the encoder: the shortest of the per-model cuts."""
    budget = 110  # tiny-llama reads bytes: about 70 of them are the question and answer cue
    stream = _stream(tiny_config, tiny_lms, 8, 1)
    stream.max_prompt_tokens = budget
    items, full = stream.global_batch(0), _stream(tiny_config, tiny_lms, 8, 1).global_batch(0)
    assert any(len(cut.text) < len(whole.text) for cut, whole in zip(items, full))  # the budget did cut
    for item in items:
        assert item.text.startswith("Context: ") and item.text.endswith("\nAnswer:")
        for lm in tiny_lms.values():
            assert len(lm.tokenizer(item.text, add_special_tokens=False).input_ids) <= budget + 2


# ---- serialisation helpers -------------------------------------------------------------------
def test_optimizer_state_round_trips_without_pickle():
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.8, 0.9))
    sum((p ** 2).sum() for p in params).backward()
    optimizer.step()
    tensors, scalars = optimizer_state_to_safe(optimizer.state_dict())
    json.dumps(scalars)  # JSON-safe
    restored = optimizer_state_from_safe(tensors, json.loads(json.dumps(scalars)))
    original = optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for index, values in original["state"].items():
        for name, value in values.items():
            assert torch.equal(restored["state"][index][name], value)


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert expected[:2] == got[:2] and torch.equal(expected[2], got[2])


def test_lr_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, warmup=2, total=6) for s in range(7)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))
    assert factors[6] == pytest.approx(0.0, abs=1e-12)


# ---- two processes ---------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process(straight_run, tmp_path):
    """``accelerate launch`` with 2 CPU processes (DDP over gloo) logs the single-process run's losses
    and gradient norms: at step 0 (same global batch, gradients all-reduced to the same sum) and at
    step 1 (after the same first update; both schedules give update 0 the full rate)."""
    _train_in_two_processes(tmp_path, "train.steps=2")
    state = json.loads((tmp_path / "step_000002" / TRAINER_STATE_FILE).read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    _assert_same_steps(tmp_path, straight_run[0], 2)


@pytest.mark.e2e
@pytest.mark.slow
def test_two_processes_with_sharded_frozen_layers_match_one_process(tmp_path):
    """runtime.shard_frozen (FSDP2 over gloo): each process holds half of every frozen decoder layer,
    the updates are those of one unsharded process, and a KD-teacher cache miss on one process only
    (here: process 0's first micro-batch is cached, process 1's is not) does not hang the other."""
    split = ["train.batch_size=2", "train.grad_accum=2", "train.steps=2", "runtime.device=cpu"]
    cache = tmp_path / "cache"
    # micro-batches: process 0 reads examples 0 and 2 of each global batch, process 1 reads 1 and 3
    train(tiny(f"cache.dir={cache}", "train.batch_size=1", "train.steps=1"), tmp_path / "fill", progress=False)
    train(tiny(f"cache.dir={tmp_path / 'cache-one'}", *split), tmp_path / "one", progress=False)
    output = _train_in_two_processes(tmp_path / "two", f"cache.dir={cache}", "runtime.shard_frozen=true", *split,
                                     strict=True)
    # 2 models x 2 layers; each process holds half of their weights
    assert output.count("4 decoder layers sharded over 2 processes; local share of the frozen decoder "
                        "layers' weights: 0.50") == 2
    # and still half after training (a unit that gathered its weights for a forward dropped them again)
    assert output.count("local share of the frozen decoder layers' weights at the end: 0.50") == 2
    _assert_same_steps(tmp_path / "two", tmp_path / "one", 2)


def test_sharding_the_frozen_models_needs_several_processes(tmp_path):
    with pytest.raises(ConfigError, match="accelerate launch --num_processes N"):
        train(tiny("runtime.shard_frozen=true"), tmp_path, progress=False)


def _train_in_two_processes(output_dir, *overrides: str, strict: bool = False) -> str:
    """``interlingua train --config tiny`` under ``accelerate launch`` with 2 CPU processes (DDP over
    gloo); returns the output. Skips where the launcher cannot start or gloo fails, or after 300 s,
    unless ``strict``: where processes that hang or whose collectives do not match are the bug the test
    looks for, only a launcher that cannot rendezvous skips."""
    pytest.importorskip("accelerate")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "interlingua", "train", "--config", "tiny", f"data.source={SQUAD_MINI}",
        "-o", str(output_dir), "-q", "runtime.device=cpu", *overrides,
    ]
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        if strict:
            pytest.fail("the 2 processes did not finish in 300 s: a collective that only one of them entered?")
        pytest.skip("accelerate launch with 2 CPU processes did not finish in 300 s on this machine")
    output = result.stdout + result.stderr
    causes = ("rendezvous", "Address already in use") if strict else ("rendezvous", "Address already in use", "gloo")
    if result.returncode != 0 and any(cause in output for cause in causes):
        pytest.skip(f"accelerate's launcher cannot start 2 processes here: {output[-500:]}")
    assert result.returncode == 0, output[-3000:]
    return output


def _assert_same_steps(run_dir, reference_dir, steps: int) -> None:
    """The first ``steps`` logged losses and gradient norms of two runs agree to float rounding: 1e-4 relative,
    since a sum split over processes rounds differently by CPU (an AMD EPYC gives 1.6e-5 on the KD term; a wrong
    average or a lost shard is off by far more)."""
    rows, reference = metrics_rows(run_dir)[:steps], metrics_rows(reference_dir)[:steps]
    assert len(rows) == len(reference) == steps
    for two, one in zip(rows, reference):
        for term, value in one["loss"].items():
            assert two["loss"][term] == pytest.approx(value, rel=1e-4, abs=1e-7), (two["step"], term)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4), two["step"]


# ---- reconstruction pretraining stage (pretrain.*) ---------------------------------------------
# Steps 0-2 reconstruct, 3-4 answer; checkpoints at 2, 3 (end of the stage) and 4, 5 (save_every=2).
PRETRAIN = ("interlingua.dropout=0.1", "pretrain.steps=3", "pretrain.warmup_steps=1", "pretrain.lr=1e-3",
            "pretrain.tokens=16", "train.steps=2")


@pytest.mark.parametrize("overrides, expected", [
    (["pretrain.steps=-1"], "pretrain.steps must be >= 0"),
    (["pretrain.tokens=0"], "pretrain.tokens must be positive"),
    (["pretrain.lr=0"], "pretrain.lr must be positive or null"),
    (["pretrain.warmup_steps=-1"], r"pretrain.warmup_steps must be in \[0, pretrain.steps=0\]"),
    (["pretrain.steps=4", "pretrain.warmup_steps=5"], r"pretrain.warmup_steps must be in \[0, pretrain.steps=4\]"),
    (["loss.w_rec=-1"], "loss.w_rec must be >= 0"),
])
def test_pretrain_config_is_validated(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        tiny(*overrides)


def test_pretrain_defaults_keep_the_seed_and_old_configs_load():
    from interlingua.config import config_from_dict, config_to_dict

    config = tiny()
    assert (config.pretrain.steps, config.pretrain.lr, config.loss.w_rec, config.loss.w_nce) == (0, None, 0.0, 0.0)
    old = config_to_dict(config)  # a checkpoint's config from before these keys existed
    del old["pretrain"], old["loss"]["w_rec"], old["loss"]["w_nce"], old["loss"]["nce_temperature"]
    assert config_from_dict(old) == config
    changed = tiny(*PRETRAIN)
    assert config_from_dict(config_to_dict(changed)) == changed


def test_resume_does_not_report_enum_names_of_older_checkpoints_as_changes(caplog):
    from interlingua.config import config_to_dict, normalised_config_dict
    from interlingua.training.recipe import _warn_config_changes

    config = tiny("interlingua.conditioning=hybrid")
    current = config_to_dict(config)
    old = {**current, "interlingua": {**current["interlingua"], "conditioning": "HYBRID"}}
    with caplog.at_level("WARNING"):
        _warn_config_changes(normalised_config_dict(old), current)
        assert not caplog.records
        _warn_config_changes(normalised_config_dict(old), config_to_dict(tiny()))
    assert "interlingua.conditioning" in caplog.text


def test_each_stage_has_its_own_warmup_and_cosine():
    config = tiny("pretrain.steps=4", "pretrain.warmup_steps=2", "pretrain.lr=1e-3", "train.steps=3")
    assert [stage_of(s, config) for s in range(7)] == [Stage.RECONSTRUCT] * 4 + [Stage.QA] * 3
    peak = 1e-3 / config.train.lr
    expected = [peak * lr_factor(s, 2, 4) for s in range(4)] + [lr_factor(s, 1, 3) for s in range(4)]
    factors = [stage_lr_factor(s, config) for s in range(8)]
    assert factors == pytest.approx(expected)
    assert factors[1] * config.train.lr == pytest.approx(1e-3) and factors[4] == 1.0  # both stages reach their peak
    assert factors[3] < factors[2] and factors[7] == pytest.approx(0.0, abs=1e-12)
    seed = tiny()  # no reconstruction stage: exactly the seed's schedule
    assert [stage_lr_factor(s, seed) for s in range(5)] == [lr_factor(s, 1, 4) for s in range(5)]
    assert stage_lr_factor(0, tiny("pretrain.steps=2", "pretrain.warmup_steps=0")) == 1.0  # lr null = train.lr


def test_soft_prefix_takes_another_cue(tiny_lms):
    from interlingua.constants import ANSWER_CUE, RECONSTRUCTION_CUE

    lm = tiny_lms["tiny-qwen2"]  # no BOS
    soft = torch.randn(2, 3, lm.hidden_size)
    default, rec = lm.soft_prefix(soft), lm.soft_prefix(soft, cue=RECONSTRUCTION_CUE)
    cue_ids = lm.tokenizer(RECONSTRUCTION_CUE, add_special_tokens=False).input_ids
    assert rec.embeddings.shape[1] == 3 + len(cue_ids) and rec.mask.all()
    torch.testing.assert_close(rec.embeddings[:, 3:], lm.embed(torch.tensor([cue_ids] * 2)))
    answer_ids = lm.tokenizer(ANSWER_CUE, add_special_tokens=False).input_ids
    torch.testing.assert_close(default.embeddings[:, 3:], lm.embed(torch.tensor([answer_ids] * 2)))


def test_reconstruction_loss_reads_the_first_r_tokens_after_the_cue(tiny_lms, tiny_config, monkeypatch):
    """L_rec = Σ_models CE(first R tokens of the text the aligner read | [BOS?] + soft prompt + cue); the
    QA terms (and their KD teacher) are not computed in the reconstruction stage."""
    from interlingua.config import LossConfig
    from interlingua.constants import RECONSTRUCTION_CUE
    from interlingua.losses import k_token_ce
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.models.system import Interlingua

    encoder = SentenceEncoder("tiny-encoder")
    torch.manual_seed(0)
    system = Interlingua(InterlinguaModel(interlingua_spec(tiny_config, tiny_lms, encoder)), tiny_lms, encoder)
    monkeypatch.setattr("interlingua.training.step.kd_teacher",
                        lambda *args: pytest.fail("no KD teacher in the reconstruction stage"))
    micro = _stream(tiny_config, tiny_lms, batch_size=3, grad_accum=1).micro_batches(0)[0]
    texts = micro.texts[:2] + ["Context: short\nQuestion: q?\nAnswer:"]  # shorter than R in one tokenizer
    batch = MicroBatch.of(texts, micro.answers)
    out = batch_loss(system, system, batch, Stage.RECONSTRUCT, LossConfig(), rec_tokens=40)
    assert set(out.terms) == {"rec", "align", "sem", "total"}
    expected = 0.0
    for key, lm in tiny_lms.items():
        targets = reconstruction_targets(lm, texts, 40)
        ids, mask = lm.tokenize_plain(texts)
        assert torch.equal(targets.ids, ids[:, :40]) and torch.equal(targets.mask, mask[:, :40])
        logits = lm.target_logits(lm.soft_prefix(out.soft_prompts[key], cue=RECONSTRUCTION_CUE), targets)
        expected += k_token_ce(logits, targets.ids, targets.mask).item()
    assert not reconstruction_targets(tiny_lms["tiny-qwen2"], texts, 40).mask[2].all()  # the short text is masked
    assert out.terms["rec"] == pytest.approx(expected, rel=1e-5)
    # Normalised by the global batch's target positions: a micro-batch that is the whole global batch
    # gets the plain mean.
    norm = loss_norm(tiny_lms, micro.answers, 4, texts, rec_tokens=40)
    assert norm.rec_positions == {k: int(reconstruction_targets(lm, texts, 40).mask.sum())
                                  for k, lm in tiny_lms.items()}
    normed = batch_loss(system, system, batch, Stage.RECONSTRUCT, LossConfig(), norm, rec_tokens=40)
    assert normed.terms["rec"] == pytest.approx(out.terms["rec"], rel=1e-5)
    with pytest.raises(ValueError, match="rec_tokens > 0"):
        batch_loss(system, system, batch, Stage.RECONSTRUCT, LossConfig())


@pytest.mark.e2e
def test_reconstruction_loss_decreases_with_training(tiny_lms, tiny_config):
    from interlingua.config import LossConfig
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.models.system import Interlingua

    encoder = SentenceEncoder("tiny-encoder")
    torch.manual_seed(0)
    system = Interlingua(InterlinguaModel(interlingua_spec(tiny_config, tiny_lms, encoder)), tiny_lms, encoder)
    forward = system
    optimizer = torch.optim.AdamW(forward.parameters(), lr=1e-2)
    micro = _stream(tiny_config, tiny_lms, batch_size=4, grad_accum=1).micro_batches(0)[0]
    config = LossConfig(w_align=0.0, w_sem=0.0)
    losses = []
    for _ in range(6):
        out = batch_loss(system, forward, micro, Stage.RECONSTRUCT, config, rec_tokens=32)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        losses.append(out.terms["rec"])
    # Random tiny LMs are nearly uniform (L_rec starts at log V summed over both models) and barely
    # listen to their input, so the soft prompt can move the loss only a little: but steadily.
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    """3 reconstruction steps then 2 QA steps, trained once for several tests."""
    out = tmp_path_factory.mktemp("pretrain")
    return out, train(tiny(*PRETRAIN), out, progress=False)


@pytest.mark.e2e
def test_pretrain_stage_then_qa_stage(pretrain_run):
    out, final = pretrain_run
    assert final == out / "step_000005"
    assert sorted(p.name for p in out.glob("step_*")) == [f"step_00000{s}" for s in (2, 3, 4, 5)]  # 3 = end of stage
    state = json.loads((final / TRAINER_STATE_FILE).read_text())
    assert (state["step"], state["examples_seen"]) == (5, 5 * 4)  # one stream over both stages
    rows = metrics_rows(out)
    assert [(r["step"], r["stage"]) for r in rows] == [
        (0, "reconstruct"), (1, "reconstruct"), (2, "reconstruct"), (3, "qa"), (4, "qa")]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 1e-3, 5e-4, 3e-4, 3e-4])
    for row in rows:
        expected = {"rec", "align", "sem", "total"} if row["stage"] == "reconstruct" else {
            "gen", "align", "sem", "kd", "total"}
        assert set(row["loss"]) == expected, row["step"]
    first = rows[0]["loss"]
    assert first["total"] == pytest.approx(first["rec"] + 0.5 * first["align"] + 0.1 * first["sem"], rel=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("crash_step, resumed_from", [(2, "step_000002"), (4, "step_000004")])
def test_resume_through_the_stage_boundary_is_exact(pretrain_run, tmp_path, monkeypatch, crash_step, resumed_from):
    """Crash inside the reconstruction stage (resume from step 2, cross the boundary) or after it
    (resume from step 4 in the QA stage); both end bit-identical to the straight run."""
    original = recipe.TrainingRecipe._forward_backward

    class SimulatedCrash(Exception):
        pass

    def crash(self, step):
        if step == crash_step:
            raise SimulatedCrash
        return original(self, step)

    monkeypatch.setattr(recipe.TrainingRecipe, "_forward_backward", crash)
    with pytest.raises(SimulatedCrash):
        train(tiny(*PRETRAIN), tmp_path, progress=False)
    assert (tmp_path / LATEST_CHECKPOINT_FILE).read_text().strip() == resumed_from
    monkeypatch.setattr(recipe.TrainingRecipe, "_forward_backward", original)

    resumed = train(tiny(*PRETRAIN), tmp_path, resume=True, progress=False)
    straight_dir, straight = pretrain_run
    expected, got = tensors_of(straight), tensors_of(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    timeless = lambda rows: [{k: v for k, v in row.items() if k != "examples_per_s"} for row in rows]  # noqa: E731
    assert timeless(metrics_rows(tmp_path)) == timeless(metrics_rows(straight_dir))  # losses, lr, stage, diagnostics


@pytest.mark.e2e
def test_grad_accum_matches_one_big_batch_in_both_stages(tmp_path):
    """L_rec is normalised over the global batch's real target positions: 2 × 2 == 4 × 1 in the
    reconstruction stage and with L_rec as an extra QA term (loss.w_rec). R = 256 covers whole
    prompts, so examples have different numbers of targets."""
    common = ("pretrain.steps=1", "pretrain.warmup_steps=1", "pretrain.tokens=256", "loss.w_rec=0.5",
              "train.steps=1", "train.save_every=2", "train.warmup_steps=1")
    big = train(tiny(*common, "train.batch_size=4", "train.grad_accum=1"), tmp_path / "big", progress=False)
    accum = train(tiny(*common, "train.batch_size=2", "train.grad_accum=2"), tmp_path / "accum", progress=False)
    expected, got = tensors_of(big), tensors_of(accum)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)
    big_rows, accum_rows = metrics_rows(tmp_path / "big"), metrics_rows(tmp_path / "accum")
    assert [set(r["loss"]) for r in big_rows] == [{"rec", "align", "sem", "total"},
                                                 {"rec", "gen", "align", "sem", "kd", "total"}]
    for big_row, accum_row in zip(big_rows, accum_rows):
        for term, value in big_row["loss"].items():
            assert accum_row["loss"][term] == pytest.approx(value, rel=1e-5, abs=1e-7), (big_row["step"], term)


@pytest.mark.e2e
def test_training_curves_show_the_terms_of_both_stages(pretrain_run):
    from interlingua.artifacts.plots import loss_terms

    terms = loss_terms(metrics_rows(pretrain_run[0]))
    assert {"rec", "gen", "kd"} <= set(terms)


# ---- compression: quantisation-aware training and the L1 term (issue #4) ----------------------
def _tiny_system(lms, config):
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.models.system import Interlingua

    encoder = SentenceEncoder("tiny-encoder")
    torch.manual_seed(0)
    return Interlingua(InterlinguaModel(interlingua_spec(config, lms, encoder)), lms, encoder)


def test_qat_soft_prompt_is_made_from_the_wire_z(tiny_lms, tiny_config):
    from interlingua.codec import dequantize, quantize
    from interlingua.config import CompressionConfig, Precision

    system = _tiny_system(tiny_lms, tiny_config)
    texts = _stream(tiny_config, tiny_lms, batch_size=4, grad_accum=1).micro_batches(0)[0].texts
    anchor = system.anchor(texts)
    qat = CompressionConfig(precision=Precision.INT4, group_size=8, qat=True)
    plain_zs, plain_prompts, _ = system(texts, anchor)
    system.compression = qat
    zs, soft_prompts, _ = system(texts, anchor)
    for key, z in zs.items():
        assert torch.equal(z, plain_zs[key])  # the losses on z see the unquantised z
        wire = torch.stack([dequantize(quantize(row, Precision.INT4, 8)) for row in z.detach()])  # (B, d_inter)
        assert not torch.equal(wire, z.detach())
        with torch.no_grad():
            expected = system.model.soft_prompt(key, wire)  # (B, M, d_m)
        assert torch.equal(soft_prompts[key].detach(), expected)  # bit for bit
        assert not torch.equal(plain_prompts[key], soft_prompts[key])
    # qat=false (the default) leaves the adapters reading z as is
    system.compression = CompressionConfig(precision=Precision.INT4, group_size=8, qat=False)
    assert all(torch.equal(a, b) for a, b in zip(system(texts, anchor)[1].values(), plain_prompts.values()))


def test_qat_gradients_pass_straight_through_to_the_aligner(tiny_lms, tiny_config):
    from interlingua.config import CompressionConfig, LossConfig, Precision

    system = _tiny_system(tiny_lms, tiny_config)
    micro = _stream(tiny_config, tiny_lms, batch_size=4, grad_accum=1).micro_batches(0)[0]
    system.compression = CompressionConfig(precision=Precision.INT4, group_size=8, qat=True)
    forward = system
    only_gen = LossConfig(w_align=0.0, w_sem=0.0, w_kd=0.0)  # the aligner learns only through the soft prompt
    batch_loss(system, forward, micro, Stage.QA, only_gen).total.backward()
    for name, param in system.model.aligner.named_parameters():
        if name.startswith(("input_proj", "refine", "cross")):
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_l1_term_is_the_mean_absolute_z_and_absent_at_zero(tiny_lms, tiny_config):
    from interlingua.config import LossConfig

    system = _tiny_system(tiny_lms, tiny_config)
    forward = system
    micro = _stream(tiny_config, tiny_lms, batch_size=4, grad_accum=1).micro_batches(0)[0]
    off = batch_loss(system, forward, micro, Stage.QA, LossConfig(w_kd=0.0))
    on = batch_loss(system, forward, micro, Stage.QA, LossConfig(w_kd=0.0, w_l1=0.5))
    assert "l1" not in off.terms and set(on.terms) == set(off.terms) | {"l1"}
    expected = sum(z.abs().mean().item() for z in on.zs.values()) / len(on.zs)  # mean over models and elements
    assert on.terms["l1"] == pytest.approx(expected, rel=1e-6)
    assert on.terms["total"] == pytest.approx(off.terms["total"] + 0.5 * expected, rel=1e-6)


def test_combine_losses_takes_the_l1_weight_from_loss():
    from interlingua.config import LossConfig
    from interlingua.losses import combine_losses

    terms = {"gen": torch.tensor(1.0), "align": torch.tensor(1.0), "sem": torch.tensor(1.0)}
    config = LossConfig(w_kd=0.0, w_l1=0.25)
    assert combine_losses(terms | {"l1": torch.tensor(4.0)}, config).item() == pytest.approx(1.6 + 1.0)
    with pytest.raises(KeyError, match="loss.w_l1=0.25"):
        combine_losses(terms, config)
    with pytest.raises(FloatingPointError, match="l1"):
        combine_losses(terms | {"l1": torch.tensor(float("nan"))}, config)
    # weight 0: the term may be left out, and adds nothing when given
    zero = LossConfig(w_kd=0.0)
    assert combine_losses(terms | {"l1": torch.tensor(4.0)}, zero).item() == combine_losses(terms, zero).item()


def test_the_old_compression_l1_key_is_read_as_loss_w_l1(tmp_path, caplog):
    """Configs stored before the move (checkpoints, results/) and old overrides still load."""
    import logging

    from interlingua.config import config_from_dict, config_to_dict, load_config

    config = tiny("loss.w_l1=0.01")
    stored = config_to_dict(config)
    assert "l1" not in stored["compression"] and stored["loss"]["w_l1"] == 0.01
    old = {**stored, "loss": {k: v for k, v in stored["loss"].items() if k != "w_l1"},
           "compression": {**stored["compression"], "l1": 0.01}}
    with caplog.at_level(logging.INFO, logger="interlingua.config"):
        assert config_from_dict(old) == config
        assert load_config("tiny", ["compression.l1=0.01"]).loss == config.loss
    assert "compression.l1 is now loss.w_l1" in caplog.text
    path = tmp_path / "old.yaml"
    path.write_text("extends: tiny\ncompression: {l1: 0.0, qat: false}\n")
    assert load_config(str(path)).loss.w_l1 == 0.0
    with pytest.raises(ConfigError, match="keep loss.w_l1 only"):
        config_from_dict({**old, "loss": stored["loss"] | {"w_l1": 0.5}})


@pytest.mark.e2e
def test_training_with_qat_and_l1_quantises_and_logs_l1(tmp_path, monkeypatch):
    import interlingua.models.system as system_module
    from interlingua.config import Precision

    calls = []
    original = system_module.fake_quantize
    monkeypatch.setattr(system_module, "fake_quantize", lambda z, p, g: calls.append((p, g)) or original(z, p, g))
    config = tiny("compression.qat=true", "compression.precision=int8", "compression.group_size=16",
                  "loss.w_l1=0.01", "train.steps=1", "train.warmup_steps=0")
    train(config, tmp_path, progress=False)
    assert calls and {(Precision(p).value, g) for p, g in calls} == {("int8", 16)}
    assert set(metrics_rows(tmp_path)[0]["loss"]) == {"gen", "align", "sem", "kd", "l1", "total"}
