"""The interlingua on the wire (DESIGN §6): per-group quantisation and the binary message frame.

    data = encode_message(z, Precision.INT4, group_size=32, checkpoint_id=model.fingerprint())
    z = decode_message(data, expected_checkpoint_id=model.fingerprint()).z

The byte layout, error bounds and rejections are documented in ``docs/wire-format.md``.
"""

from interlingua.codec.message import (
    FORMAT_VERSION,
    MAGIC,
    DecodedMessage,
    decode_message,
    encode_message,
    message_size,
)
from interlingua.codec.quantize import Quantized, dequantize, error_bound, fake_quantize, quantize
from interlingua.errors import WireFormatError

__all__ = [
    "FORMAT_VERSION", "MAGIC", "DecodedMessage", "Quantized", "WireFormatError", "decode_message", "dequantize",
    "encode_message", "error_bound", "fake_quantize", "message_size", "quantize",
]
