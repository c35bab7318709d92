"""The learned part of the system: one AlignmentTransformer and one InterlinguaAdapter per LLM.

Checkpoints hold only these modules (DESIGN §3), ``save_pretrained`` / ``from_pretrained`` style:
``interlingua_config.json`` (everything needed to rebuild the modules and to check that the frozen
models in use are the ones it was trained with) + ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from interlingua.artifacts.files import replace_dir
from interlingua.config import ConfigError, Design, InterlinguaConfig, Pooling, from_plain, to_plain
from interlingua.constants import CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHTS_FILE
from interlingua.errors import CheckpointError
from interlingua.models.adapter import InterlinguaAdapter
from interlingua.models.aligner import AlignmentTransformer, module_key

FORMAT_VERSION = 1



@dataclass
class FrozenModelInfo:
    """What the learned modules need to know about one frozen LLM."""

    spec: str
    hidden_size: int
    embedding_rms: float


@dataclass
class InterlinguaSpec:
    """Everything that defines the learned modules' shapes; stored in the checkpoint."""

    models: list[FrozenModelInfo]
    encoder: str
    d_sem: int
    interlingua: InterlinguaConfig = field(default_factory=InterlinguaConfig)

    def to_json(self) -> dict:
        """``interlingua_config.json``: the spec through OmegaConf (:func:`~interlingua.config.to_plain`)."""
        return {"format_version": FORMAT_VERSION, **to_plain(self)}

    @classmethod
    def from_json(cls, data: dict) -> "InterlinguaSpec":
        """Read through OmegaConf with this dataclass as schema: ``interlingua.*`` keys absent from older
        checkpoints (conditioning, positions, design, decoder, …) take their defaults, and enums read from
        their values or their names.

        Raises:
            CheckpointError: another format version, or a key or value the schema rejects.
        """
        if data.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        try:
            return from_plain(cls, {k: v for k, v in data.items() if k != "format_version"})
        except ConfigError as err:
            raise CheckpointError(f"unreadable checkpoint config ({err})") from None


def tensors_fingerprint(tensors: dict) -> str:
    """``InterlinguaModel.fingerprint`` of a state dict: sha256 over the names and bytes, sorted by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_fingerprint(directory: str | Path) -> str:
    """The fingerprint of checkpoint ``directory``'s weights without building its model (the same value as
    ``InterlinguaModel.from_pretrained(directory).fingerprint()``).

    Raises:
        CheckpointError: no weights file, or a truncated or corrupt one.
    """
    weights_path = Path(directory) / CHECKPOINT_WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{directory}: not an interlingua checkpoint ({CHECKPOINT_WEIGHTS_FILE} is missing)")
    return tensors_fingerprint(load_weights(weights_path))


def load_weights(weights_path: Path, device: str = "cpu") -> dict:
    """A checkpoint's tensors by name.

    Raises:
        CheckpointError: a truncated or corrupt file.
    """
    try:
        return load_file(str(weights_path), device=device)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{weights_path}: truncated or corrupt weights ({err})") from None


def read_spec(directory: Path) -> InterlinguaSpec:
    """A checkpoint's ``interlingua_config.json``, without loading weights.

    Raises:
        CheckpointError: missing or unreadable.
    """
    path = Path(directory) / CHECKPOINT_CONFIG_FILE
    try:
        return InterlinguaSpec.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: not an interlingua checkpoint ({path.name} is missing)") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint config ({err})") from None


class InterlinguaModel(nn.Module):
    """AlignmentTransformer + per-model adapters.

    Args:
        spec: frozen-model facts and the interlingua shape.
    """

    def __init__(self, spec: InterlinguaSpec):
        super().__init__()
        self.spec = spec
        self._embedding_rms = {m.spec: m.embedding_rms for m in spec.models}
        cfg = spec.interlingua
        self.aligner = AlignmentTransformer({m.spec: m.hidden_size for m in spec.models}, spec.d_sem, cfg)
        self.adapters = nn.ModuleDict({
            module_key(m.spec): InterlinguaAdapter(
                cfg.d_inter, m.hidden_size, cfg.num_slots, m.embedding_rms, pooled=cfg.pooling == Pooling.MEAN
            )
            for m in spec.models
        })

    @property
    def model_keys(self) -> list[str]:
        return [m.spec for m in self.spec.models]

    @property
    def z_shape(self) -> tuple[int, ...]:
        """Shape of one prompt's z: ``(d_inter,)`` with ``pooling=mean``, ``(M, d_inter)`` with ``queries``."""
        cfg = self.spec.interlingua
        return (cfg.d_inter,) if cfg.pooling == Pooling.MEAN else (cfg.num_slots, cfg.d_inter)

    def encode(self, model_key: str, token_embeddings, token_mask, anchor, anchor_mask=None) -> torch.Tensor:
        """Frozen token embeddings of ``model_key`` -> z: ``(B, d_inter)`` or ``(B, M, d_inter)``.

        Embeddings are divided by the model's embedding RMS first: raw RMS ranges from ~0.02 (Llama
        init) to ~1 (Gemma's scaled embeddings), and at 0.02 the input projection's bias and the
        anchor drown the tokens out, so every prompt starts with nearly the same ``z``."""
        scale = self._embedding_rms[model_key]
        return self.aligner(model_key, token_embeddings / scale, token_mask, anchor, anchor_mask)

    def soft_prompt(self, model_key: str, z: torch.Tensor) -> torch.Tensor:
        """z -> soft prompt ``(B, M, d_m)`` in ``model_key``'s embedding space (any sender's z)."""
        if module_key(model_key) not in self.adapters:
            raise KeyError(f"no adapter for model {model_key!r}; this interlingua has: {', '.join(self.model_keys)}")
        return self.adapters[module_key(model_key)](z)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write config JSON + safetensors into ``directory`` atomically (a crash never leaves a
        half-written checkpoint under the final name)."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + f".tmp-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(tmp / CHECKPOINT_WEIGHTS_FILE))
        (tmp / CHECKPOINT_CONFIG_FILE).write_text(json.dumps(self.spec.to_json(), indent=2) + "\n")
        replace_dir(tmp, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "InterlinguaModel":
        """Rebuild from a checkpoint folder.

        Raises:
            CheckpointError: missing folder or files, unreadable JSON, truncated or corrupt weights,
                missing or unexpected tensors, or tensors of the wrong shape.
        """
        directory = Path(directory)
        config_path, weights_path = directory / CHECKPOINT_CONFIG_FILE, directory / CHECKPOINT_WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"{directory}: not an interlingua checkpoint ({path.name} is missing)")
        spec = read_spec(directory)
        tensors = load_weights(weights_path, device=str(map_location))
        model = model_class(spec)(spec)
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{weights_path}: weights do not match {config_path.name} "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]})"
            )
        model.load_state_dict(tensors)
        model.read_extras(directory)
        return model.to(map_location)

    def read_extras(self, directory: Path) -> None:
        """Files a subclass keeps next to its weights (none here)."""

    def fingerprint(self) -> str:
        """A short hash of the weights: names the checkpoint that produced a wire message."""
        return tensors_fingerprint(self.state_dict())

    def check_frozen_models(self, infos: list[FrozenModelInfo]) -> None:
        """Raise CheckpointError unless ``infos`` are the frozen models this interlingua was trained with."""
        trained = {m.spec: m for m in self.spec.models}
        given = {m.spec: m for m in infos}
        if set(trained) != set(given):
            raise CheckpointError(
                f"checkpoint was trained for models {sorted(trained)}, but the config has {sorted(given)}; "
                "use the checkpoint's models (see its interlingua_config.json) or retrain"
            )
        for info in infos:
            self.check_frozen_model(info)

    def check_frozen_model(self, info: FrozenModelInfo) -> None:
        """Raise CheckpointError unless ``info`` is one of the frozen models this interlingua was trained
        with (a sender or a receiver used alone)."""
        trained = {m.spec: m for m in self.spec.models}
        if info.spec not in trained:
            raise CheckpointError(
                f"model {info.spec!r} is not one of this checkpoint's models: {', '.join(self.model_keys)}"
            )
        if info.hidden_size != trained[info.spec].hidden_size:
            raise CheckpointError(
                f"{info.spec}: hidden size {info.hidden_size} differs from the checkpoint's "
                f"{trained[info.spec].hidden_size}"
            )


def model_class(spec: InterlinguaSpec) -> type:
    """The class that holds the learned modules of ``spec`` (``interlingua.design``)."""
    if spec.interlingua.design == Design.NATIVE:
        from interlingua.models.native import NativeInterlingua

        return NativeInterlingua
    return InterlinguaModel
