"""Symmetric per-group quantisation of ``z`` for the wire, and its differentiable twin for QAT.

Float precisions are plain casts: ``fp32`` is exact, ``fp16`` is IEEE half, ``bf16`` is the upper 16 bits
of the fp32 value after round-to-nearest-even. Integer precisions flatten the tensor, cut it into groups of
``group_size`` consecutive values (the last may be short), and store per group one scale (fp16) and one
integer per value: ``q = round(x / scale)`` in [-127, 127] (int8) or [-7, 7] (int4, two per byte, low
nibble first). The scale is ``max|x| / L`` rounded *up* to the next fp16, so no value is clipped and the
reconstruction error is at most ``scale / 2`` per element (:func:`error_bound`). ``fake_quantize`` runs the
very same arithmetic on a batch, so a model trained with it sees exactly what a receiver decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from interlingua.config import Precision
from interlingua.errors import WireFormatError

INT_LEVELS = {Precision.INT8: 127, Precision.INT4: 7}
"""Largest stored magnitude L. Symmetric on purpose: -128 / -8 are never used, so 0 is exact and +-max mirror."""
FLOAT_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}
VALUE_BYTES = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2, Precision.INT8: 1}
SCALE_BYTES = 2  # scales travel as fp16: half the size of fp32 scales, error bound stays exact (rounded up)
FP16_MAX = 65504.0
_FP16_MAX_BITS = 0x7BFF  # bit pattern of FP16_MAX; +1 would be inf
FP16_REL_ERROR = 2.0**-11  # half an ulp of a normal fp16, relative to |x|
FP16_ABS_ERROR = 2.0**-25  # half the spacing of fp16 subnormals (|x| < 2**-14)
BF16_REL_ERROR = 2.0**-8
BF16_ABS_ERROR = 2.0**-134


@dataclass(frozen=True)
class Quantized:
    """One quantised tensor: the bytes a message carries for it."""

    payload: bytes
    """Values: little-endian floats, int8 bytes, or packed int4 nibbles."""
    scales: Optional[Tensor]
    """(G,) float16 per-group scales for int8/int4; None for float precisions."""
    shape: tuple[int, ...]
    precision: Precision
    group_size: int
    """Values per scale for int8/int4; 0 for float precisions (unused)."""

    @property
    def nbytes(self) -> int:
        """Bytes of payload plus scales: what the quantisation costs on the wire."""
        return len(self.payload) + (0 if self.scales is None else self.scales.numel() * SCALE_BYTES)


# ---- sizes (shared by quantize, the decoder's checks and message_size) ---------------------------


def num_groups(numel: int, group_size: int) -> int:
    """Number of scale groups of a flattened tensor of ``numel`` values (the last one may be short)."""
    return -(-numel // group_size)


def payload_nbytes(numel: int, precision: Precision) -> int:
    """Exact payload bytes of ``numel`` values at ``precision`` (int4 packs two values per byte)."""
    precision = Precision(precision)
    if precision is Precision.INT4:
        return (numel + 1) // 2
    return numel * VALUE_BYTES[precision]


def scales_nbytes(numel: int, precision: Precision, group_size: int) -> int:
    """Exact bytes of the per-group fp16 scales; 0 for float precisions."""
    if Precision(precision) in FLOAT_DTYPES:
        return 0
    return num_groups(numel, group_size) * SCALE_BYTES


# ---- the integer arithmetic, shared by the wire and fake_quantize -------------------------------


def _as_groups(flat: Tensor, group_size: int) -> Tensor:
    """(B, N) -> (B, G, group_size) float64, the short last group padded with zeros (zeros never raise max|x|)."""
    batch, numel = flat.shape
    padded = torch.zeros(batch, num_groups(numel, group_size) * group_size, dtype=torch.float64, device=flat.device)
    padded[:, :numel] = flat
    return padded.view(batch, -1, group_size)


def _group_scales(groups: Tensor, levels: int) -> Tensor:
    """Per-group scale ``max|x| / levels`` rounded up to an fp16 (so ``|x| / scale <= levels``).

    Args:
        groups: (B, G, S) float64.
        levels: L, the largest stored magnitude.
    Returns:
        (B, G) float16; 0 for an all-zero group; saturates at FP16_MAX (callers that care check first).
    """
    target = groups.abs().amax(dim=-1) / levels  # (B, G)
    nearest = target.to(torch.float16)
    bits = nearest.view(torch.int16) + (nearest.double() < target).to(torch.int16)  # next fp16 up if rounded down
    return bits.clamp(max=_FP16_MAX_BITS).view(torch.float16)


def quantize_groups(flat: Tensor, precision: Precision, group_size: int) -> tuple[Tensor, Tensor]:
    """Integer codes and scales of each row, in float64 so that rounding is exact (error <= scale / 2).

    Args:
        flat: (B, N) finite floats, one example per row.
        precision: INT8 or INT4.
        group_size: values per scale.
    Returns:
        codes (B, N) int8 in [-L, L] and scales (B, G) float16.
    """
    levels = INT_LEVELS[Precision(precision)]
    groups = _as_groups(flat.detach(), group_size)  # (B, G, S)
    scales = _group_scales(groups, levels)  # (B, G)
    divisor = torch.where(scales > 0, scales.double(), torch.ones_like(scales, dtype=torch.float64))
    codes = (groups / divisor.unsqueeze(-1)).round().clamp(-levels, levels)  # (B, G, S); all-zero group -> 0
    return codes.flatten(1)[:, : flat.shape[1]].to(torch.int8), scales


def dequantize_groups(codes: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """codes (B, N) int, scales (B, G) float16 -> (B, N) float32; ``code * scale`` is exact in float32."""
    per_value = scales.float().repeat_interleave(group_size, dim=1)[:, : codes.shape[1]]  # (B, N)
    return codes.float() * per_value


# ---- int4 packing -------------------------------------------------------------------------------


def pack_int4(codes: np.ndarray) -> bytes:
    """(N,) int8 codes in [-8, 7] -> ceil(N/2) bytes: two's-complement nibbles, low nibble first, odd N 0-padded."""
    nibbles = (codes.astype(np.int16) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(payload: bytes, numel: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`.

    Raises:
        WireFormatError: a nibble is -8 (never written) or the padding nibble of an odd count is not 0.
    """
    packed = np.frombuffer(payload, dtype=np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1).astype(np.int8)  # (2 * len,)
    if nibbles.size > numel and nibbles[numel:].any():
        raise WireFormatError("int4 payload has a non-zero padding nibble after the last value")
    codes = np.where(nibbles >= 8, nibbles - 16, nibbles)[:numel].astype(np.int8)
    if (codes == -8).any():
        raise WireFormatError("int4 payload holds -8, which the symmetric [-7, 7] scheme never writes")
    return codes


# ---- the wire -----------------------------------------------------------------------------------


def _check_encodable(x: Tensor, precision: Precision, group_size: int) -> None:
    """Raise ValueError for a tensor the wire cannot carry within its error bound."""
    if x.numel() == 0:
        raise ValueError(f"cannot quantise an empty tensor of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("z contains NaN or inf values; they cannot be sent (did training diverge?)")
    if precision in INT_LEVELS:
        if group_size < 1:
            raise ValueError(
                f"group_size must be >= 1 for {precision.value}, got {group_size} (set compression.group_size)"
            )
        largest = x.abs().max().item()
        if largest / INT_LEVELS[precision] > FP16_MAX:
            raise ValueError(
                f"max|z| = {largest:.3g} needs a scale above the fp16 maximum {FP16_MAX} at {precision.value}; "
                "use fp32 or bf16"
            )
    elif precision is Precision.FP16 and x.abs().max().item() >= 65520.0:  # rounds to inf in fp16
        raise ValueError(f"max|z| = {x.abs().max().item():.3g} overflows fp16 (max {FP16_MAX}); use bf16 or fp32")
    elif precision is Precision.BF16 and not torch.isfinite(x.to(torch.bfloat16)).all():
        raise ValueError("z overflows bf16; use fp32")


def quantize(x: Tensor, precision: Precision, group_size: int) -> Quantized:
    """Quantise one tensor for the wire.

    Args:
        x: any shape, any float dtype (cast to float32 first); one example, e.g. z of shape (M, d_inter).
        precision: fp32 | fp16 | bf16 | int8 | int4.
        group_size: values per scale (int8/int4); ignored by float precisions.
    Returns:
        Quantized with exactly ``payload_nbytes`` + ``scales_nbytes`` bytes.
    Raises:
        ValueError: empty or non-finite x, group_size < 1, or values out of the precision's range.
    """
    precision = Precision(precision)
    x32 = x.detach().to("cpu", torch.float32).contiguous()
    _check_encodable(x32, precision, group_size)
    shape = tuple(x32.shape)
    if precision is Precision.FP32:
        return Quantized(x32.numpy().astype("<f4").tobytes(), None, shape, precision, 0)
    if precision is Precision.FP16:
        return Quantized(x32.numpy().astype("<f2").tobytes(), None, shape, precision, 0)
    if precision is Precision.BF16:
        bits = x32.to(torch.bfloat16).view(torch.int16).numpy()  # round-to-nearest-even, then the raw 16 bits
        return Quantized(bits.astype("<i2").tobytes(), None, shape, precision, 0)
    codes, scales = quantize_groups(x32.reshape(1, -1), precision, group_size)  # (1, N), (1, G)
    codes_np = codes[0].numpy()
    payload = pack_int4(codes_np) if precision is Precision.INT4 else codes_np.tobytes()
    return Quantized(payload, scales[0], shape, precision, group_size)


def _decode_codes(q: Quantized, numel: int) -> Tensor:
    """The int8/int4 codes of ``q`` as a (1, N) int8 tensor; raises WireFormatError on -128 / -8."""
    if q.precision is Precision.INT4:
        codes = unpack_int4(q.payload, numel)
    else:
        codes = np.frombuffer(q.payload, dtype=np.int8)
        if (codes == -128).any():
            raise WireFormatError("int8 payload holds -128, which the symmetric [-127, 127] scheme never writes")
    return torch.from_numpy(codes.copy()).view(1, numel)


def _check_sizes(q: Quantized, numel: int) -> None:
    """Raise WireFormatError when payload or scales do not match shape / precision / group_size."""
    expected = payload_nbytes(numel, q.precision)
    if len(q.payload) != expected:
        raise WireFormatError(
            f"payload is {len(q.payload)} bytes, but shape {q.shape} at {q.precision.value} needs {expected}"
        )
    if q.precision in INT_LEVELS:
        groups = num_groups(numel, q.group_size)
        if q.scales is None or q.scales.numel() != groups:
            got = None if q.scales is None else q.scales.numel()
            raise WireFormatError(f"{got} scales for shape {q.shape} with group_size {q.group_size}, need {groups}")
        if not (torch.isfinite(q.scales).all() and (q.scales >= 0).all()):
            raise WireFormatError("scales must be finite and >= 0; the message holds a negative, NaN or inf scale")


def dequantize(q: Quantized) -> Tensor:
    """Reconstruct the tensor a :class:`Quantized` carries.

    Returns:
        float32 tensor of shape ``q.shape``.
    Raises:
        WireFormatError: sizes inconsistent with shape/precision, out-of-range codes, bad scales, or
            non-finite values.
    """
    numel = int(np.prod(q.shape, dtype=np.int64))
    _check_sizes(q, numel)
    if q.precision is Precision.FP32:
        values = np.frombuffer(q.payload, dtype="<f4").astype(np.float32)
    elif q.precision is Precision.FP16:
        values = np.frombuffer(q.payload, dtype="<f2").astype(np.float32)
    elif q.precision is Precision.BF16:
        values = (np.frombuffer(q.payload, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        codes = _decode_codes(q, numel)  # (1, N)
        return dequantize_groups(codes, q.scales.view(1, -1), q.group_size).view(q.shape)
    z = torch.from_numpy(values.copy()).view(q.shape)
    if not torch.isfinite(z).all():
        raise WireFormatError("the message holds NaN or inf values, which no sender writes")
    return z


def error_bound(x: Tensor, precision: Precision, group_size: int) -> Tensor:
    """Per-element bound on ``|dequantize(quantize(x)) - x|`` that the scheme guarantees.

    fp32: 0. fp16: ``max(|x| * 2**-11, 2**-25)``. bf16: ``max(|x| * 2**-8, 2**-134)``. int8/int4: half the
    stored scale of the element's group, ``scale / 2`` with ``scale <= max|x| / L * (1 + 2**-10) + 2**-24``.

    Args:
        x: any shape (cast to float32, as :func:`quantize` does).
        precision, group_size: as for :func:`quantize`.
    Returns:
        float64 tensor of x's shape.
    """
    precision = Precision(precision)
    x64 = x.detach().to("cpu", torch.float32).double()
    if precision is Precision.FP32:
        return torch.zeros_like(x64)
    if precision is Precision.FP16:
        return (x64.abs() * FP16_REL_ERROR).clamp(min=FP16_ABS_ERROR)
    if precision is Precision.BF16:
        return (x64.abs() * BF16_REL_ERROR).clamp(min=BF16_ABS_ERROR)
    flat = x64.reshape(1, -1)  # (1, N)
    scales = _group_scales(_as_groups(flat, group_size), INT_LEVELS[precision])  # (1, G)
    per_value = scales.double().repeat_interleave(group_size, dim=1)[:, : flat.shape[1]]  # (1, N)
    return (per_value / 2).view(x64.shape)


# ---- quantisation-aware training ----------------------------------------------------------------


def fake_quantize(x: Tensor, precision: Precision, group_size: int) -> Tensor:
    """Quantise -> dequantise each example, with a straight-through gradient.

    Forward: row ``i`` equals ``dequantize(quantize(x[i], precision, group_size))`` exactly (same
    arithmetic as the wire). Backward: identity. Inputs must be finite and in range (no checks here,
    to keep training free of host syncs).

    Args:
        x: (B, ...) float, e.g. z of shape (B, M, d_inter); each x[i] is one wire message.
        precision, group_size: as for :func:`quantize`.
    Returns:
        Tensor of x's shape and dtype (values computed in float32, then cast back).
    """
    precision = Precision(precision)
    if precision is Precision.FP32:
        return x
    # float64 is unavailable on MPS; the codes are computed on the CPU there.
    work = x.detach().float().to("cpu" if x.device.type == "mps" else x.device)
    if precision in FLOAT_DTYPES:
        wire = work.to(FLOAT_DTYPES[precision]).float()
    else:
        codes, scales = quantize_groups(work.flatten(1), precision, group_size)  # (B, N), (B, G)
        wire = dequantize_groups(codes, scales, group_size).view(work.shape)
    # wire + 0 is exactly wire in the forward pass; the gradient of (x - x.detach()) w.r.t. x is the identity.
    return wire.to(x.device, x.dtype) + (x - x.detach())
