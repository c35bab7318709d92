"""Shared fixtures. Tiny models are built once into the interlingua cache (seconds); the real
embedded models are used only by tests marked ``integration``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SQUAD_MINI = REPO_ROOT / "tests" / "assets" / "squad_mini"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def real_squad_dir() -> Path | None:
    """SQuAD v1.1 files for integration tests: $INTERLINGUA_SQUAD_DIR, else ../shared/data/squad."""
    candidates = [os.environ.get("INTERLINGUA_SQUAD_DIR"), REPO_ROOT.parent / "shared" / "data" / "squad"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "dev-v1.1.json").is_file():
            return Path(candidate)
    return None


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state. It refuses an ``Accelerator`` of another device or mixed
    precision than the first one in the process (e.g. a run with runtime.device=cpu after one on cuda)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts its training runs with a fresh accelerate state, as accelerate's own tests do."""
    yield
    reset_accelerate_state()


@pytest.fixture(scope="session")
def tiny_lms():
    """The two tiny causal LMs as FrozenLM, keyed by name."""
    from interlingua.config import ModelConfig, PromptFormat
    from interlingua.models.frozen_lm import FrozenLM

    return {
        "tiny-llama": FrozenLM.load(ModelConfig("tiny-llama", PromptFormat.RAW)),
        "tiny-qwen2": FrozenLM.load(ModelConfig("tiny-qwen2", PromptFormat.CHAT)),
    }


@pytest.fixture(scope="session")
def tiny_config():
    from interlingua.config import load_config

    return load_config("tiny", [f"data.source={SQUAD_MINI}"])
