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

from interlingua.config import load_config
from interlingua.constants import (
    CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHTS_FILE, LATEST_CHECKPOINT_FILE, METRICS_LOG_FILE, TRAINING_CURVES_PLOT,
    OPTIMIZER_STATE_FILE, RESOLVED_CONFIG_FILE, RUN_INFO_FILE, TRAINER_STATE_FILE,
)
from interlingua.data.squad import load_squad
from interlingua.models.interlingua import CheckpointError, InterlinguaModel
from interlingua.cli import main as cli_main
from interlingua.training import recipe
from interlingua.training.batches import TrainingStream
from interlingua.training.checkpoint import (
    optimizer_state_from_safe, optimizer_state_to_safe, rng_state, set_rng_state,
)
from interlingua.training.recipe import TrainingDivergedError, interlingua_spec, lr_factor, train
from interlingua.training.step import LearnedForward, batch_loss
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


# ---- frozen is frozen, gradients reach the learned modules -------------------------------------
def test_step_changes_only_learned_weights(tiny_lms, tiny_config):
    from interlingua.models.encoder import SentenceEncoder
    from interlingua.pipeline import InterlinguaSystem

    encoder = SentenceEncoder("tiny-encoder")
    torch.manual_seed(0)
    model = InterlinguaModel(interlingua_spec(tiny_config, tiny_lms, encoder))
    system = InterlinguaSystem(model, tiny_lms, encoder)
    forward = LearnedForward(system)
    assert {id(p) for p in forward.parameters()} == {id(p) for p in model.parameters()}
    frozen = {f"{key}/{n}": t.clone() for key, lm in tiny_lms.items() for n, t in lm.model.state_dict().items()}
    frozen |= {f"encoder/{n}": t.clone() for n, t in encoder.model.state_dict().items()}
    learned = {n: t.clone() for n, t in model.state_dict().items()}

    stream = _stream(tiny_config, tiny_lms, batch_size=4, grad_accum=1)
    micro = stream.micro_batches(0)[0]
    out = batch_loss(system, forward, micro.texts, micro.answers, tiny_config.loss)
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
    from interlingua.pipeline import InterlinguaSystem

    encoder = SentenceEncoder("tiny-encoder")
    system = InterlinguaSystem(InterlinguaModel(interlingua_spec(tiny_config, tiny_lms, encoder)), tiny_lms, encoder)
    calls = []
    for lm in tiny_lms.values():
        monkeypatch.setattr(lm, "text_prefix", lambda prompts: calls.append(prompts))
    micro = _stream(tiny_config, tiny_lms, batch_size=2, grad_accum=1).micro_batches(0)[0]
    out = batch_loss(system, LearnedForward(system), micro.texts, micro.answers, LossConfig(w_kd=0.0))
    assert calls == [] and set(out.terms) == {"gen", "align", "sem", "total"}


# ---- NaN ---------------------------------------------------------------------------------------
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


def test_resume_with_changed_interlingua_shape_is_refused(copied_run):
    with pytest.raises(CheckpointError, match=r"interlingua\.d_inter: checkpoint 32, config 16"):
        train(tiny("interlingua.d_inter=16", "train.steps=6"), copied_run, resume=True, progress=False)


def test_resume_with_a_different_model_set_is_refused(copied_run):
    config_path = copied_run / "step_000004" / CHECKPOINT_CONFIG_FILE
    config_path.write_text(config_path.read_text().replace('"tiny-qwen2"', '"tiny-mistral"'))
    expected = (r"trained for models \['tiny-llama', 'tiny-mistral'\] \(in this order\), "
                r"but the config has \['tiny-llama', 'tiny-qwen2'\]")
    with pytest.raises(CheckpointError, match=expected):
        train(tiny("train.steps=6"), copied_run, resume=True, progress=False)


@pytest.mark.parametrize("damaged", [CHECKPOINT_WEIGHTS_FILE, OPTIMIZER_STATE_FILE])
def test_resume_from_truncated_files_is_refused(copied_run, damaged):
    path = copied_run / "step_000004" / damaged
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(tiny("train.steps=6"), copied_run, resume=True, progress=False)


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(copied_run, capsys):
    code = cli_main(["train", "--config", "tiny", "--set", f"data.source={SQUAD_MINI}", "-o", str(copied_run), "-q"])
    assert code == 2
    assert "already holds checkpoints (latest: step_000004); pass --resume" in capsys.readouterr().err


# ---- gradient accumulation -------------------------------------------------------------------
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
@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process(straight_run, tmp_path):
    """``accelerate launch`` with 2 CPU processes (DDP over gloo) logs the single-process run's losses
    and gradient norms: at step 0 (same global batch, gradients all-reduced to the same sum) and at
    step 1 (after the same first update; both schedules give update 0 the full rate)."""
    pytest.importorskip("accelerate")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "interlingua", "train", "--config", "tiny", "--set", f"data.source={SQUAD_MINI}",
        "-o", str(tmp_path), "-q", "train.steps=2", "runtime.device=cpu",
    ]
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("accelerate launch with 2 CPU processes did not finish in 300 s on this machine")
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(s in output for s in ("rendezvous", "Address already in use", "gloo")):
        pytest.skip(f"accelerate's launcher cannot start 2 processes here: {output[-500:]}")
    assert result.returncode == 0, output[-3000:]
    state = json.loads((tmp_path / "step_000002" / TRAINER_STATE_FILE).read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    for two, one in zip(metrics_rows(tmp_path), metrics_rows(straight_run[0])[:2]):
        for term, value in one["loss"].items():
            assert two["loss"][term] == pytest.approx(value, rel=1e-5, abs=1e-7), (two["step"], term)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5), two["step"]
