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

from interlingua.config import Conditioning, Config
from interlingua.data.prompts import context_prompt, text_prompt
from interlingua.errors import MessageInputError
from interlingua.models.system import Interlingua, Message, check_questions

SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
"""An ``id`` that can name a message file: no path separators, no leading dot."""



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
    """Wire messages of ``texts`` read through ``sender`` (:meth:`Interlingua.encode`; only the sender and
    the sentence encoder are loaded).

    Args:
        checkpoint_dir: a ``step_N/`` folder (or :meth:`Interlingua.save_pretrained`'s).
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
    if not texts:
        raise MessageInputError("no prompts to encode")
    system = Interlingua.from_pretrained(checkpoint_dir, list(overrides or []), config)
    sender = sender or system.model_keys[0]
    system.check_prompts(list(texts), sender, names)  # before loading the sentence encoder
    return system.encode(list(texts), sender=sender).payloads


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
    """Greedy answers of ``receiver`` conditioned on each message's z (:meth:`Interlingua.generate`; only
    the receiver is loaded).

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
    system = Interlingua.from_pretrained(checkpoint_dir, list(overrides or []), config)
    check_questions(system.conditioning, None if questions is None else list(questions), names)  # before decoding
    message = Message.from_bytes(messages, system.model.fingerprint(), names,
                                 code=system.receiving_code(messages))
    # generate checks the questions and the messages before it loads the receiver: a bad one fails fast
    return system.generate(message, receiver=receiver, question=None if questions is None else list(questions),
                           names=names)


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
