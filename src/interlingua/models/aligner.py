"""AlignmentTransformer: token embeddings of any frozen LLM -> one shared interlingua z (DESIGN §3).

    aligner = AlignmentTransformer({"tiny-llama": 64, "tiny-qwen2": 48}, d_sem=32, config=InterlinguaConfig())
    z = aligner("tiny-llama", token_embeddings, token_mask, anchor)        # (B, d_inter) with pooling=mean
    target = aligner.project_anchor(anchor)                                 # (B, d_inter), fixed: no gradient

Data flow for one model m (B prompts, T_m tokens, S anchor keys):

    E_m (B, T, d_m) --input_proj[m]--> x (B, T, d_inter)
    anchor --anchor_proj--> keys (B, S, d_inter)                            # S = 1 for a sentence anchor
    n_cross_layers x:  x = x + MultiheadAttention(query=x, key=keys, value=keys)
    TransformerEncoder(n_refine_layers) with src_key_padding_mask
    pool: masked mean -> (B, d_inter)   or   M learned queries attend -> (B, M, d_inter)

With ``interlingua.positions=none`` (the seed) there are no position embeddings: the aligner sees each
prompt as a set of token embeddings, so z cannot depend on word order. ``sinusoidal`` adds fixed
encodings of each token's index among the real tokens; in both cases right and left padding give the
same z as long as the mask is right.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from interlingua.config import AnchorKind, InterlinguaConfig, Pooling, Positions

ANCHOR_TARGET_SEED = 0  # the fixed target projection is the same for every run with the same widths


def module_key(model_key: str) -> str:
    """A model key as an ``nn.ModuleDict`` key: every character outside ``[A-Za-z0-9_-]`` becomes ``_``.

    ``"Qwen/Qwen2.5-7B-Instruct"`` -> ``"Qwen_Qwen2_5-7B-Instruct"`` (ModuleDict keys cannot hold ``.``).
    """
    return re.sub(r"[^A-Za-z0-9_-]", "_", model_key)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real positions of each row.

    Args:
        states: (B, T, d)
        mask: (B, T) bool, True = real position; every row needs at least one.
    Returns:
        (B, d)
    """
    weights = mask.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def sinusoidal_positions(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Transformer sinusoidal encodings of each token's index among the real tokens of its row.

    Args:
        mask: (B, T) True = real token; padding may be on either side (indices skip it).
        width: even or odd encoding width.
    Returns:
        (B, T, width), RMS ≈ 1/sqrt(2) per element (the scale of LayerNorm-ed states' halves).
    """
    index = (mask.long().cumsum(-1) - 1).clamp(min=0).float()  # (B, T)
    frequencies = torch.exp(torch.arange(0, width, 2, device=mask.device).float() * (-math.log(10000.0) / width))
    angles = index.unsqueeze(-1) * frequencies  # (B, T, ceil(width / 2))
    encoding = torch.zeros(*mask.shape, width, device=mask.device)
    encoding[..., 0::2] = torch.sin(angles)
    encoding[..., 1::2] = torch.cos(angles[..., : width // 2])
    return encoding


def fixed_projection(d_in: int, d_out: int, seed: int = ANCHOR_TARGET_SEED) -> torch.Tensor:
    """A seeded (d_out, d_in) matrix that keeps vector norms: orthonormal columns when d_out >= d_in
    (norm kept exactly); orthonormal rows scaled by sqrt(d_in / d_out) otherwise (kept on average)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(max(d_in, d_out), min(d_in, d_out), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)  # q: (max, min), orthonormal columns
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # fix QR's sign ambiguity: same matrix everywhere
    if d_out >= d_in:
        return q.float().contiguous()  # (d_out, d_in)
    return (q.T * math.sqrt(d_in / d_out)).float().contiguous()  # (d_out, d_in); safetensors needs contiguous


class AlignmentTransformer(nn.Module):
    """Maps the frozen input embeddings of any registered LLM to the shared interlingua.

    Args:
        model_dims: model key -> embedding width d_m of that LLM. Keys are free-form strings
            (hub ids included); they are stored under :func:`module_key` names.
        d_sem: width of the sentence encoder's embeddings (the semantic anchor).
        config: widths, depths, pooling and anchor kind (``interlingua.*`` in the run config).

    The target of the semantic-anchor loss, :meth:`project_anchor`, uses a fixed buffer, not the
    trainable ``anchor_proj``: a trainable target could shrink to 0 together with z (DESIGN §4.4).
    """

    def __init__(self, model_dims: dict[str, int], d_sem: int, config: InterlinguaConfig):
        super().__init__()
        if not model_dims:
            raise ValueError("model_dims is empty: the aligner needs at least one model key -> width")
        if d_sem <= 0 or any(d <= 0 for d in model_dims.values()):
            raise ValueError(f"widths must be positive, got d_sem={d_sem}, model_dims={model_dims}")
        self.model_dims = dict(model_dims)
        self.d_sem = d_sem
        self.config = config
        d_inter, n_heads, dropout = config.d_inter, config.n_heads, config.dropout

        self.module_keys = {key: module_key(key) for key in model_dims}  # model key -> ModuleDict key
        clashes = _clashes(self.module_keys)
        if clashes:
            raise ValueError(f"model keys {clashes} map to the same module name; rename one of them")
        self.input_proj = nn.ModuleDict(
            {self.module_keys[key]: nn.Linear(d_m, d_inter) for key, d_m in model_dims.items()}
        )
        self.anchor_proj = nn.Linear(d_sem, d_inter)  # trainable: makes the keys/values
        self.register_buffer("anchor_target_proj", fixed_projection(d_sem, d_inter))  # (d_inter, d_sem), fixed
        self.cross_attn = nn.ModuleList(
            nn.MultiheadAttention(d_inter, n_heads, dropout=dropout, batch_first=True)
            for _ in range(config.n_cross_layers)
        )
        self.refine = None
        if config.n_refine_layers > 0:
            layer = nn.TransformerEncoderLayer(
                d_inter, n_heads, dim_feedforward=4 * d_inter, dropout=dropout, batch_first=True
            )
            # Nested tensors would zero the padded outputs in eval only; the masks already handle padding.
            self.refine = nn.TransformerEncoder(layer, config.n_refine_layers, enable_nested_tensor=False)
        if config.pooling == Pooling.QUERIES:
            # Unit-scale queries so each slot attends differently from step 0 (tiny ones give M equal means).
            self.slot_queries = nn.Parameter(torch.randn(config.num_slots, d_inter))  # (M, d_inter)
            self.pool_attn = nn.MultiheadAttention(d_inter, n_heads, dropout=dropout, batch_first=True)

    @property
    def model_keys(self) -> list[str]:
        return list(self.model_dims)

    def forward(
        self,
        model_key: str,
        token_embeddings: torch.Tensor,
        token_mask: torch.Tensor,
        anchor: torch.Tensor,
        anchor_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Interlingua of a batch of prompts as seen by one model.

        Args:
            model_key: one of ``model_dims``' keys.
            token_embeddings: (B, T, d_m) frozen input embeddings, padded on either side.
            token_mask: (B, T) True = real token (an HF ``attention_mask`` works too).
            anchor: (B, d_sem) sentence embedding (``anchor=sentence``) or
                (B, S, d_sem) encoder token states (``anchor=tokens``).
            anchor_mask: (B, S) True = real anchor key; only for ``anchor=tokens`` (None = all real).
        Returns:
            z: (B, d_inter) with ``pooling=mean``; (B, M, d_inter) with ``pooling=queries``.
        Raises:
            KeyError: unknown model key (the message lists the known ones).
            ValueError: shapes that do not fit the config, or a row with no real token / anchor key.

        With a sentence anchor every cross-attention block attends over a single key. Softmax over one
        key is always 1, so the block adds ``out_proj(v_proj(key))`` — the same vector — to every token
        of the prompt: the seed's cross-attention is a learned, anchor-dependent bias (DESIGN §4.3).
        ``anchor=tokens`` gives the blocks several keys to choose between.
        """
        if model_key not in self.module_keys:
            raise KeyError(f"unknown model key {model_key!r}; known model keys: {self.model_keys}")
        proj = self.input_proj[self.module_keys[model_key]]
        if token_embeddings.dim() != 3 or token_embeddings.shape[-1] != proj.in_features:
            raise ValueError(
                f"token_embeddings for {model_key!r} must be (B, T, {proj.in_features}), "
                f"got {tuple(token_embeddings.shape)}"
            )
        token_mask = _check_mask(token_mask, token_embeddings.shape[:2], "token_mask")
        keys, key_padding_mask = self._anchor_keys(anchor, anchor_mask)  # (B, S, d_inter), (B, S) | None

        x = proj(token_embeddings.to(proj.weight.dtype))  # (B, T, d_inter)
        if self.config.positions == Positions.SINUSOIDAL:
            x = x + sinusoidal_positions(token_mask, self.config.d_inter).to(x.dtype)  # real tokens count from 0
        for attn in self.cross_attn:
            attended, _ = attn(x, keys, keys, key_padding_mask=key_padding_mask, need_weights=False)
            x = x + attended  # (B, T, d_inter)
        if self.refine is not None:
            x = self.refine(x, src_key_padding_mask=~token_mask)  # (B, T, d_inter)

        if self.config.pooling == Pooling.MEAN:
            return masked_mean(x, token_mask)  # (B, d_inter)
        queries = self.slot_queries.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, M, d_inter)
        z, _ = self.pool_attn(queries, x, x, key_padding_mask=~token_mask, need_weights=False)
        return z  # (B, M, d_inter)

    def project_anchor(self, anchor: torch.Tensor, anchor_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Target of the semantic-anchor loss: the anchor through the FIXED projection (no parameters).

        Args:
            anchor: (B, d_sem) or, for ``anchor=tokens``, (B, S, d_sem) with ``anchor_mask`` (B, S)
                (None = all real).
        Returns:
            (B, d_inter); for token anchors the projection of the masked mean of the token states.

        The projection keeps norms, and the result is multiplied by ``sqrt(d_inter)``: a unit-norm
        sentence embedding then has RMS 1 in the interlingua space, the scale of the aligner's
        LayerNorm-ed outputs. Without it (RMS ``1/sqrt(d_inter)``) the anchor loss would mostly ask
        ``z`` to shrink toward 0, one of the trivial minima of DESIGN §4.4.
        """
        if anchor.dim() == 3:
            if anchor_mask is None:
                anchor_mask = torch.ones(anchor.shape[:2], dtype=torch.bool, device=anchor.device)
            mask = _check_mask(anchor_mask, anchor.shape[:2], "anchor_mask")
            anchor = masked_mean(anchor, mask)  # (B, d_sem)
        if anchor.dim() != 2 or anchor.shape[-1] != self.d_sem:
            raise ValueError(f"anchor must be (B, {self.d_sem}) or (B, S, {self.d_sem}), got {tuple(anchor.shape)}")
        projected = anchor.to(self.anchor_target_proj.dtype) @ self.anchor_target_proj.T  # (B, d_inter)
        return projected * math.sqrt(self.config.d_inter)

    def _anchor_keys(
        self, anchor: torch.Tensor, anchor_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Anchor -> (keys (B, S, d_inter), key_padding_mask (B, S) True = padding, or None)."""
        kind = self.config.anchor
        expected_dim = 2 if kind == AnchorKind.SENTENCE else 3
        if anchor.dim() != expected_dim or anchor.shape[-1] != self.d_sem:
            shape = "(B, d_sem)" if kind == AnchorKind.SENTENCE else "(B, S, d_sem)"
            raise ValueError(
                f"interlingua.anchor={kind.value} needs an anchor of shape {shape} with d_sem={self.d_sem}, "
                f"got {tuple(anchor.shape)}"
            )
        keys = self.anchor_proj(anchor.to(self.anchor_proj.weight.dtype))
        if kind == AnchorKind.SENTENCE:
            if anchor_mask is not None:
                raise ValueError("anchor_mask is only for interlingua.anchor=tokens; pass None")
            return keys.unsqueeze(1), None  # (B, 1, d_inter): one key per prompt
        if anchor_mask is None:
            return keys, None  # (B, S, d_inter)
        return keys, ~_check_mask(anchor_mask, anchor.shape[:2], "anchor_mask")


def _check_mask(mask: torch.Tensor | None, shape: torch.Size, name: str) -> torch.Tensor:
    """Validate a (B, T) mask (True/1 = real) and return it as bool."""
    if mask is None or tuple(mask.shape) != tuple(shape):
        got = None if mask is None else tuple(mask.shape)
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {got}")
    mask = mask.bool()
    if not mask.any(dim=1).all():
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"{name}: rows {empty} have no real position; drop empty prompts before the aligner")
    return mask


def _clashes(names: dict[str, str]) -> list[str]:
    seen: dict[str, str] = {}
    for key, name in names.items():
        if name in seen:
            return [seen[name], key]
        seen[name] = key
    return []
