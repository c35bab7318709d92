"""The public Python API: ``Interlingua.from_pretrained`` / ``save_pretrained`` / ``encode`` / ``generate``,
the README's snippet run exactly as written, the model card, and hub-id loading (offline)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import torch

from interlingua import Interlingua, InterlinguaError, Message
from interlingua.config import config_from_dict, config_to_dict, load_config, save_config
from interlingua.errors import CheckpointError, MessageInputError, WireFormatError
from interlingua.models.frozen_lm import FrozenLM
from interlingua.training.recipe import initial_model

ROOT = Path(__file__).resolve().parents[2]
SQUAD_MINI = ROOT / "tests" / "assets" / "squad_mini"
README_PATH = "runs/native/bridge/step_000000"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-snippet[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its api-snippet block"
    return match.group(1)


@pytest.fixture(scope="module")
def native_checkpoint(tmp_path_factory):
    """A tiny native, hybrid interlingua (tiny-llama + tiny-qwen2) saved where the README's snippet looks."""
    from interlingua.models.encoder import SentenceEncoder

    root = tmp_path_factory.mktemp("api")
    config = load_config("tiny", [f"data.source={SQUAD_MINI}", "interlingua.design=native",
                                  "interlingua.conditioning=hybrid"])
    lms = {m.spec: FrozenLM.load(m) for m in config.models}
    encoder = SentenceEncoder(config.encoder)
    torch.manual_seed(0)
    system = Interlingua(initial_model(config, lms, encoder), lms, encoder, config)
    step = root / README_PATH
    system.model.save_pretrained(step)
    save_config(config, step.parent / "config.yaml")
    return root, system


def test_readme_snippet_runs_as_written(native_checkpoint, monkeypatch):
    root, system = native_checkpoint
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) <= 10
    monkeypatch.chdir(root)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "README.md", "exec"), {})
    nbytes, answer = printed.getvalue().strip().splitlines()
    assert re.fullmatch(r"\d+ bytes on the wire", nbytes) and int(nbytes.split()[0]) > 100
    assert answer.startswith("[") and answer.endswith("]")
    saved = root / "my-interlingua"
    assert {"model.safetensors", "interlingua_config.json", "config.yaml", "README.md"} <= set(os.listdir(saved))
    again = Interlingua.from_pretrained(saved)  # save_pretrained's folder loads without the run folder around it
    assert again.model.fingerprint() == system.model.fingerprint()


def test_encode_and_generate_match_the_in_memory_system(native_checkpoint):
    root, system = native_checkpoint
    loaded = Interlingua.from_pretrained(root / README_PATH)
    assert not loaded.lms  # nothing loads before it is needed
    texts, questions = ["Context: the river runs north.", "Context: it rained in 1905."], ["Where?", "When?"]
    message = loaded.encode(texts, sender="tiny-llama")
    assert set(loaded.lms) == {"tiny-llama"}  # the sender alone
    assert isinstance(message, Message) and len(message) == 2 and message.sender == "tiny-llama"
    assert [row.shape[-1] for row in message.z] == [system.model.spec.interlingua.d_inter] * 2
    expected = system.generate(system.encode(texts, sender="tiny-llama"), receiver="tiny-qwen2", question=questions)
    assert loaded.generate(message, receiver="tiny-qwen2", question=questions) == expected
    int8 = loaded.encode(texts, sender="tiny-llama", precision="int8")
    assert int8.nbytes < message.nbytes / 3
    assert all(torch.allclose(a, b, atol=0.05) for a, b in zip(int8.received(), message.z))


def test_bad_input_raises_clear_errors(native_checkpoint):
    root, _ = native_checkpoint
    il = Interlingua.from_pretrained(root / README_PATH)
    with pytest.raises(MessageInputError, match="empty"):
        il.encode(["  "], sender="tiny-llama")
    with pytest.raises(MessageInputError, match="holds a question"):
        il.encode(["Context: x\nQuestion: y?\nAnswer:"], sender="tiny-llama")
    with pytest.raises(MessageInputError, match="max_prompt_tokens"):
        il.encode(["Context: " + "word " * 2000], sender="tiny-llama")
    with pytest.raises(CheckpointError, match="sender 'gpt-9' is not one of this checkpoint's models"):
        il.encode(["Context: x"], sender="gpt-9")
    message = il.encode(["Context: x"], sender="tiny-llama")
    with pytest.raises(MessageInputError, match="pass --question"):
        il.generate(message, receiver="tiny-qwen2")
    corrupt = Message(message.sender, message.z, [message.payloads[0][:-3] + b"\0\0\0"], message.precision,
                      message.checkpoint_id)
    with pytest.raises(WireFormatError, match="message 1"):
        il.generate(corrupt, receiver="tiny-qwen2", question="q?")
    with pytest.raises(CheckpointError, match="no such folder"):
        Interlingua.from_pretrained(root / "nowhere")
    assert issubclass(CheckpointError, InterlinguaError) and issubclass(WireFormatError, InterlinguaError)


def test_model_card_has_the_config_metrics_and_command(native_checkpoint, tmp_path):
    _, system = native_checkpoint
    system.save_pretrained(tmp_path / "out", metrics={"hybrid tiny-llama -> tiny-qwen2 F1": 12.5},
                           command="interlingua eval --checkpoint x --limit 1000")
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: interlingua")
    assert "| hybrid tiny-llama -> tiny-qwen2 F1 | 12.50 |" in card
    assert "interlingua eval --checkpoint x --limit 1000" in card
    assert "design: native" in card and system.model.fingerprint() in card
    stored = config_from_dict(__import__("yaml").safe_load((tmp_path / "out" / "config.yaml").read_text()))
    assert config_to_dict(stored) == config_to_dict(system.config)


def test_a_hub_id_downloads_the_repository(native_checkpoint, tmp_path, monkeypatch):
    _, system = native_checkpoint
    system.save_pretrained(tmp_path / "hub-copy")
    asked = []

    def fake_download(repo_id):
        asked.append(repo_id)
        return str(tmp_path / "hub-copy")

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    loaded = Interlingua.from_pretrained("someone/tiny-interlingua")
    assert asked == ["someone/tiny-interlingua"] and loaded.model.fingerprint() == system.model.fingerprint()

    def offline(repo_id):
        raise OSError("no network")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(CheckpointError, match="could not be fetched.*no network"):
        Interlingua.from_pretrained("someone/elsewhere")
