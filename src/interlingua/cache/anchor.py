"""The frozen sentence encoder's anchor of each prompt, computed once and cached (see ``cache/__init__``)."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from interlingua.config import AnchorKind
from interlingua.models.frozen_lm import lm_fingerprint

ANCHOR_CACHE_VERSION = 1


class AnchorCache:
    """``texts -> (states, mask)`` like ``Interlingua.anchor``, reading cached rows.

    Args:
        encoder: the frozen ``SentenceEncoder``.
        kind: ``sentence`` -> states ``(B, d_sem)``, mask None; ``tokens`` -> ``(B, S, d_tok)`` zero-padded
            and mask ``(B, S)``.
        store: a :class:`TensorStore` opened with :meth:`settings`.
    """

    def __init__(self, encoder, kind: AnchorKind, store):
        self.encoder, self.kind, self.store = encoder, AnchorKind(kind), store

    @staticmethod
    def settings(encoder, kind: AnchorKind) -> dict:
        return {
            "kind": "anchor", "version": ANCHOR_CACHE_VERSION, "anchor": AnchorKind(kind).value,
            "fingerprint": lm_fingerprint(encoder.model),
        }

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor | None]:
        keys = [hashlib.sha256(text.encode()).hexdigest()[:32] for text in texts]
        rows = [self.store.get(key) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            computed = self._encode([texts[i] for i in missing])
            for i, value in zip(missing, computed):
                rows[i] = {"value": value}
                self.store.put(keys[i], rows[i])
        values = [row["value"].float() for row in rows]
        if self.kind == AnchorKind.SENTENCE:
            return torch.stack(values), None  # (B, d_sem)
        longest = max(v.shape[0] for v in values)
        states = torch.zeros(len(values), longest, values[0].shape[-1])
        mask = torch.zeros(len(values), longest, dtype=torch.bool)
        for i, value in enumerate(values):
            states[i, : value.shape[0]] = value
            mask[i, : value.shape[0]] = True
        return states, mask  # (B, S, d_tok), (B, S)

    def _encode(self, texts: list[str]) -> list[Tensor]:
        if self.kind == AnchorKind.SENTENCE:
            return list(self.encoder.encode(texts).cpu())  # B x (d_sem,)
        states, mask = self.encoder.encode_tokens(texts)
        return [s[m].cpu() for s, m in zip(states, mask)]  # B x (S_i, d_tok): real tokens only
