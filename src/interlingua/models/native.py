"""The native interlingua (DESIGN §8): a token-level z in a shared space fitted on the models' common
vocabulary, read by every receiver from step 0; every learned part is a residual that starts at zero.

    model = NativeInterlingua(spec, bridge=load_or_fit_bridge(lms, settings))
    model.attach_vocabularies(lms)                       # the receivers' embedding tables (vocab decoder)
    latent = model.encode(sender, embeddings, mask, anchor, anchor_mask)   # Latent: (B, T', d_inter) + mask
    soft = model.soft_prompt(receiver, latent)           # SoftTokens: (B, T', d_receiver) + mask

Sender side, for the frozen token embeddings ``E_a (B, T, d_a)`` of model a::

    z0 = P_a(E_a / rms_a)                                # fitted encoder map      (B, T, d_inter)
    z  = z0 + out_proj(Refine(z0, anchor))               # out_proj starts at 0    (B, T, d_inter)
    z  = pool_window(z)                                  # 1: as is; k: learnable weights (start: the
                                                         # mean) over k neighbours, or (pool_mode=prefix)
                                                         # the first ceil(T / k) positions; all: one vector
    m  = W_down(z)                                       # d_wire: whitened PCA of z (B, T', d_wire), the
                                                         # message; the receiver reads W_up(m) ≈ z

Receiver side, for model b::

    vocab:  soft = Σ_top-k softmax(cos(z, K_b) / τ_b) · E_b[top-k]   K_b = P_b(E_b / rms_b), fixed; τ_b learned
    linear: soft = Q_b(z) · rms_b                                      Q_b fitted, trained
    soft += residual_b(z) · rms_b                                      residual_b starts at 0

At τ → 0 the vocabulary decoder returns the receiver's own embedding of the nearest token string: the
lookup of ``../shared/probes/token_bridge.py``, on the receiver's own embedding manifold.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interlingua.config import NativeDecoder, PoolMode, Positions
from interlingua.models.aligner import masked_mean, module_key, sinusoidal_positions
from interlingua.models.bridge.fit import BRIDGE_METRICS_FILE
from interlingua.models.interlingua import InterlinguaModel, InterlinguaSpec

WIRE_METRICS_FILE = "wire_fit.json"
SEARCH_CHUNK = 512  # query rows scored against a whole vocabulary at once (chunk x V floats)
SEARCH_CANDIDATES = 8  # x top_k: the candidates a bf16 search keeps for the exact fp32 rescoring


@dataclass
class Latent:
    """A batch of token-level interlinguas: ``z (B, T, d_inter)``, ``mask (B, T)`` True = real, real
    positions first (right padding)."""

    z: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.z.shape[0]

    def rows(self) -> list[Tensor]:
        """One ``(T_i, d_inter)`` tensor per example (its real positions)."""
        return [z[m] for z, m in zip(self.z, self.mask)]

    @classmethod
    def from_rows(cls, rows: list[Tensor]) -> "Latent":
        """Right-padded batch of ``(T_i, d)`` rows."""
        width = max(len(r) for r in rows)
        z = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=rows[0].device)
        for i, row in enumerate(rows):
            z[i, : len(row)], mask[i, : len(row)] = row, True
        return cls(z, mask)

    def to(self, device) -> "Latent":
        return Latent(self.z.to(device), self.mask.to(device))


@dataclass
class SoftTokens:
    """Soft tokens in one receiver's embedding space ``(B, T, d)`` and their mask (real positions first)."""

    embeddings: Tensor
    mask: Tensor


class Refiner(nn.Module):
    """The seed's anchor cross-attention and refinement encoder as a residual branch on z0.

    ``z = z0 + out_proj(h)``, where ``h`` is z0 (+ sinusoidal positions) after ``n_cross_layers`` pre-norm
    cross-attention blocks over the anchor keys and ``n_refine_layers`` pre-norm encoder layers. ``out_proj``
    starts at zero, so at step 0 ``z == z0`` exactly and training only adds to the fitted bridge.
    """

    def __init__(self, d_inter: int, d_sem: int, n_heads: int, n_cross: int, n_refine: int, dropout: float,
                 positions: Positions):
        super().__init__()
        self.positions = positions
        self.anchor_proj = nn.Linear(d_sem, d_inter)
        self.cross_norms = nn.ModuleList(nn.LayerNorm(d_inter) for _ in range(n_cross))
        self.cross_attn = nn.ModuleList(
            nn.MultiheadAttention(d_inter, n_heads, dropout=dropout, batch_first=True) for _ in range(n_cross)
        )
        self.encoder = None
        if n_refine:
            layer = nn.TransformerEncoderLayer(d_inter, n_heads, 4 * d_inter, dropout, batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_refine, enable_nested_tensor=False)
        self.out_proj = nn.Linear(d_inter, d_inter)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, z0: Tensor, mask: Tensor, anchor: Tensor, anchor_mask: Tensor | None) -> Tensor:
        """``z0 (B, T, d)``, ``mask (B, T)``, anchor ``(B, d_sem)`` or ``(B, S, d_sem)`` -> z ``(B, T, d)``."""
        keys = self.anchor_proj(anchor.to(z0.dtype))
        keys = keys.unsqueeze(1) if keys.dim() == 2 else keys  # (B, S, d)
        key_padding = None if anchor_mask is None else ~anchor_mask.bool()
        h = z0
        if self.positions == Positions.SINUSOIDAL:
            h = h + sinusoidal_positions(mask, z0.shape[-1]).to(h.dtype)
        for norm, attn in zip(self.cross_norms, self.cross_attn):
            attended, _ = attn(norm(h), keys, keys, key_padding_mask=key_padding, need_weights=False)
            h = h + attended
        if self.encoder is not None:
            h = self.encoder(h, src_key_padding_mask=~mask)
        return z0 + self.out_proj(h) * mask.unsqueeze(-1).to(h.dtype)


class WindowPool(nn.Module):
    """``interlingua.pool_window``: T positions -> ceil(T / k) (``(B, 1, d)`` for ``window=None``: the seed's
    masked mean over a whole prompt).

    ``mode=window``: k consecutive z vectors -> one, with learnable weights that start as the mean (softmax
    of zeros). ``mode=prefix``: each example keeps the first ceil(T_i / k) of its T_i positions; what the
    others held reaches them only through the refiner, which attends over all T before this cut.
    """

    def __init__(self, window: int | None, mode: PoolMode = PoolMode.WINDOW):
        super().__init__()
        self.window, self.mode = window, PoolMode(mode)
        pooled = window is not None and window > 1 and self.mode == PoolMode.WINDOW
        self.logits = nn.Parameter(torch.zeros(window)) if pooled else None

    def forward(self, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, d)``, ``(B, T)`` -> ``(B, ceil(T / k), d)``, ``(B, ceil(T / k))`` (``(B, 1, d)`` for all)."""
        if self.window is None:
            return masked_mean(z, mask).unsqueeze(1), mask.any(1, keepdim=True)
        if self.window == 1:
            return z, mask
        k = self.window
        if self.mode == PoolMode.PREFIX:
            keep = (mask.sum(1, keepdim=True) + k - 1) // k  # (B, 1): ceil(T_i / k)
            width = -(-z.shape[1] // k)
            kept = torch.arange(width, device=mask.device).unsqueeze(0) < keep  # (B, width)
            return z[:, :width] * kept.unsqueeze(-1).to(z.dtype), kept
        pad = (-z.shape[1]) % k
        z = F.pad(z, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
        groups = z.view(z.shape[0], -1, k, z.shape[-1])  # (B, T/k, k, d)
        member = mask.view(mask.shape[0], -1, k)  # (B, T/k, k)
        weights = torch.softmax(self.logits, 0) * member.to(z.dtype)  # (B, T/k, k)
        pooled = (groups * weights.unsqueeze(-1)).sum(2) / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        return pooled, member.any(-1)


class Wire(nn.Module):
    """``interlingua.d_wire``: z ``(…, d_inter)`` -> the message ``(…, d_wire)`` at the sender, and back at the
    receiver. :meth:`fit` sets both maps in closed form to the whitened PCA of a sample of z: the message is
    z's top ``d_wire`` principal coordinates, each of unit variance (so one int4/int8 scale per group serves
    them all), and the way back is the best rank-``d_wire`` linear reconstruction of z."""

    def __init__(self, d_inter: int, d_wire: int):
        super().__init__()
        self.down = nn.Linear(d_inter, d_wire)
        self.up = nn.Linear(d_wire, d_inter)

    @property
    def width(self) -> int:
        return self.down.out_features

    def fit(self, rows: Tensor) -> dict:
        """Set the maps to the whitened PCA of ``rows (N, d_inter)``; returns ``{"rows", "explained_variance"}``.

        Raises:
            ValueError: fewer than ``d_wire + 1`` rows, or rows with no spread (nothing to fit the directions to).
        """
        rows = rows.detach().double()
        if rows.shape[0] <= self.width:
            raise ValueError(f"the wire's PCA needs more than d_wire = {self.width} z vectors, got {rows.shape[0]}; "
                             "raise interlingua.wire_fit_examples")
        mean = rows.mean(0)
        centred = rows - mean
        variances, directions = torch.linalg.eigh(centred.T @ centred / (rows.shape[0] - 1))  # ascending
        top, spread = directions[:, -self.width:].flip(-1), variances[-self.width:].flip(0)  # (d, w), (w,)
        if not spread[0] > 0:
            raise ValueError("the z vectors the wire is fitted on are all equal: nothing to fit its directions to")
        scale = spread.clamp_min(spread[0] * 1e-8).sqrt()  # (w,)
        down = (top / scale).T  # (w, d): whitened coordinates
        with torch.no_grad():
            self.down.weight.copy_(down)
            self.down.bias.copy_(-(down @ mean))
            self.up.weight.copy_(top * scale)
            self.up.bias.copy_(mean)
        return {"rows": int(rows.shape[0]),
                "explained_variance": float(spread.clamp_min(0).sum() / variances.clamp_min(0).sum())}


class ReceiverHead(nn.Module):
    """z -> soft tokens for one receiver (module docstring); selectable ``vocab`` or ``linear`` decoder."""

    def __init__(self, d_inter: int, d_model: int, embedding_rms: float, decoder: NativeDecoder, top_k: int,
                 temperature: float):
        super().__init__()
        self.decoder, self.top_k, self.embedding_rms = decoder, top_k, float(embedding_rms)
        self.linear = nn.Linear(d_inter, d_model)  # Q_b, fitted
        self.key_map = nn.Linear(d_model, d_inter).requires_grad_(False)  # P_b as fitted: fixed keys
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.residual = nn.Linear(d_inter, d_model)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self._keys: Tensor | None = None  # (V', d_inter) unit-norm keys, not saved (derived)
        self._ids: Tensor | None = None  # (V',) token ids of the keys
        self._search_keys: Tensor | None = None  # the keys in bf16 where that searches faster (see _top_k)
        self._embed = None  # the receiver's own input embedding: ids -> (…, d_model)

    def attach_vocabulary(self, embed, unit_table: Tensor, ids: Tensor) -> None:
        """Keys ``normalize(P_b(E_b[ids] / rms_b))`` for the vocabulary decoder; values come from ``embed``."""
        with torch.no_grad():
            keys = torch.cat([self.key_map(chunk) for chunk in unit_table[ids].split(16384)])
        self._keys, self._ids, self._embed = F.normalize(keys, dim=-1), ids, embed
        self._search_keys = self._keys.to(torch.bfloat16) if fast_bf16_matmul(self._keys.device) else None

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def forward(self, z: Tensor) -> Tensor:
        """``(B, T, d_inter)`` -> ``(B, T, d_model)``."""
        if self.decoder == NativeDecoder.LINEAR:
            base = self.linear(z) * self.embedding_rms
        else:
            base = self._vocabulary_mix(z)
        return base + self.residual(z) * self.embedding_rms

    def _vocabulary_mix(self, z: Tensor) -> Tensor:
        if self._keys is None:
            raise RuntimeError("the vocabulary decoder has no vocabulary: call model.attach_vocabularies(lms) first")
        flat = F.normalize(z.reshape(-1, z.shape[-1]), dim=-1)  # (N, d_inter)
        keys = self._keys.to(flat.device)
        with torch.no_grad():  # which tokens compete needs no gradient; their weights do
            picked = torch.cat([self._top_k(chunk, keys) for chunk in flat.split(SEARCH_CHUNK)])
        scores = (flat.unsqueeze(1) * keys[picked]).sum(-1) / self.temperature  # (N, k)
        values = self._embed(self._ids.to(picked.device)[picked]).to(z.dtype)  # (N, k, d_model)
        mixed = (torch.softmax(scores, -1).unsqueeze(-1) * values).sum(1)  # (N, d_model)
        return mixed.view(*z.shape[:-1], -1)

    def nearest_key(self, queries: Tensor) -> Tensor:
        """Ids (into the keys) of each unit query row's nearest key: ``(n, d)`` -> ``(n,)``."""
        keys = self._keys.to(queries.device)
        return torch.cat([self._top_k(chunk, keys, 1)[:, 0] for chunk in queries.float().split(SEARCH_CHUNK)])

    def _top_k(self, queries: Tensor, keys: Tensor, top_k: int | None = None) -> Tensor:
        """Ids (into the keys) of the ``top_k`` keys of highest cosine per query row: ``(n, d)`` -> ``(n, k)``.

        Where bf16 matmuls are fast (AMX CPUs, CUDA) the whole vocabulary is scored in bf16 (~4x faster on
        Gemma-3's 262k keys, the largest cost of a receiver head) and only its best ``SEARCH_CANDIDATES ·
        top_k`` are rescored exactly in fp32, so the result is fp32's unless a true top-k key ranks below
        that in bf16 (cosines are off by < 0.01 in bf16; tested to pick the same keys)."""
        top_k = top_k or self.top_k
        search = self._search_keys
        if search is None or search.device != queries.device:
            return (queries @ keys.T).topk(top_k, dim=-1).indices
        width = min(keys.shape[0], SEARCH_CANDIDATES * top_k)
        candidates = (queries.to(search.dtype) @ search.T).topk(width, dim=-1).indices  # (n, width)
        exact = torch.einsum("nd,nwd->nw", queries, keys[candidates])  # (n, width) fp32 cosines
        return candidates.gather(1, exact.topk(top_k, dim=-1).indices)


def fast_bf16_matmul(device: torch.device) -> bool:
    """Whether bf16 matmuls beat fp32 here: CUDA, or a CPU with native bf16 (AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return True
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return device.type == "cpu" and check is not None and bool(check())


class NativeInterlingua(InterlinguaModel):
    """Fitted encoder maps + residual refiner + window pooling + per-receiver heads.

    Args:
        spec: the frozen models and ``interlingua.*`` (``design=native``).
        bridge: the fitted vocabulary bridge to start from; None leaves the maps at random values (for
            :meth:`from_pretrained`, which loads the trained ones).
    """

    def __init__(self, spec: InterlinguaSpec, bridge=None):
        nn.Module.__init__(self)
        self.spec = spec
        self._embedding_rms = {m.spec: m.embedding_rms for m in spec.models}
        cfg = spec.interlingua
        d = cfg.d_inter
        self.encoders = nn.ModuleDict({module_key(m.spec): nn.Linear(m.hidden_size, d) for m in spec.models})
        self.receivers = nn.ModuleDict({
            module_key(m.spec): ReceiverHead(d, m.hidden_size, m.embedding_rms, cfg.decoder, cfg.vocab_top_k,
                                             cfg.vocab_temperature)
            for m in spec.models
        })
        self.refiner = None
        if cfg.n_cross_layers or cfg.n_refine_layers:
            self.refiner = Refiner(d, spec.d_sem, cfg.n_heads, cfg.n_cross_layers, cfg.n_refine_layers, cfg.dropout,
                                   cfg.positions)
        self.pool = WindowPool(cfg.pool_size, cfg.pool_mode)
        self.wire = Wire(d, cfg.d_wire) if cfg.d_wire is not None else None
        self.wire_metrics: dict | None = None
        """The wire's closed-form fit (rows, explained variance), saved as ``wire_fit.json``."""
        self._wire_bypassed = False
        self.bridge_metrics: dict | None = None
        """The fit's measurements (shared vocabulary, held-out quality), saved as ``bridge_fit.json``."""
        if bridge is not None:
            self.load_bridge(bridge)
            self.bridge_metrics = bridge.metrics
        if not cfg.train_maps:
            for module in (*self.encoders.values(), *(r.linear for r in self.receivers.values())):
                module.requires_grad_(False)

    def load_bridge(self, bridge) -> None:
        """Set every encoder map, decoder map and key map to the fitted bridge's."""
        with torch.no_grad():
            for m in self.spec.models:
                name = module_key(m.spec)
                for target, fitted in ((self.encoders[name], bridge.encoders[m.spec]),
                                       (self.receivers[name].key_map, bridge.encoders[m.spec]),
                                       (self.receivers[name].linear, bridge.decoders[m.spec])):
                    target.weight.copy_(fitted.weight)
                    target.bias.copy_(fitted.bias)

    def save_pretrained(self, directory) -> None:
        super().save_pretrained(directory)
        for name, metrics in ((BRIDGE_METRICS_FILE, self.bridge_metrics), (WIRE_METRICS_FILE, self.wire_metrics)):
            if metrics is not None:
                (Path(directory) / name).write_text(json.dumps(metrics, indent=2) + "\n")

    def read_extras(self, directory) -> None:
        for name, attribute in ((BRIDGE_METRICS_FILE, "bridge_metrics"), (WIRE_METRICS_FILE, "wire_metrics")):
            path = Path(directory) / name
            if path.is_file():
                setattr(self, attribute, json.loads(path.read_text()))

    @contextmanager
    def wire_bypassed(self):
        """Within it, :meth:`encode` returns the ``d_inter``-wide z (what the wire is fitted on)."""
        self._wire_bypassed = True
        try:
            yield self
        finally:
            self._wire_bypassed = False

    def attach_vocabularies(self, lms: dict) -> None:
        """Give each receiver head its model's vocabulary (keys and embeddings); needed by ``decoder=vocab``."""
        from interlingua.models.bridge.fit import unit_embeddings
        from interlingua.models.bridge.vocab import id_bytes

        for key, lm in lms.items():
            head = self.receivers[module_key(key)]
            if head.decoder != NativeDecoder.VOCAB or head._keys is not None:
                continue
            ids = torch.tensor(sorted(id_bytes(lm.tokenizer)))  # special tokens stand for no text
            head.attach_vocabulary(lm.embed, unit_embeddings(lm), ids)

    def vocabulary_code(self):
        """The codebooks of ``compression.precision=vocab`` (:mod:`interlingua.codec.vocabulary`): every
        receiver head's vocabulary keys, in model order, each searched the way its head searches.

        Raises:
            RuntimeError: a head without a vocabulary (``attach_vocabularies`` first), or a narrowed wire
                (``d_wire``: the vocabulary code replaces it, it does not stack on it).
        """
        from interlingua.codec.vocabulary import VocabularyCode

        if self.wire is not None:
            raise RuntimeError("the vocabulary code sends d_inter-wide positions; this interlingua narrows them with "
                               f"interlingua.d_wire={self.wire.width}: use fp16 / int8 / int4 with it")
        heads = [self.receivers[module_key(m.spec)] for m in self.spec.models]
        if any(h._keys is None for h in heads):
            raise RuntimeError("the vocabulary code needs every receiver's vocabulary: call "
                               "model.attach_vocabularies(lms) first")
        return VocabularyCode(tuple(h._keys for h in heads), tuple(h.nearest_key for h in heads))

    @property
    def z_shape(self) -> tuple[int, ...]:
        """Per-message shape ``(T', d_wire)`` (``d_wire`` = ``d_inter`` unless narrowed); T' varies (-1)."""
        return (-1, self.wire.width if self.wire is not None else self.spec.interlingua.d_inter)

    def encode(self, model_key: str, token_embeddings, token_mask, anchor, anchor_mask=None) -> Latent:
        """Frozen token embeddings ``(B, T, d_m)`` (right-padded, mask ``(B, T)``) -> :class:`Latent`."""
        name = module_key(model_key)
        if name not in self.encoders:
            raise KeyError(f"unknown model key {model_key!r}; known model keys: {self.model_keys}")
        mask = token_mask.bool()
        z = self.encoders[name](token_embeddings.float() / self._embedding_rms[model_key])  # (B, T, d_inter)
        z = z * mask.unsqueeze(-1)
        if self.refiner is not None:
            z = self.refiner(z, mask, anchor, anchor_mask)
        z, mask = self.pool(z, mask)
        if self.wire is not None and not self._wire_bypassed:
            z = self.wire.down(z) * mask.unsqueeze(-1)
        return Latent(z, mask)

    def widened(self, latent: Latent) -> Latent:
        """A message as the receivers read it: back to ``(B, T', d_inter)`` through the wire (itself without one)."""
        if self.wire is None:
            return latent
        return Latent(self.wire.up(latent.z) * latent.mask.unsqueeze(-1), latent.mask)

    def soft_prompt(self, model_key: str, latent: Latent) -> SoftTokens:
        """Any sender's :class:`Latent` -> soft tokens in ``model_key``'s embedding space."""
        name = module_key(model_key)
        if name not in self.receivers:
            raise KeyError(f"no receiver head for model {model_key!r}; "
                           f"this interlingua has: {', '.join(self.model_keys)}")
        soft = self.receivers[name](self.widened(latent).z)
        return SoftTokens(soft * latent.mask.unsqueeze(-1), latent.mask)

    def project_anchor(self, anchor: Tensor, anchor_mask: Tensor | None = None) -> Tensor:
        """Anchor target of L_sem in the shared space: the fixed projection of the seed (DESIGN §4.4)."""
        from interlingua.models.aligner import fixed_projection

        if anchor.dim() == 3:
            if anchor_mask is None:
                anchor_mask = torch.ones(anchor.shape[:2], dtype=torch.bool, device=anchor.device)
            anchor = masked_mean(anchor, anchor_mask.bool())
        projection = fixed_projection(anchor.shape[-1], self.spec.interlingua.d_inter).to(anchor.device)
        return anchor.float() @ projection.T * math.sqrt(self.spec.interlingua.d_inter)


def summary(latent: Latent) -> Tensor:
    """One vector per example, ``(B, d_inter)``: the masked mean of its z (alignment and anchor terms
    compare these where two senders' sequence lengths differ)."""
    return masked_mean(latent.z, latent.mask)

