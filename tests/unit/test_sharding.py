"""runtime.shard_frozen: the frozen LLMs' decoder layers sharded across processes (training/sharding.py).
The recipe-level test (2 processes train like one) is in test_training.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from interlingua.config import ModelConfig, PromptFormat
from interlingua.models.frozen_lm import FrozenLM
from interlingua.training.sharding import decoder_layers, local_share
from tests.conftest import REPO_ROOT


def test_decoder_layers_are_the_repeated_blocks():
    lm = FrozenLM.load(ModelConfig("tiny-llama", PromptFormat.RAW))
    layers = decoder_layers(lm.model)
    assert layers == list(lm.model.base_model.layers)
    assert local_share(layers) == 1.0  # nothing sharded in one process


@pytest.mark.e2e
@pytest.mark.slow
def test_sharded_layers_match_whole_ones_and_stay_sharded():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "tests.workers.shard_frozen"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("sharded outputs and gradients match, local share 0.50") == 2, output[-3000:]
