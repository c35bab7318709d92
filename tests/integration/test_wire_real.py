"""encode -> generate across two processes on the real embedded pair (issue #4): SmolLM2 sends the
context, Gemma receives it and reads the question as text (the embedded config is
``interlingua.conditioning=hybrid``); only the message file passes between the processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from interlingua.artifacts.layout import TRAINER_STATE_VERSION
from interlingua.codec import decode_message, message_size
from interlingua.config import config_to_dict, load_config
from interlingua.constants import TRAINER_STATE_FILE
from interlingua.data.prompts import context_prompt
from interlingua.models.interlingua import InterlinguaModel, InterlinguaSpec
from interlingua.models.system import frozen_model_info, load_frozen_models
from interlingua.wire.service import generate_from_messages
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SENDER, RECEIVER = "smollm2-135m-instruct", "gemma3-270m"
CONTEXT = context_prompt(
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."
)
QUESTION = "In what country is Normandy located?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained (seeded) interlingua for the embedded pair, saved as training saves it: the wire and
    the two processes do not depend on what z has learned."""
    config = load_config("embedded")
    lms, encoder = load_frozen_models(config, torch.device("cpu"), torch.float32)
    spec = InterlinguaSpec(models=[frozen_model_info(lm) for lm in lms.values()], encoder=config.encoder,
                           d_sem=encoder.dim, interlingua=config.interlingua)
    torch.manual_seed(0)
    step = tmp_path_factory.mktemp("run") / "step_000001"
    InterlinguaModel(spec).save_pretrained(step)
    (step / TRAINER_STATE_FILE).write_text(json.dumps(
        {"format_version": TRAINER_STATE_VERSION, "step": 1, "config": config_to_dict(config)}
    ))
    return step, config


def test_smollm2_encodes_and_gemma_answers_in_another_process(checkpoint, tmp_path):
    step, config = checkpoint
    assert config.interlingua.conditioning.value == "hybrid"
    cli, env = [sys.executable, "-m", "interlingua"], {**os.environ, "PYTHONIOENCODING": "utf-8"}
    message = tmp_path / "msg.bin"
    subprocess.run(
        cli + ["encode", "--checkpoint", str(step), "--text", CONTEXT, "--sender", SENDER, "-o", str(message),
               "compression.precision=int8"],
        check=True, cwd=REPO_ROOT, capture_output=True, env=env,
    )
    received = subprocess.run(
        cli + ["generate", "--checkpoint", str(step), "--model", RECEIVER, "--question", QUESTION, str(message)],
        check=True, cwd=REPO_ROOT, capture_output=True, env=env,
    ).stdout.decode()

    data = message.read_bytes()
    decoded = decode_message(data)
    model = InterlinguaModel.from_pretrained(step)
    assert decoded.checkpoint_id == model.fingerprint() and decoded.precision.value == "int8"
    assert tuple(decoded.z.shape) == model.z_shape and torch.isfinite(decoded.z).all()
    assert len(data) == message_size(model.z_shape, "int8", config.compression.group_size)
    # the receiving process printed what this process's Gemma answers from the same file
    (answer,) = generate_from_messages(step, [data], RECEIVER, questions=[QUESTION])
    assert received == f"{answer}\n" and "\n" not in answer
