"""Token strings of different tokenizers in one normal form: the bytes of text a token stands for.

Byte-level BPE (GPT-2, Llama-3, SmolLM2, Qwen) writes a leading space as ``Ġ`` and every byte as one
printable stand-in character; SentencePiece-style vocabularies (Gemma, Llama-2, T5) write it as ``▁``
and keep raw UTF-8, with ``<0xNN>`` byte-fallback tokens for the rest. Mapped to the bytes they decode
to, ``Ġthe``, ``▁the`` and ``" the"`` are the same string, and a byte-level token for byte 0xC3 meets
Gemma's ``<0xC3>``. Special tokens (BOS, EOS, chat markers, unused slots) stand for no text and are
left out.

    strings = token_bytes(tokenizer)            # {b" the": 262, ...}
    shared = shared_strings([tok_a, tok_b])     # [b"\\n", b" the", ...]: in every tokenizer, sorted
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
METASPACE = "\u2581"  # ▁


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable stand-in character -> byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    stand_ins, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_ins[chr(byte)] = byte
        else:
            stand_ins[chr(256 + extra)] = byte
            extra += 1
    return stand_ins


def _scheme(tokenizer) -> tuple[str, bool]:
    """(``byte_level`` | ``metaspace`` | ``other``, byte_fallback) from a fast tokenizer's own description."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "other", False
    description = json.loads(backend.to_str())
    text = json.dumps([description.get("decoder"), description.get("pre_tokenizer")], ensure_ascii=False)
    byte_fallback = bool((description.get("model") or {}).get("byte_fallback"))
    if '"ByteLevel"' in text:
        return "byte_level", byte_fallback
    if METASPACE in text or '"Metaspace"' in text:
        return "metaspace", byte_fallback
    return "other", byte_fallback


def id_bytes(tokenizer) -> dict[int, bytes]:
    """Every non-special token id of ``tokenizer`` -> the bytes it decodes to (several ids may share
    bytes, e.g. Gemma's ``1`` and its byte-fallback ``<0x31>``).

    Raises:
        ValueError: the tokenizer has no token that stands for text.
    """
    scheme, byte_fallback = _scheme(tokenizer)
    added = dict(tokenizer.added_tokens_decoder)
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    stand_ins = _byte_level_decoder()
    out: dict[int, bytes] = {}
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if index in special:
            continue
        fallback = _BYTE_FALLBACK.match(token) if byte_fallback else None
        if index in added:  # added tokens are stored as plain text in every scheme
            raw = added[index].content.encode("utf-8")
        elif fallback:
            raw = bytes([int(fallback.group(1), 16)])
        elif scheme == "byte_level" and all(c in stand_ins for c in token):
            raw = bytes(stand_ins[c] for c in token)
        elif scheme == "metaspace":
            raw = token.replace(METASPACE, " ").encode("utf-8")
        else:
            text = tokenizer.decode([index])
            if not text or "\ufffd" in text:
                continue
            raw = text.encode("utf-8")
        if raw:
            out[index] = raw
    if not out:
        raise ValueError(f"{type(tokenizer).__name__}: no token of its vocabulary stands for text")
    return out


def token_bytes(tokenizer, names: dict[int, bytes] | None = None) -> dict[bytes, int]:
    """The inverse of :func:`id_bytes` (or of ``names``, its result): bytes -> the id the tokenizer
    itself would use for them (a regular token before a byte-fallback one, then the lowest id)."""
    fallback_ids = {i for t, i in tokenizer.get_vocab().items() if _BYTE_FALLBACK.match(t)}
    out: dict[bytes, int] = {}
    names = id_bytes(tokenizer) if names is None else names
    for index, raw in sorted(names.items(), key=lambda item: (item[0] in fallback_ids, item[0])):
        out.setdefault(raw, index)
    return out


def shared_strings(tokenizers=None, tables: list[dict[bytes, int]] | None = None) -> list[bytes]:
    """The byte strings every tokenizer of ``tokenizers`` (or every :func:`token_bytes` table of
    ``tables``) has a token for, sorted (deterministic)."""
    tables = tables if tables is not None else [token_bytes(t) for t in tokenizers]
    common = set(tables[0]).intersection(*tables[1:])
    return sorted(common)
