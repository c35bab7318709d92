"""Text prompts of the evaluation protocol (DESIGN §5) and fitting them into a token budget."""

from __future__ import annotations

from dataclasses import dataclass

from interlingua.constants import QUESTION_ONLY_TEMPLATE, TEXT_PROMPT_TEMPLATE


@dataclass(frozen=True)
class BudgetedPrompt:
    text: str
    context_truncated: bool


def text_prompt(context: str, question: str) -> str:
    """The full text prompt: ``Context: …\\nQuestion: …\\nAnswer:``."""
    return TEXT_PROMPT_TEMPLATE.format(context=context, question=question)


def question_only_prompt(question: str) -> str:
    """The control without context: ``Question: …\\nAnswer:``."""
    return QUESTION_ONLY_TEMPLATE.format(question=question)


def budgeted_text_prompt(tokenizer, context: str, question: str, budget: int) -> BudgetedPrompt:
    """The text prompt with the context cut (from the end) so the prompt has at most ~``budget`` tokens.

    The question and the answer cue are always kept whole; when they alone exceed the budget the
    context is dropped entirely. Counts exclude special tokens and chat-template tokens. Decoding the
    cut context and re-tokenising the whole prompt can move the count by a token or two at the cut;
    callers report the measured count of what the model really read.
    """
    overhead = len(tokenizer(text_prompt("", question), add_special_tokens=False).input_ids)
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    room = max(budget - overhead, 0)
    if len(context_ids) <= room:
        return BudgetedPrompt(text_prompt(context, question), context_truncated=False)
    kept = tokenizer.decode(context_ids[:room], skip_special_tokens=True).strip() if room else ""
    return BudgetedPrompt(text_prompt(kept, question), context_truncated=True)


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
