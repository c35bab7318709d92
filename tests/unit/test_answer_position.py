"""The kept / dropped answer split of a cut message (eval/answer_position.py, scripts/answer_position.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from interlingua.data.squad import SquadExample
from interlingua.eval.answer_position import DROPPED, KEPT, answer_position_split, answer_side, kept_characters
from interlingua.models.registry import resolve_model_path
from tests.conftest import REPO_ROOT, SQUAD_MINI

CONTEXT = "The river flows through the old city."


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))  # about one token per character


def example(answers, id_="q1"):
    return SquadExample(id_, "t", CONTEXT, "Which?", tuple(answers))


def test_kept_characters_follow_the_first_ceil_t_over_k_tokens(tokenizer):
    text = "Context: " + CONTEXT
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    for window in (1, 2, 4, 7):
        keep = -(-len(offsets) // window)
        assert kept_characters(tokenizer, text, window) == offsets[keep - 1][1]
    assert kept_characters(tokenizer, text, 1) == len(text)


def test_an_answer_is_kept_when_it_ends_inside_the_cut(tokenizer):
    assert answer_side(example(["river"]), tokenizer, 1) == KEPT
    assert answer_side(example(["river"]), tokenizer, 2) == KEPT  # "Context: The river flow…" is kept
    assert answer_side(example(["old city"]), tokenizer, 2) == DROPPED
    assert answer_side(example(["old city", "river"]), tokenizer, 2) == KEPT  # the earliest gold answer counts
    assert answer_side(example(["the sea"]), tokenizer, 2) is None  # not in the context


def test_the_split_groups_latent_rows_by_sender_and_text_rows_by_model(tokenizer):
    examples = {"a": example(["river"], "a"), "b": example(["old city"], "b"), "c": example(["sea"], "c")}
    rows = [
        {"id": "a", "model": "r", "sender": "s", "mode": "latent", "f1": 1.0},
        {"id": "b", "model": "r", "sender": "s", "mode": "latent", "f1": 0.5},
        {"id": "c", "model": "r", "sender": "s", "mode": "latent", "f1": 0.0},
        {"id": "b", "model": "r", "mode": "window_budget", "f1": 0.0},
    ]
    split = answer_position_split(rows, examples, {"s": tokenizer, "r": tokenizer}, window=2)
    assert split["s -> r latent"] == {KEPT: {"n": 1, "f1": 100.0}, DROPPED: {"n": 1, "f1": 50.0},
                                      "no_answer_in_context": 1}
    assert split["r window_budget"][DROPPED] == {"n": 1, "f1": 0.0} and split["r window_budget"][KEPT]["f1"] is None


def test_the_script_reads_prediction_files_and_refuses_unknown_ids(tmp_path):
    from interlingua.data.squad import load_squad

    first = load_squad("validation", str(SQUAD_MINI))[0]
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"id": first.id, "model": "tiny-llama", "sender": "tiny-qwen2", "mode": "latent",
                                "f1": 1.0}) + "\n")
    script = [sys.executable, str(REPO_ROOT / "scripts" / "answer_position.py"), "--data", str(SQUAD_MINI)]
    done = subprocess.run([*script, "--window", "4", str(path), "--json", str(tmp_path / "split.json")],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "tiny-qwen2 -> tiny-llama latent" in done.stdout
    assert json.loads((tmp_path / "split.json").read_text())["window"] == 4
    path.write_text(json.dumps({"id": "nope", "model": "tiny-llama", "mode": "latent", "f1": 0.0}) + "\n")
    done = subprocess.run([*script, "--window", "4", str(path)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 2 and "not SQuAD validation examples" in done.stderr
