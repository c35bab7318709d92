"""Training checkpoints: safetensors + JSON only (no pickle: a checkpoint may come from anyone).

    <output_dir>/
      latest                      text: name of the newest complete checkpoint, written after it
      step_000050/
        interlingua_config.json   } InterlinguaModel.save_pretrained: loads with from_pretrained
        model.safetensors         }
        optimizer.safetensors     AdamW moments, one tensor per (parameter index, name)
        trainer_state.json        step, stream position, config, RNG states, optimizer/scheduler scalars

A checkpoint is written in a temporary sibling folder and renamed into place, and ``latest`` moves
only after that, so a crash never leaves a half-written checkpoint that ``latest`` names.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interlingua.artifacts.files import replace_dir
from interlingua.artifacts.layout import checkpoint_dir, latest_checkpoint, read_trainer_state
from interlingua.config import Config
from interlingua.constants import (
    LATEST_CHECKPOINT_FILE,
    OPTIMIZER_STATE_FILE,
    TRAINER_STATE_FILE,
    TRAINER_STATE_VERSION,
)
from interlingua.errors import CheckpointError
from interlingua.models.interlingua import InterlinguaModel, InterlinguaSpec, read_spec
from interlingua.settings import Artifact, settings_differences, show

_CHECKPOINT_NAME = re.compile(r"step_(\d+)")  # CHECKPOINT_DIR_FORMAT's folders
_FIX = ("resume with the checkpoint's settings (its trainer_state.json has the config) "
        "or train into a new --output-dir")






def save_checkpoint(
    output_dir: Path,
    model: InterlinguaModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict,
) -> Path:
    """Write ``step_<trainer_state["step"]>/`` atomically, then point ``latest`` at it.

    Args:
        output_dir: the training run's folder.
        model: the learned modules (unwrapped).
        optimizer: its tensors go to ``optimizer.safetensors``, its scalars to ``trainer_state.json``.
        scheduler: its state (all scalars) goes to ``trainer_state.json``.
        trainer_state: JSON-safe dict with at least ``step``.
    Returns:
        The checkpoint folder.
    """
    final = checkpoint_dir(output_dir, trainer_state["step"])
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)  # creates tmp with interlingua_config.json + model.safetensors
    tensors, scalars = optimizer_state_to_safe(optimizer.state_dict())
    save_file(tensors, str(tmp / OPTIMIZER_STATE_FILE))
    state = {"format_version": TRAINER_STATE_VERSION, **trainer_state,
             "optimizer": scalars, "scheduler": scheduler.state_dict()}
    (tmp / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    replace_dir(tmp, final)  # a re-saved step replaces the old folder only once the new one is whole
    _write_latest(Path(output_dir), final.name)
    return final


def prune_checkpoints(output_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``step_*/`` folders of a run (``keep`` = 0: delete none).

    The folder ``latest`` names is never deleted, whatever its step. Returns the deleted folders.
    """
    if keep <= 0:
        return []
    latest = latest_checkpoint(output_dir)
    steps = sorted((int(match.group(1)), path) for path in Path(output_dir).iterdir()
                   if path.is_dir() and (match := _CHECKPOINT_NAME.fullmatch(path.name)))
    doomed = [path for _, path in steps[:-keep] if latest is None or path.resolve() != latest.resolve()]
    for path in doomed:
        shutil.rmtree(path)
    return doomed




def restore_checkpoint(
    directory: Path,
    model: InterlinguaModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict:
    """Load a checkpoint into a freshly built model, optimizer and scheduler of the current config.

    Args:
        directory: a checkpoint folder (``step_000050``).
        model: built from the current config; its spec must match the checkpoint's.
        optimizer: built over ``model``'s parameters, in the same order as when it was saved.
        scheduler: built on ``optimizer``.
    Returns:
        The trainer state (``step``, ``rng``, ``config`` …); RNG states are not restored here.
    Raises:
        CheckpointError: a different model set, a config that changes the learned modules' shapes,
            missing, truncated or corrupt files.
    """
    directory = Path(directory)
    state = read_trainer_state(directory)
    check_same_spec(read_spec(directory), model.spec, directory)
    loaded = InterlinguaModel.from_pretrained(directory)  # raises CheckpointError on bad weights
    model.load_state_dict(loaded.state_dict())
    model.read_extras(directory)  # what was measured with the tensors (e.g. the wire's fit) stays with them
    try:
        tensors = load_file(str(directory / OPTIMIZER_STATE_FILE))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{directory / OPTIMIZER_STATE_FILE}: missing, truncated or corrupt ({err})") from None
    try:
        optimizer.load_state_dict(optimizer_state_from_safe(tensors, state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{directory}: optimizer or scheduler state does not fit this run ({err})") from None
    return state


def check_same_spec(saved: InterlinguaSpec, current: InterlinguaSpec, directory: Path) -> None:
    """Raise CheckpointError unless ``current`` builds modules of exactly the checkpoint's shapes.

    Raises:
        CheckpointError: the message names the differing models, widths or ``interlingua.*`` keys.
    """
    check_same_config(saved, current, directory)
    saved_widths = {m.spec: m.hidden_size for m in saved.models}
    current_widths = {m.spec: m.hidden_size for m in current.models}
    if saved_widths != current_widths or saved.d_sem != current.d_sem:
        raise CheckpointError(
            f"{directory} was trained for embedding widths {saved_widths} and d_sem={saved.d_sem}, but the loaded "
            f"models have {current_widths} and d_sem={current.d_sem}; {_FIX}"
        )


def check_same_config(saved: InterlinguaSpec, current: Config | InterlinguaSpec, directory: Path) -> None:
    """The part of :func:`check_same_spec` that needs no loaded model: run it before loading any.

    What must match is :data:`~interlingua.settings.DETERMINANTS`' ``CHECKPOINT_SHAPE``: the models (in
    order: the order fixes the parameter order), the encoder and the ``interlingua.*`` keys but
    ``dropout``.

    Args:
        saved: the checkpoint's spec (:func:`read_spec`).
        current: the config of the run (or the spec of the model built from it).
    Raises:
        CheckpointError: another model set or order, another encoder, or changed ``interlingua.*`` keys.
    """
    changed = settings_differences(Artifact.CHECKPOINT_SHAPE, saved, current)
    if any(d.key.startswith("models.") for d in changed):
        saved_specs, current_specs = [m.spec for m in saved.models], [m.spec for m in current.models]
        raise CheckpointError(
            f"{directory} was trained for models {saved_specs} (in this order), "
            f"but the config has {current_specs}; {_FIX}"
        )
    if any(d.key == "encoder" for d in changed):
        raise CheckpointError(
            f"{directory} was trained with encoder {saved.encoder!r}, the config has {current.encoder!r}; {_FIX}"
        )
    if changed:
        listed = "; ".join(f"{d.key}: checkpoint {show(d.saved)}, config {show(d.current)}" for d in changed)
        raise CheckpointError(f"{directory}: the config changes the learned modules ({listed}); {_FIX}")


# ---- optimizer state without pickle -------------------------------------------------------------
def optimizer_state_to_safe(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-safe scalars).

    Tensors are keyed ``state.<param index>.<name>`` (e.g. ``state.3.exp_avg``); everything else
    (param groups, non-tensor per-parameter values) goes to the scalars.
    """
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                per_param.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}  # betas: tuple -> list
              for group in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "state": per_param}


def optimizer_state_from_safe(tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    """Inverse of :func:`optimizer_state_to_safe`."""
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in scalars["state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in scalars["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- RNG states as JSON -------------------------------------------------------------------------
def rng_state() -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states, JSON-safe (base64 for bytes)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


# ---- helpers ------------------------------------------------------------------------------------
def _write_latest(output_dir: Path, name: str) -> None:
    tmp = output_dir / f".{LATEST_CHECKPOINT_FILE}.tmp-{os.getpid()}"
    tmp.write_text(name + "\n")
    os.replace(tmp, output_dir / LATEST_CHECKPOINT_FILE)

