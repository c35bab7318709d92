"""The whole system at use time: text -> interlingua z (sender) -> soft prompt (receiver).

    system = InterlinguaSystem(model, lms, encoder)
    anchor = system.anchor(texts)
    z = system.encode("smollm2-135m-instruct", texts, anchor)              # (B, d_inter) or (B, M, d_inter)
    soft = system.model.soft_prompt("gemma3-270m", z)                       # cross-decode: any receiver
    answers = system.lms["gemma3-270m"].generate_from_soft_prompt(soft)

A sender or a receiver alone (``interlingua encode`` / ``generate``) loads one LLM with
:func:`load_frozen_model` and calls :func:`semantic_anchor` / :func:`encode_prompts` directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interlingua.config import AnchorKind, Config, ConfigError
from interlingua.models.frozen_lm import FrozenLM
from interlingua.models.interlingua import FrozenModelInfo, InterlinguaModel


@dataclass
class Anchor:
    """Semantic anchor: ``(B, d_sem)`` (sentence) or ``(B, S, d_sem)`` with mask ``(B, S)`` (tokens)."""

    states: Tensor
    mask: Tensor | None = None


def frozen_model_info(lm: FrozenLM) -> FrozenModelInfo:
    return FrozenModelInfo(spec=lm.key, hidden_size=lm.hidden_size, embedding_rms=lm.embedding_rms)


def load_frozen_models(config: Config, device: torch.device, dtype: torch.dtype):
    """The frozen LLMs of ``config.models`` (in config order) and its sentence encoder, loaded together.

    Args:
        config: names the models (``models.N.spec``, ``models.N.prompt_format``) and ``encoder``.
        device: where everything runs.
        dtype: weights of the frozen LLMs (``runtime.frozen_dtype``).
    Returns:
        ``({spec: FrozenLM}, SentenceEncoder)``.
    """
    from interlingua.models.encoder import SentenceEncoder

    lms = {m.spec: FrozenLM.load(m, device=device, dtype=dtype) for m in config.models}
    if config.runtime.gradient_checkpointing:
        for lm in lms.values():
            lm.enable_gradient_checkpointing()
    return lms, SentenceEncoder(config.encoder, device=device)


def load_frozen_model(config: Config, key: str, device: torch.device, dtype: torch.dtype) -> FrozenLM:
    """One frozen LLM of ``config.models`` (a sender or a receiver alone, e.g. ``interlingua generate``).

    Args:
        config: ``models.N.spec`` / ``models.N.prompt_format`` of the model named ``key``.
        key: the model's spec.
        device, dtype: as for :func:`load_frozen_models`.
    Returns:
        The FrozenLM.
    Raises:
        ConfigError: ``key`` is not one of ``config.models``; the message lists them.
    """
    for model_config in config.models:
        if model_config.spec == key:
            return FrozenLM.load(model_config, device=device, dtype=dtype)
    raise ConfigError(f"model {key!r} is not in the config; its models are: {', '.join(m.spec for m in config.models)}")


def semantic_anchor(model: InterlinguaModel, encoder, texts: list[str]) -> Anchor:
    """The frozen sentence encoder's view of ``texts``, in the form ``model`` was trained with
    (``interlingua.anchor``), on ``model``'s device."""
    device = next(model.parameters()).device
    with torch.no_grad():
        if model.spec.interlingua.anchor == AnchorKind.TOKENS:
            states, mask = encoder.encode_tokens(texts)
            return Anchor(states.to(device), mask.to(device))
        return Anchor(encoder.encode(texts).to(device))


def encode_prompts(model: InterlinguaModel, lm: FrozenLM, texts: list[str], anchor: Anchor) -> Tensor:
    """``texts`` read through ``lm``'s frozen token embeddings -> z (gradients reach the learned modules).

    Args:
        model: the learned modules; ``lm.key`` must be one of its models.
        lm: the sender.
        texts: ``B`` prompts, used as given.
        anchor: :func:`semantic_anchor` of the same texts.
    Returns:
        z: ``(B, d_inter)`` (``pooling=mean``) or ``(B, M, d_inter)`` (``pooling=queries``).
    """
    device = next(model.parameters()).device
    ids, mask = lm.tokenize_plain(texts)
    with torch.no_grad():
        embeddings = lm.embed(ids).float()  # (B, T, d_m); frozen, the learned modules run in fp32
    return model.encode(lm.key, embeddings.to(device), mask.to(device), anchor.states, anchor.mask)


class InterlinguaSystem:
    """Learned modules + the frozen LLMs + the frozen sentence encoder they were trained with.

    Args:
        model: the learned modules.
        lms: frozen LLMs by key; must be exactly the models ``model`` was built for.
        encoder: the frozen sentence encoder (``interlingua.models.encoder.SentenceEncoder``).
    Raises:
        CheckpointError: when ``lms`` are not the models of ``model``.
    """

    def __init__(self, model: InterlinguaModel, lms: dict[str, FrozenLM], encoder):
        model.check_frozen_models([frozen_model_info(lm) for lm in lms.values()])
        if hasattr(model, "attach_vocabularies"):  # the native design's receivers read their own vocabularies
            model.attach_vocabularies(lms)
        self.model = model
        self.lms = lms
        self.encoder = encoder
        self.teachers: dict = {}
        """Model key -> ``cache.KDTeacher`` set by the training recipe (cached top-k teacher); a model
        without one gets the exact full-vocabulary teacher."""
        self.anchor_cache = None
        """A ``cache.AnchorCache`` set by the training recipe; None = run the encoder every time."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def anchor(self, texts: list[str]) -> Anchor:
        if self.anchor_cache is None:
            return semantic_anchor(self.model, self.encoder, texts)
        states, mask = self.anchor_cache(texts)
        return Anchor(states.to(self.device), None if mask is None else mask.to(self.device))

    def kd_teacher(self, key: str, temperature: float):
        """The KD teacher of model ``key``: the one the recipe installed, else exact and uncached."""
        from interlingua.cache.teacher import KDTeacher

        teacher = self.teachers.get(key)
        if teacher is None:
            return KDTeacher(self.lms[key], temperature)
        if teacher.temperature != temperature:
            raise ValueError(
                f"{key}: the installed KD teacher has τ={teacher.temperature}, the loss asks for τ={temperature}"
            )
        return teacher

    def encode(self, model_key: str, texts: list[str], anchor: Anchor) -> Tensor:
        """``texts`` read through ``model_key``'s frozen token embeddings -> z (see :func:`encode_prompts`)."""
        return encode_prompts(self.model, self.lms[model_key], texts, anchor)

    def soft_prompt(self, receiver_key: str, z: Tensor) -> Tensor:
        return self.model.soft_prompt(receiver_key, z)
