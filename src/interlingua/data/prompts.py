"""Text prompts of the evaluation protocol (DESIGN §5) and fitting them into a token budget.

With ``interlingua.conditioning=hybrid`` the text prompt is read in two parts that concatenate to it
exactly: :func:`context_prompt` (``Context: …``, what the sender encodes into z) and
:func:`question_suffix` (``\\nQuestion: …\\nAnswer:``, what the receiver reads as text after its soft
prompt). Both are cut from :data:`TEXT_PROMPT_TEMPLATE`, so the wording cannot drift from the text
baseline's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from interlingua.config import Conditioning
from interlingua.constants import QUESTION_ONLY_TEMPLATE, TEXT_PROMPT_TEMPLATE

# "Context: " and "\nQuestion: {question}\nAnswer:"
_CONTEXT_HEAD, _QUESTION_TAIL = TEXT_PROMPT_TEMPLATE.split("{context}")
QUESTION_MARKER = _QUESTION_TAIL.split("{question}")[0]
"""``"\\nQuestion: "``: where the question starts in a text prompt."""


@dataclass(frozen=True)
class BudgetedPrompt:
    text: str
    context_truncated: bool


def text_prompt(context: str, question: str) -> str:
    """The full text prompt: ``Context: …\\nQuestion: …\\nAnswer:``."""
    return TEXT_PROMPT_TEMPLATE.format(context=context, question=question)


def context_prompt(context: str) -> str:
    """The context part of the text prompt, ``Context: …`` (what a hybrid sender encodes);
    ``context_prompt(c) + question_suffix(q) == text_prompt(c, q)``."""
    return _CONTEXT_HEAD + context


def question_suffix(question: str) -> str:
    """The rest of the text prompt, ``\\nQuestion: …\\nAnswer:`` (what a hybrid receiver reads after
    its soft prompt)."""
    return _QUESTION_TAIL.format(question=question)


def question_only_prompt(question: str) -> str:
    """The control without context: ``Question: …\\nAnswer:``."""
    return QUESTION_ONLY_TEMPLATE.format(question=question)


def _budgeted(tokenizer, context: str, render: Callable[[str], str], budget: int) -> BudgetedPrompt:
    """``render(context)`` with the context cut (from the end) so it has at most ~``budget`` tokens;
    everything ``render`` adds around the context is kept whole (the context is dropped if it alone
    exceeds the budget)."""
    overhead = len(tokenizer(render(""), add_special_tokens=False).input_ids)
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    room = max(budget - overhead, 0)
    if len(context_ids) <= room:
        return BudgetedPrompt(render(context), context_truncated=False)
    kept = tokenizer.decode(context_ids[:room], skip_special_tokens=True).strip() if room else ""
    return BudgetedPrompt(render(kept), context_truncated=True)


def budgeted_text_prompt(tokenizer, context: str, question: str, budget: int) -> BudgetedPrompt:
    """The text prompt with the context cut (from the end) so the prompt has at most ~``budget`` tokens.

    The question and the answer cue are always kept whole; when they alone exceed the budget the
    context is dropped entirely. Counts exclude special tokens and chat-template tokens. Decoding the
    cut context and re-tokenising the whole prompt can move the count by a token or two at the cut;
    callers report the measured count of what the model really read.
    """
    return _budgeted(tokenizer, context, lambda kept: text_prompt(kept, question), budget)


def budgeted_context_prompt(tokenizer, context: str, budget: int) -> BudgetedPrompt:
    """``Context: …`` cut like :func:`budgeted_text_prompt`, with no question in the budget: the cut
    does not depend on the question, so a sender can encode a context before any question is asked."""
    return _budgeted(tokenizer, context, context_prompt, budget)


def shared_text_prompt(tokenizers, context: str, question: str, budget: int) -> str:
    """The one text prompt every model of a run reads: the shortest of the per-tokenizer cuts, so it
    fits ``budget`` tokens in each tokenizer. Training and the latent evaluation send this text.

    Args:
        tokenizers: the tokenizers of every model, in config order.
        context, question: one SQuAD example.
        budget: ``data.max_prompt_tokens``.
    Returns:
        The prompt text (``Context: …\\nQuestion: …\\nAnswer:``).
    """
    cuts = [budgeted_text_prompt(tokenizer, context, question, budget).text for tokenizer in tokenizers]
    return min(cuts, key=len)


def shared_context_prompt(tokenizers, context: str, budget: int) -> str:
    """:func:`shared_text_prompt` for the context alone (``Context: …``), what hybrid senders read."""
    cuts = [budgeted_context_prompt(tokenizer, context, budget).text for tokenizer in tokenizers]
    return min(cuts, key=len)


def sender_prompt(tokenizers: Sequence, context: str, question: str, budget: int, conditioning: Conditioning) -> str:
    """What the senders (aligner) and the sentence encoder read for one example under
    ``interlingua.conditioning``: the shared text prompt (``full``) or the shared context prompt
    (``hybrid``), each cut to fit ``budget`` tokens in every tokenizer."""
    if conditioning == Conditioning.HYBRID:
        return shared_context_prompt(tokenizers, context, budget)
    return shared_text_prompt(tokenizers, context, question, budget)
