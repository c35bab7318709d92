"""The benchmark scripts run end to end on the tiny config and report what docs/performance.md quotes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, SQUAD_MINI

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # subprocesses running the benchmark scripts


def _run(script: str, tmp_path, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / f"{script}.py"), "--config", "tiny", "--json", str(out),
               *args, f"data.source={SQUAD_MINI}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "==" in done.stdout  # the side-by-side table is printed
    return json.loads(out.read_text())


def test_train_step_benchmark(tmp_path):
    data = _run("train_step", tmp_path, "--steps", "2")
    assert set(data["seconds_per_step"]) == {"naive", "real_cold_cache", "real_warm_cache"}
    assert data["flops_per_step"] > 0 and 0 < data["fraction_of_peak"] < 1
    assert all(store["hits"] > 0 for store in data["cache"])  # the warm pass read the cache


def test_receiver_ttft_benchmark(tmp_path):
    data = _run("receiver_ttft", tmp_path, "--examples", "3", "--batch-size", "2")
    hybrid = _run("receiver_ttft", tmp_path, "--examples", "3", "--batch-size", "2", "interlingua.conditioning=hybrid")
    assert (data["conditioning"], hybrid["conditioning"], data["batch_size"]) == ("full", "hybrid", 2)
    for key, model in data["models"].items():
        assert model["receiver_positions"]["latent"] < model["receiver_positions"]["text_mean"]
        assert min(model["speedup"], model["median_paired_speedup"], model["batched_speedup"]) > 0
        assert model["speedup_bound"] > 0 and model["one_position_prefill_s"] > 0
        assert set(model["batched_mean_ttft_s"]) == {"latent", "text"}
        assert model["batched_same_first_token"] == {"latent": 3, "text": 3}  # left padding changes no answer
        # hybrid: the receiver also reads the question after the soft prompt
        assert hybrid["models"][key]["receiver_positions"]["latent"] > model["receiver_positions"]["latent"]


def test_receiver_ttft_benchmark_on_the_native_design(tmp_path):
    """Native: the receiver head + one prefill over T' soft tokens; pool_window=2 halves T'."""
    args = ("--examples", "3", "--batch-size", "2", "interlingua.design=native")
    runs = {window: _run("receiver_ttft", tmp_path, *args, f"interlingua.pool_window={window}") for window in (1, 2)}
    assert all(data["design"] == "native" for data in runs.values())
    for key, model in runs[1]["models"].items():
        pooled = runs[2]["models"][key]
        assert (model["pool_window"], pooled["pool_window"]) == (1, 2)
        for data in (model, pooled):
            assert {"latent", "soft_tokens", "text_mean"} <= set(data["receiver_positions"])
            assert min(data["speedup"], data["median_paired_speedup"], data["batched_speedup"]) > 0
            assert data["batched_same_first_token"] == {"latent": 3, "text": 3}  # left padding changes no answer
        full, half = model["receiver_positions"], pooled["receiver_positions"]
        assert full["soft_tokens"] / 2 <= half["soft_tokens"] <= full["soft_tokens"] / 2 + 1  # ceil(T / 2) each
        # the template's head and tail around the soft tokens are the same: the prefix shrinks by the soft tokens
        assert full["latent"] - half["latent"] == pytest.approx(full["soft_tokens"] - half["soft_tokens"])
        assert full["text_mean"] == half["text_mean"]


def test_eval_throughput_benchmark(tmp_path):
    data = _run("eval_throughput", tmp_path, "--examples", "4", "--batch-size", "4")
    assert all(model["same_answers"] == 4 for model in data["models"].values())


def test_frozen_dtype_benchmark_on_the_native_design(tmp_path):
    """fp32 and bf16 frozen models side by side: a native training step and greedy answers in both."""
    data = _run("frozen_dtype", tmp_path, "--examples", "4", "--steps", "1", "interlingua.design=native")
    for dtype in ("float32", "bfloat16"):
        assert data[dtype]["step_seconds"] > 0 and data[dtype]["examples"] == 4
        assert {"gen", "kd", "total"} <= set(data[dtype]["first_step_loss"])
        assert all(len(g["predictions"]) == 4 for g in data[dtype]["generation"].values())
    fp32, bf16 = data["float32"]["first_step_loss"], data["bfloat16"]["first_step_loss"]
    assert bf16["total"] == pytest.approx(fp32["total"], rel=0.05)  # bf16 keeps ~3 significant digits


def test_vocab_search_benchmark_finds_the_exact_soft_tokens(tmp_path):
    data = _run("vocab_search", tmp_path, "--examples", "3", "interlingua.design=native")
    assert len(data["pairs"]) == 4
    assert all(pair["identical"] and pair["tokens"] > 0 and pair["speedup"] > 0 for pair in data["pairs"].values())


def test_kd_topk_gap_benchmark(tmp_path):
    data = _run("kd_topk_gap", tmp_path, "--examples", "4")
    for model in data["models"].values():
        fractions = [v["fraction_of_exact"] for v in model["top_k"].values()]
        # the full vocabulary's fraction is 1 up to fp32 rounding, which differs by CPU (1.8e-5 on an AMD EPYC)
        assert all(0 <= f <= 1 + 1e-4 for f in fractions) and fractions == sorted(fractions)


@pytest.mark.parametrize("overrides", [[], ["interlingua.conditioning=hybrid", "loss.w_nce=1.0", "pretrain.steps=2",
                                       "pretrain.warmup_steps=1"]],
                         ids=["seed-terms", "hybrid-nce-after-pretrain"])
def test_naive_reference_computes_the_same_loss_as_the_real_step(tmp_path, overrides, monkeypatch):
    """The benchmark's speedup is only meaningful if the naive step computes the same loss (exact KD)."""
    from interlingua.config import load_config
    from interlingua.training.recipe import TrainingRecipe
    from interlingua.training.step import Stage, batch_loss

    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    from naive_reference import naive_step_loss

    config = load_config("tiny", [f"data.source={SQUAD_MINI}", "cache.teacher=false", "cache.teacher_top_k=0",
                                  f"cache.dir={tmp_path / 'cache'}", *overrides])
    recipe = TrainingRecipe(config, tmp_path / "run", progress=False)
    recipe.setup(resume=False)
    micro = recipe.stream.micro_batches(config.pretrain.steps)[0]
    real = batch_loss(recipe.system, recipe.forward, micro, Stage.QA, config.loss).total
    naive = naive_step_loss(recipe.system, recipe.forward, micro, config.loss)
    assert float(naive.detach()) == pytest.approx(float(real.detach()), rel=1e-4)
    recipe.cleanup(False)


def _probe(tmp_path, *args: str) -> dict[str, list[float]]:
    """Run the reconstruction probe; ``{row: [per-model CE..., sum]}`` from its printout."""
    command = [sys.executable, str(REPO_ROOT / "scripts" / "probes" / "reconstruction_floor.py"), *args,
               f"data.source={SQUAD_MINI}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        if "sum over models" in line:
            name, rest = line.split(": ", 1)
            cells, total = rest.split("; sum over models (compare with L_rec): ")
            rows[name] = [float(cell.split()[-1]) for cell in cells.split(", ")] + [float(total)]
    return rows


def test_reconstruction_floor_probe(tmp_path):
    rows = _probe(tmp_path, "--config", "tiny", "--examples", "5")
    assert list(rows) == ["no soft prompt"]
    *per_model, total = rows["no soft prompt"]
    assert len(per_model) == 2 and all(value > 0 for value in per_model)
    assert total == pytest.approx(sum(per_model), abs=2e-3)


def test_reconstruction_probe_of_a_checkpoint_has_own_and_shuffled_z(tmp_path):
    from interlingua.cli import main as cli_main

    run = tmp_path / "run"
    assert cli_main(["train", "--config", "tiny", "-o", str(run), "-q", f"data.source={SQUAD_MINI}", "train.steps=2",
                     "train.save_every=2", f"cache.dir={tmp_path / 'cache'}"]) == 0
    rows = _probe(tmp_path, "--checkpoint", str(run / "step_000002"), "--split", "validation", "--examples", "5")
    assert list(rows) == ["no soft prompt", "own z", "shuffled z"]
    for *per_model, total in rows.values():
        assert len(per_model) == 2 and all(v > 0 for v in per_model)
        assert total == pytest.approx(sum(per_model), abs=2e-3)


def test_decode_head_benchmark_gives_identical_answers_both_ways(tmp_path):
    data = _run("decode_head", tmp_path, "--examples", "3", "--tokens", "4")
    assert len(data["models"]) == 2
    for dtypes in data["models"].values():
        assert set(dtypes) == {"float32", "bfloat16"}
        assert all(d["identical"] and d["speedup"] > 0 and len(d["predictions"]) == 3 for d in dtypes.values())


@pytest.mark.e2e
def test_vocab_code_controls_probe_reads_three_messages_in_every_pair(tmp_path):
    """scripts/probes/vocab_code_controls.py on a tiny native checkpoint: every pair under each message
    beside its shuffled row, paired deltas against vocab, and the own-token share (a step-0 native z is the
    fitted map of the sender's tokens, so nearly every own-vocabulary id is the sender's own token)."""
    from interlingua.cli import main as cli_main

    run = tmp_path / "run"
    assert cli_main(["bridge", "--config", "tiny", "-o", str(run), f"data.source={SQUAD_MINI}",
                     "interlingua.design=native"]) == 0
    checkpoint = next(run.glob("step_*"))
    command = [sys.executable, str(REPO_ROOT / "scripts" / "probes" / "vocab_code_controls.py"), "--checkpoint",
               str(checkpoint), "--examples", "3", "--out", str(tmp_path / "out"), f"data.source={SQUAD_MINI}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n"] == 3 and set(summary["modes"]) == {"vocab", "mean-norm", "tokens"}
    assert all(share > 50 for share in summary["own_token_share"].values())
    for mode in ("mean-norm", "tokens"):
        assert len(summary["modes"][mode]["paired_vs_vocab"]) == 4  # every (sender, receiver) pair
    rows = (tmp_path / "out" / "tokens.predictions.jsonl").read_text().splitlines()
    assert len(rows) == 3 * 4 * 2  # own/cross and shuffled rows of every pair
    assert done.stdout.count("| tokens |") == 4
