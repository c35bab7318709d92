"""The native compression sweep (issue #17): pool_window x d_inter x precision on the native interlingua,
every shape trained from the uncompressed checkpoint, every pair beside its own shuffled-z row, the
token budget cut to each cell's receiver positions; configs/sweeps/native-tiny.yaml end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from interlingua.config import ConfigError, load_config
from interlingua.data.squad import load_squad
from interlingua.errors import CheckpointError
from interlingua.models.system import load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device
from interlingua.sweep import load_sweep, native_report, plan_sweep, run_sweep, runner
from interlingua.sweep.grid import expand_native_grid
from interlingua.sweep.native import window_budget_cases
from interlingua.sweep.native_report import flat_native_table
from interlingua.training.recipe import train
from tests.conftest import REPO_ROOT, SQUAD_MINI

NATIVE_TINY = str(REPO_ROOT / "configs" / "sweeps" / "native-tiny.yaml")
PAIRS = {f"{a} -> {b}" for a in ("tiny-llama", "tiny-qwen2") for b in ("tiny-llama", "tiny-qwen2")}


@pytest.fixture(scope="module")
def uncompressed(tmp_path_factory):
    """A 2-step tiny native checkpoint at pool_window 1, d_inter 32: what every shape starts from."""
    out = tmp_path_factory.mktemp("native-start")
    config = load_config("tiny", [f"data.source={SQUAD_MINI}", "interlingua.design=native", "interlingua.d_inter=32",
                                  "train.steps=2", "train.save_every=1", f"runtime.output_dir={out}"])
    return train(config, out, progress=False)


def native_sweep(start, *overrides):
    return load_sweep(NATIVE_TINY, [f"base.data.source={SQUAD_MINI}", f"base.train.init_from={start}", *overrides])


def test_every_shape_trains_from_the_uncompressed_checkpoint_except_its_own(uncompressed, tmp_path):
    plan = plan_sweep(native_sweep(uncompressed), tmp_path)
    assert plan.native and len(plan.cells) == 8
    shapes = {(p.cell.pool_window, p.cell.d_inter) for p in plan.cells}
    assert shapes == {(1, 32), (1, 16), (2, 32), (2, 16)}
    for planned in plan.cells:
        assert planned.train_config.train.init_from == str(uncompressed)
        assert planned.train_config.interlingua.pool_window == str(planned.cell.pool_window)
        assert planned.eval_config.compression.precision == planned.cell.precision
        own_shape = (planned.cell.pool_window, planned.cell.d_inter) == (1, 32)
        assert (planned.fixed_checkpoint == uncompressed) == own_shape
    assert len({p.train_dir for p in plan.cells if p.fixed_checkpoint is None}) == 3  # one training per shape
    assert {p.cell.name for p in plan.cells} >= {"k1_d32_fp16", "k2_d16_int4_g32"}


def test_pool_mode_is_a_shape_knob_and_k1_has_one_cell_whatever_the_mode(uncompressed, tmp_path):
    plan = plan_sweep(native_sweep(uncompressed, "grid.pool_mode=[window,prefix]", "grid.d_inter=[32]",
                                   "grid.precision=[fp16]"), tmp_path)
    assert [p.cell.name for p in plan.cells] == ["k1_d32_fp16", "k2_d32_fp16", "k2prefix_d32_fp16"]
    assert plan.cells[0].fixed_checkpoint == uncompressed  # k = 1 is the start, in either mode
    prefix = plan.cells[2]
    assert prefix.train_config.interlingua.pool_mode.value == "prefix"
    assert prefix.train_dir.name == "k2prefix_d32" and prefix.train_dir != plan.cells[1].train_dir
    assert prefix.cell.as_dict()["pool_mode"] == "prefix"
    with pytest.raises(ConfigError, match="grid.pool_mode: unknown mode 'middle'"):
        native_sweep(uncompressed, "grid.pool_mode=[middle]")
    pooled = load_sweep("tiny", [f"base.data.source={SQUAD_MINI}", "grid.pool_mode=[prefix]"])
    with pytest.raises(ConfigError, match="grid.pool_mode is a knob of the native design"):
        plan_sweep(pooled, tmp_path)


def grids_sweep(tmp_path, start, grids, *overrides):
    """native-tiny with ``grids`` (a list of knob mappings) in place of its ``grid``."""
    text = OmegaConf.load(NATIVE_TINY)
    del text["grid"]
    text["grids"] = grids
    path = tmp_path / "grids.yaml"
    OmegaConf.save(text, path)
    return load_sweep(str(path), [f"base.data.source={SQUAD_MINI}", f"base.train.init_from={start}", *overrides])


def test_grids_make_the_cells_the_union_of_their_products_one_shape_after_another(uncompressed, tmp_path):
    parts = [{"pool_window": [1, 2], "pool_mode": ["prefix"], "precision": ["fp16", "int4"]},
             {"pool_window": [2], "pool_mode": ["prefix"], "precision": ["int8", "fp16"]},  # k2prefix fp16 again
             {"pool_window": [2], "d_inter": [16], "precision": ["fp16"]}]
    sweep = grids_sweep(tmp_path, uncompressed, parts)
    plan = plan_sweep(sweep, tmp_path / "out")
    assert [p.cell.name for p in plan.cells] == [
        "k1_d32_fp16", "k1_d32_int4_g32",
        "k2prefix_d32_fp16", "k2prefix_d32_int4_g32", "k2prefix_d32_int8_g32",  # the shape's cells stay together
        "k2_d16_fp16"]
    assert plan.cells[0].fixed_checkpoint == uncompressed and plan.cells[2].fixed_checkpoint is None
    assert len({p.train_dir for p in plan.cells}) == 3
    assert runner.sweep_to_dict(sweep)["grids"][1] == {"pool_window": [2], "pool_mode": ["prefix"],
                                                       "precision": ["int8", "fp16"]}
    assert "grid" not in runner.sweep_to_dict(sweep)
    # only.KEY chooses among the cells, whichever part names them (k = 1 matches any pool_mode)
    narrowed = grids_sweep(tmp_path, uncompressed, parts, "only.precision=[fp16]", "only.pool_mode=[prefix]")
    assert [p.cell.name for p in plan_sweep(narrowed, tmp_path / "out").cells] == ["k1_d32_fp16", "k2prefix_d32_fp16"]
    assert runner.sweep_to_dict(narrowed)["only"] == {"pool_mode": ["prefix"], "precision": ["fp16"]}
    with pytest.raises(ConfigError, match="keeps none of the sweep's cells"):
        plan_sweep(grids_sweep(tmp_path, uncompressed, parts, "only.d_inter=[8]"), tmp_path / "out")
    # grid.KEY on the command line replaces the parts by the one grid it gives, the knobs it leaves out the base's
    replaced = grids_sweep(tmp_path, uncompressed, parts, "grid.pool_window=[2]", "grid.precision=[int8]")
    assert [p.cell.name for p in plan_sweep(replaced, tmp_path / "out").cells] == ["k2_d32_int8_g32"]
    assert runner.sweep_to_dict(replaced)["grid"] == {"pool_window": [2], "precision": ["int8"]}
    # on a one-grid sweep too
    single = plan_sweep(native_sweep(uncompressed, "only.pool_window=[2]", "only.precision=[int4]"), tmp_path / "one")
    assert [p.cell.name for p in single.cells] == ["k2_d32_int4_g32", "k2_d16_int4_g32"]


def test_grids_refuse_an_empty_part_a_bad_knob_and_a_grid_beside_them(uncompressed, tmp_path):
    with pytest.raises(ConfigError, match=r"grids\[1\] is empty"):
        grids_sweep(tmp_path, uncompressed, [{"pool_window": [2]}, {}])
    with pytest.raises(ConfigError, match="'prec' not in 'SweepGrid'. Did you mean: 'precision'"):
        grids_sweep(tmp_path, uncompressed, [{"pool_window": [2], "prec": ["fp16"]}])
    with pytest.raises(ConfigError, match="grid.precision: unknown precision 'int3'"):
        grids_sweep(tmp_path, uncompressed, [{"pool_window": [2]}], "only.precision=[int3]")
    with pytest.raises(ConfigError, match="only.bits is not a sweep knob"):
        grids_sweep(tmp_path, uncompressed, [{"pool_window": [2]}], "only.bits=[4]")
    both = OmegaConf.load(NATIVE_TINY)
    both["grids"] = [{"pool_window": [2]}]
    OmegaConf.save(both, tmp_path / "both.yaml")
    with pytest.raises(ConfigError, match="give grid .* or grids .*, not both"):
        load_sweep(str(tmp_path / "both.yaml"), [f"base.train.init_from={uncompressed}"])


def test_the_shipped_native_sweep_varies_every_knob_of_the_issue_around_its_frontier():
    """configs/sweeps/native.yaml: pool_window x {fp16, int4, vocab} at full width, int8 and the window mean at
    k = 4, every d_inter and the narrow wire at k = 16; 21 cells in 9 trained shapes plus the start's."""
    sweep = load_sweep("native")
    cells = expand_native_grid(sweep, sweep.run_config())
    names = [c.name for c in cells]
    assert len(names) == 21 and len({c.shape_name for c in cells}) == 10
    assert {c.pool_window for c in cells} == {1, 2, 4, 8, 16}
    assert {c.d_inter for c in cells} == {512, 256, 128, 64} and {c.d_wire for c in cells} == {None, 64}
    assert {c.precision.value for c in cells} == {"fp16", "int8", "int4", "vocab"}
    assert {c.pool_mode for c in cells if c.pool_window > 1} == {"prefix", "window"}
    for k in (2, 4, 8, 16):
        assert {f"k{k}prefix_d512_{p}" for p in ("fp16", "int4_g32", "vocab")} <= set(names)
    assert {"k4prefix_d512_int8_g32", "k4_d512_fp16", "k16prefix_d64_int4_g32", "k16prefix_d512_w64_int4_g32"} \
        <= set(names)


def test_d_wire_is_a_shape_knob_whose_null_is_the_full_width(uncompressed, tmp_path):
    plan = plan_sweep(native_sweep(uncompressed, "grid.pool_window=[1]", "grid.d_inter=[32]", "grid.d_wire=[null,8]",
                                   "grid.precision=[fp16,int4]"), tmp_path)
    assert [p.cell.name for p in plan.cells] == ["k1_d32_fp16", "k1_d32_int4_g32", "k1_d32_w8_fp16",
                                                 "k1_d32_w8_int4_g32"]  # the shapes' cells adjacent
    full, narrow = plan.cells[0], plan.cells[2]
    assert full.fixed_checkpoint == uncompressed and narrow.fixed_checkpoint is None  # a new shape trains
    assert full.train_config.interlingua.d_wire is None and narrow.train_config.interlingua.d_wire == 8
    assert narrow.train_dir.name == "k1_d32_w8" and narrow.cell.as_dict()["d_wire"] == 8
    assert "d_wire" not in full.cell.as_dict()  # the cells of earlier sweeps keep their names and records
    with pytest.raises(ConfigError, match="grid.d_wire values must be positive integers or null"):
        native_sweep(uncompressed, "grid.d_wire=[0]")
    both = plan_sweep(native_sweep(uncompressed, "grid.pool_window=[1]", "grid.d_inter=[32,8]", "grid.d_wire=[null,8]",
                                   "grid.precision=[fp16]"), tmp_path)
    assert [p.cell.name for p in both.cells] == ["k1_d32_fp16", "k1_d32_w8_fp16", "k1_d8_fp16"]  # no d8_w8
    with pytest.raises(ConfigError, match="no native cell has a d_wire below its d_inter"):
        plan_sweep(native_sweep(uncompressed, "grid.d_wire=[32]"), tmp_path)
    pooled = load_sweep("tiny", [f"base.data.source={SQUAD_MINI}", "grid.d_wire=[8]"])
    with pytest.raises(ConfigError, match="grid.d_wire is a knob of the native design"):
        plan_sweep(pooled, tmp_path)


@pytest.mark.e2e
def test_a_narrow_wire_cell_trains_and_sends_d_wire_values_per_position(finished_native_sweep, uncompressed,
                                                                        tmp_path):
    """One cell of grid.d_wire end to end: trained from the uncompressed checkpoint with its wire fitted, the
    message a quarter of the d_inter = 32 cell's values at the same positions, every pair beside its shuffled row."""
    lines = []
    run_sweep(native_sweep(uncompressed, "grid.pool_window=[2]", "grid.pool_mode=[prefix]", "grid.d_inter=[32]",
                           "grid.d_wire=[8]", "grid.precision=[fp16]"), tmp_path, progress=False, echo=lines.append)
    row = json.loads((tmp_path / "table.json").read_text())["rows"][0]
    assert row["cell"] == "k=2 prefix d=32 wire 8 fp16" and row["d_wire"] == 8
    assert set(row["pairs"]) == PAIRS and all("shuffled_f1" in v for v in row["pairs"].values())
    wide = {r["cell"]: r for r in json.loads((finished_native_sweep[0] / "table.json").read_text())["rows"]}
    assert row["z_positions"] == pytest.approx(wide["k=2 d=32 fp16"]["z_positions"])
    assert row["bytes"] < 0.3 * wide["k=2 d=32 fp16"]["bytes"]
    checkpoint = json.loads((tmp_path / "cells" / "k2prefix_d32_w8_fp16.json").read_text())["checkpoint"]["path"]
    assert json.loads((Path(checkpoint) / "wire_fit.json").read_text())["senders"] == ["tiny-llama", "tiny-qwen2"]


def test_vocab_is_a_precision_without_groups_that_no_narrowed_wire_gets(uncompressed, tmp_path):
    plan = plan_sweep(native_sweep(uncompressed, "grid.pool_window=[1]", "grid.d_inter=[32]", "grid.d_wire=[null,8]",
                                   "grid.precision=[int4,vocab]"), tmp_path)
    assert [p.cell.name for p in plan.cells] == ["k1_d32_int4_g32", "k1_d32_vocab", "k1_d32_w8_int4_g32"]
    vocab = plan.cells[1]
    assert vocab.cell.label.endswith("vocab") and vocab.cell.as_dict()["group_size"] is None
    assert vocab.eval_config.compression.precision.value == "vocab"
    assert vocab.fixed_checkpoint == uncompressed  # a precision of the start's own shape: evaluated as it is


@pytest.mark.e2e
def test_a_vocab_cell_sends_ids_and_a_norm_per_position(uncompressed, tmp_path):
    """The k = 1 vocab cell end to end: the start evaluated as it is, every pair beside its shuffled row, the
    message 2 B of norm plus the ids' bits per position, far below the fp16 cell at the same positions."""
    run_sweep(native_sweep(uncompressed, "grid.pool_window=[1]", "grid.d_inter=[32]", "grid.precision=[fp16,vocab]"),
              tmp_path, progress=False, echo=lambda line: None)
    rows = {r["cell"]: r for r in json.loads((tmp_path / "table.json").read_text())["rows"]}
    vocab, fp16 = rows["k=1 d=32 vocab"], rows["k=1 d=32 fp16"]
    assert set(vocab["pairs"]) == PAIRS and all("shuffled_f1" in v for v in vocab["pairs"].values())
    assert vocab["z_positions"] == pytest.approx(fp16["z_positions"])
    frame = 19 + 2 * 4 + 4 + 4 + 4  # header, shape, two length fields, CRC
    per_position = (vocab["bytes"] - frame) / vocab["z_positions"]
    assert 2 + 2 * 8 / 8 <= per_position <= 2 + 2 * 17 / 8 + 1  # two tiny vocabularies of 2**8 .. 2**17 ids
    assert vocab["bytes"] < 0.2 * fp16["bytes"]


def test_a_native_sweep_is_refused_without_a_start_or_with_the_pooled_knob(uncompressed, tmp_path):
    with pytest.raises(ConfigError, match="base.train.init_from"):
        plan_sweep(load_sweep(NATIVE_TINY, [f"base.data.source={SQUAD_MINI}"]), tmp_path)
    with pytest.raises(ConfigError, match="base.train.init_from=.*missing"):
        plan_sweep(native_sweep(tmp_path / "missing"), tmp_path)
    with pytest.raises(ConfigError, match="hybrid conditioning only"):
        plan_sweep(native_sweep(uncompressed, "base.eval.conditionings=[hybrid,full]"), tmp_path)
    with pytest.raises(ConfigError, match="drop base.eval.decoders"):
        plan_sweep(native_sweep(uncompressed, "base.eval.decoders=[linear]"), tmp_path)
    with pytest.raises(ConfigError, match="grid.num_slots is a knob of the pooled designs"):
        plan_sweep(native_sweep(uncompressed, "grid.num_slots=[4,2]"), tmp_path)
    pooled = load_sweep("tiny", [f"base.data.source={SQUAD_MINI}", "grid.pool_window=[1,2]"])
    with pytest.raises(ConfigError, match="grid.pool_window is a knob of the native design"):
        plan_sweep(pooled, tmp_path)


def test_the_token_budget_keeps_as_many_context_tokens_as_the_receivers_own_z_has_positions():
    config = load_config("tiny", [f"data.source={SQUAD_MINI}", "interlingua.design=native"])
    device = resolve_device("cpu")
    lms, _ = load_frozen_models(config, device, frozen_dtype(device, config.runtime.dtype))
    examples = load_squad("validation", SQUAD_MINI, 3, 0)
    tokenizers = [lm.tokenizer for lm in lms.values()]
    for lm in lms.values():
        whole = window_budget_cases(lm, examples, tokenizers, 1, config)
        quarter = window_budget_cases(lm, examples, tokenizers, 4, config)
        for (case1, m1), (case4, m4) in zip(whole, quarter):
            assert m4["context_positions"] == math.ceil(m1["context_positions"] / 4)
            assert case4.prompt.text.endswith(case1.prompt.text.split("\nQuestion:")[-1])  # the question stays whole
            context = case4.prompt.text.split("\nQuestion:")[0]
            assert len(lm.tokenizer(context, add_special_tokens=False).input_ids) <= m4["context_positions"] + 1
            assert case4.prompt.context_truncated and len(case4.token_ids) < len(case1.token_ids)


@pytest.fixture(scope="module")
def finished_native_sweep(uncompressed, tmp_path_factory):
    out = tmp_path_factory.mktemp("native-sweep")
    trainings, lines = [], []
    original = runner.train

    def recording(config, run_dir, **kwargs):
        trainings.append((config.interlingua.pool_window, config.interlingua.d_inter, config.train.init_from))
        return original(config, run_dir, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "train", recording)
        run_sweep(native_sweep(uncompressed), out, progress=False, echo=lines.append)
    return out, trainings, lines


@pytest.mark.e2e
def test_the_native_sweep_writes_every_pair_with_its_shuffled_row_and_the_token_budget(finished_native_sweep,
                                                                                         uncompressed):
    out, trainings, lines = finished_native_sweep
    assert sorted(trainings) == [("1", 16, str(uncompressed)), ("2", 16, str(uncompressed)),
                                 ("2", 32, str(uncompressed))]
    table = json.loads((out / "table.json").read_text())
    assert table["cells_finished"] == table["cells_planned"] == 8
    rows = {row["cell"]: row for row in table["rows"]}
    for row in rows.values():
        assert set(row["pairs"]) == PAIRS  # cross pairs included, each with its own shuffled row
        assert all("shuffled_f1" in v and "share_of_text" in v for v in row["pairs"].values())
        assert set(row["token_budget"]) == {"tiny-llama", "tiny-qwen2"} and row["n"] == 4
    k1, k2 = rows["k=1 d=32 fp16"], rows["k=2 d=32 fp16"]
    assert k2["z_positions"] == pytest.approx(k1["z_positions"] / 2, abs=1)
    assert rows["k=2 d=32 int4 g32"]["bytes"] < k2["bytes"] < k1["bytes"]
    assert rows["k=1 d=16 fp16"]["bytes"] < k1["bytes"]
    assert not k1["trained_in_sweep"] and k2["trained_in_sweep"]
    budget = table["token_budget"]
    assert set(budget) == {"1", "2"}  # JSON keys
    for model in ("tiny-llama", "tiny-qwen2"):
        assert budget["2"][model]["mean_context_positions"] < budget["1"][model]["mean_context_positions"]
    md = (out / "table.md").read_text()
    assert "Native compression sweep — smoke run (n < 1000)" in md and "tiny-llama -> tiny-qwen2 F1 (shuffled)" in md
    assert (out / "frontier.png").stat().st_size > 10_000
    assert not list((out / "cells").glob("*.passes"))  # the kept passes go once a cell is written
    assert any("(sh " in line for line in lines)


@pytest.mark.e2e
def test_a_second_native_run_recomputes_nothing(finished_native_sweep, uncompressed, monkeypatch):
    out, _, _ = finished_native_sweep

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(runner, "train", fail)
    monkeypatch.setattr(runner, "evaluate_native_cell", fail)
    monkeypatch.setattr(runner, "window_budget_references", lambda *a, **k: json_rows(out))
    lines = []
    run_sweep(native_sweep(uncompressed), out, progress=False, echo=lines.append)
    assert sum("finished earlier" in line for line in lines) == 8


@pytest.mark.e2e
def test_report_writes_the_finished_cells_and_computes_nothing(finished_native_sweep, uncompressed, monkeypatch,
                                                                tmp_path):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished_native_sweep[0], out)
    for path in (out / "cells").glob("k2_*"):
        path.unlink()
    shutil.rmtree(out / "window_budget")

    def fail(*args, **kwargs):
        raise AssertionError("computed")

    monkeypatch.setattr(runner, "train", fail)
    monkeypatch.setattr(runner, "evaluate_native_cell", fail)
    lines = []
    run_sweep(native_sweep(uncompressed), out, progress=False, echo=lines.append, report_only=True)
    table = json.loads((out / "table.json").read_text())
    assert (table["cells_finished"], table["cells_planned"]) == (4, 8)
    assert {row["cell"] for row in table["rows"]} == {"k=1 d=32 fp16", "k=1 d=32 int4 g32", "k=1 d=16 fp16",
                                                      "k=1 d=16 int4 g32"}
    assert set(table["token_budget"]) == {"1"}  # the text cut only for the finished cells' window
    assert "partial" in (out / "table.md").read_text().lower()
    assert any("4 of 8 cells finished" in line for line in lines)
    for path in (out / "cells").glob("*.json"):
        path.unlink()
    with pytest.raises(ConfigError, match="none of the 8 planned cells is finished"):
        run_sweep(native_sweep(uncompressed), out, progress=False, echo=lines.append, report_only=True)


@pytest.mark.e2e
def test_every_cell_and_trained_shape_records_its_start_and_another_start_is_not_reused(finished_native_sweep,
                                                                                       uncompressed, tmp_path):
    """A start checkpoint retrained under the same path is another start: its cells are recomputed and the shapes
    trained from the old one are refused, while cells from before start records are kept and flagged."""
    from interlingua.models.interlingua import InterlinguaModel, weights_fingerprint

    out = finished_native_sweep[0]
    start = {"path": str(uncompressed), "fingerprint": weights_fingerprint(uncompressed)}
    assert start["fingerprint"] == InterlinguaModel.from_pretrained(uncompressed).fingerprint()
    for path in (out / "cells").glob("*.json"):
        assert json.loads(path.read_text())["start"] == start
    assert len(list((out / "train").glob(f"*/{runner.START_FILE}"))) == 3  # the trained shapes, not the start's own
    assert f"Every cell starts from the checkpoint with weights fingerprint {start['fingerprint']}" in \
        (out / "table.md").read_text()

    plan = plan_sweep(native_sweep(uncompressed), out)
    trained = next(p for p in plan.cells if p.fixed_checkpoint is None)
    cell = out / "cells" / f"{trained.cell.name}.json"
    other = {**start, "fingerprint": "0" * 16}
    assert runner._finished_result(cell, trained, start) is not None
    assert runner._finished_result(cell, trained, other) is None
    unrecorded = tmp_path / cell.name
    unrecorded.write_text(json.dumps({k: v for k, v in json.loads(cell.read_text()).items() if k != "start"}))
    assert runner._finished_result(unrecorded, trained, other) is not None  # kept; the table says so
    runner._check_start(trained.train_dir, start)
    with pytest.raises(CheckpointError, match=r"trained from other start weights .* delete .* to retrain"):
        runner._check_start(trained.train_dir, other)
    rows = [{"cell": "a", "start_fingerprint": start["fingerprint"]}, {"cell": "b", "start_fingerprint": None}]
    lines = " ".join(native_report._start_lines(rows))
    assert "Start checkpoints differ" in lines and "not recorded (computed before start records were kept): b" in lines


def test_a_damaged_start_record_is_refused_with_what_to_do(tmp_path):
    start = {"path": "runs/start", "fingerprint": "0" * 16}
    runner._check_start(tmp_path, start)  # no record: not begun
    (tmp_path / runner.START_FILE).write_text(json.dumps(start))
    runner._check_start(tmp_path, start)
    for damaged in ('{"path": "runs/st', "[1, 2]", "\udcff"):
        (tmp_path / runner.START_FILE).write_text(damaged, errors="surrogateescape")
        with pytest.raises(CheckpointError, match=r"start.json is damaged .* delete .* to retrain"):
            runner._check_start(tmp_path, start)


def json_rows(out):
    return [json.loads(line) for path in sorted((out / "window_budget").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def test_the_native_table_puts_own_pairs_first_and_states_the_flow():
    row = {"cell": "k=4 d=512 int8 g32", "n": 1000, "z_positions": 41.5, "bytes": 21000.0, "text_gzip_bytes": 440.0,
           "pairs": {"a -> b": {"f1": 30.0, "shuffled_f1": 6.0, "own": False, "flows": True},
                     "a -> a": {"f1": 35.0, "shuffled_f1": 5.0, "own": True, "flows": True}},
           "token_budget": {"a": {"f1": 12.0}}, "every_pair_flows": True}
    header, values = flat_native_table([row])
    assert header[5:7] == ["a -> a F1 (shuffled)", "a -> b F1 (shuffled)"]
    assert values[0][5:] == ["35.0 (5.0)", "30.0 (6.0)", 12.0, "yes"]


def test_the_receiver_ttft_of_each_pool_window_joins_its_cells(tmp_path):
    from interlingua.sweep.native_report import ttft_speedups

    with pytest.raises(ConfigError, match="scripts/native_ttft.sh"):
        ttft_speedups(tmp_path)
    for k, speedup in ((1, 1.1), (4, 3.4)):
        (tmp_path / f"k{k}.json").write_text(json.dumps({"design": "native", "examples": 32, "models": {
            "a": {"pool_window": k, "speedup": speedup, "batched_speedup": speedup + 1}}}))
    (tmp_path / "pooled.json").write_text(json.dumps({"design": "pooled", "models": {"a": {}}}))
    (tmp_path / "all.json").write_text(json.dumps({"design": "native", "examples": 32, "models": {
        "a": {"pool_window": "all", "speedup": 9.0, "batched_speedup": 9.0}}}))
    ttft = ttft_speedups(tmp_path)
    assert ttft == {1: {"a": {"speedup": 1.1, "batched_speedup": 2.1, "examples": 32}},
                    4: {"a": {"speedup": 3.4, "batched_speedup": 4.4, "examples": 32}}}
    row = {"cell": "k=4 d=512 fp16", "n": 1000, "z_positions": 41.5, "bytes": 21000.0, "text_gzip_bytes": 440.0,
           "pairs": {"a -> a": {"f1": 35.0, "shuffled_f1": 5.0, "own": True, "flows": True}},
           "token_budget": {"a": {"f1": 12.0}}, "every_pair_flows": True, "ttft_speedup": {"a": 3.4}}
    header, values = flat_native_table([row])
    assert header[-1] == "TTFT speedup a" and values[0][-1] == "3.40x"
