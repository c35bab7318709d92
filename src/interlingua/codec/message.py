"""The binary frame of one wire message: one prompt's ``z``, quantised, stamped with the checkpoint
that produced it, and closed by a CRC32. Layout (all little-endian; see ``docs/wire-format.md``):

    magic "ILZ1" | version u8 | precision u8 | ndim u8 | checkpoint 8 B | group_size u32 | shape u32 x ndim
    | scales_len u32 | scales (fp16 x G) | payload_len u32 | payload | crc32 u32 (over all bytes before it)

A receiver decodes a message only when every field is consistent, the checksum matches and (when it
says which checkpoint it has) the message was produced by that checkpoint; otherwise it raises
:class:`WireFormatError` saying which of these failed.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from interlingua.codec.quantize import (
    FLOAT_DTYPES,
    Quantized,
    dequantize,
    payload_nbytes,
    quantize,
    scales_nbytes,
)
from interlingua.codec.vocabulary import NORM_BYTES, VocabularyCode
from interlingua.codec.vocabulary import payload_nbytes as vocabulary_payload_nbytes
from interlingua.config import Precision
from interlingua.errors import WireFormatError

MAGIC = b"ILZ1"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
PRECISION_CODES = {Precision.FP32: 0, Precision.FP16: 1, Precision.BF16: 2, Precision.INT8: 3, Precision.INT4: 4,
                   Precision.VOCAB: 5}
PRECISIONS_BY_CODE = {code: precision for precision, code in PRECISION_CODES.items()}

FIXED_HEADER = struct.Struct("<4sBBB8sI")  # magic, version, precision, ndim, checkpoint id, group_size: 19 bytes
U32 = struct.Struct("<I")  # shape entries, the two length fields, the CRC
CHECKPOINT_ID = re.compile(r"^[0-9a-fA-F]{16}$")


@dataclass(frozen=True)
class DecodedMessage:
    """What a receiver gets out of a valid message."""

    z: Tensor
    """float32, the shape the sender encoded, e.g. (M, d_inter)."""
    precision: Precision
    checkpoint_id: str
    """16 lowercase hex characters: ``InterlinguaModel.fingerprint()`` of the sender."""
    group_size: int
    """Values per scale (int8/int4); bits per position (vocab); 0 for float precisions."""


def message_size(shape: Sequence[int], precision: Precision, group_size: int) -> int:
    """Exact ``len(encode_message(z, precision, group_size, ...))`` for a z of ``shape``, without encoding.

    Args:
        shape: z's shape, e.g. (M, d_inter).
        precision: fp32 | fp16 | bf16 | int8 | int4 | vocab.
        group_size: values per scale (int8/int4); for vocab, ``VocabularyCode.bits_per_position``; ignored by
            float precisions.
    Returns:
        Bytes of the whole frame: header, shape, scales, payload and checksum.
    """
    scales, payload = _section_sizes(tuple(shape), Precision(precision), group_size)
    return FIXED_HEADER.size + U32.size * len(shape) + U32.size + scales + U32.size + payload + U32.size


def _section_sizes(shape: tuple[int, ...], precision: Precision, group_size: int) -> tuple[int, int]:
    """Bytes of the scales and of the payload (vocab: one fp16 norm per position, bit-packed ids)."""
    if precision is Precision.VOCAB:
        return shape[0] * NORM_BYTES, vocabulary_payload_nbytes(shape[0], group_size)
    numel = math.prod(shape)
    return scales_nbytes(numel, precision, group_size), payload_nbytes(numel, precision)


def _checkpoint_bytes(checkpoint_id: str) -> bytes:
    """The 16-hex-character fingerprint as 8 raw bytes; ValueError for anything else."""
    if not isinstance(checkpoint_id, str) or not CHECKPOINT_ID.match(checkpoint_id):
        raise ValueError(
            f"checkpoint_id must be 16 hex characters (InterlinguaModel.fingerprint()), got {checkpoint_id!r}"
        )
    return bytes.fromhex(checkpoint_id)


def encode_message(z: Tensor, precision: Precision, group_size: int, checkpoint_id: str,
                   code: Optional[VocabularyCode] = None) -> bytes:
    """Encode one prompt's z as a wire message.

    Args:
        z: (d_inter,) or (M, d_inter) (any shape with at most 255 dims), finite floats; (T, d_inter) for vocab.
        precision: fp32 | fp16 | bf16 | int8 | int4 | vocab.
        group_size: values per scale for int8/int4 (recorded as 0 for float precisions, and as the code's bits
            per position for vocab).
        checkpoint_id: ``InterlinguaModel.fingerprint()`` of the sender.
        code: the sender's :class:`VocabularyCode` (``model.vocabulary_code()``); needed by vocab only.
    Returns:
        ``message_size(z.shape, precision, group_size)`` bytes.
    Raises:
        ValueError: bad checkpoint id, too many dims or a dim >= 2**32, a z the precision cannot carry, or vocab
            without a code.
    """
    precision = Precision(precision)
    checkpoint = _checkpoint_bytes(checkpoint_id)
    if z.dim() > 255 or any(d >= 2**32 for d in z.shape):
        raise ValueError(f"z of shape {tuple(z.shape)} does not fit the frame (at most 255 dims, each < 2**32)")
    if precision is Precision.VOCAB:
        if code is None:
            raise ValueError("precision vocab codes z with the receivers' vocabularies: pass code="
                             "model.vocabulary_code() (Interlingua.encode does)")
        ids, norms = code.encode(z)
        shape, group_size, payload = tuple(z.shape), code.bits_per_position, code.pack(ids)
        scales = norms.numpy().astype("<f2").tobytes()
    else:
        q = quantize(z, precision, group_size)
        shape, group_size, payload = q.shape, q.group_size, q.payload
        scales = b"" if q.scales is None else q.scales.numpy().astype("<f2").tobytes()
    body = b"".join([
        FIXED_HEADER.pack(MAGIC, FORMAT_VERSION, PRECISION_CODES[precision], len(shape), checkpoint, group_size),
        struct.pack(f"<{len(shape)}I", *shape),
        U32.pack(len(scales)), scales,
        U32.pack(len(payload)), payload,
    ])
    return body + U32.pack(zlib.crc32(body))


@dataclass(frozen=True)
class _Header:
    precision: Precision
    checkpoint_id: str
    group_size: int
    shape: tuple[int, ...]


def _check_magic_and_version(data: bytes) -> None:
    """Reject foreign bytes and versions this receiver does not read, before anything else."""
    if data[:4] != MAGIC[: len(data[:4])]:
        raise WireFormatError(f"not an interlingua message: it starts with {data[:4]!r}, expected magic {MAGIC!r}")
    if len(data) < 5:
        raise WireFormatError(f"message truncated: got {len(data)} bytes, the header alone needs {FIXED_HEADER.size}")
    if data[4] not in SUPPORTED_VERSIONS:
        raise WireFormatError(
            f"unsupported wire format version {data[4]}; this receiver reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))} (upgrade interlingua to read newer messages)"
        )


def _parse_header(data: bytes) -> _Header:
    """Read the fixed header and the shape; WireFormatError if truncated or inconsistent."""
    if len(data) < FIXED_HEADER.size:
        raise WireFormatError(f"message truncated: got {len(data)} bytes, the header alone needs {FIXED_HEADER.size}")
    _, _, code, ndim, checkpoint, group_size = FIXED_HEADER.unpack_from(data)
    if code not in PRECISIONS_BY_CODE:
        known = ", ".join(f"{c}={p.value}" for c, p in PRECISIONS_BY_CODE.items())
        raise WireFormatError(f"unknown precision code {code} (known: {known})")
    precision = PRECISIONS_BY_CODE[code]
    shape_end = FIXED_HEADER.size + U32.size * ndim
    if len(data) < shape_end:
        raise WireFormatError(
            f"message truncated: got {len(data)} bytes, its header and {ndim}-d shape need {shape_end}"
        )
    shape = struct.unpack_from(f"<{ndim}I", data, FIXED_HEADER.size)
    if math.prod(shape) == 0:
        raise WireFormatError(f"inconsistent header: shape {tuple(shape)} holds no values")
    if precision is Precision.VOCAB and ndim != 2:
        raise WireFormatError(f"inconsistent header: a vocab message is (positions, d_inter), got a {ndim}-d shape")
    is_float = precision in FLOAT_DTYPES
    if (is_float and group_size != 0) or (not is_float and group_size < 1):
        need = "0" if is_float else ">= 1"
        raise WireFormatError(f"inconsistent header: group_size {group_size} at {precision.value} (must be {need})")
    return _Header(precision, checkpoint.hex(), group_size, tuple(shape))


def _check_length(data: bytes, header: _Header) -> None:
    """The frame must be exactly as long as its shape and precision say."""
    expected = message_size(header.shape, header.precision, header.group_size)
    what = f"a {header.shape} {header.precision.value} message (group_size {header.group_size}) is {expected} bytes"
    if len(data) < expected:
        raise WireFormatError(f"message truncated: {what}, got {len(data)} (cut short, or a corrupted header)")
    if len(data) > expected:
        raise WireFormatError(f"{len(data) - expected} trailing bytes: {what}, got {len(data)}")


def _split_sections(data: bytes, header: _Header) -> tuple[bytes, bytes]:
    """(scales bytes, payload bytes); WireFormatError if a length field disagrees with the header."""
    offset = FIXED_HEADER.size + U32.size * len(header.shape)
    sections = []
    for name, expected in zip(("scales", "payload"), _section_sizes(header.shape, header.precision, header.group_size)):
        (length,) = U32.unpack_from(data, offset)
        if length != expected:
            raise WireFormatError(
                f"inconsistent {name} length {length}: shape {header.shape} at {header.precision.value} "
                f"(group_size {header.group_size}) needs {expected}"
            )
        sections.append(data[offset + U32.size: offset + U32.size + length])
        offset += U32.size + length
    return sections[0], sections[1]


def _check_crc(data: bytes) -> None:
    (stored,) = U32.unpack_from(data, len(data) - U32.size)
    computed = zlib.crc32(data[: -U32.size])
    if stored != computed:
        raise WireFormatError(
            f"checksum mismatch (stored CRC32 {stored:08x}, computed {computed:08x}): the message is corrupted"
        )


def _check_checkpoint(got: str, expected: Optional[str]) -> None:
    if expected is not None and got != _checkpoint_bytes(expected).hex():
        raise WireFormatError(
            f"wrong checkpoint: the message was produced by interlingua checkpoint {got}, but this receiver has "
            f"{expected.lower()}; a z only means something to the checkpoint that produced it (load that one)"
        )


def peek_precision(data: bytes) -> Optional[Precision]:
    """The precision a message's header names, or None where the bytes hold no readable header (the full
    decoder then says what is wrong)."""
    data = bytes(data[:FIXED_HEADER.size])
    if len(data) < FIXED_HEADER.size or data[:4] != MAGIC:
        return None
    return PRECISIONS_BY_CODE.get(data[5])


def decode_message(data: bytes, expected_checkpoint_id: Optional[str] = None,
                   code: Optional[VocabularyCode] = None) -> DecodedMessage:
    """Decode and validate one wire message.

    Checks, in order: magic, version, header (precision code, group_size), total length, length fields,
    CRC32, checkpoint, and finally the values themselves (range of codes, finite scales and floats).

    Args:
        data: the bytes of exactly one message.
        expected_checkpoint_id: the receiver's ``InterlinguaModel.fingerprint()``; None accepts any sender.
        code: the receiver's :class:`VocabularyCode`; needed to decode a vocab message.
    Returns:
        DecodedMessage with z as float32 of the encoded shape.
    Raises:
        WireFormatError: which check failed, with the values involved.
    """
    data = bytes(data)
    _check_magic_and_version(data)
    header = _parse_header(data)
    _check_length(data, header)
    scales, payload = _split_sections(data, header)
    _check_crc(data)
    _check_checkpoint(header.checkpoint_id, expected_checkpoint_id)
    if header.precision is Precision.VOCAB:
        return DecodedMessage(_decode_vocabulary(header, scales, payload, code), header.precision,
                              header.checkpoint_id, header.group_size)
    scale_tensor = None
    if header.precision not in FLOAT_DTYPES:
        scale_tensor = torch.from_numpy(np.frombuffer(scales, dtype="<f2").astype(np.float16))  # (G,)
    z = dequantize(Quantized(payload, scale_tensor, header.shape, header.precision, header.group_size))
    return DecodedMessage(z, header.precision, header.checkpoint_id, header.group_size)


def _decode_vocabulary(header: _Header, norms: bytes, payload: bytes, code: Optional[VocabularyCode]) -> Tensor:
    if code is None:
        raise WireFormatError("a vocab message holds vocabulary ids: decoding it needs the receivers' vocabularies "
                              "(Interlingua.generate, or decode_message(..., code=model.vocabulary_code()))")
    positions, width = header.shape
    if header.group_size != code.bits_per_position or width != code.width:
        raise WireFormatError(
            f"a vocab message of {header.group_size} bits per position and width {width}, but this receiver's code "
            f"has {code.bits_per_position} bits ({'+'.join(map(str, code.widths))}) and width {code.width}: it was "
            "coded for other vocabularies"
        )
    norm_tensor = torch.from_numpy(np.frombuffer(norms, dtype="<f2").astype(np.float32))
    return code.decode(code.unpack(payload, positions), norm_tensor).cpu()
