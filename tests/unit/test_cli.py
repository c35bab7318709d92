"""The CLI end to end on the tiny config: artifacts of `baselines`, and one clear line for bad input."""

import json

import pytest

from interlingua.cli import main
from interlingua.constants import METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE, RESOLVED_CONFIG_FILE
from tests.conftest import SQUAD_MINI


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.e2e
def test_baselines_writes_all_artifacts(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        ["baselines", "--config", "tiny", "--limit", "3", "-o", str(out), "-q", f"data.source={SQUAD_MINI}"], capsys
    )
    assert code == 0 and "| tiny-llama | text baseline |" in stdout
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["n"] == 3
    assert set(metrics["baselines"]) == {"tiny-llama", "tiny-qwen2"}
    for modes in metrics["baselines"].values():
        assert set(modes) == {"text", "token_budget", "question_only"}
        assert all(entry["n"] == 3 and 0 <= entry["f1"] <= 100 for entry in modes.values())
    assert metrics["prompt_formats"] == {"tiny-llama": "raw", "tiny-qwen2": "chat"}
    assert metrics["run"]["config"]["eval"]["limit"] == 3 and "torch" in metrics["run"]["versions"]
    rows = [json.loads(line) for line in (out / PREDICTIONS_FILE).read_text().splitlines()]
    assert len(rows) == 2 * 3 * 3
    assert {r["mode"] for r in rows} == {"text", "token_budget", "question_only"}
    budget_rows = [r for r in rows if r["mode"] == "token_budget"]
    text_rows = {(r["model"], r["id"]): r for r in rows if r["mode"] == "text"}
    assert all(r["prompt_utf8_bytes"] <= text_rows[(r["model"], r["id"])]["prompt_utf8_bytes"] for r in budget_rows)
    assert "Smoke run" in (out / REPORT_FILE).read_text()
    assert (out / RESOLVED_CONFIG_FILE).is_file()


@pytest.mark.e2e
def test_baseline_predictions_do_not_depend_on_the_batch_size(tmp_path, capsys):
    outputs = []
    for batch_size in (1, 4):
        out = tmp_path / f"bs{batch_size}"
        run_cli(["baselines", "-c", "tiny", "--limit", "4", "-o", str(out), "-q", f"data.source={SQUAD_MINI}",
                 f"eval.batch_size={batch_size}"], capsys)
        outputs.append([json.loads(line)["prediction"] for line in (out / PREDICTIONS_FILE).read_text().splitlines()])
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train.lrr=1"], "unknown key 'train.lrr'"),
        (["models.0.spec=no-such-model"], "Known names: smollm2-135m-instruct"),
        (["data.source=/no/such/folder"], "neither a file nor a folder"),
        (["eval.batch_size=zero"], "eval.batch_size"),
    ],
)
def test_bad_input_ends_in_one_clear_line(tmp_path, capsys, args, expected):
    code, _, err = run_cli(["baselines", "-c", "tiny", "-o", str(tmp_path), "-q", f"data.source={SQUAD_MINI}", *args],
                           capsys)
    assert code == 2
    assert err.startswith("interlingua baselines: error:") and expected in err
    assert "Traceback" not in err


def test_missing_data_file_in_folder_is_named(tmp_path, capsys):
    code, _, err = run_cli(["baselines", "-c", "tiny", "-q", "-o", str(tmp_path / "o"), f"data.source={tmp_path}"],
                           capsys)
    assert code == 2 and "dev-v1.1.json" in err and str(tmp_path) in err


def test_config_command_prints_the_resolved_config(capsys):
    code, stdout, _ = run_cli(["config", "-c", "tiny", "train.lr=0.5"], capsys)
    assert code == 0 and "lr: 0.5" in stdout


def test_eval_of_a_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    code, _, err = run_cli(["eval", "--checkpoint", str(tmp_path / "nope"), "-q"], capsys)
    assert code == 2 and "not an interlingua checkpoint" in err and "Traceback" not in err


def test_overrides_may_follow_an_option(capsys):
    code, stdout, _ = run_cli(["config", "-c", "tiny", "train.lr=0.5", "-q", "train.steps=7", "data.seed=3"], capsys)
    assert code == 0 and "lr: 0.5" in stdout and "steps: 7" in stdout and "seed: 3" in stdout


def test_overrides_have_one_syntax_and_the_old_set_option_says_so(capsys):
    with pytest.raises(SystemExit):
        run_cli(["config", "-c", "tiny", "--set", "train.lr=0.5"], capsys)
    assert "--set is gone: write each override as KEY=VALUE" in capsys.readouterr().err


def test_the_full_size_config_resolves_through_extends(capsys):
    code, stdout, _ = run_cli(["config", "-c", "embedded-full"], capsys)
    assert code == 0 and "name: embedded-full" in stdout and "limit: 1000" in stdout and "extends" not in stdout


def test_a_stray_argument_is_refused(capsys):
    with pytest.raises(SystemExit):
        run_cli(["config", "-c", "tiny", "train.lr=0.5", "--nope"], capsys)
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


def test_generate_takes_key_value_overrides_among_its_message_files(tmp_path, monkeypatch):
    from pathlib import Path

    from interlingua.cli import _split_messages

    monkeypatch.chdir(tmp_path)
    Path("a=b.bin").write_bytes(b"")  # an existing file is a message even with '=' in its name
    messages, overrides = _split_messages(["m.bin", "runtime.device=cpu", "a=b.bin", "eval.limit=3"])
    assert messages == [Path("m.bin"), Path("a=b.bin")] and overrides == ["runtime.device=cpu", "eval.limit=3"]
