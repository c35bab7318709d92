"""Where a training run keeps its checkpoints, read by training, evaluation and the sweep alike:

    out/step_000050/   one checkpoint (interlingua_config.json, model.safetensors, trainer_state.json, …)
    out/latest         names the newest complete checkpoint folder
"""

from __future__ import annotations

import json
from pathlib import Path

from interlingua.constants import (
    CHECKPOINT_DIR_FORMAT,
    LATEST_CHECKPOINT_FILE,
    TRAINER_STATE_FILE,
    TRAINER_STATE_VERSION,
)
from interlingua.errors import CheckpointError


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    """``output_dir/step_000050`` for ``step=50`` (optimizer steps completed)."""
    return Path(output_dir) / CHECKPOINT_DIR_FORMAT.format(step=step)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint ``output_dir/latest`` names, or None when there is none.

    Raises:
        CheckpointError: ``latest`` names a folder that does not exist.
    """
    pointer = Path(output_dir) / LATEST_CHECKPOINT_FILE
    if not pointer.is_file():
        return None
    directory = Path(output_dir) / pointer.read_text().strip()
    if not directory.is_dir():
        raise CheckpointError(f"{pointer} names {directory.name!r}, which does not exist; fix or delete {pointer}")
    return directory


def read_trainer_state(directory: Path) -> dict:
    """``trainer_state.json`` of a checkpoint.

    Raises:
        CheckpointError: missing, unreadable, or of another format version.
    """
    path = Path(directory) / TRAINER_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: not a training checkpoint ({path.name} is missing)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable trainer state ({err})") from None
    if state.get("format_version") != TRAINER_STATE_VERSION:
        raise CheckpointError(
            f"{path}: format_version {state.get('format_version')!r}, expected {TRAINER_STATE_VERSION}"
        )
    return state
