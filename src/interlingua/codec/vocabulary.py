"""The vocabulary code, ``compression.precision=vocab``: every z position travels as one token id per model of
the interlingua (the vocabulary key nearest to it in cosine, in that model's receiver head) and its norm.

A native receiver head reads a position through the vocabulary keys nearest to its direction (the top-k
vocabulary mix, ``interlingua.decoder=vocab``), so the nearest key of every receiver keeps what decides each
receiver's reading; a receiver decodes the position as ``normalize(sum of those keys) * norm``. The ids are
bit-packed at ``ceil(log2 V)`` bits per model (SmolLM2 + Gemma-3: 16 + 18 bits), the norm is an fp16: 6.25 B
per position instead of 36 B for 64 int4 values and their scales. Byte layout: ``docs/wire-format.md``.

    code = model.vocabulary_code()               # needs model.attach_vocabularies(lms)
    ids, norms = code.encode(z)                 # (T, K) int64, (T,) fp16
    z_received = code.decode(ids, norms)        # (T, d_inter) fp32
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from interlingua.errors import WireFormatError

NORM_BYTES = 2
"""Each position's norm travels as an fp16 (in the frame's scales section)."""


@dataclass(frozen=True)
class VocabularyCode:
    """The codebooks of the vocabulary code: one per model, in the interlingua's model order.

    Args:
        keys: per model, its receiver head's unit-norm vocabulary keys ``(V_k, d_inter)``.
        nearest: per model, an optional fast search ``(n, d) unit rows -> (n,) ids`` (the head's own, which
            scores in bf16 where that is faster); None searches exactly in fp32.
    """

    keys: tuple[Tensor, ...]
    nearest: Optional[tuple[Callable[[Tensor], Tensor], ...]] = None

    def __post_init__(self):
        if not self.keys or any(k.dim() != 2 or k.shape[0] < 1 for k in self.keys):
            raise ValueError("a vocabulary code needs at least one codebook of shape (V, d) with V >= 1")
        if len({k.shape[1] for k in self.keys}) != 1:
            raise ValueError(f"the codebooks disagree on the width: {[tuple(k.shape) for k in self.keys]}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Bits per id, per codebook: ``ceil(log2 V_k)`` (at least 1)."""
        return tuple(max(1, math.ceil(math.log2(k.shape[0]))) for k in self.keys)

    @property
    def bits_per_position(self) -> int:
        return sum(self.widths)

    @property
    def width(self) -> int:
        """d_inter: the width of the z it codes."""
        return int(self.keys[0].shape[1])

    # ---- z <-> (ids, norms) ------------------------------------------------------------------------
    def encode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(T, d)`` -> ids ``(T, K)`` int64 (nearest key per codebook) and norms ``(T,)`` fp16.

        Raises:
            ValueError: z is not ``(T, d_inter)`` with T >= 1, holds NaN/inf, or a norm overflows fp16.
        """
        if z.dim() != 2 or z.shape[0] == 0 or z.shape[1] != self.width:
            raise ValueError(f"the vocabulary code sends z of shape (T >= 1, {self.width}), got {tuple(z.shape)}")
        z = z.detach().float()
        if not torch.isfinite(z).all():
            raise ValueError("z contains NaN or inf values; they cannot be sent (did training diverge?)")
        norms = z.norm(dim=-1)
        if norms.max().item() >= 65520.0:
            raise ValueError(f"a z position's norm {norms.max().item():.3g} overflows its fp16 field; use fp32")
        return self.nearest_ids(z), norms.to(torch.float16).cpu()

    def nearest_ids(self, z: Tensor) -> Tensor:
        """``(n, d)`` -> ``(n, K)`` int64: per codebook, the key of highest cosine with each row."""
        unit = F.normalize(z.float(), dim=-1)
        ids = []
        for book, keys in enumerate(self.keys):
            search = self.nearest[book] if self.nearest is not None else None
            found = search(unit) if search is not None else (unit @ keys.to(unit.device).T).argmax(-1)
            ids.append(found.long().to(unit.device))
        return torch.stack(ids, dim=-1)

    def decode(self, ids: Tensor, norms: Tensor) -> Tensor:
        """ids ``(T, K)``, norms ``(T,)`` -> z ``(T, d)`` fp32: ``normalize(sum_k keys_k[ids_k]) * norm``.

        Raises:
            WireFormatError: an id past its codebook, or a negative / non-finite norm.
        """
        for book, keys in enumerate(self.keys):
            if ids.numel() and ids[:, book].max().item() >= keys.shape[0]:
                raise WireFormatError(
                    f"token id {ids[:, book].max().item()} in codebook {book + 1}, which has {keys.shape[0]} keys "
                    "(a corrupted message, or one coded for other vocabularies)"
                )
        if not (torch.isfinite(norms).all() and (norms >= 0).all()):
            raise WireFormatError("norms must be finite and >= 0; the message holds a negative, NaN or inf norm")
        return self.expand(ids, norms.float())

    def expand(self, ids: Tensor, norms: Tensor) -> Tensor:
        """The decoding arithmetic without checks: ``(…, K)`` ids, ``(…)`` norms -> ``(…, d)``."""
        summed = sum(keys.to(ids.device)[ids[..., book]] for book, keys in enumerate(self.keys))
        return F.normalize(summed.float(), dim=-1) * norms.float().unsqueeze(-1)

    def round_trip(self, z: Tensor) -> Tensor:
        """What a receiver decodes from ``z (T, d)``: ``decode(*encode(z))``, on z's device."""
        ids, norms = self.encode(z)
        return self.expand(ids, norms.to(ids.device))

    def fake_code(self, z: Tensor) -> Tensor:
        """The round trip for a batch ``(…, d)``, with a straight-through gradient (quantisation-aware
        training): forward values are exactly what the wire delivers, the backward pass is the identity."""
        flat = z.detach().reshape(-1, z.shape[-1]).float()
        norms = flat.norm(dim=-1).to(torch.float16)
        wire = self.expand(self.nearest_ids(flat), norms).view(z.shape)
        return wire.to(z.dtype) + (z - z.detach())

    # ---- bit packing -------------------------------------------------------------------------------
    def payload_nbytes(self, positions: int) -> int:
        return payload_nbytes(positions, self.bits_per_position)

    def pack(self, ids: Tensor) -> bytes:
        """``(T, K)`` ids -> their bits, position by position, each id most significant bit first."""
        columns = [((ids[:, book:book + 1].cpu().numpy().astype(np.int64) >> np.arange(width - 1, -1, -1)) & 1)
                   for book, width in enumerate(self.widths)]
        return np.packbits(np.concatenate(columns, axis=1).astype(np.uint8).reshape(-1)).tobytes()

    def unpack(self, payload: bytes, positions: int) -> Tensor:
        """Inverse of :meth:`pack`.

        Raises:
            WireFormatError: the payload is not ``payload_nbytes(positions)`` bytes or its padding bits are set.
        """
        expected = self.payload_nbytes(positions)
        if len(payload) != expected:
            raise WireFormatError(f"vocabulary payload is {len(payload)} bytes, {positions} positions of "
                                  f"{self.bits_per_position} bits need {expected}")
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        used = positions * self.bits_per_position
        if bits[used:].any():
            raise WireFormatError("vocabulary payload has non-zero padding bits after the last id")
        bits = bits[:used].reshape(positions, self.bits_per_position).astype(np.int64)
        ids, start = [], 0
        for width in self.widths:
            ids.append((bits[:, start:start + width] << np.arange(width - 1, -1, -1)).sum(1))
            start += width
        return torch.from_numpy(np.stack(ids, axis=1))


def payload_nbytes(positions: int, bits_per_position: int) -> int:
    """Bytes of ``positions`` bit-packed positions (the last byte zero-padded)."""
    return -(-positions * bits_per_position // 8)
