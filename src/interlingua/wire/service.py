"""Sender and receiver as separate steps: prompt text -> wire message bytes, and bytes -> answer.

Each side loads the checkpoint's learned modules and only the frozen models it needs: the sender its own
LLM and the sentence encoder, the receiver its own LLM (it never sees text). What travels between them
is the message (``docs/wire-format.md``), bound to the checkpoint by its fingerprint.

    messages = encode_texts(checkpoint, ["Context: …\\nQuestion: …\\nAnswer:"], sender="tiny-llama")
    answers = generate_from_messages(checkpoint, messages, receiver="tiny-qwen2")

A checkpoint trained with ``interlingua.conditioning=hybrid`` sends the context alone and the receiver
reads the question as text:

    messages = encode_texts(checkpoint, ["Context: …"], sender="tiny-llama")
    answers = generate_from_messages(checkpoint, messages, receiver="tiny-qwen2", questions=["…?"])
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from interlingua.config import Conditioning, Config
from interlingua.data.prompts import QUESTION_MARKER, context_prompt, text_prompt
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
    question: str | None = None
    """The line's ``"question"`` field, if any (a hybrid receiver reads it as text)."""


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
        texts: prompts used as given, e.g. ``Context: …\\nQuestion: …\\nAnswer:``; for a checkpoint
            trained with ``interlingua.conditioning=hybrid`` the context alone, ``Context: …``.
        sender: one of the checkpoint's models; default its first.
        overrides: ``key=value`` on top of the config (``compression.precision``, ``compression.group_size``,
            ``eval.batch_size``, ``data.max_prompt_tokens``, ``runtime.device``).
        config: the config to start from; default the one stored with the checkpoint.
        names: how errors name each text (default ``prompt 1``, ``prompt 2``, …).
    Returns:
        One message per text, stamped with the checkpoint's fingerprint.
    Raises:
        MessageInputError: no texts, an empty one, one longer than ``data.max_prompt_tokens`` tokens,
            or one holding a question for a hybrid checkpoint.
        CheckpointError: an unreadable checkpoint, or a sender that is not one of its models.
        ConfigError: a bad override.
    """
    names = list(names or [f"prompt {i + 1}" for i in range(len(texts))])
    _check_not_empty(texts, names)
    model, config, device = load_checkpoint(checkpoint_dir, config, list(overrides or []))
    _check_pooled(model, checkpoint_dir)
    if model.spec.interlingua.conditioning == Conditioning.HYBRID:
        _check_context_only(texts, names)
    lm = _load_model(model, config, sender or model.model_keys[0], "sender", device)
    _check_lengths(lm, texts, names, config.data.max_prompt_tokens)
    from interlingua.models.encoder import SentenceEncoder

    encoder = SentenceEncoder(config.encoder, device=device)
    z = _encode_batched(model, lm, encoder, list(texts), config.eval.batch_size)  # (n, ...) fp32, CPU
    checkpoint_id = model.fingerprint()
    precision, group_size = config.compression.precision, config.compression.group_size
    return [encode_message(row, precision, group_size, checkpoint_id) for row in z]


def _check_pooled(model: InterlinguaModel, checkpoint_dir: Path) -> None:
    """The wire commands carry the pooled design's fixed-shape z; refuse a native checkpoint clearly."""
    if model.spec.interlingua.design.value == "native":
        raise CheckpointError(
            f"{checkpoint_dir} holds a native-design interlingua (interlingua.design=native), which the wire "
            "commands do not carry yet; evaluate it with `interlingua eval --checkpoint …`"
        )


def _check_not_empty(texts: Sequence[str], names: Sequence[str]) -> None:
    if not texts:
        raise MessageInputError("no prompts to encode")
    for name, text in zip(names, texts):
        if not text.strip():
            raise MessageInputError(f"{name} is empty; a prompt needs at least one non-space character")


def _check_context_only(texts: Sequence[str], names: Sequence[str]) -> None:
    """A hybrid sender never saw a question in training: refuse a whole text prompt."""
    for name, text in zip(names, texts):
        if QUESTION_MARKER in text:
            raise MessageInputError(
                f"{name} holds a question ({QUESTION_MARKER!r}), but this checkpoint was trained with "
                "interlingua.conditioning=hybrid: send the context alone ('Context: …') and give the question "
                "to the receiver (interlingua generate --question …)"
            )


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
    questions: Sequence[str] | None = None,
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
        questions: one question per message, read as text after the soft prompt; required by a
            checkpoint trained with ``interlingua.conditioning=hybrid``, refused by a ``full`` one.
    Returns:
        One answer per message, cut at the first newline (DESIGN §5).
    Raises:
        WireFormatError: a corrupted or foreign message, one from another checkpoint, or a z of the
            wrong shape; the error names the message.
        CheckpointError: an unreadable checkpoint, or a receiver that is not one of its models.
        MessageInputError: no messages; questions missing for a hybrid checkpoint, given for a full
            one, empty, or not one per message.
        ConfigError: a bad override.
    """
    if not messages:
        raise MessageInputError("no messages to decode")
    names = list(names or [f"message {i + 1}" for i in range(len(messages))])
    model, config, device = load_checkpoint(checkpoint_dir, config, list(overrides or []))
    _check_pooled(model, checkpoint_dir)
    _check_questions(model.spec.interlingua.conditioning, questions, names)
    z = decode_messages(model, messages, names)  # before loading the LLM: a bad message fails fast
    lm = _load_model(model, config, receiver, "receiver", device)
    answers: list[str] = []
    batch_size = config.eval.batch_size
    for start in range(0, len(z), batch_size):
        with torch.no_grad():
            soft = model.soft_prompt(receiver, z[start : start + batch_size].to(device))  # (b, M, d_receiver)
        batch_questions = None if questions is None else list(questions[start : start + batch_size])
        answers += lm.generate(lm.soft_prefix(soft, questions=batch_questions), config.eval.max_new_tokens)
    return answers


def _check_questions(conditioning: Conditioning, questions: Sequence[str] | None, names: Sequence[str]) -> None:
    """The receiver reads a question as text exactly when the checkpoint was trained that way."""
    if conditioning == Conditioning.HYBRID and questions is None:
        raise MessageInputError(
            "this checkpoint was trained with interlingua.conditioning=hybrid: a message holds only the context "
            'and the receiver reads the question as text; pass --question "…" (or --input FILE.jsonl with a '
            '"question" per message)'
        )
    if conditioning == Conditioning.FULL and questions is not None:
        raise MessageInputError(
            "this checkpoint was trained with interlingua.conditioning=full: the question travels inside the "
            "message; drop --question / --input"
        )
    if questions is None:
        return
    if len(questions) != len(names):
        raise MessageInputError(f"{len(questions)} questions for {len(names)} messages; give one per message")
    for name, question in zip(names, questions):
        if not isinstance(question, str) or not question.strip():
            raise MessageInputError(f"{name}: empty question; a hybrid receiver needs the question as text")


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


def read_prompt_file(path: Path, conditioning: Conditioning = Conditioning.FULL) -> list[NamedPrompt]:
    """Prompts of a JSONL file, one JSON object a line (blank lines skipped).

    Each object has a ``"text"`` (a whole prompt, used as given) or ``"context"`` and ``"question"``
    (turned into ``Context: …\\nQuestion: …\\nAnswer:``), and optionally an ``"id"``. With
    ``conditioning=hybrid`` a ``"context"`` alone is enough and becomes ``Context: …``; a
    ``"question"`` is kept for the receiver (:attr:`NamedPrompt.question`), never sent.

    Returns:
        One NamedPrompt per line, named by its ``id`` or else its line number (``000001``).
    Raises:
        FileNotFoundError: no such file.
        MessageInputError: a line that is not such an object, an empty text, an id that cannot name a
            file, or a repeated id; the message gives the line.
    """
    prompts = [_prompt_of(row, where, name, Conditioning(conditioning)) for where, name, row in _json_lines(path)]
    if not prompts:
        raise MessageInputError(f"{path}: no prompts (expected one JSON object a line)")
    return prompts


def questions_for_messages(path: Path, message_paths: Sequence[Path]) -> list[str]:
    """The ``"question"`` of each message from a JSONL file, e.g. the one its messages were encoded from
    (``interlingua encode --input``): message ``<name>.bin`` takes the line whose ``id`` (else line
    number, ``000001``) is ``<name>``. Lines need no other field.

    Raises:
        FileNotFoundError: no such file.
        MessageInputError: a line that is not a JSON object, a bad or repeated id, or a message whose line
            is missing or has no ``"question"``.
    """
    by_name = {name: (where, row.get("question")) for where, name, row in _json_lines(path)}
    questions = []
    for message in message_paths:
        name = Path(message).stem
        if name not in by_name:
            raise MessageInputError(
                f"{message}: no line of {path} has id (or line number) {name!r}; pass the JSONL file the messages "
                "were encoded from"
            )
        where, question = by_name[name]
        if not isinstance(question, str):
            raise MessageInputError(f'{message}: its line {where} has no "question" field')
        questions.append(question)
    return questions


def _json_lines(path: Path) -> Iterator[tuple[str, str, dict]]:
    """``(where, name, row)`` for each non-blank line of a JSONL file: ``path:lineno``, the line's ``id``
    (else its line number, ``000001``) checked to name a file once, and the JSON object."""
    path, seen = Path(path), {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MessageInputError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise MessageInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        name = str(row.get("id", f"{lineno:06d}"))
        if not SAFE_NAME.match(name):
            raise MessageInputError(f"{where}: id {name!r} cannot name a file; use letters, digits, '.', '_' and '-'")
        if name in seen:
            raise MessageInputError(f"{where}: id {name!r} already used on line {seen[name]}")
        seen[name] = lineno
        yield where, name, row


def _prompt_of(row: dict, where: str, name: str, conditioning: Conditioning) -> NamedPrompt:
    question = row["question"] if isinstance(row.get("question"), str) else None
    has_context = isinstance(row.get("context"), str)
    if isinstance(row.get("text"), str):
        text = row["text"]
    elif has_context and conditioning == Conditioning.HYBRID:
        text = context_prompt(row["context"])
    elif has_context and question is not None:
        text = text_prompt(row["context"], question)
    elif conditioning == Conditioning.HYBRID:
        raise MessageInputError(f'{where}: expected an object with a "text" field or a "context" field')
    else:
        raise MessageInputError(f'{where}: expected an object with a "text" field, or "context" and "question" fields')
    if not text.strip():
        raise MessageInputError(f"{where}: empty text; a prompt needs at least one non-space character")
    return NamedPrompt(name, text, question)
