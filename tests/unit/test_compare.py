"""`interlingua compare`: the ablation table and curves from finished run folders."""

from __future__ import annotations

import json
import shutil

import pytest

from interlingua.cli import main
from interlingua.eval.compare import CompareError, compare_runs, variant_row
from tests.conftest import SQUAD_MINI

pytestmark = pytest.mark.e2e  # every test reads two finished `interlingua run` folders

@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two tiny runs (train 2 steps + evaluate), the second with the reconstruction stage."""
    root = tmp_path_factory.mktemp("compare")
    common = ["--config", "tiny", "-q", f"data.source={SQUAD_MINI}", "train.steps=2", "train.save_every=2",
              f"cache.dir={root / 'cache'}"]
    assert main(["run", "-o", str(root / "a"), *common]) == 0
    assert main(["run", "-o", str(root / "b"), *common, "pretrain.steps=1", "pretrain.warmup_steps=0",
                 "--limit", "4"]) == 0
    return root


def test_rows_read_the_evaluation(finished_runs):
    row = variant_row("b", finished_runs / "b")
    metrics = json.loads(next((finished_runs / "b").glob("eval/step_*/metrics.json")).read_text())
    assert row["n"] == 4 and row["steps"] == 3  # pretrain steps count in the budget
    for model, values in row["models"].items():
        assert values["latent_f1"] == metrics["latent"]["scores"][model]["latent"]["f1"]
        assert values["question_only_f1"] == metrics["baselines"][model]["question_only"]["f1"]
        assert set(values["cross_f1_from"]) == set(row["models"]) - {model}
        assert values["changed_by_shuffle"] == metrics["latent"]["collapse"][model]["changed_by_shuffle_share"]


def test_results_written_before_the_shuffle_share_recompute_it_from_their_predictions(finished_runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(finished_runs / "b", old)
    metrics_path = next(old.glob("eval/step_*/metrics.json"))
    metrics = json.loads(metrics_path.read_text())
    stored = {m: c.pop("changed_by_shuffle_share") for m, c in metrics["latent"]["collapse"].items()}
    metrics_path.write_text(json.dumps(metrics))
    assert {m: v["changed_by_shuffle"] for m, v in variant_row("old", old)["models"].items()} == stored
    (metrics_path.parent / "predictions.jsonl").unlink()
    assert all(v["changed_by_shuffle"] is None for v in variant_row("old", old)["models"].values())


def test_compare_writes_table_json_and_plot(finished_runs, tmp_path, capsys):
    out = tmp_path / "ablation"
    assert main(["compare", f"seed={finished_runs / 'a'}", f"recon={finished_runs / 'b'}", "-o", str(out)]) == 0
    table = (out / "ablation.md").read_text()
    assert table.count("| seed |") == 2 and table.count("| recon |") == 2  # one line per model
    assert [r["variant"] for r in json.loads((out / "ablation.json").read_text())] == ["seed", "recon"]
    assert (out / "ablation_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_unfinished_run_and_bad_argument_are_clear_errors(finished_runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_runs / "a", unfinished, ignore=shutil.ignore_patterns("eval"))
    with pytest.raises(CompareError, match="has the run finished"):
        compare_runs({"x": unfinished}, tmp_path / "o")
    assert main(["compare", "no-equals-sign", "-o", str(tmp_path / "o")]) == 2
    assert "NAME=RUN_DIR" in capsys.readouterr().err


@pytest.fixture(scope="module")
def native_runs(tmp_path_factory):
    """Two tiny native runs (train 1 step + evaluate hybrid on 4 examples), the second without KD."""
    root = tmp_path_factory.mktemp("compare-native")
    common = ["--config", "tiny", "-q", "interlingua.design=native", f"data.source={SQUAD_MINI}", "train.steps=1",
              "train.save_every=1", "eval.conditionings=[hybrid]", "--limit", "4", f"cache.dir={root / 'cache'}"]
    assert main(["run", "-o", str(root / "all"), *common]) == 0
    assert main(["run", "-o", str(root / "no-kd"), *common, "loss.w_kd=0"]) == 0
    return root


def test_native_rows_are_per_pair_with_the_paired_difference_from_the_first_variant(native_runs, tmp_path):
    from interlingua.eval.compare import paired_difference

    rows = [variant_row(name, native_runs / name) for name in ("all", "no-kd")]
    metrics = json.loads(next((native_runs / "all").glob("eval/step_*/metrics.json")).read_text())
    flow = metrics["native"]["information_flow"]["hybrid"]
    assert set(rows[0]["pairs"]) == {f"hybrid {pair}" for pair in flow} and len(flow) == 4  # 2 senders x 2 receivers
    for pair, values in flow.items():
        assert rows[0]["pairs"][f"hybrid {pair}"]["latent_f1"] == values["latent_f1"]
        assert rows[0]["pairs"][f"hybrid {pair}"]["shuffled_f1"] == values["shuffled_f1"]
        assert len(rows[0]["pairs"][f"hybrid {pair}"]["_example_f1"]) == 4
    assert rows[0]["loss_weights"]["w_kd"] > 0 and rows[1]["loss_weights"]["w_kd"] == 0

    out = tmp_path / "ablation"
    compare_runs({name: native_runs / name for name in ("all", "no-kd")}, out)
    table = (out / "ablation.md").read_text()
    assert table.count("| all |") == 4 and table.count("| no-kd |") == 4  # one line per pair
    assert "ΔF1 vs all" in table
    assert "_example_f1" not in (out / "ablation.json").read_text()  # per-example values stay out of the JSON

    mean, error, n = paired_difference({"a": 0.5, "b": 1.0, "c": 0.0}, {"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0})
    assert n == 3 and mean == pytest.approx(50 / 3) and error == pytest.approx(50 / 3)


def test_native_and_pooled_runs_are_not_mixed_in_one_table(native_runs, finished_runs, tmp_path):
    with pytest.raises(CompareError, match="native runs with native runs only"):
        compare_runs({"native": native_runs / "all", "pooled": finished_runs / "a"}, tmp_path / "o")


def test_compare_reads_a_later_evaluation_folder_inside_each_run(native_runs, tmp_path):
    """`interlingua eval --limit N -o RUN/eval-nN` then `compare --eval-dir eval-nN` (the n = 1000 ablation)."""
    runs = {}
    for name in ("all", "no-kd"):
        copy = tmp_path / name
        shutil.copytree(native_runs / name, copy)
        shutil.move(str(next((copy / "eval").glob("step_*"))), str(copy / "eval-n4"))
        shutil.rmtree(copy / "eval")
        runs[name] = copy
    with pytest.raises(CompareError, match="eval/metrics.json"):
        compare_runs(runs, tmp_path / "o")
    assert main(["compare", *(f"{k}={v}" for k, v in runs.items()), "--eval-dir", "eval-n4",
                 "-o", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "ablation.md").read_text().count("| no-kd |") == 4
