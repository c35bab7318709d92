"""InterlinguaAdapter: the shared interlingua z -> a soft prompt of M vectors in one LLM's embedding space.

One adapter per frozen LLM (DESIGN §3):

    pooled=True  (z: (B, d_inter), aligner pooling=mean — the seed)
        Linear(d_inter -> d_inter·M) + LayerNorm + GELU -> view (B, M, d_inter) + queries (M, d_inter)
    pooled=False (z: (B, M, d_inter), aligner pooling=queries)
        z + queries (M, d_inter)
    then, per slot:  Linear(d_inter -> d_model) + LayerNorm -> × scale  ->  soft prompt (B, M, d_model)

``scale`` starts at the LLM's input-embedding RMS: a LayerNorm output has RMS ≈ 1, while real token
embeddings have RMS ≈ 0.01–1 depending on the model; a soft prompt much louder than the real tokens
around it swamps the frozen LLM's attention (DESIGN §4.1).
"""

from __future__ import annotations

import torch
from torch import nn


class InterlinguaAdapter(nn.Module):
    """Maps z to a soft prompt for one LLM.

    Args:
        d_inter: interlingua width.
        d_model: the LLM's embedding width.
        num_slots: M, soft-prompt positions.
        embedding_rms: RMS of the LLM's input embeddings (what ``scale`` starts at); log it next to
            the soft prompt's RMS during training.
        pooled: True when z is one vector per prompt (B, d_inter); False when z already has M slots.
    """

    def __init__(self, d_inter: int, d_model: int, num_slots: int, embedding_rms: float, pooled: bool = True):
        super().__init__()
        if min(d_inter, d_model, num_slots) <= 0:
            raise ValueError(f"widths must be positive, got d_inter={d_inter}, d_model={d_model}, M={num_slots}")
        if not embedding_rms > 0:
            raise ValueError(f"embedding_rms must be positive (the LLM's input-embedding RMS), got {embedding_rms}")
        self.d_inter, self.d_model, self.num_slots = d_inter, d_model, num_slots
        self.embedding_rms, self.pooled = float(embedding_rms), pooled

        if pooled:
            self.expand = nn.Sequential(
                nn.Linear(d_inter, d_inter * num_slots),
                nn.LayerNorm(d_inter * num_slots),
                nn.GELU(),
            )
        # Small queries: at init the input-dependent part dominates, so different prompts give
        # different soft prompts from step 0 (large queries would look like collapse, DESIGN §4.4).
        self.queries = nn.Parameter(0.02 * torch.randn(num_slots, d_inter))  # (M, d_inter)
        self.proj = nn.Sequential(nn.Linear(d_inter, d_model), nn.LayerNorm(d_model))
        self.scale = nn.Parameter(torch.full((1,), self.embedding_rms))  # learned; RMS match at init

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Soft prompt for a batch of interlinguas.

        Args:
            z: (B, d_inter) if ``pooled`` else (B, M, d_inter).
        Returns:
            (B, M, d_model) soft prompt, to be placed where the text prompt's embeddings would go.
        """
        expected = (self.d_inter,) if self.pooled else (self.num_slots, self.d_inter)
        if tuple(z.shape[1:]) != expected or z.dim() != len(expected) + 1:
            raise ValueError(
                f"adapter (pooled={self.pooled}) expects z of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(z.shape)}"
            )
        z = z.to(self.queries.dtype)
        if self.pooled:
            slots = self.expand(z)  # (B, M·d_inter)
            slots = slots.view(z.shape[0], self.num_slots, self.d_inter)  # (B, M, d_inter)
        else:
            slots = z  # (B, M, d_inter)
        slots = slots + self.queries.unsqueeze(0)  # (B, M, d_inter)
        return self.proj(slots) * self.scale  # (B, M, d_model)
