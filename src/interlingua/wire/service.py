"""Sender and receiver as separate steps: prompt text -> wire message bytes, and bytes -> answer.

Each side loads the checkpoint's learned modules and only the frozen models it needs: the sender its own
LLM and the sentence encoder, the receiver its own LLM (it never sees text). What travels between them
is the message (``docs/wire-format.md``), bound to the checkpoint by its fingerprint.

    messages = encode_texts(checkpoint, ["Context: …\\nQuestion: …\\nAnswer:"], sender="tiny-llama")
    answers = generate_from_messages(checkpoint, messages, receiver="tiny-qwen2")
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from interlingua.config import Config
from interlingua.data.prompts import text_prompt
from interlingua.eval.jobs import load_checkpoint
from interlingua.models.frozen_lm import FrozenLM
from interlingua.models.interlingua import CheckpointError, InterlinguaModel
from interlingua.pipeline import encode_prompts, frozen_model_info, load_frozen_model, semantic_anchor
from interlingua.runtime import frozen_dtype
from interlingua.wire.errors import WireFormatError
from interlingua.wire.message import decode_message, encode_message

SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
"""An ``id`` that can name a message file: no path separators, no leading dot."""


class MessageInputError(ValueError):
    """A prompt or prompt file that cannot be sent: empty, too long, or malformed."""


@dataclass(frozen=True)
class NamedPrompt:
    """One prompt of a prompt file and the name of its message file (without ``.bin``)."""

    name: str
    text: str


# ---- sender ----------------------------------------------------------------------------------
def encode_texts(
    checkpoint_dir: Path,
    texts: Sequence[str],
    sender: str | None = None,
    overrides: Sequence[str] | None = None,
    config: Config | None = None,
    names: Sequence[str] | None = None,
) -> list[bytes]:
    """Wire messages of ``texts`` read through ``sender`` (only it and the sentence encoder are loaded).

    Args:
        checkpoint_dir: a ``step_N/`` folder.
        texts: prompts used as given, e.g. ``Context: …\\nQuestion: …\\nAnswer:``.
        sender: one of the checkpoint's models; default its first.
        overrides: ``key=value`` on top of the config (``compression.precision``, ``compression.group_size``,
            ``eval.batch_size``, ``data.max_prompt_tokens``, ``runtime.device``).
        config: the config to start from; default the one stored with the checkpoint.
        names: how errors name each text (default ``prompt 1``, ``prompt 2``, …).
    Returns:
        One message per text, stamped with the checkpoint's fingerprint.
    Raises:
        MessageInputError: no texts, an empty one, or one longer than ``data.max_prompt_tokens`` tokens.
        CheckpointError: an unreadable checkpoint, or a sender that is not one of its models.
        ConfigError: a bad override.
    """
    names = list(names or [f"prompt {i + 1}" for i in range(len(texts))])
    _check_not_empty(texts, names)
    model, config, device = load_checkpoint(checkpoint_dir, config, list(overrides or []))
    lm = _load_model(model, config, sender or model.model_keys[0], "sender", device)
    _check_lengths(lm, texts, names, config.data.max_prompt_tokens)
    from interlingua.models.encoder import SentenceEncoder

    encoder = SentenceEncoder(config.encoder, device=device)
    z = _encode_batched(model, lm, encoder, list(texts), config.eval.batch_size)  # (n, ...) fp32, CPU
    checkpoint_id = model.fingerprint()
    precision, group_size = config.compression.precision, config.compression.group_size
    return [encode_message(row, precision, group_size, checkpoint_id) for row in z]


def _check_not_empty(texts: Sequence[str], names: Sequence[str]) -> None:
    if not texts:
        raise MessageInputError("no prompts to encode")
    for name, text in zip(names, texts):
        if not text.strip():
            raise MessageInputError(f"{name} is empty; a prompt needs at least one non-space character")


def _check_lengths(lm: FrozenLM, texts: Sequence[str], names: Sequence[str], max_tokens: int) -> None:
    """Training never showed the aligner a prompt over ``data.max_prompt_tokens``: refuse one."""
    for name, text in zip(names, texts):
        count = len(lm.tokenizer(text, add_special_tokens=False).input_ids)
        if count > max_tokens:
            raise MessageInputError(
                f"{name} is {count} tokens in {lm.key}'s tokenizer, over data.max_prompt_tokens={max_tokens}; "
                "shorten it (e.g. cut the context) or raise data.max_prompt_tokens"
            )


def _encode_batched(model: InterlinguaModel, lm: FrozenLM, encoder, texts: list[str], batch_size: int) -> Tensor:
    """z of every text, batched: ``(n, d_inter)`` or ``(n, M, d_inter)`` fp32 on the CPU."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            z = encode_prompts(model, lm, batch, semantic_anchor(model, encoder, batch))  # (b, ...)
            rows.append(z.float().cpu())
    return torch.cat(rows)


# ---- receiver --------------------------------------------------------------------------------
def generate_from_messages(
    checkpoint_dir: Path,
    messages: Sequence[bytes],
    receiver: str,
    overrides: Sequence[str] | None = None,
    config: Config | None = None,
    names: Sequence[str] | None = None,
) -> list[str]:
    """Greedy answers of ``receiver`` conditioned on each message's z (only the receiver is loaded).

    Args:
        checkpoint_dir: a ``step_N/`` folder; must be the checkpoint that produced the messages.
        messages: wire messages (``encode_texts`` or ``interlingua encode``), any precision.
        receiver: one of the checkpoint's models.
        overrides: ``key=value`` on top of the config (``eval.max_new_tokens``, ``eval.batch_size``,
            ``runtime.device``).
        config: the config to start from; default the one stored with the checkpoint.
        names: how errors name each message (default ``message 1``, ``message 2``, …).
    Returns:
        One answer per message, cut at the first newline (DESIGN §5).
    Raises:
        WireFormatError: a corrupted or foreign message, one from another checkpoint, or a z of the
            wrong shape; the error names the message.
        CheckpointError: an unreadable checkpoint, or a receiver that is not one of its models.
        MessageInputError: no messages.
        ConfigError: a bad override.
    """
    if not messages:
        raise MessageInputError("no messages to decode")
    names = list(names or [f"message {i + 1}" for i in range(len(messages))])
    model, config, device = load_checkpoint(checkpoint_dir, config, list(overrides or []))
    z = decode_messages(model, messages, names)  # before loading the LLM: a bad message fails fast
    lm = _load_model(model, config, receiver, "receiver", device)
    answers: list[str] = []
    batch_size = config.eval.batch_size
    for start in range(0, len(z), batch_size):
        with torch.no_grad():
            soft = model.soft_prompt(receiver, z[start : start + batch_size].to(device))  # (b, M, d_receiver)
        answers += lm.generate_from_soft_prompt(soft, config.eval.max_new_tokens)
    return answers


def decode_messages(model: InterlinguaModel, messages: Sequence[bytes], names: Sequence[str]) -> Tensor:
    """Decode messages produced by ``model``'s checkpoint: ``(n, *model.z_shape)`` fp32 on the CPU.

    Raises:
        WireFormatError: prefixed with the message's name.
    """
    checkpoint_id = model.fingerprint()
    rows = []
    for name, data in zip(names, messages):
        try:
            z = decode_message(data, expected_checkpoint_id=checkpoint_id).z
        except WireFormatError as err:
            raise WireFormatError(f"{name}: {err}") from None
        if tuple(z.shape) != model.z_shape:
            raise WireFormatError(f"{name}: z of shape {tuple(z.shape)}, this checkpoint's z is {model.z_shape}")
        rows.append(z)
    return torch.stack(rows)


# ---- shared ----------------------------------------------------------------------------------
def _load_model(model: InterlinguaModel, config: Config, key: str, role: str, device: torch.device) -> FrozenLM:
    """Put ``model`` in eval mode and load the one frozen LLM ``key`` (checked against the checkpoint)."""
    if key not in model.model_keys:
        raise CheckpointError(f"{role} {key!r} is not one of this checkpoint's models: {', '.join(model.model_keys)}")
    model.eval()
    lm = load_frozen_model(config, key, device, frozen_dtype(device))
    model.check_frozen_model(frozen_model_info(lm))
    return lm


def read_prompt_file(path: Path) -> list[NamedPrompt]:
    """Prompts of a JSONL file, one JSON object a line (blank lines skipped).

    Each object has a ``"text"`` (a whole prompt, used as given) or ``"context"`` and ``"question"``
    (turned into ``Context: …\\nQuestion: …\\nAnswer:``), and optionally an ``"id"``.

    Returns:
        One NamedPrompt per line, named by its ``id`` or else its line number (``000001``).
    Raises:
        FileNotFoundError: no such file.
        MessageInputError: a line that is not such an object, an empty text, an id that cannot name a
            file, or a repeated id; the message gives the line.
    """
    path = Path(path)
    prompts, seen = [], {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        prompt = _parse_prompt_line(line, f"{path}:{lineno}", default_name=f"{lineno:06d}")
        if prompt.name in seen:
            raise MessageInputError(f"{path}:{lineno}: id {prompt.name!r} already used on line {seen[prompt.name]}")
        seen[prompt.name] = lineno
        prompts.append(prompt)
    if not prompts:
        raise MessageInputError(f"{path}: no prompts (expected one JSON object a line)")
    return prompts


def _parse_prompt_line(line: str, where: str, default_name: str) -> NamedPrompt:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise MessageInputError(f"{where}: not valid JSON ({err})") from None
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        text = row["text"]
    elif isinstance(row, dict) and isinstance(row.get("context"), str) and isinstance(row.get("question"), str):
        text = text_prompt(row["context"], row["question"])
    else:
        raise MessageInputError(f'{where}: expected an object with a "text" field, or "context" and "question" fields')
    if not text.strip():
        raise MessageInputError(f"{where}: empty text; a prompt needs at least one non-space character")
    name = str(row.get("id", default_name))
    if not SAFE_NAME.match(name):
        raise MessageInputError(f"{where}: id {name!r} cannot name a file; use letters, digits, '.', '_' and '-'")
    return NamedPrompt(name, text)
