import pytest
import torch

from interlingua.config import PromptFormat
from interlingua.constants import ANSWER_CUE
from interlingua.models.frozen_lm import FrozenLM

PROMPTS = [
    "Context: The river reaches the sea near the harbour.\nQuestion: Where does the river reach the sea?\nAnswer:",
    "Question: Who?\nAnswer:",
    "Context: In 1905 the scientist published four papers.\nQuestion: How many?\nAnswer:",
]


@pytest.fixture(params=["tiny-llama", "tiny-qwen2"])
def lm(request, tiny_lms) -> FrozenLM:
    return tiny_lms[request.param]


def test_nothing_frozen_requires_grad(lm):
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert not lm.model.training


def test_lm_head_reads_the_target_positions_as_one_matrix(lm):
    # a (B, K, d) strided slice would make the LM head a bmm reading the (V, d) matrix B times over
    seen = []
    handle = lm.model.get_output_embeddings().register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        targets = lm.answer_targets(["near the harbour", "four", "1889"], k=3)
        logits = lm.target_logits(lm.soft_prefix(torch.randn(3, 5, lm.hidden_size)), targets)
    finally:
        handle.remove()
    (rows,) = seen
    assert rows.dim() == 2 and rows.shape[0] == 3 * 3 and rows.is_contiguous()
    assert logits.shape[:2] == (3, 3)


def test_generate_hands_the_lm_head_a_contiguous_input_from_one_hook(lm):
    # generate slices the last position, (B, 1, d) strided: matmul would copy the (V, d) weight per row
    head = lm.model.get_output_embeddings()
    FrozenLM(lm.model, lm.tokenizer, key=lm.key)  # wrapping the same model again adds no second hook
    assert len(head._forward_pre_hooks) == 1
    seen = []
    handle = head.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        lm.generate(lm.text_prefix(PROMPTS), max_new_tokens=3)
    finally:
        handle.remove()
    assert seen and all(x.is_contiguous() for x in seen)


def test_empty_soft_prefix_reproduces_plain_logits(lm):
    targets = lm.answer_targets(["near the harbour", "four"], k=4)
    prefix = lm.soft_prefix(torch.zeros(2, 0, lm.hidden_size))
    logits = lm.target_logits(prefix, targets)  # (2, 4, V)

    bos = [lm.bos_id] if lm.bos_id is not None else []
    cue = lm.tokenizer(ANSWER_CUE, add_special_tokens=False).input_ids
    ids = torch.cat([torch.tensor([bos + cue] * 2), targets.ids], dim=1)
    reference = lm.model(input_ids=ids).logits
    start = len(bos) + len(cue) - 1
    torch.testing.assert_close(logits, reference[:, start : start + 4].float(), rtol=1e-5, atol=1e-5)


def test_left_padded_batch_gives_the_same_logits_as_one_by_one(lm):
    targets = lm.answer_targets(["near the harbour", "someone", "four"], k=3)
    batched = lm.target_logits(lm.text_prefix(PROMPTS), targets)
    for row, prompt in enumerate(PROMPTS):
        single_targets = lm.answer_targets([["near the harbour", "someone", "four"][row]], k=3)
        single = lm.target_logits(lm.text_prefix([prompt]), single_targets)
        torch.testing.assert_close(batched[row : row + 1], single, rtol=1e-4, atol=1e-4)


def test_batched_generation_equals_one_by_one(lm):
    batched = lm.generate_ids(lm.text_prefix(PROMPTS), max_new_tokens=6)
    for row, prompt in enumerate(PROMPTS):
        single = lm.generate_ids(lm.text_prefix([prompt]), max_new_tokens=6)[0]
        n = single.shape[0]
        assert batched[row, :n].tolist() == single.tolist()
        assert all(t == lm.tokenizer.pad_token_id for t in batched[row, n:].tolist())


def test_batched_soft_prompt_generation_equals_one_by_one(lm):
    torch.manual_seed(0)
    soft = torch.randn(3, 4, lm.hidden_size) * lm.embedding_rms
    batched = lm.generate_from_soft_prompt(soft, max_new_tokens=5)
    assert batched == [lm.generate_from_soft_prompt(soft[i : i + 1], max_new_tokens=5)[0] for i in range(3)]


def test_gradients_reach_the_soft_prompt_through_the_frozen_model(lm):
    soft = torch.randn(2, 3, lm.hidden_size, requires_grad=True)
    targets = lm.answer_targets(["a", "b c"], k=2)
    lm.target_logits(lm.soft_prefix(soft), targets).sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.model.parameters())


def test_answer_targets_have_no_special_tokens_and_end_with_a_newline(lm):
    targets = lm.answer_targets(["Paris", "a much longer answer than k tokens"], k=8)
    special = set(lm.tokenizer.all_special_ids)
    real = targets.ids[targets.mask].tolist()
    assert not special & set(real)
    first = lm.tokenizer.decode(targets.ids[0][targets.mask[0]])
    assert first == " Paris\n"
    assert targets.mask[1].all()


def test_soft_prefix_layout(lm):
    soft = torch.randn(2, 5, lm.hidden_size)
    prefix = lm.soft_prefix(soft)
    cue = lm.tokenizer(ANSWER_CUE, add_special_tokens=False).input_ids
    b = 1 if lm.bos_id is not None else 0
    assert prefix.embeddings.shape == (2, b + 5 + len(cue), lm.hidden_size)
    torch.testing.assert_close(prefix.embeddings[:, b : b + 5], soft)
    assert prefix.mask.all()


def test_embedding_rms_matches_the_embedding_table(lm):
    weight = lm.model.get_input_embeddings().weight
    assert lm.embedding_rms == pytest.approx(weight.pow(2).mean().sqrt().item(), rel=1e-4)


def test_prompt_formats(tiny_lms):
    qwen, llama = tiny_lms["tiny-qwen2"], tiny_lms["tiny-llama"]
    assert qwen.format_prompt("hi").endswith("<|im_start|>assistant\n")
    assert llama.format_prompt("hi") == "hi"
    assert llama.prompt_token_ids("hi")[0] == llama.bos_id
    with pytest.raises(ValueError, match="empty prompt"):
        llama.prompt_token_ids("   ")
    with pytest.raises(ValueError, match="prompt_format=raw"):
        FrozenLM(llama.model, llama.tokenizer, "tiny-llama", PromptFormat.CHAT)
    assert FrozenLM(qwen.model, qwen.tokenizer, "tiny-qwen2", PromptFormat.AUTO).prompt_format is PromptFormat.CHAT


def test_tokenize_plain_memo_matches_the_tokenizer_and_does_not_retokenize(lm, monkeypatch):
    import interlingua.models.frozen_lm as frozen_lm

    texts = ["Context: a b c\nQuestion: why?", "short", "Context: a b c\nQuestion: why?", "x y z w v u"]
    reference = lm.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt", padding_side="right")
    ids, mask = lm.tokenize_plain(texts)
    assert torch.equal(ids, reference.input_ids) and torch.equal(mask, reference.attention_mask.bool())
    calls = []
    tokenizer_call = type(lm.tokenizer).__call__
    monkeypatch.setattr(type(lm.tokenizer), "__call__",
                        lambda self, *a, **k: calls.append(a) or tokenizer_call(self, *a, **k))
    again, _ = lm.tokenize_plain(texts[::-1])
    assert torch.equal(again, reference.input_ids.flip(0)) and not calls  # every text came from the memo
    monkeypatch.setattr(frozen_lm, "PLAIN_IDS_MEMO", 2)
    lm.tokenize_plain(["new one", "new two"])
    assert len(lm._plain_ids) == 2 and calls == [(["new one", "new two"],)]  # bounded, oldest texts dropped
