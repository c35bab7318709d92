"""Hybrid conditioning (``interlingua.conditioning=hybrid``): the context travels through z, the receiver
reads the question as text after its soft prompt. Config, prompts, prefix layout, training, evaluation
and the wire commands, on the tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from interlingua.artifacts.layout import TRAINER_STATE_VERSION
from interlingua.cli import main
from interlingua.config import Conditioning, ConfigError, config_from_dict, config_to_dict, load_config
from interlingua.constants import ANSWER_CUE, METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE, TRAINER_STATE_FILE
from interlingua.data.prompts import (
    budgeted_context_prompt,
    context_prompt,
    question_suffix,
    sender_prompt,
    shared_context_prompt,
    shared_text_prompt,
    text_prompt,
)
from interlingua.data.squad import load_squad
from interlingua.eval.jobs import eval_job, validation_examples
from interlingua.eval.latent import derangement, evaluate_latent
from interlingua.models.interlingua import InterlinguaModel, InterlinguaSpec, read_spec
from interlingua.models.system import Interlingua, frozen_model_info
from interlingua.training.batches import MicroBatch, TrainingStream
from interlingua.training.recipe import train
from interlingua.training.step import Stage, batch_loss
from interlingua.wire.service import (
    MessageInputError,
    encode_texts,
    generate_from_messages,
    questions_for_messages,
    read_prompt_file,
)
from tests.conftest import REPO_ROOT, SQUAD_MINI

MODELS = ("tiny-llama", "tiny-qwen2")
CONTEXT = "The Eiffel Tower was finished in 1889 in Paris after two years of work."
QUESTIONS = ["When?", "When was the tower in Paris finished, and how long did the work take?", "Where is it?"]


def tiny(*overrides: str):
    return load_config("tiny", [f"data.source={SQUAD_MINI}", *overrides])


@pytest.fixture(scope="module")
def tiny_encoder():
    from interlingua.models.encoder import SentenceEncoder

    return SentenceEncoder("tiny-encoder")


def hybrid_model(tiny_lms, tiny_encoder, seed: int = 0) -> InterlinguaModel:
    config = tiny("interlingua.conditioning=hybrid")
    spec = InterlinguaSpec(
        models=[frozen_model_info(tiny_lms[key]) for key in MODELS], encoder="tiny-encoder", d_sem=tiny_encoder.dim,
        interlingua=config.interlingua,
    )
    torch.manual_seed(seed)
    return InterlinguaModel(spec).eval()


# ---- config and checkpoint spec ----------------------------------------------------------------
def test_conditioning_defaults_to_full_and_round_trips():
    assert tiny().interlingua.conditioning == Conditioning.FULL
    config = tiny("interlingua.conditioning=hybrid")
    assert config.interlingua.conditioning == Conditioning.HYBRID
    data = config_to_dict(config)
    assert data["interlingua"]["conditioning"].lower() == "hybrid"  # OmegaConf writes enum names
    assert config_from_dict(data) == config
    del data["interlingua"]["conditioning"]  # a config written before the key existed
    assert config_from_dict(data).interlingua.conditioning == Conditioning.FULL
    with pytest.raises(ConfigError, match="interlingua.conditioning"):
        tiny("interlingua.conditioning=partial")


def test_the_checkpoint_spec_carries_the_conditioning(tiny_lms, tiny_encoder, tmp_path):
    model = hybrid_model(tiny_lms, tiny_encoder)
    model.save_pretrained(tmp_path / "step")
    assert read_spec(tmp_path / "step").interlingua.conditioning == Conditioning.HYBRID
    old = model.spec.to_json()
    del old["interlingua"]["conditioning"]  # a checkpoint written before the key existed
    assert InterlinguaSpec.from_json(old).interlingua.conditioning == Conditioning.FULL


# ---- prompts -------------------------------------------------------------------------------------
def test_context_and_question_parts_concatenate_to_the_text_prompt():
    assert context_prompt("C.") == "Context: C."
    assert question_suffix("Q?") == "\nQuestion: Q?" + ANSWER_CUE
    assert context_prompt("C.") + question_suffix("Q?") == text_prompt("C.", "Q?")


def test_context_prompt_is_cut_to_the_budget_without_the_question(tiny_lms):
    tokenizers = [tiny_lms[key].tokenizer for key in MODELS]
    long_context = CONTEXT * 10
    for tokenizer in tokenizers:
        cut = budgeted_context_prompt(tokenizer, long_context, 40)
        assert cut.context_truncated and cut.text.startswith("Context: ")
        assert len(tokenizer(cut.text, add_special_tokens=False).input_ids) <= 40 + 2
    shared = shared_context_prompt(tokenizers, long_context, 40)
    assert shared == min((budgeted_context_prompt(t, long_context, 40).text for t in tokenizers), key=len)
    # the question takes no room from the context: the cut is longer than the full prompt's context part
    full = shared_text_prompt(tokenizers, long_context, QUESTIONS[1], 40)
    assert len(shared) > len(full.split("\nQuestion:")[0])
    assert sender_prompt(tokenizers, long_context, QUESTIONS[1], 40, Conditioning.HYBRID) == shared
    assert sender_prompt(tokenizers, long_context, QUESTIONS[1], 40, Conditioning.FULL) == full


# ---- the receiver's prefix -----------------------------------------------------------------------
@pytest.fixture(params=MODELS)
def lm(request, tiny_lms):
    return tiny_lms[request.param]


def soft_prompts(lm, n: int, slots: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, slots, lm.hidden_size) * lm.embedding_rms  # (n, M, d)


def test_question_prefix_layout(lm):
    """Row i: left padding, then [BOS?], the M soft positions, then the ids of "\\nQuestion: …\\nAnswer:"."""
    soft = soft_prompts(lm, 3)
    prefix = lm.soft_prefix(soft, questions=QUESTIONS)
    head = [lm.bos_id] if lm.bos_id is not None else []
    suffixes = [lm.tokenizer(question_suffix(q), add_special_tokens=False).input_ids for q in QUESTIONS]
    width = len(head) + 4 + max(map(len, suffixes))
    assert prefix.embeddings.shape == (3, width, lm.hidden_size)
    for row, suffix in enumerate(suffixes):
        start = width - len(head) - 4 - len(suffix)
        assert prefix.mask[row].tolist() == [False] * start + [True] * (width - start)
        real = prefix.embeddings[row, start:]
        ids = torch.tensor(head + suffix)
        torch.testing.assert_close(real[: len(head)], lm.embed(ids[: len(head)]))  # BOS first
        torch.testing.assert_close(real[len(head) : len(head) + 4], soft[row])
        torch.testing.assert_close(real[len(head) + 4 :], lm.embed(ids[len(head) :]))
    assert lm.tokenizer.decode(suffixes[0]) == f"\nQuestion: {QUESTIONS[0]}\nAnswer:"


def test_batched_hybrid_prefixes_equal_one_at_a_time(lm):
    soft = soft_prompts(lm, 3)
    targets = lm.answer_targets(["1889", "two years", "Paris"], k=3)
    batched = lm.target_logits(lm.soft_prefix(soft, questions=QUESTIONS), targets)  # (3, K, V)
    generated = lm.generate(lm.soft_prefix(soft, questions=QUESTIONS), max_new_tokens=5)
    for i, question in enumerate(QUESTIONS):
        single = lm.soft_prefix(soft[i : i + 1], questions=[question])
        one = lm.target_logits(single, lm.answer_targets([["1889", "two years", "Paris"][i]], k=3))
        torch.testing.assert_close(batched[i : i + 1], one, rtol=1e-4, atol=1e-4)
        assert generated[i] == lm.generate(single, max_new_tokens=5)[0]


def test_question_prefix_rejects_bad_arguments(tiny_lms):
    lm = tiny_lms["tiny-llama"]
    with pytest.raises(ValueError, match="2 questions for a batch of 3"):
        lm.soft_prefix(soft_prompts(lm, 3), questions=QUESTIONS[:2])
    with pytest.raises(ValueError, match="a cue or questions, not both"):
        lm.soft_prefix(soft_prompts(lm, 3), questions=QUESTIONS, cue="\nRepeat:")


# ---- training --------------------------------------------------------------------------------------
def test_training_items_split_teacher_sender_and_question(tiny_lms):
    examples = load_squad("train", str(SQUAD_MINI), 8, 0)
    tokenizers = [tiny_lms[key].tokenizer for key in MODELS]
    hybrid = TrainingStream(examples, tokenizers, 1024, 4, 1, 0, conditioning=Conditioning.HYBRID)
    full = TrainingStream(examples, tokenizers, 1024, 4, 1, 0)
    h, f = hybrid.micro_batches(0)[0], full.micro_batches(0)[0]
    batch = [examples[i] for i in hybrid.batch_indices(0)]
    assert h.texts == f.texts == [shared_text_prompt(tokenizers, e.context, e.question, 1024) for e in batch]
    assert h.questions == [e.question for e in batch]
    assert h.sender_texts == [shared_context_prompt(tokenizers, e.context, 1024) for e in batch]
    assert f.questions is None and f.sender_texts == f.texts


def test_hybrid_loss_sends_the_context_and_gives_the_student_the_question(tiny_lms, tiny_encoder, monkeypatch):
    """The aligner and the anchor read the context, the student's prefix holds the question, and the KD
    teacher reads the whole text prompt."""
    from interlingua.cache.teacher import KDTeacher
    from interlingua.models.frozen_lm import FrozenLM

    system = Interlingua(hybrid_model(tiny_lms, tiny_encoder), tiny_lms, tiny_encoder)
    contexts, questions = ["Paris is in France.", CONTEXT], QUESTIONS[:2]
    texts = [text_prompt(c, q) for c, q in zip(contexts, questions)]
    senders = [context_prompt(c) for c in contexts]
    seen = {"anchor": [], "prefix": [], "teacher": []}
    anchor, soft_prefix, kd = system.anchor, FrozenLM.soft_prefix, KDTeacher.kd_loss
    monkeypatch.setattr(system, "anchor", lambda t: seen["anchor"].append(t) or anchor(t))
    monkeypatch.setattr(FrozenLM, "soft_prefix",
                        lambda self, s, **kw: seen["prefix"].append(kw.get("questions")) or soft_prefix(self, s, **kw))
    monkeypatch.setattr(KDTeacher, "kd_loss", lambda self, s, t, g: seen["teacher"].append(t) or kd(self, s, t, g))
    batch = MicroBatch.of(texts, ["France", "1889"], senders, questions)
    out = batch_loss(system, system, batch, Stage.QA, tiny().loss)
    assert torch.isfinite(out.total)
    assert seen["anchor"] == [senders]
    assert seen["prefix"] == [questions] * len(MODELS)
    assert seen["teacher"] == [texts] * len(MODELS)


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    """A tiny training run with interlingua.conditioning=hybrid (2 steps) and its evaluation."""
    from interlingua.models.frozen_lm import FrozenLM

    out = tmp_path_factory.mktemp("hybrid")
    config = tiny("interlingua.conditioning=hybrid", "train.steps=2", f"cache.dir={out / 'cache'}")
    seen = {"sent": [], "questions": []}  # what the recipe's batches gave the anchor and the student prefix
    anchor, soft_prefix = Interlingua.anchor, FrozenLM.soft_prefix
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Interlingua, "anchor", lambda self, t: seen["sent"].extend(t) or anchor(self, t))
        patch.setattr(FrozenLM, "soft_prefix",
                      lambda self, s, **kw: seen["questions"].append(kw.get("questions")) or soft_prefix(self, s, **kw))
        final = train(config, out / "run", progress=False)
    return final, eval_job(final, limit=4, progress=False), seen


@pytest.mark.e2e
def test_a_hybrid_run_trains_and_evaluates_in_hybrid_mode(hybrid_run):
    final, job_dir, seen = hybrid_run
    assert seen["sent"] and all(t.startswith("Context: ") and "\nQuestion:" not in t for t in seen["sent"])
    assert seen["questions"] and all(q for q in seen["questions"])  # every student prefix got its questions
    assert read_spec(final).interlingua.conditioning == Conditioning.HYBRID
    metrics = json.loads((job_dir / METRICS_FILE).read_text())
    assert metrics["latent"]["conditioning"] == "hybrid"
    assert metrics["run"]["config"]["interlingua"]["conditioning"].lower() == "hybrid"
    messages = metrics["latent"]["messages"]["tiny-llama"]
    assert messages["soft_prompt_positions"] > 1 + 4 + len(ANSWER_CUE)  # BOS + M + the question's tokens
    report = (job_dir / REPORT_FILE).read_text()
    assert "conditioning: `hybrid`" in report and "this question" in report
    rows = [json.loads(line) for line in (job_dir / PREDICTIONS_FILE).read_text().splitlines()]
    assert {r["mode"] for r in rows} >= {"latent", "shuffled", "cross", "text", "question_only"}


@pytest.mark.e2e
def test_eval_uses_the_conditioning_the_checkpoint_was_trained_with(hybrid_run, tmp_path):
    final, job_dir, _ = hybrid_run
    overridden = eval_job(final, overrides=["interlingua.conditioning=full"], limit=4, output_dir=tmp_path / "e",
                          baselines_dir=job_dir, progress=False)
    assert json.loads((overridden / METRICS_FILE).read_text())["latent"]["conditioning"] == "hybrid"


@pytest.mark.e2e
def test_every_latent_row_reads_its_own_question(tiny_lms, tiny_encoder):
    """Shuffled = another example's z with *this* example's question; the same z with the z-example's
    question gives other answers (so the test can tell them apart)."""
    config = tiny("eval.limit=4")
    system = Interlingua(hybrid_model(tiny_lms, tiny_encoder), tiny_lms, tiny_encoder)
    examples = validation_examples(config)
    rows, summary = evaluate_latent(system, examples, config, progress=False)
    assert summary["conditioning"] == "hybrid"
    senders = [context_prompt(e.context) for e in examples]
    permutation = derangement(len(examples), config.runtime.seed)
    lm = tiny_lms["tiny-llama"]
    with torch.no_grad():
        z = system.encode_z("tiny-llama", senders)[permutation]
        soft = system.soft_prompt("tiny-llama", z)

    def answers(questions):
        return lm.generate(lm.soft_prefix(soft, questions=questions), config.eval.max_new_tokens)

    shuffled = {r["id"]: r["prediction"] for r in rows if r["mode"] == "shuffled" and r["model"] == "tiny-llama"}
    own = answers([e.question for e in examples])
    assert [shuffled[e.id] for e in examples] == own
    assert answers([examples[j].question for j in permutation]) != own


# ---- wire: encode / generate ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_lms, tiny_encoder):
    """A hybrid and a full checkpoint (random weights), as training writes them."""
    result = {}
    for conditioning in ("hybrid", "full"):
        config = tiny(f"interlingua.conditioning={conditioning}")
        spec = InterlinguaSpec(
            models=[frozen_model_info(tiny_lms[key]) for key in MODELS], encoder="tiny-encoder",
            d_sem=tiny_encoder.dim, interlingua=config.interlingua,
        )
        torch.manual_seed(0)
        step = tmp_path_factory.mktemp(conditioning) / "run" / "step_000002"
        InterlinguaModel(spec).save_pretrained(step)
        (step / TRAINER_STATE_FILE).write_text(json.dumps(
            {"format_version": TRAINER_STATE_VERSION, "step": 2, "config": config_to_dict(config)}
        ))
        result[conditioning] = step
    return result


CONTEXTS = [CONTEXT, "Marie Curie won two Nobel prizes, in physics and in chemistry."]
WIRE_QUESTIONS = ["When was the tower finished?", "How many Nobel prizes did Curie win?"]


@pytest.fixture(scope="module")
def direct(checkpoints, tiny_lms, tiny_encoder):
    """Answers of tiny-llama from tiny-qwen2's z of each context and the question as text, in one process."""
    system = Interlingua(InterlinguaModel.from_pretrained(checkpoints["hybrid"]).eval(), tiny_lms, tiny_encoder)
    senders = [context_prompt(c) for c in CONTEXTS]
    with torch.no_grad():
        soft = system.soft_prompt("tiny-llama", system.encode_z("tiny-qwen2", senders))
    lm = tiny_lms["tiny-llama"]
    answers = lm.generate(lm.soft_prefix(soft, questions=WIRE_QUESTIONS), tiny().eval.max_new_tokens)
    assert len(set(answers)) == 2  # else comparing answers could not tell the messages apart
    return answers


def test_hybrid_encode_generate_equals_the_direct_path(checkpoints, direct):
    messages = encode_texts(checkpoints["hybrid"], [context_prompt(c) for c in CONTEXTS], sender="tiny-qwen2")
    assert generate_from_messages(checkpoints["hybrid"], messages, "tiny-llama", questions=WIRE_QUESTIONS) == direct


@pytest.mark.parametrize(
    "kind, call, expected",
    [
        ("hybrid", "generate", "trained with interlingua.conditioning=hybrid.*pass --question"),
        ("full", "generate_with_question", "trained with interlingua.conditioning=full.*drop --question"),
        ("hybrid", "encode_whole_prompt", "holds a question.*send the context alone"),
    ],
)
def test_wire_conditioning_mismatches_are_clear_errors(checkpoints, kind, call, expected):
    checkpoint = checkpoints[kind]
    with pytest.raises(MessageInputError, match=expected):
        if call == "encode_whole_prompt":
            encode_texts(checkpoint, [text_prompt(CONTEXTS[0], WIRE_QUESTIONS[0])])
        else:
            message = encode_texts(checkpoint, [context_prompt(CONTEXTS[0])])
            questions = WIRE_QUESTIONS[:1] if call == "generate_with_question" else None
            generate_from_messages(checkpoint, message, "tiny-llama", questions=questions)


def test_prompt_file_in_hybrid_mode_sends_the_context_and_keeps_the_question(tmp_path):
    path = tmp_path / "contexts.jsonl"
    path.write_text('{"id": "eiffel", "context": "C.", "question": "Q?"}\n{"context": "D."}\n')
    prompts = read_prompt_file(path, Conditioning.HYBRID)
    assert [(p.name, p.text, p.question) for p in prompts] == [("eiffel", "Context: C.", "Q?"),
                                                               ("000002", "Context: D.", None)]
    assert questions_for_messages(path, [tmp_path / "m" / "eiffel.bin"]) == ["Q?"]
    with pytest.raises(MessageInputError, match='000002.bin: its line .*contexts.jsonl:2 has no "question"'):
        questions_for_messages(path, [tmp_path / "000002.bin"])
    with pytest.raises(MessageInputError, match="no line of .* has id .*'curie'"):
        questions_for_messages(path, [tmp_path / "curie.bin"])
    with pytest.raises(MessageInputError, match='"context" and "question" fields'):  # full mode needs both
        read_prompt_file(path)


def test_generate_cli_without_the_question_is_one_line_and_exit_2(checkpoints, tmp_path, capsys):
    message = tmp_path / "m.bin"
    message.write_bytes(encode_texts(checkpoints["hybrid"], [context_prompt(CONTEXTS[0])])[0])
    assert main(["generate", "--checkpoint", str(checkpoints["hybrid"]), "--model", "tiny-llama", str(message)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("interlingua generate: error: ") and 'pass --question "…"' in err


@pytest.mark.e2e
@pytest.mark.slow
def test_hybrid_sender_and_receiver_in_separate_processes(checkpoints, direct, tmp_path):
    """`encode --input` sends each line's context; `generate --input` gives each message its line's question;
    `generate --question` gives one question as text."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "context": c, "question": q}) + "\n"
                               for i, (c, q) in enumerate(zip(CONTEXTS, WIRE_QUESTIONS))))
    cli, env = [sys.executable, "-m", "interlingua"], {**os.environ, "PYTHONIOENCODING": "utf-8"}
    ck = ["--checkpoint", str(checkpoints["hybrid"])]
    out = tmp_path / "messages"
    subprocess.run(cli + ["encode", *ck, "--input", str(prompts), "--sender", "tiny-qwen2", "-o", str(out)],
                   check=True, cwd=REPO_ROOT, capture_output=True, env=env)
    files = [out / "q1.bin", out / "q0.bin"]  # not in file order: matched by name
    generate = cli + ["generate", *ck, "--model", "tiny-llama"]
    received = subprocess.run(generate + ["--input", str(prompts), *map(str, files)],
                              check=True, cwd=REPO_ROOT, capture_output=True, env=env).stdout
    assert received == f"{files[0]}\t{direct[1]}\n{files[1]}\t{direct[0]}\n".encode()
    one = subprocess.run(generate + ["--question", WIRE_QUESTIONS[0], str(out / "q0.bin")],
                         check=True, cwd=REPO_ROOT, capture_output=True, env=env).stdout
    assert one == f"{direct[0]}\n".encode()
