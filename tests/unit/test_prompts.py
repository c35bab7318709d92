import pytest

from interlingua.data.prompts import budgeted_text_prompt, question_only_prompt, text_prompt

CONTEXT = " ".join(f"Sentence number {i} talks about the old harbour and the river." for i in range(30))
QUESTION = "Where does the river reach the sea?"


def test_text_prompt_format():
    assert text_prompt("C", "Q?") == "Context: C\nQuestion: Q?\nAnswer:"
    assert question_only_prompt("Q?") == "Question: Q?\nAnswer:"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("budget", [32, 64, 128])
def test_budget_keeps_the_question_and_cuts_the_context(tiny_lms, name, budget):
    tokenizer = tiny_lms[name].tokenizer
    prompt = budgeted_text_prompt(tokenizer, CONTEXT, QUESTION, budget)
    n_tokens = len(tokenizer(prompt.text, add_special_tokens=False).input_ids)
    overhead = len(tokenizer(text_prompt("", QUESTION), add_special_tokens=False).input_ids)
    assert prompt.context_truncated
    assert prompt.text.endswith(f"\nQuestion: {QUESTION}\nAnswer:")
    assert n_tokens <= max(budget, overhead) + 2  # re-tokenising at the cut may merge differently


def test_prompt_that_fits_is_unchanged(tiny_lms):
    prompt = budgeted_text_prompt(tiny_lms["tiny-qwen2"].tokenizer, "Short.", QUESTION, 512)
    assert prompt.text == text_prompt("Short.", QUESTION) and not prompt.context_truncated


def test_budget_smaller_than_the_question_drops_the_context(tiny_lms):
    prompt = budgeted_text_prompt(tiny_lms["tiny-llama"].tokenizer, CONTEXT, QUESTION, 4)
    assert prompt.text == text_prompt("", QUESTION) and prompt.context_truncated
