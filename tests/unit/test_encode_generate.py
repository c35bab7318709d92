"""Sender and receiver apart: `encode` (text -> message bytes) and `generate` (bytes -> answer) on the tiny
models with random-initialised checkpoints, against the in-process path through Interlingua."""

import json
import os
import subprocess
import sys

import pytest
import torch

from interlingua.artifacts.layout import TRAINER_STATE_VERSION
from interlingua.cli import main
from interlingua.codec import WireFormatError, decode_message
from interlingua.config import config_to_dict
from interlingua.constants import TRAINER_STATE_FILE
from interlingua.data.prompts import text_prompt
from interlingua.models.frozen_lm import FrozenLM
from interlingua.models.interlingua import InterlinguaModel, InterlinguaSpec
from interlingua.models.system import Interlingua, frozen_model_info
from interlingua.wire.service import encode_texts, generate_from_messages, read_prompt_file
from tests.conftest import REPO_ROOT

SENDER, RECEIVER = "tiny-qwen2", "tiny-llama"  # cross-decoding; with these weights the two answers differ
TEXTS = [
    text_prompt("The Eiffel Tower was finished in 1889 in Paris.", "When was the tower finished?"),
    text_prompt("Marie Curie won two Nobel prizes.", "How many Nobel prizes did Curie win?"),
]


@pytest.fixture(scope="module")
def tiny_encoder():
    from interlingua.models.encoder import SentenceEncoder

    return SentenceEncoder("tiny-encoder")


def save_checkpoint(path, tiny_lms, tiny_encoder, tiny_config, seed):
    """``run/step_000002/`` with weights and trainer_state.json holding the config, as training writes it."""
    spec = InterlinguaSpec(
        models=[frozen_model_info(tiny_lms[key]) for key in ("tiny-llama", "tiny-qwen2")], encoder="tiny-encoder",
        d_sem=tiny_encoder.dim, interlingua=tiny_config.interlingua,
    )
    torch.manual_seed(seed)
    step = path / "run" / "step_000002"
    InterlinguaModel(spec).save_pretrained(step)
    (step / TRAINER_STATE_FILE).write_text(json.dumps(
        {"format_version": TRAINER_STATE_VERSION, "step": 2, "config": config_to_dict(tiny_config)}
    ))
    return step


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_lms, tiny_encoder, tiny_config):
    return [save_checkpoint(tmp_path_factory.mktemp(f"ck{seed}"), tiny_lms, tiny_encoder, tiny_config, seed)
            for seed in (0, 1)]


@pytest.fixture(scope="module")
def direct(checkpoints, tiny_lms, tiny_encoder, tiny_config):
    """z of TEXTS read by SENDER and RECEIVER's answers, in one process, without the wire."""
    system = Interlingua(InterlinguaModel.from_pretrained(checkpoints[0]).eval(), tiny_lms, tiny_encoder)
    with torch.no_grad():
        z = system.encode_z(SENDER, TEXTS)  # (2, d_inter)
        soft = system.soft_prompt(RECEIVER, z)
    answers = tiny_lms[RECEIVER].generate_from_soft_prompt(soft, tiny_config.eval.max_new_tokens)
    assert len(set(answers)) == 2  # else comparing answers could not tell the two messages apart
    return z, answers


@pytest.fixture
def loads(monkeypatch):
    """The frozen models a call loads: LLM specs, and "encoder" for the sentence encoder."""
    import interlingua.models.encoder as encoder_module

    loaded, load_lm, encoder_class = [], FrozenLM.load, encoder_module.SentenceEncoder

    def record_lm(cls, config, **kwargs):
        loaded.append(config.spec)
        return load_lm(config, **kwargs)

    def record_encoder(*args, **kwargs):
        loaded.append("encoder")
        return encoder_class(*args, **kwargs)

    monkeypatch.setattr(FrozenLM, "load", classmethod(record_lm))
    monkeypatch.setattr(encoder_module, "SentenceEncoder", record_encoder)
    return loaded


def test_fp32_round_trip_equals_decoding_z_directly(checkpoints, direct, loads):
    z, answers = direct
    messages = encode_texts(checkpoints[0], TEXTS, sender=SENDER)
    assert loads == [SENDER, "encoder"]  # no receiver on the sending side
    for message, row in zip(messages, z):
        assert torch.equal(decode_message(message).z, row)
    assert generate_from_messages(checkpoints[0], messages, RECEIVER) == answers
    assert loads == [SENDER, "encoder", RECEIVER]  # the receiver alone: no sender, no encoder, no text


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantised_messages_are_smaller_and_decode(checkpoints, precision):
    fp32 = encode_texts(checkpoints[0], TEXTS[:1])  # default sender: the checkpoint's first model
    quantised = encode_texts(checkpoints[0], TEXTS[:1], overrides=[f"compression.precision={precision}"])
    assert len(quantised[0]) < len(fp32[0]) and decode_message(quantised[0]).precision.value == precision
    answers = generate_from_messages(checkpoints[0], quantised, RECEIVER)
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_a_message_from_another_checkpoint_is_rejected(checkpoints):
    message = encode_texts(checkpoints[1], TEXTS[:1])[0]
    ids = [InterlinguaModel.from_pretrained(ck).fingerprint() for ck in checkpoints]
    with pytest.raises(WireFormatError, match=f"message 1: wrong checkpoint.*{ids[1]}.*receiver has {ids[0]}"):
        generate_from_messages(checkpoints[0], [message], RECEIVER)


def test_prompt_file_names_each_message_by_id_or_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"text": "Question: Why?\\nAnswer:"}\n\n{"id": "q-7", "context": "C.", "question": "Q?"}\n')
    prompts = read_prompt_file(path)
    expected = [("000001", "Question: Why?\nAnswer:"), ("q-7", text_prompt("C.", "Q?"))]
    assert [(p.name, p.text) for p in prompts] == expected
    path.write_text('{"text": "a"}\n{"question": "no context"}\n')
    with pytest.raises(ValueError, match='prompts.jsonl:2: expected an object with a "text" field'):
        read_prompt_file(path)


# ---- the CLI: bad input is one line on stderr, exit 2 ------------------------------------------
@pytest.fixture(scope="module")
def message_file(checkpoints, tmp_path_factory):
    path = tmp_path_factory.mktemp("msg") / "msg.bin"
    path.write_bytes(encode_texts(checkpoints[0], TEXTS[:1])[0])
    return path


def corrupted(message_file, tmp_path):
    data = bytearray(message_file.read_bytes())
    data[40] ^= 0xFF  # a payload byte: only the CRC can tell
    path = tmp_path / "corrupted.bin"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "args, expected",
    [
        (["encode", "--text", " \n ", "-o", "{tmp}/m.bin"], "the --text prompt is empty"),
        (["encode", "--text", "word " * 40, "-o", "{tmp}/m.bin", "data.max_prompt_tokens=32"],
         "over data.max_prompt_tokens=32; shorten it"),
        (["encode", "--text", "Hi", "--sender", "gpt-9", "-o", "{tmp}/m.bin"],
         "sender 'gpt-9' is not one of this checkpoint's models: tiny-llama, tiny-qwen2"),
        (["generate", "--model", "gpt-9", "{msg}"],
         "receiver 'gpt-9' is not one of this checkpoint's models: tiny-llama, tiny-qwen2"),
        (["generate", "--model", RECEIVER, "{corrupted}"], "corrupted.bin: checksum mismatch"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(checkpoints, message_file, tmp_path, capsys, args, expected):
    paths = {"tmp": tmp_path, "msg": message_file, "corrupted": corrupted(message_file, tmp_path)}
    argv = [args[0], "--checkpoint", str(checkpoints[0])] + [a.format(**paths) for a in args[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"interlingua {args[0]}: error: ") and expected in err


@pytest.mark.e2e
@pytest.mark.slow
def test_sender_and_receiver_in_separate_processes(checkpoints, direct, tmp_path):
    """`encode --input` and `generate` as two processes: only the message files pass between them."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": TEXTS[0]}) + "\n" + json.dumps({"id": "curie", "text": TEXTS[1]}) + "\n")
    cli, env = [sys.executable, "-m", "interlingua"], {**os.environ, "PYTHONIOENCODING": "utf-8"}
    ck = ["--checkpoint", str(checkpoints[0])]
    out = tmp_path / "messages"
    subprocess.run(cli + ["encode", *ck, "--input", str(prompts), "--sender", SENDER, "-o", str(out)],
                   check=True, cwd=REPO_ROOT, capture_output=True, env=env)
    files = [out / "000001.bin", out / "curie.bin"]
    received = subprocess.run(cli + ["generate", *ck, "--model", RECEIVER, *map(str, files)],
                              check=True, cwd=REPO_ROOT, capture_output=True, env=env).stdout
    answers = direct[1]
    # bytes, not lines: a random tiny model's answer may hold control characters that splitlines() splits on
    assert received == "".join(f"{path}\t{answer}\n" for path, answer in zip(files, answers)).encode()
