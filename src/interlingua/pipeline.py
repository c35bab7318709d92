"""The whole system at use time: text -> interlingua z (sender) -> soft prompt (receiver).

    system = InterlinguaSystem(model, lms, encoder)
    anchor = system.anchor(texts)
    z = system.encode("smollm2-135m-instruct", texts, anchor)              # (B, d_inter) or (B, M, d_inter)
    soft = system.model.soft_prompt("gemma3-270m", z)                       # cross-decode: any receiver
    answers = system.lms["gemma3-270m"].generate_from_soft_prompt(soft)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interlingua.config import AnchorKind, Config
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
    return lms, SentenceEncoder(config.encoder, device=device)


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
        self.model = model
        self.lms = lms
        self.encoder = encoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def anchor(self, texts: list[str]) -> Anchor:
        if self.model.spec.interlingua.anchor == AnchorKind.TOKENS:
            states, mask = self.encoder.encode_tokens(texts)
            return Anchor(states.to(self.device), mask.to(self.device))
        return Anchor(self.encoder.encode(texts).to(self.device))

    def encode(self, model_key: str, texts: list[str], anchor: Anchor) -> Tensor:
        """``texts`` read through ``model_key``'s frozen token embeddings -> z."""
        lm = self.lms[model_key]
        ids, mask = lm.tokenize_plain(texts)
        with torch.no_grad():
            embeddings = lm.embed(ids).float()  # (B, T, d_m); frozen, the learned modules run in fp32
        return self.model.encode(model_key, embeddings.to(self.device), mask.to(self.device), anchor.states, anchor.mask)

    def soft_prompt(self, receiver_key: str, z: Tensor) -> Tensor:
        return self.model.soft_prompt(receiver_key, z)
