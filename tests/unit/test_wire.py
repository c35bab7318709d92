"""The wire: quantisation stays within its documented error bound, messages round-trip at their exact
size, and every truncation, corruption, foreign or mismatched message is rejected with its own error."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from interlingua.codec import (
    MAGIC,
    WireFormatError,
    decode_message,
    dequantize,
    encode_message,
    error_bound,
    fake_quantize,
    message_size,
    quantize,
)
from interlingua.codec.message import FIXED_HEADER, PRECISION_CODES
from interlingua.codec.quantize import INT_LEVELS, pack_int4, unpack_int4
from interlingua.config import Precision

CKPT = "0123456789abcdef"
OTHER_CKPT = "fedcba9876543210"
PRECISIONS = [p for p in Precision if p is not Precision.VOCAB]  # elementwise schemes; vocab: test_vocabulary_code
INTS = [Precision.INT8, Precision.INT4]
# Largest |x| each precision can carry: fp16's range; an int scale must fit in an fp16 (65504 * L).
MAX_ABS = {Precision.FP32: 1e30, Precision.BF16: 1e30, Precision.FP16: 6e4, Precision.INT8: 8e6, Precision.INT4: 4e5}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.one_of(
    st.tuples(st.integers(1, 300)),
    st.tuples(st.integers(1, 20), st.integers(1, 15)),
)
group_sizes = st.one_of(st.sampled_from([1, 2, 3, 7, 16, 32, 64, 512]), st.integers(1, 100))


@st.composite
def tensors(draw, precision: Precision):
    """A float32 tensor mixing zeros, signs, large, tiny (incl. subnormal) and repeated values."""
    limit = float(np.float32(MAX_ABS[precision]))
    magnitude = float(np.float32(draw(st.sampled_from([1e-30, 1e-6, 1.0, 100.0, limit]))))
    elements = st.one_of(
        st.just(0.0),
        st.floats(-magnitude, magnitude, width=32),
        st.floats(-2.0**-10, 2.0**-10, width=32),
        st.sampled_from([1.0, -1.0, limit, -limit]),
    )
    fill = st.floats(-magnitude, magnitude, width=32)  # long runs of one value: all-equal groups
    return torch.from_numpy(draw(arrays(np.float32, draw(shapes), elements=elements, fill=fill)))


def reconstruction_error(x: torch.Tensor, precision: Precision, group_size: int) -> torch.Tensor:
    """Exact |dequantize(quantize(x)) - x| (both sides are float32, so float64 holds the difference exactly)."""
    return (dequantize(quantize(x, precision, group_size)).double() - x.double()).abs()


# ---- quantisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: p.value)
def test_round_trip_within_error_bound(precision):
    @SETTINGS
    @given(x=tensors(precision), group_size=group_sizes)
    def check(x, group_size):
        error = reconstruction_error(x, precision, group_size)
        assert (error <= error_bound(x, precision, group_size)).all()

    check()


@SETTINGS
@given(x=tensors(Precision.FP32))
def test_fp32_is_exact(x):
    restored = dequantize(quantize(x, Precision.FP32, 32))
    assert restored.dtype == torch.float32 and restored.shape == x.shape
    assert torch.equal(restored, x)


@pytest.mark.parametrize("precision", INTS, ids=lambda p: p.value)
def test_int_error_bound_is_half_a_scale_close_to_max_over_levels(precision):
    """The stored fp16 scale is max|x|/L rounded up: at most 2**-10 relative (or one fp16 subnormal) above it."""

    @SETTINGS
    @given(x=tensors(precision), group_size=group_sizes)
    def check(x, group_size):
        levels = INT_LEVELS[precision]
        flat = x.double().flatten()
        padded = torch.cat([flat, flat.new_zeros(-len(flat) % group_size)]).view(-1, group_size)
        group_max = padded.abs().amax(dim=1).repeat_interleave(group_size)[: len(flat)]
        a_priori = (group_max / levels * (1 + 2**-10) + 2**-24) / 2
        bound = error_bound(x, precision, group_size).flatten()
        assert (bound <= a_priori).all()
        assert (bound >= group_max / levels / 2).all()

    check()


@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: p.value)
@pytest.mark.parametrize("value", [0.0, 1.0, -3.5, 1e-20, 123.456])
def test_constant_tensors(precision, value):
    x = torch.full((37,), value)
    error = reconstruction_error(x, precision, 8)
    assert (error <= error_bound(x, precision, 8)).all()
    if value == 0.0:
        assert torch.equal(dequantize(quantize(x, precision, 8)), torch.zeros(37))


def test_int_scales_are_fp16_and_exact_sizes():
    q = quantize(torch.randn(5, 13), Precision.INT4, 8)  # 65 values -> 9 groups, 33 payload bytes
    assert q.scales.dtype == torch.float16 and q.scales.shape == (9,)
    assert len(q.payload) == 33 and q.nbytes == 33 + 18
    assert len(quantize(torch.randn(65), Precision.INT8, 8).payload) == 65


@settings(max_examples=200, deadline=None)
@given(codes=st.lists(st.integers(-8, 7), min_size=1, max_size=301))
def test_int4_packing_round_trips_any_length(codes):
    codes_np = np.array(codes, dtype=np.int8)
    packed = pack_int4(codes_np)
    assert len(packed) == (len(codes) + 1) // 2
    if -8 in codes:
        with pytest.raises(WireFormatError, match="-8"):
            unpack_int4(packed, len(codes))
    else:
        assert unpack_int4(packed, len(codes)).tolist() == codes


def test_int4_nibble_order_is_low_first_twos_complement():
    assert pack_int4(np.array([1, -1, 7], dtype=np.int8)) == bytes([0xF1, 0x07])


def test_bf16_payload_is_upper_half_of_fp32():
    x = torch.tensor([1.0, -2.5, 3.140625])
    payload = quantize(x, Precision.BF16, 0).payload
    upper = [(v >> 16) for v in np.frombuffer(x.numpy().tobytes(), dtype="<u4").tolist()]
    assert list(struct.unpack("<3H", payload)) == upper


@pytest.mark.parametrize(
    ("x", "precision", "match"),
    [
        (torch.tensor([1.0, float("nan")]), Precision.INT8, "NaN or inf"),
        (torch.tensor([7e4]), Precision.FP16, "overflows fp16"),
        (torch.tensor([1e7]), Precision.INT4, "fp16 maximum"),
        (torch.zeros(0), Precision.FP16, "empty"),
    ],
)
def test_unencodable_tensors_are_refused(x, precision, match):
    with pytest.raises(ValueError, match=match):
        quantize(x, precision, 32)


def test_int_group_size_must_be_positive():
    with pytest.raises(ValueError, match="group_size"):
        quantize(torch.ones(4), Precision.INT8, 0)


# ---- fake quantisation (QAT) -------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: p.value)
def test_fake_quantize_forward_equals_the_wire_per_example(precision):
    @settings(max_examples=40, deadline=None)
    @given(batch=st.integers(1, 4), shape=shapes, group_size=group_sizes, scale=st.sampled_from([1e-4, 1.0, 50.0]))
    def check(batch, shape, group_size, scale):
        x = torch.randn(batch, *shape) * scale * torch.rand(batch, *([1] * len(shape))) * 10
        x[0].flatten()[: x[0].numel() // 3] = 0.0  # an all-zero stretch in one example
        fake = fake_quantize(x, precision, group_size)
        for i in range(batch):
            assert torch.equal(fake[i], dequantize(quantize(x[i], precision, group_size)))

    check()


@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: p.value)
def test_fake_quantize_gradient_is_identity(precision):
    x = (torch.randn(3, 4, 10) * 5).requires_grad_()
    upstream = torch.randn(3, 4, 10)
    (fake_quantize(x, precision, 8) * upstream).sum().backward()
    assert torch.equal(x.grad, upstream)


def test_fake_quantize_actually_quantizes():
    x = torch.randn(2, 64)
    assert not torch.equal(fake_quantize(x, Precision.INT4, 32), x)
    assert fake_quantize(x, Precision.INT4, 32)[0].unique().numel() <= 2 * 15


# ---- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: p.value)
def test_message_round_trip_and_exact_size(precision):
    @settings(max_examples=60, deadline=None)
    @given(x=tensors(precision), group_size=group_sizes)
    def check(x, group_size):
        data = encode_message(x, precision, group_size, CKPT)
        assert len(data) == message_size(tuple(x.shape), precision, group_size)
        decoded = decode_message(data, expected_checkpoint_id=CKPT)
        assert torch.equal(decoded.z, dequantize(quantize(x, precision, group_size)))
        assert decoded.precision is precision and decoded.checkpoint_id == CKPT

    check()


def test_worked_example_sizes_in_the_docs():
    assert message_size((32, 512), Precision.FP32, 32) == 65575
    assert message_size((32, 512), Precision.FP16, 32) == 32807
    assert message_size((32, 512), Precision.BF16, 32) == 32807
    assert message_size((32, 512), Precision.INT8, 32) == 17447
    assert message_size((32, 512), Precision.INT4, 32) == 9255
    assert message_size((8, 128), Precision.INT4, 32) == 615
    assert message_size((512,), Precision.INT8, 32) == 579


def test_zero_dim_and_one_dim_z():
    for z in (torch.tensor(2.5), torch.randn(7)):
        data = encode_message(z, Precision.INT4, 4, CKPT)
        assert decode_message(data).z.shape == z.shape


def small_messages():
    """One short message per precision, odd lengths included."""
    z = torch.linspace(-3, 5, 11).view(1, 11)
    return {p: encode_message(z, p, 4, CKPT) for p in PRECISIONS}


@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: p.value)
def test_every_single_byte_corruption_is_rejected(precision):
    """Exhaustive over positions and bit patterns for one message: never a silent wrong tensor."""
    data = small_messages()[precision]
    for position in range(len(data)):
        for flip in (0x01, 0x80, 0xFF, 0x5A):
            corrupted = bytearray(data)
            corrupted[position] ^= flip
            with pytest.raises(WireFormatError):
                decode_message(bytes(corrupted))


@settings(max_examples=200, deadline=None)
@given(
    precision=st.sampled_from(PRECISIONS),
    x=tensors(Precision.FP16),  # in range for every precision
    group_size=group_sizes,
    where=st.floats(0, 1, exclude_max=True),
    flip=st.integers(1, 255),
)
def test_random_single_byte_corruption_is_rejected(precision, x, group_size, where, flip):
    data = bytearray(encode_message(x, precision, group_size, CKPT))
    data[int(where * len(data))] ^= flip
    with pytest.raises(WireFormatError):
        decode_message(bytes(data), expected_checkpoint_id=CKPT)


@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: p.value)
def test_every_truncation_is_rejected(precision):
    data = small_messages()[precision]
    for length in range(len(data)):
        with pytest.raises(WireFormatError, match="truncated"):
            decode_message(data[:length])


def test_truncation_message_says_expected_and_got():
    data = small_messages()[Precision.INT8]
    with pytest.raises(WireFormatError, match=rf"is {len(data)} bytes.*got {len(data) - 3}"):
        decode_message(data[:-3])


def test_trailing_bytes_are_rejected():
    with pytest.raises(WireFormatError, match="2 trailing bytes"):
        decode_message(small_messages()[Precision.FP16] + b"\x00\x00")


def with_crc(body: bytes) -> bytes:
    """A frame whose checksum is valid for ``body`` (so only the field under test is wrong)."""
    return body + struct.pack("<I", zlib.crc32(body))


def edit(data: bytes, offset: int, new: bytes) -> bytes:
    body = bytearray(data[:-4])
    body[offset: offset + len(new)] = new
    return with_crc(bytes(body))


def test_bad_magic():
    with pytest.raises(WireFormatError, match="not an interlingua message"):
        decode_message(b"PK\x03\x04" + small_messages()[Precision.FP16][4:])
    with pytest.raises(WireFormatError, match="not an interlingua message"):
        decode_message(b"{}")


def test_unsupported_version():
    with pytest.raises(WireFormatError, match="unsupported wire format version 2.*reads versions 1"):
        decode_message(edit(small_messages()[Precision.FP16], 4, bytes([2])))


def test_unknown_precision_code():
    with pytest.raises(WireFormatError, match="unknown precision code 9"):
        decode_message(edit(small_messages()[Precision.FP16], 5, bytes([9])))


def test_checksum_mismatch_says_corrupted():
    data = bytearray(small_messages()[Precision.INT8])
    data[-10] ^= 0x04  # inside the payload
    with pytest.raises(WireFormatError, match="checksum mismatch.*corrupted"):
        decode_message(bytes(data))


def test_wrong_checkpoint_names_both():
    data = small_messages()[Precision.INT4]
    with pytest.raises(WireFormatError, match=f"produced by interlingua checkpoint {CKPT}.*receiver has {OTHER_CKPT}"):
        decode_message(data, expected_checkpoint_id=OTHER_CKPT)
    assert decode_message(data, expected_checkpoint_id=CKPT.upper()).checkpoint_id == CKPT
    assert decode_message(data).checkpoint_id == CKPT  # no expectation: any sender


def test_inconsistent_length_fields():
    data = small_messages()[Precision.INT8]  # shape (1, 11), group 4 -> 3 scales (6 bytes), 11 payload bytes
    scales_len_at = FIXED_HEADER.size + 2 * 4
    tampered = edit(data, scales_len_at, struct.pack("<I", 4))
    with pytest.raises(WireFormatError, match="inconsistent scales length 4.*needs 6"):
        decode_message(tampered)


def test_inconsistent_group_size():
    data = small_messages()[Precision.FP16]
    with pytest.raises(WireFormatError, match="group_size 5 at fp16"):
        decode_message(edit(data, FIXED_HEADER.size - 4, struct.pack("<I", 5)))


def test_out_of_range_codes_and_bad_scales_with_valid_crc_are_rejected():
    int8 = small_messages()[Precision.INT8]
    payload_at = len(int8) - 4 - 11
    with pytest.raises(WireFormatError, match="-128"):
        decode_message(edit(int8, payload_at, bytes([0x80])))
    scales_at = FIXED_HEADER.size + 2 * 4 + 4
    with pytest.raises(WireFormatError, match="scales must be finite"):
        decode_message(edit(int8, scales_at, np.array([np.nan], dtype="<f2").tobytes()))
    int4 = small_messages()[Precision.INT4]  # 11 values: the last byte's high nibble is padding
    with pytest.raises(WireFormatError, match="padding nibble"):
        decode_message(edit(int4, len(int4) - 5, bytes([int4[-5] | 0x10])))


def test_non_finite_float_payload_is_rejected():
    fp32 = small_messages()[Precision.FP32]
    with pytest.raises(WireFormatError, match="NaN or inf"):
        decode_message(edit(fp32, len(fp32) - 8, np.array([np.inf], dtype="<f4").tobytes()))


def test_layout_of_the_header():
    data = encode_message(torch.ones(3, 5), Precision.INT4, 4, CKPT)
    magic, version, code, ndim, checkpoint, group_size = FIXED_HEADER.unpack_from(data)
    header = (magic, version, code, ndim, checkpoint.hex(), group_size)
    assert header == (MAGIC, 1, PRECISION_CODES[Precision.INT4], 2, CKPT, 4)
    assert struct.unpack_from("<2I", data, FIXED_HEADER.size) == (3, 5)


@pytest.mark.parametrize("bad", ["0123", "0123456789abcdeg", 12345])
def test_checkpoint_id_must_be_16_hex(bad):
    with pytest.raises(ValueError, match="16 hex characters"):
        encode_message(torch.ones(2), Precision.FP16, 32, bad)
