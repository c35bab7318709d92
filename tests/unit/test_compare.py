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
