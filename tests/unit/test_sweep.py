"""The compression sweep (issue #4): the sweep file and its grid, the table and Pareto front, and the tiny
sweep (configs/sweeps/tiny.yaml: 2 x 2 x 2 cells, 4 training runs of 2 steps) end to end, resumed."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import itertools
import json
import re
import shutil

import pytest
import torch

from interlingua.cli import main as cli_main
from interlingua.codec import encode_message, message_size
from interlingua.config import ConfigError, Precision
from interlingua.constants import CHECKPOINT_WEIGHTS_FILE, LATEST_CHECKPOINT_FILE, METRICS_LOG_FILE
from interlingua.eval.baselines import BASELINE_MODES
from interlingua.eval.reuse import BaselineReuseError
from interlingua.models.interlingua import CheckpointError
from interlingua.sweep import load_sweep, pareto_front, plan_sweep, run_sweep, runner
from interlingua.sweep import references as references_module
from interlingua.sweep.grid import SweepGrid
from interlingua.sweep.pareto import pareto_figure, reference_points
from interlingua.sweep.progress import Timing, format_duration
from interlingua.sweep.table import cell_rows
from interlingua.training import recipe
from tests.conftest import REPO_ROOT, SQUAD_MINI

SWEEPS = REPO_ROOT / "configs" / "sweeps"
TINY_SWEEP = str(SWEEPS / "tiny.yaml")
EXTRA = [f"base.data.source={SQUAD_MINI}"]  # the sweep file's relative path works from the repository root only
MODELS = ["tiny-llama", "tiny-qwen2"]


def tiny_sweep(*overrides: str, **changes):
    """configs/sweeps/tiny.yaml with ``KEY=VALUE`` overrides (the test data's absolute path first); ``changes``
    replace fields (``grid`` as a dict of knobs)."""
    sweep = load_sweep(TINY_SWEEP, [*EXTRA, *overrides])
    if "grid" in changes:
        changes["grid"] = SweepGrid(**changes["grid"])
    return dataclasses.replace(sweep, **changes) if changes else sweep


def failing(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} was called")
    return fail


def recording(function, calls: list):
    """``function``, appending its ``resume`` argument to ``calls`` on each call."""
    def wrapper(*args, **kwargs):
        calls.append(kwargs.get("resume"))
        return function(*args, **kwargs)
    return wrapper


# ---- the sweep file ----------------------------------------------------------------------------
def test_the_compression_sweep_is_the_issue_grid_with_one_training_per_shape(tmp_path):
    sweep = load_sweep("compression")
    assert sweep.base["extends"] == "embedded" and sweep.base["eval"] == {"limit": 1000} and sweep.qat is False
    assert sweep.grid.knobs() == {"d_inter": [512, 256, 128], "num_slots": [32, 16, 8],
                                  "precision": [Precision.FP16, Precision.INT8, Precision.INT4]}
    plan = plan_sweep(sweep, tmp_path)
    assert len(plan.cells) == 27 and len({p.train_dir for p in plan.cells}) == 9
    for _, group in itertools.groupby(plan.cells, key=lambda p: p.train_dir):
        group = list(group)
        assert len(group) == 3 and all(p.train_config == group[0].train_config for p in group)
        assert [p.eval_config.compression.precision for p in group] == ["fp16", "int8", "int4"]
    first = plan.cells[0]
    assert (first.eval_config.eval.limit, first.train_config.train.steps) == (1000, 150)
    assert plan.reference_shape == (32, 512)  # embedded pools with M learned queries: z is M x d_inter
    assert (first.train_config.pretrain.steps, first.train_config.train.steps) == (100, 150)  # the 250-step run
    assert plan.base_config.train.steps == 150  # the provenance of the tables holds the steps the cells ran
    assert first.train_config.train.keep_checkpoints == 1


def test_every_shipped_sweep_loads_and_plans(tmp_path):
    """Native sweeps plan only once the checkpoint they start from exists (test_sweep_native plans them)."""
    for path in sorted(SWEEPS.glob("*.yaml")):
        sweep = load_sweep(str(path), EXTRA)
        if sweep.run_config().interlingua.design.value == "native":
            with pytest.raises(ConfigError, match="base.train.init_from"):
                plan_sweep(load_sweep(str(path), [*EXTRA, f"base.train.init_from={tmp_path / 'none'}"]), tmp_path)
            continue
        assert plan_sweep(sweep, tmp_path / path.stem).cells, path.name


def test_a_qat_sweep_trains_every_cell_at_its_precision(tmp_path):
    plan = plan_sweep(tiny_sweep("qat=true"), tmp_path)
    assert len(plan.cells) == 8 and len({p.train_dir for p in plan.cells}) == 8
    for planned in plan.cells:
        compression = planned.train_config.compression
        assert compression.qat and compression.precision == planned.cell.precision
    post_training = plan_sweep(tiny_sweep(), tmp_path)
    assert len({p.train_dir for p in post_training.cells}) == 4
    assert not any(p.train_config.compression.qat for p in post_training.cells)


def test_float_precisions_ignore_the_group_size(tmp_path):
    sweep = tiny_sweep(grid={"precision": ["fp16", "int4"], "group_size": [8, 16]})
    names = [p.cell.name for p in plan_sweep(sweep, tmp_path).cells]
    assert names == ["d32_m4_fp16", "d32_m4_int4_g8", "d32_m4_int4_g16"]  # d_inter, M: the base's


@pytest.mark.parametrize(
    "text, message",
    [
        ("base: {extends: tiny}\ngrid: {d_inter: [32], bits: [4]}\n", "grid.bits is not a sweep knob"),
        ("base: {extends: tiny}\ngrid: {}\n", "grid is empty"),
        ("base: {extends: tiny}\n", "grid is empty"),
        ("grid: {d_inter: [32]}\n", "base.extends is missing"),
        ("base: tiny\ngrid: {d_inter: [32]}\n", "base must be a mapping"),
        ("base: {extends: tiny}\ngrid: {precision: [int2]}\n", "grid.precision: unknown precision 'int2'"),
        ("base: {extends: tiny}\ngrid: {d_inter: 32}\n", "grid.d_inter"),
        ("base: {extends: tiny}\ngrid: {num_slots: []}\n", "grid.num_slots must be a non-empty list"),
        ("base: {extends: tiny}\ngrid: {d_inter: [32, 32]}\n", "grid.d_inter repeats a value"),
        ("base: {extends: tiny}\ngrid: {d_inter: [-8]}\n", "grid.d_inter values must be positive"),
        ("base: {extends: tiny}\ngrid: {d_inter: [32]}\nsteps: 3\n", "'steps'"),
        ("base: {extends: tiny}\ngrid: {d_inter: [32]}\nqat: maybe\n", "'qat'"),
        ("base: {extends: tiny, train: {stepz: 3}}\ngrid: {d_inter: [32]}\n", "stepz"),
        ("base: {extends: tiny, train: {steps: 0}}\ngrid: {d_inter: [32]}\n", "train.steps must be positive"),
        ("base: {extends: nowhere}\ngrid: {d_inter: [32]}\n", "config 'nowhere' not found"),
        ("base: {extends: tiny}\ngrid: {d_inter: [32]}\neval_limit: 100\n", "base.eval.limit"),
        ("base: {extends: tiny}\ngrid: {d_inter: [32]}\ntrain_steps: 2\n", "base.train.steps"),
        ("base: {extends: tiny}\noverrides: [train.lr=1]\ngrid: {d_inter: [32]}\n", "nested keys of the run"),
        ("base: {extends: tiny}\ngrid: {d_inter: [32\n", "not valid YAML"),
        ("- base\n- tiny\n", "a sweep file is a mapping"),
    ],
)
def test_a_bad_sweep_file_is_refused_naming_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(str(path))


def test_bad_sweep_overrides_and_missing_files_are_refused():
    with pytest.raises(ConfigError, match="unknown key 'eval_limt'.*sweep keys: base, grid"):
        load_sweep(TINY_SWEEP, ["eval_limt=3"])
    with pytest.raises(ConfigError, match="unknown key 'eval_limit'.*base.eval.limit"):
        load_sweep(TINY_SWEEP, ["eval_limit=3"])  # the earlier format's key says where it went
    with pytest.raises(ConfigError, match="unknown key 'base.train.stpes'.*base.train.steps"):
        load_sweep(TINY_SWEEP, ["base.train.stpes=3"])
    with pytest.raises(ConfigError, match="grid.bits is not a sweep knob"):
        load_sweep(TINY_SWEEP, ["grid.bits=[4]"])
    with pytest.raises(ConfigError, match="train.steps must be positive"):
        load_sweep(TINY_SWEEP, ["base.train.steps=0"])
    with pytest.raises(ConfigError, match="shipped sweeps: compression, native, native-tiny, tiny"):
        load_sweep("no-such-sweep")


def test_overrides_reach_the_base_run_and_the_grid_with_one_syntax(tmp_path):
    """KEY=VALUE as for every command: base.* is the base run (lists it inherits included), the rest the sweep."""
    sweep = tiny_sweep("base.train.steps=3", "base.models.1.prompt_format=raw", "grid.precision=[int8]",
                       "grid.d_inter=null", "qat=true")
    assert sweep.base["train"]["steps"] == 3 and sweep.qat
    assert sweep.grid.knobs() == {"num_slots": [4, 2], "precision": [Precision.INT8]}
    plan = plan_sweep(sweep, tmp_path)
    first = plan.cells[0].train_config
    assert first.train.steps == 3 and [m.prompt_format.value for m in first.models] == ["raw", "raw"]
    assert [p.cell.name for p in plan.cells] == ["d32_m4_int8_g32", "d32_m2_int8_g32"]  # d_inter: the base's
    assert first.data.source == str(SQUAD_MINI) and first.train.warmup_steps == 1  # the file's base keys stay
    assert plan_sweep(tiny_sweep("base.extends=embedded", "base.eval.limit=7"), tmp_path).base_config.models == \
        plan_sweep(load_sweep("compression"), tmp_path).base_config.models
    assert tiny_sweep("output_dir=elsewhere").output_dir == "elsewhere"


def test_a_cell_the_run_config_refuses_is_reported_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "train", failing("train"))
    sweep = tiny_sweep(grid={"d_inter": [32, 30]})  # tiny has 4 heads: 30 is not divisible
    with pytest.raises(ConfigError, match=r"sweep cell d_inter=30 .*interlingua.d_inter \(30\).*n_heads"):
        run_sweep(sweep, tmp_path, progress=False, echo=lambda _: None)
    assert not (tmp_path / "train").exists()


# ---- table and Pareto front --------------------------------------------------------------------
def test_pareto_front_by_hand():
    points = [(10, 5.0), (20, 4.0), (20, 7.0), (40, 7.0), (5, 1.0), (30, 9.0), (5, 1.0)]
    # (20, 4) and (40, 7) are beaten; of the two identical (5, 1) the first is kept
    assert pareto_front(points) == [4, 0, 2, 5]
    assert pareto_front([]) == []


def test_cell_rows_give_bytes_over_each_reference():
    result = {
        "cell": {"d_inter": 128, "num_slots": 8, "precision": "int4", "group_size": 32},
        "checkpoint": {"trained_with_qat": False}, "n": 1000,
        "scores": {"a": {"n": 1000, "f1": 40.0, "exact_match": 30.0}},
        "message": {"bytes": 100}, "prompt": {"mean_utf8_bytes": 800.0, "mean_gzip_bytes": 500.0},
    }
    (row,) = cell_rows([result], reference_bytes=1000)
    assert (row["vs_fp16_512x32"], row["vs_prompt_utf8"], row["vs_prompt_gzip"]) == (0.1, 0.125, 0.2)
    assert row["scores"] == {"a": {"f1": 40.0, "exact_match": 30.0}} and row["num_slots"] == 8


# ---- the tiny sweep end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """configs/sweeps/tiny.yaml run once: ``(folder, resume flag of each training, progress lines)``."""
    out = tmp_path_factory.mktemp("sweep")
    trainings, lines = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "train", recording(runner.train, trainings))
        run_sweep(tiny_sweep(), out, progress=False, echo=lines.append)
    return out, trainings, lines


@pytest.mark.e2e
def test_the_tiny_sweep_writes_the_table_and_the_plot(finished_sweep):
    out, _, _ = finished_sweep
    table = json.loads((out / "table.json").read_text())
    rows = table["rows"]
    assert table["models"] == MODELS and table["sweep"]["grid"]["precision"] == ["fp16", "int4"]
    assert table["run"]["command"] == "sweep" and "git" in table["run"] and "versions" in table["run"]
    cells = {(r["d_inter"], r["num_slots"], r["precision"]) for r in rows}
    assert cells == set(itertools.product([32, 16], [4, 2], ["fp16", "int4"]))
    reference = message_size((32, 512), Precision.FP16, 0)  # tiny.yaml pools with queries: z is (M, d_inter)
    for row in rows:
        shape, precision, group = (row["num_slots"], row["d_inter"]), Precision(row["precision"]), row["group_size"]
        assert group == (32 if precision is Precision.INT4 else None)
        assert row["bytes"] == len(encode_message(torch.zeros(shape), precision, group or 0, "0" * 16))
        assert row["vs_fp16_512x32"] == pytest.approx(row["bytes"] / reference)
        assert row["vs_prompt_utf8"] == pytest.approx(row["bytes"] / row["prompt_utf8_bytes"])
        assert row["vs_prompt_gzip"] == pytest.approx(row["bytes"] / row["prompt_gzip_bytes"])
        assert row["n"] == 4 and set(row["scores"]) == set(MODELS)
        assert all(0.0 <= s["f1"] <= 100.0 and 0.0 <= s["exact_match"] <= 100.0 for s in row["scores"].values())
    with (out / "table.csv").open() as f:
        csv_rows = list(csv.reader(f))
    assert csv_rows[0][:5] == ["d_inter", "M", "precision", "group_size", "n"] and len(csv_rows) == 1 + 8
    assert "tiny-qwen2 F1" in csv_rows[0] and "bytes / prompt gzip" in csv_rows[0]
    markdown, references = (out / "table.md").read_text().split("## Text references")
    assert "smoke run" in markdown and "| d_inter | M | precision |" in markdown and markdown.count("\n| ") == 1 + 8
    assert "partial" not in markdown
    # the text references: every model x {text, token budget, question only} on the cells' 4 examples
    assert references.count("\n| tiny-") == 2 * 3 and "question-only control" in references
    budget = plan_sweep(tiny_sweep(), out).references_config.interlingua.num_slots
    assert table["references"]["token_budget"] == budget and f"cut to M = {budget} tokens" in references
    summary = table["references"]["baselines"]
    assert set(summary) == set(MODELS) and all(set(modes) == set(BASELINE_MODES) for modes in summary.values())
    assert all(entry["n"] == 4 for modes in summary.values() for entry in modes.values())
    assert json.loads((out / "baselines" / "metrics.json").read_text())["baselines"] == summary
    assert json.loads((out / "table.json").read_text())["cells_finished"] == 8
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_cells_of_one_shape_share_one_training(finished_sweep):
    out, trainings, lines = finished_sweep
    assert trainings == [False] * 4  # 4 shapes, each trained once from scratch
    assert sorted(p.name for p in (out / "train").iterdir()) == ["d16_m2", "d16_m4", "d32_m2", "d32_m4"]
    results = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    assert len(results) == 8
    by_shape = {}
    for result in results:
        cell = result["cell"]
        by_shape.setdefault((cell["d_inter"], cell["num_slots"]), set()).add(result["checkpoint"]["fingerprint"])
        assert result["message"]["shape"] == [cell["num_slots"], cell["d_inter"]]
        assert result["summary"]["messages"]["tiny-llama"]["wire_bytes"] == result["message"]["bytes"]
    assert all(len(fingerprints) == 1 for fingerprints in by_shape.values())
    assert len(set().union(*by_shape.values())) == 4
    assert sum("evaluating" in line for line in lines) == 8 and sum(": training" in line for line in lines) == 4
    assert all(result["evaluate_seconds"] > 0 for result in results)


@pytest.mark.e2e
def test_each_cell_reports_its_time_and_an_estimate_of_the_rest(finished_sweep):
    lines = [line for line in finished_sweep[2] if "bytes per message" in line]
    assert len(lines) == 8 and all("evaluated in" in line for line in lines)
    assert "left (3 trainings, 7 cells)" in lines[0]  # 4 shapes: the first is trained
    assert "left (3 trainings, 6 cells)" in lines[1]  # the second precision of the first shape
    assert "left (0 trainings, 1 cell)" in lines[6] and "left" not in lines[7]


def test_the_estimate_uses_seconds_per_step_and_per_cell_and_waits_for_a_measurement():
    timing = Timing()
    assert timing.seconds_left(0, 0) == 0.0
    assert timing.seconds_left(100, 0) is None and timing.seconds_left(0, 2) is None
    timing.training_seconds, timing.training_steps = 50.0, 25  # 2 s per step
    timing.evaluations = [30.0, 10.0]
    assert timing.seconds_left(100, 3) == pytest.approx(100 * 2 + 3 * 20)
    assert timing.seconds_left(0, 1) == pytest.approx(20)
    assert timing.outlook([100, 0], 3) == "; about 4.3 min left (1 training, 3 cells)"
    assert timing.outlook([], 0) == "" and Timing().outlook([100], 1) == ""
    assert [format_duration(s) for s in (42, 450, 3.9 * 3600)] == ["42 s", "7.5 min", "3.9 h"]


@pytest.mark.e2e
def test_a_second_run_recomputes_nothing(finished_sweep, monkeypatch):
    out = finished_sweep[0]
    finished = {p: p.stat().st_mtime_ns for p in [*(out / "cells").iterdir(), *(out / "train").glob("*/step_*/*")]}
    monkeypatch.setattr(runner, "train", failing("train"))
    monkeypatch.setattr(runner, "evaluate_own_latent", failing("evaluate_own_latent"))
    monkeypatch.setattr(references_module, "evaluate_baselines", failing("evaluate_baselines"))
    lines = []
    run_sweep(tiny_sweep(), out, progress=False, echo=lines.append)
    assert sum("finished earlier, kept" in line for line in lines) == 8
    assert lines[0] == f"text references: read from {out / 'baselines'}"
    assert {p: p.stat().st_mtime_ns for p in finished} == finished


@pytest.mark.e2e
def test_the_publish_script_copies_the_table_and_plot_into_results_and_the_doc(finished_sweep, tmp_path):
    spec = importlib.util.spec_from_file_location("publish", REPO_ROOT / "scripts" / "publish_compression_results.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    doc = tmp_path / "compression.md"
    doc.write_text(f"# Doc\n\n{publish.START}\nold table\n{publish.END}\n\nafter\n")
    status = publish.publish(finished_sweep[0], tmp_path / "results", doc)
    assert status.startswith("**All 8 cells finished**")
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Doc\n\n") and text.endswith(f"{publish.END}\n\nafter\n")
    assert "| d_inter | M | precision |" in text and "#### Text references" in text
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(publish.FILES)
    with pytest.raises(SystemExit, match="markers"):
        publish.publish(finished_sweep[0], tmp_path / "results", tmp_path / "results" / "table.md")


@pytest.mark.e2e
def test_the_cli_runs_a_sweep(finished_sweep, monkeypatch, capsys):
    out = finished_sweep[0]
    monkeypatch.setattr(runner, "train", failing("train"))
    monkeypatch.setattr(runner, "evaluate_own_latent", failing("evaluate_own_latent"))
    code = cli_main(["sweep", "--config", TINY_SWEEP, "-o", str(out), "-q", EXTRA[0]])
    printed = capsys.readouterr().out
    assert code == 0 and "[8/8] d_inter=16 M=2 int4 group 32: finished earlier" in printed
    assert "| d_inter | M | precision |" in printed
    assert cli_main(["sweep", "--config", TINY_SWEEP, "-o", str(out), "-q", "--report", EXTRA[0]]) == 0
    assert "--report: 8 of 8 cells finished; nothing is trained or evaluated" in capsys.readouterr().out
    assert cli_main(["sweep", "--config", TINY_SWEEP, "-o", str(out), "-q", "grid.bits=[4]"]) == 2
    assert "grid.bits is not a sweep knob" in capsys.readouterr().err


@pytest.mark.e2e
def test_changed_eval_settings_recompute_the_cells_not_the_training(finished_sweep, tmp_path, monkeypatch):
    moved = tmp_path / "moved"  # a moved sweep folder still counts as finished (runtime.output_dir is ignored)
    shutil.copytree(finished_sweep[0], moved)
    monkeypatch.setattr(runner, "train", failing("train"))
    sweep = tiny_sweep(grid={"d_inter": [32], "num_slots": [4], "precision": ["fp16", "int4"]})
    lines = []
    run_sweep(sweep, moved, progress=False, echo=lines.append)
    assert sum("finished earlier" in line for line in lines) == 2
    fewer = tiny_sweep("base.eval.limit=3", grid={"d_inter": [32], "num_slots": [4], "precision": ["fp16", "int4"]})
    run_sweep(fewer, moved, progress=False, echo=lines.append)
    assert sum("evaluating 3 validation examples" in line for line in lines) == 2
    assert json.loads((moved / "cells" / "d32_m4_int4_g32.json").read_text())["n"] == 3


@pytest.mark.e2e
def test_a_finished_training_with_other_settings_is_refused(finished_sweep, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(finished_sweep[0], moved)
    monkeypatch.setattr(runner, "train", failing("train"))
    with pytest.raises(CheckpointError, match=r"trained with other settings \(loss.w_sem: 0.1 -> 0.2\).*delete"):
        run_sweep(tiny_sweep("base.loss.w_sem=0.2"), moved, progress=False, echo=lambda _: None)


@pytest.mark.e2e
def test_text_references_come_from_a_named_baselines_run_or_are_left_out(finished_sweep, tmp_path, monkeypatch):
    out = finished_sweep[0]
    sweep = tiny_sweep(grid={"d_inter": [32], "num_slots": [4], "precision": ["fp16"]})
    moved = tmp_path / "named"
    shutil.copytree(out / "train", moved / "train")
    monkeypatch.setattr(runner, "train", failing("train"))
    monkeypatch.setattr(references_module, "evaluate_baselines", failing("evaluate_baselines"))
    named = dataclasses.replace(sweep, baselines=str(out / "baselines"))
    run_sweep(named, moved, progress=False, echo=lambda _: None)
    stored = json.loads((moved / "table.json").read_text())
    assert stored["references"]["from"] == str(out / "baselines") and not (moved / "baselines").exists()
    assert stored["references"]["baselines"] == json.loads((out / "table.json").read_text())["references"]["baselines"]
    # other settings than the named run's: refused before any cell, saying which
    with pytest.raises(BaselineReuseError, match="max_new_tokens"):
        other = dataclasses.replace(tiny_sweep("base.eval.max_new_tokens=3", grid=dataclasses.asdict(sweep.grid)),
                                    baselines=str(out / "baselines"))
        run_sweep(other, tmp_path / "other", progress=False, echo=lambda _: None)
    assert not (tmp_path / "other" / "cells").exists()
    without = tmp_path / "without"
    shutil.copytree(out / "train", without / "train")
    run_sweep(dataclasses.replace(sweep, references=False), without, progress=False, echo=lambda _: None)
    assert json.loads((without / "table.json").read_text())["references"] is None
    assert "Text references" not in (without / "table.md").read_text() and not (without / "baselines").exists()


@pytest.mark.e2e
def test_a_baselines_folder_of_other_settings_in_the_sweep_is_recomputed(finished_sweep, tmp_path):
    out = finished_sweep[0]
    sweep = tiny_sweep(grid={"d_inter": [32], "num_slots": [4], "precision": ["fp16"]})
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    lines = []
    sweep = tiny_sweep("base.eval.max_new_tokens=3", grid={"d_inter": [32], "num_slots": [4], "precision": ["fp16"]})
    run_sweep(sweep, moved, progress=False, echo=lines.append)
    assert "does not match this sweep" in lines[0] and "recomputing" in lines[0]
    stored = json.loads((moved / "baselines" / "metrics.json").read_text())
    assert stored["run"]["config"]["eval"]["max_new_tokens"] == 3


def test_reference_points_are_each_models_modes_at_their_prompt_bytes():
    references = {"baselines": {"a": {
        "text": {"f1": 30.0, "mean_prompt_utf8_bytes": 800.0},
        "question_only": {"f1": 5.0, "mean_prompt_utf8_bytes": 80.0},
        "latent": {"f1": 9.0},  # not a text reference
    }}}
    assert reference_points(references) == [("a", "text", 800.0, 30.0), ("a", "question_only", 80.0, 5.0)]
    assert reference_points(None) == []


def test_the_plot_labels_the_front_and_shows_the_text_references():
    def row(d_inter, num_slots, size, f1):
        return {"d_inter": d_inter, "num_slots": num_slots, "precision": "fp16", "bytes": size, "n": 1000,
                "scores": {"a": {"f1": f1}}, "prompt_utf8_bytes": 800.0, "prompt_gzip_bytes": 450.0}

    rows = [row(512, 32, 30000, 7.0), row(512, 8, 8000, 7.5), row(256, 32, 16000, 6.0)]  # 256x32: beaten
    references = {"token_budget": 32, "baselines": {"a": {
        "text": {"f1": 20.0, "mean_prompt_utf8_bytes": 860.0},
        "token_budget": {"f1": 9.0, "mean_prompt_utf8_bytes": 137.0},
    }}}
    ax = pareto_figure(rows, references).axes[0]
    assert sorted(text.get_text() for text in ax.texts) == ["512×8 fp16"]  # 512x32 has more bytes and less F1
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "a reading the text (F1 20.0)" in legend and "token-budget baseline (M = 32 tokens)" in legend
    assert "a (Pareto front)" in legend and "text z replaces, UTF-8 (800 B)" in legend
    without = [t.get_text() for t in pareto_figure(rows).axes[0].get_legend().get_texts()]
    assert not any("reading the text" in label or "baseline" in label for label in without)


@pytest.mark.e2e
def test_the_table_and_plot_so_far_are_written_after_every_cell(tmp_path, monkeypatch):
    sweep = tiny_sweep(grid={"d_inter": [16], "num_slots": [2], "precision": ["fp16", "int8"]})
    original, calls = runner.evaluate_own_latent, []

    def fail_on_the_second_cell(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped by hand during the second cell
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_own_latent", fail_on_the_second_cell)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path, progress=False, echo=lambda _: None)
    markdown = (tmp_path / "table.md").read_text().split("## Text references")[0]
    assert "partial: 1 of 2 cells finished" in markdown and markdown.count("\n| ") == 1 + 1
    stored = json.loads((tmp_path / "table.json").read_text())
    assert (stored["cells_finished"], stored["cells_planned"], len(stored["rows"])) == (1, 2, 1)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_sweep(sweep, tmp_path, progress=False, echo=lambda _: None)  # the rest, then the whole table
    assert "partial" not in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "table.json").read_text())["cells_finished"] == 2


@pytest.mark.e2e
def test_an_interrupted_training_resumes_from_its_latest_checkpoint(tmp_path, monkeypatch):
    sweep = tiny_sweep(grid={"d_inter": [16], "num_slots": [2], "precision": ["int8"]})
    original = recipe.TrainingRecipe._forward_backward

    class SimulatedCrash(Exception):
        pass

    def crash_at_step_1(self, step):
        if step == 1:
            raise SimulatedCrash
        return original(self, step)

    monkeypatch.setattr(recipe.TrainingRecipe, "_forward_backward", crash_at_step_1)
    with pytest.raises(SimulatedCrash):
        run_sweep(sweep, tmp_path, progress=False, echo=lambda _: None)
    run_dir = tmp_path / "train" / "d16_m2"
    assert (run_dir / LATEST_CHECKPOINT_FILE).read_text().strip() == "step_000001"  # save_every=1 in tiny.yaml
    assert not (tmp_path / "cells").exists()
    first_step = (run_dir / "step_000001" / CHECKPOINT_WEIGHTS_FILE).read_bytes()

    monkeypatch.setattr(recipe.TrainingRecipe, "_forward_backward", original)
    trainings, lines = [], []
    monkeypatch.setattr(runner, "train", recording(runner.train, trainings))
    run_sweep(sweep, tmp_path, progress=False, echo=lines.append)
    assert trainings == [True] and any("resuming from step_000001" in line for line in lines)
    assert (run_dir / "step_000001" / CHECKPOINT_WEIGHTS_FILE).read_bytes() == first_step
    logged = [json.loads(line)["step"] for line in (run_dir / METRICS_LOG_FILE).read_text().splitlines()]
    assert logged == [0, 1]
    result = json.loads((tmp_path / "cells" / "d16_m2_int8_g32.json").read_text())
    assert result["checkpoint"]["path"].endswith("step_000002")
