"""Which settings determine each artifact, declared once, and the one check of them.

A stored artifact (a checkpoint's learned shapes, a training run, baseline rows, a frozen cache, a sweep
cell, a native evaluation pass, a fitted vocabulary bridge) stands in for a recomputation only when the
config keys that determine it are unchanged. :data:`DETERMINANTS` names those keys per :class:`Artifact`,
with the few keys a prefix covers that are documented not to matter; every reuse check in the package
reads it through :func:`settings_differences` (two configs, compared) or :func:`settings_of` (the
settings an artifact stamps or hashes). Facts that are not config keys (weights fingerprints, example
ids, the prompt format a tokenizer resolved ``auto`` to, embedding widths) are checked by the caller
alongside.

    changed = settings_differences(Artifact.TRAINING_RUN, read_trainer_state(step)["config"], config)
    if changed:
        raise CheckpointError(f"{step} was trained with other settings ({'; '.join(map(str, changed))})")
    stamp = {"fingerprint": fingerprint, **settings_of(Artifact.NATIVE_PASS, config)}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from interlingua.config import normalised_config_dict, to_plain


class Artifact(str, Enum):
    """The kinds of stored work whose reuse depends on settings."""

    CHECKPOINT_SHAPE = "checkpoint shape"
    """The learned modules of a checkpoint: resuming into it or evaluating it with a config."""
    TRAINING_RUN = "training run"
    """The weights a training run produces: a finished run reused (sweep), a run resumed."""
    SWEEP_CELL = "sweep cell"
    """One evaluated cell of a compression sweep: its training run and its evaluation."""
    BASELINE_ROWS = "baseline rows"
    """The text-baseline rows of a baselines / eval run, reused by a later evaluation."""
    TEACHER_CACHE = "teacher cache"
    """The frozen KD teacher's top-k targets (``cache/teacher``); with the model's fingerprint."""
    ANCHOR_CACHE = "anchor cache"
    """The frozen sentence encoder's anchors (``cache/anchor``); with the encoder's fingerprint."""
    BRIDGE_FIT = "bridge fit"
    """The closed-form vocabulary bridge (``models/bridge``); with every model's weights and vocabulary."""
    NATIVE_PASS = "native pass"
    """One (conditioning, sender, receiver) pass of the native evaluation; with the checkpoint's
    fingerprint, the example ids and the resolved prompt formats."""


@dataclass(frozen=True)
class Determinants:
    """The config keys that determine one artifact kind.

    Keys are dotted (``interlingua.d_inter``); a key names every key below it (``interlingua``), ``*``
    stands for any one part (``models.*.spec``: each model's spec), and ``*`` alone for every key.
    """

    keys: tuple[str, ...]
    ignored: Mapping[str, str] = field(default_factory=dict)
    """Keys the ``keys`` cover that do not change the artifact -> why."""
    names: Mapping[str, str] = field(default_factory=dict)
    """Key -> the name the artifact's own settings file gives it (cache folders are named by the hash
    of those files: the names are part of their on-disk format)."""


_NOT_A_RESULT = {
    "runtime.output_dir": "where the run is written, not what it computes (a moved folder is the same run)",
    "runtime.device": "the same settings on another machine",
    "runtime.shard_frozen": "frozen layers sharded across processes give the same updates (tested)",
    "runtime.gradient_checkpointing": "recomputes the frozen layers' activations instead of storing them",
    "train.keep_checkpoints": "how many older checkpoints are deleted",
    "cache.dir": "where frozen work is cached; a cache folder only ever holds values of its own settings",
}

DETERMINANTS: dict[Artifact, Determinants] = {
    Artifact.CHECKPOINT_SHAPE: Determinants(
        keys=("models.*.spec", "encoder", "interlingua"),
        ignored={"interlingua.dropout": "changes no shape: a resumed run may change it"},
    ),
    Artifact.TRAINING_RUN: Determinants(
        keys=("*",), ignored={"eval": "training does not read it", **_NOT_A_RESULT},
    ),
    Artifact.SWEEP_CELL: Determinants(keys=("*",), ignored=_NOT_A_RESULT),
    Artifact.BASELINE_ROWS: Determinants(
        # the models and their resolved prompt formats, and the example ids, are checked alongside
        keys=("eval.max_new_tokens", "data.max_prompt_tokens", "interlingua.num_slots",  # M: token-budget rows
              "runtime.dtype"),
    ),
    Artifact.TEACHER_CACHE: Determinants(
        keys=("loss.kd_temperature", "cache.teacher_top_k"),
        names={"loss.kd_temperature": "temperature", "cache.teacher_top_k": "top_k"},
    ),
    Artifact.ANCHOR_CACHE: Determinants(keys=("interlingua.anchor",), names={"interlingua.anchor": "anchor"}),
    Artifact.BRIDGE_FIT: Determinants(
        keys=("interlingua.d_inter", "interlingua.bridge_ridge"),
        names={"interlingua.d_inter": "d_inter", "interlingua.bridge_ridge": "ridge"},
    ),
    Artifact.NATIVE_PASS: Determinants(
        keys=("eval.max_new_tokens", "data.max_prompt_tokens", "compression.precision", "compression.group_size",
              "runtime.seed", "runtime.dtype"),  # runtime.seed: the shuffled-z derangement
        names={"eval.max_new_tokens": "max_new_tokens", "data.max_prompt_tokens": "max_prompt_tokens",
               "compression.precision": "precision", "compression.group_size": "group_size", "runtime.seed": "seed",
               "runtime.dtype": "dtype"},
    ),
}
"""Per artifact kind, the config keys that determine it: the one declaration every reuse check reads."""


class _Absent:
    def __repr__(self) -> str:
        return "(not set)"


ABSENT = _Absent()
"""The value of a key one side does not have (a config stored before the key existed)."""


@dataclass(frozen=True)
class Difference:
    """One key that differs: ``str()`` gives ``key: saved -> current``."""

    key: str
    saved: Any
    current: Any

    def __str__(self) -> str:
        return f"{self.key}: {show(self.saved)} -> {show(self.current)}"


def settings_of(kind: Artifact, source) -> dict[str, Any]:
    """The settings that determine an artifact of ``kind``: ``{key or stored name: value}``.

    Args:
        source: a :class:`~interlingua.config.Config`, another config dataclass with the same layout (a
            checkpoint's ``InterlinguaSpec``), or a stored config dict (trainer state, metrics.json; older
            ones, with enum names or without newer keys, read as today's config would write them).
    Returns:
        Flat, JSON-ready values (enums as their values), in the config's order; list entries are keyed by
        their index (``models.0.spec``).
    """
    declared = DETERMINANTS[kind]
    flat = _flatten(_plain(source))
    return {declared.names.get(key, key): value for key, value in flat.items()
            if _covered(key, declared.keys) and not _covered(key, tuple(declared.ignored))}


def settings_differences(kind: Artifact, saved, current) -> list[Difference]:
    """The settings that determine an artifact of ``kind`` and differ between ``saved`` (what the stored
    artifact was made with) and ``current`` (what would make it now); empty = the artifact may be reused.

    Args:
        saved, current: as the ``source`` of :func:`settings_of`.
    """
    before, now = settings_of(kind, saved), settings_of(kind, current)
    keys = list(now) + [key for key in before if key not in now]
    return [Difference(key, before.get(key, ABSENT), now.get(key, ABSENT))
            for key in keys if before.get(key, ABSENT) != now.get(key, ABSENT)]


def settings_hash(settings: dict) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable settings dict (key order does not matter): the name
    of a cache folder holding values made under exactly these settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def show(value) -> str:
    """A setting's value as a user writes it (``hybrid``, ``0.1``, ``null``, ``true``)."""
    if value is ABSENT:
        return repr(value)
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def _plain(source) -> dict:
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        return to_plain(source)
    if isinstance(source, Mapping):
        return normalised_config_dict(dict(source))
    raise TypeError(f"settings come from a config dataclass or a stored config dict, not {type(source).__name__}")


def _flatten(node, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists of dicts) -> ``{"a.b": leaf}``; other lists are leaves."""
    if isinstance(node, Mapping):
        items = node.items()
    elif isinstance(node, list) and node and all(isinstance(item, Mapping) for item in node):
        items = enumerate(node)
    else:
        return {prefix.removesuffix("."): node}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def _covered(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``key`` is one of ``patterns`` or lies below one (``*`` = any one part)."""
    parts = key.split(".")
    for pattern in patterns:
        wanted = pattern.split(".")
        if len(wanted) <= len(parts) and all(w in ("*", p) for w, p in zip(wanted, parts)):
            return True
    return False
