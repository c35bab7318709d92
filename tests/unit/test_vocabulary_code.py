"""The vocabulary code (``compression.precision=vocab``): bit packing, nearest keys, the wire frame and its
rejections, and the straight-through round trip used by quantisation-aware training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from interlingua.codec.message import decode_message, encode_message, message_size, peek_precision
from interlingua.codec.vocabulary import VocabularyCode
from interlingua.config import ConfigError, Precision, load_config
from interlingua.errors import WireFormatError
from tests.conftest import SQUAD_MINI

CHECKPOINT = "0123456789abcdef"


def make_code(sizes=(5, 300, 70000), width=16, seed=0) -> VocabularyCode:
    generator = torch.Generator().manual_seed(seed)
    return VocabularyCode(tuple(F.normalize(torch.randn(v, width, generator=generator), dim=-1) for v in sizes))


def test_ids_are_packed_at_ceil_log2_v_bits_and_unpacked_exactly():
    code = make_code()
    assert code.widths == (3, 9, 17) and code.bits_per_position == 29
    ids = torch.stack([torch.tensor([0, 4, 2]), torch.tensor([299, 0, 17]), torch.tensor([69999, 1, 65536])], dim=1)
    payload = code.pack(ids)
    assert len(payload) == code.payload_nbytes(3) == math.ceil(3 * 29 / 8)
    assert torch.equal(code.unpack(payload, 3), ids)


def test_unpack_rejects_a_wrong_length_and_set_padding_bits():
    code = make_code()
    payload = code.pack(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(WireFormatError, match="need 11"):
        code.unpack(payload + b"\0", 3)
    with pytest.raises(WireFormatError, match="padding"):
        code.unpack(payload[:-1] + bytes([payload[-1] | 1]), 3)


def test_encode_picks_each_codebooks_nearest_key_and_decode_sums_them_at_the_norm():
    code = make_code()
    z = torch.randn(7, 16) * 3
    ids, norms = code.encode(z)
    unit = F.normalize(z, dim=-1)
    for book, keys in enumerate(code.keys):
        assert torch.equal(ids[:, book], (unit @ keys.T).argmax(-1))
    assert norms.dtype == torch.float16
    torch.testing.assert_close(norms.float(), z.norm(dim=-1), rtol=1e-3, atol=0)
    decoded = code.decode(ids, norms)
    summed = sum(keys[ids[:, book]] for book, keys in enumerate(code.keys))
    torch.testing.assert_close(decoded, F.normalize(summed, dim=-1) * norms.float().unsqueeze(-1))
    # one codebook equal to the rows themselves: z comes back in direction exactly
    exact = VocabularyCode((unit,))
    torch.testing.assert_close(F.normalize(exact.round_trip(z), dim=-1), unit)


def test_encode_refuses_what_it_cannot_send():
    code = make_code()
    with pytest.raises(ValueError, match="NaN"):
        code.encode(torch.full((2, 16), float("nan")))
    with pytest.raises(ValueError, match=r"shape \(T >= 1, 16\)"):
        code.encode(torch.zeros(0, 16))
    with pytest.raises(ValueError, match=r"shape \(T >= 1, 16\)"):
        code.encode(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="overflows"):
        code.encode(torch.full((1, 16), 1e5))


def test_decode_rejects_an_id_past_its_codebook_and_a_bad_norm():
    code = make_code()
    with pytest.raises(WireFormatError, match="token id 7 in codebook 1, which has 5 keys"):
        code.decode(torch.tensor([[7, 0, 0]]), torch.ones(1))
    with pytest.raises(WireFormatError, match="norm"):
        code.decode(torch.tensor([[1, 0, 0]]), torch.tensor([-1.0]))


def test_a_vocab_message_round_trips_at_its_exact_size():
    code = make_code()
    z = torch.randn(11, 16)
    data = encode_message(z, Precision.VOCAB, 32, CHECKPOINT, code)
    assert len(data) == message_size((11, 16), Precision.VOCAB, code.bits_per_position)
    # 2 B of norm and 29 bits of ids per position, plus the fixed frame
    assert len(data) - message_size((1, 16), Precision.VOCAB, code.bits_per_position) == 10 * 2 + 40 - 4
    assert peek_precision(data) is Precision.VOCAB
    decoded = decode_message(data, CHECKPOINT, code)
    assert decoded.precision is Precision.VOCAB and decoded.group_size == code.bits_per_position
    torch.testing.assert_close(decoded.z, code.round_trip(z))


def test_a_vocab_message_is_refused_without_its_code_or_with_another_one():
    code = make_code()
    data = encode_message(torch.randn(4, 16), Precision.VOCAB, 32, CHECKPOINT, code)
    with pytest.raises(ValueError, match="pass code="):
        encode_message(torch.randn(4, 16), Precision.VOCAB, 32, CHECKPOINT)
    with pytest.raises(WireFormatError, match="needs the receivers' vocabularies"):
        decode_message(data, CHECKPOINT)
    with pytest.raises(WireFormatError, match="coded for other vocabularies"):
        decode_message(data, CHECKPOINT, make_code(sizes=(5, 300)))
    corrupted = bytearray(data)
    corrupted[-6] ^= 0x40
    with pytest.raises(WireFormatError, match="checksum"):
        decode_message(bytes(corrupted), CHECKPOINT, code)


def test_a_vocab_message_with_an_id_past_the_codebook_is_refused_even_with_a_valid_checksum():
    import struct
    import zlib

    code = make_code()
    data = bytearray(encode_message(torch.randn(1, 16), Precision.VOCAB, 32, CHECKPOINT, code))
    payload_start = len(data) - 4 - code.payload_nbytes(1)
    data[payload_start] |= 0xE0  # the first id's 3 bits: 7, past a codebook of 5
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(WireFormatError, match="token id 7 in codebook 1"):
        decode_message(bytes(data), CHECKPOINT, code)


def test_fake_code_is_the_wire_forward_and_the_identity_backward():
    code = make_code()
    z = torch.randn(2, 5, 16, requires_grad=True)
    delivered = code.fake_code(z)
    for row in range(2):
        torch.testing.assert_close(delivered[row].detach(), code.round_trip(z[row].detach()))
    (delivered * torch.arange(16.0)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(16.0).expand(2, 5, 16))
    padded = torch.zeros(1, 3, 16)  # masked positions stay zero
    assert code.fake_code(padded).abs().max() == 0


@pytest.mark.parametrize("overrides, match", [
    (["interlingua.design=pooled"], "native design's vocabulary heads"),
    (["interlingua.design=native", "interlingua.decoder=linear"], "interlingua.decoder=vocab"),
    (["interlingua.design=native", "interlingua.d_wire=8"], "drop one of the two"),
])
def test_the_config_refuses_vocab_where_no_vocabulary_head_reads_it(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny", [f"data.source={SQUAD_MINI}", "compression.precision=vocab", *overrides])


def test_every_single_byte_corruption_and_every_truncation_of_a_vocab_message_is_rejected():
    code = make_code()
    data = encode_message(torch.randn(3, 16), Precision.VOCAB, 32, CHECKPOINT, code)
    for position in range(len(data)):
        for flip in (0x01, 0x80, 0xFF, 0x5A):
            corrupted = bytearray(data)
            corrupted[position] ^= flip
            with pytest.raises(WireFormatError):
                decode_message(bytes(corrupted), CHECKPOINT, code)
    for length in range(len(data)):
        with pytest.raises(WireFormatError, match="truncated"):
            decode_message(data[:length], CHECKPOINT, code)
