"""Where the answer sits against what a shortened message keeps: is a cut message scored on answers it
still holds, or has it learned to carry the rest?

A ``pool_mode=prefix`` cell keeps the first ceil(T / k) of the sender's T context tokens, and the token
budget keeps the first ceil(T_b / k) of the receiver's own. An example's answer is *kept* when a gold
answer string ends inside the characters those tokens cover (its earliest occurrence in the context:
the receiver may answer from any occurrence), *dropped* when every occurrence lies beyond, and the
example is left out when no gold string occurs in the context. F1 on dropped answers above the
shuffled-z row means information crossed from the positions the message no longer has.

    split = answer_position_split(rows, examples, tokenizers, window=4)
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean
from typing import Iterable, Mapping, Optional

from interlingua.data.prompts import context_prompt
from interlingua.data.squad import SquadExample

KEPT, DROPPED = "kept", "dropped"


def kept_characters(tokenizer, text: str, window: int) -> int:
    """Characters of ``text`` covered by its first ceil(T / window) tokens (no special tokens, as the sender
    and the token budget read a context)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    keep = -(-len(encoded.input_ids) // window)
    return encoded.offset_mapping[keep - 1][1] if keep else 0


def answer_end(example: SquadExample) -> Optional[int]:
    """End (in characters of the context) of the earliest occurrence of any gold answer; None: none occurs."""
    ends = [found + len(answer) for answer in example.answers if answer
            for found in [example.context.find(answer)] if found >= 0]
    return min(ends) if ends else None


def answer_side(example: SquadExample, tokenizer, window: int) -> Optional[str]:
    """:data:`KEPT` or :data:`DROPPED` for this tokenizer's first ceil(T / window) context tokens; None
    when no gold answer occurs in the context."""
    end = answer_end(example)
    if end is None:
        return None
    text = context_prompt(example.context)
    start = text.index(example.context)
    return KEPT if start + end <= kept_characters(tokenizer, text, window) else DROPPED


def answer_position_split(rows: Iterable[dict], examples: Mapping[str, SquadExample], tokenizers: Mapping,
                          window: int) -> dict:
    """Mean F1 of prediction rows on kept and on dropped answers.

    Args:
        rows: prediction rows (``id``, ``model``, ``mode``, ``f1``; latent rows also ``sender``): a cell's
            ``predictions.jsonl`` or a token budget's ``window_budget/*.jsonl``.
        examples: id -> example.
        tokenizers: model key -> tokenizer. A latent row is split by its sender's tokens (what its z kept),
            a text row by its own model's.
        window: the k of the cut.
    Returns:
        ``{"<sender> -> <receiver> <mode>" (text rows: "<model> <mode>"): {"kept": {"n", "f1"},
        "dropped": {"n", "f1"}, "no_answer_in_context": n}}``.
    """
    sides: dict[tuple[str, str], Optional[str]] = {}
    scores: dict[str, dict] = defaultdict(lambda: {KEPT: [], DROPPED: [], None: []})
    for row in rows:
        reader = row.get("sender") or row["model"]
        key = (reader, row["id"])
        if key not in sides:
            sides[key] = answer_side(examples[row["id"]], tokenizers[reader], window)
        pair = f"{row['sender']} -> {row['model']}" if row.get("sender") else row["model"]
        name = f"{pair} {row['mode']}"
        scores[name][sides[key]].append(100 * row["f1"])
    return {name: {KEPT: _summary(s[KEPT]), DROPPED: _summary(s[DROPPED]), "no_answer_in_context": len(s[None])}
            for name, s in scores.items()}


def _summary(values: list[float]) -> dict:
    return {"n": len(values), "f1": mean(values) if values else None}
