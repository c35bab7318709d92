"""Latent evaluation: the pure measures on hand-made inputs, and the eval job on the tiny models with a
random-initialised interlingua checkpoint."""

import json
import math
from collections import Counter

import pytest
import torch

from interlingua.artifacts.layout import TRAINER_STATE_VERSION
from interlingua.codec import decode_message, encode_message, error_bound
from interlingua.config import (
    CompressionConfig,
    ConfigError,
    ModelConfig,
    Precision,
    PromptFormat,
    config_to_dict,
    replace,
    save_config,
)
from interlingua.constants import (
    CROSS_DECODE_PLOT,
    F1_BY_ROW_PLOT,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    RESOLVED_CONFIG_FILE,
    TRAINER_STATE_FILE,
)
from interlingua.data.prompts import budgeted_text_prompt, shared_text_prompt, text_prompt
from interlingua.eval.jobs import eval_job, validation_examples
from interlingua.eval.latent import (
    INFORMATION_FLOW_MARGIN_F1,
    SentZ,
    agreement,
    changed_by_shuffle,
    cross_decode_matrix,
    derangement,
    distinct_share,
    evaluate_latent,
    evaluate_own_latent,
    information_flow,
    interlingua_distance,
    predictions_by_model,
)
from interlingua.models.interlingua import CheckpointError, InterlinguaModel, InterlinguaSpec
from interlingua.models.system import Interlingua, checkpoint_config, frozen_model_info

N_EXAMPLES = 4
MODELS = ("tiny-llama", "tiny-qwen2")


# ---- pure functions ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 8, 101])
def test_derangement_moves_every_index_and_is_seeded(n):
    permutation = derangement(n, seed=3)
    assert sorted(permutation) == list(range(n))
    assert all(permutation[i] != i for i in range(n))
    assert derangement(n, seed=3) == permutation


def test_derangement_needs_two_items():
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1, seed=0)


def test_agreement_counts_normalised_matches_per_pair():
    predictions = {
        "a": ["The Eiffel Tower", "1905", "blue", "x"],
        "b": ["eiffel tower.", "1906", "Blue!", "y"],
        "c": ["eiffel tower", "1905", "red", "x"],
    }
    shares = {(p["a"], p["b"]): p["share"] for p in agreement(predictions)}
    assert shares == {("a", "b"): 0.5, ("a", "c"): 0.75, ("b", "c"): 0.25}


def test_interlingua_distance_by_hand():
    z_a = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    z_b = torch.tensor([[0.0, 4.0], [2.0, 0.0]])
    # example 0: L2 5, cosine 0; example 1: L2 1, cosine 1
    assert interlingua_distance(z_a, z_b) == pytest.approx({"mean_l2": 3.0, "mean_cosine": 0.5})
    # (B, M, d) is flattened to (B, M·d): the same numbers
    flattened = interlingua_distance(z_a.view(2, 2, 1), z_b.view(2, 2, 1))
    assert flattened == pytest.approx({"mean_l2": 3.0, "mean_cosine": 0.5})


def test_every_sender_gets_the_one_prompt_that_fits_every_tokenizer(tiny_lms):
    tokenizers = [tiny_lms[key].tokenizer for key in MODELS]
    context, question = "The river flows through the old city and reaches the sea near the harbour. " * 3, "Where?"
    text = shared_text_prompt(tokenizers, context, question, budget=40)
    cuts = [budgeted_text_prompt(t, context, question, 40).text for t in tokenizers]
    assert text == min(cuts, key=len) and len(set(cuts)) == 2  # the byte-level tokenizer cuts shortest
    assert shared_text_prompt(tokenizers, "Short.", question, budget=1024) == text_prompt("Short.", question)


def test_distinct_share_normalises():
    assert distinct_share(["The cat", "cat.", "a dog", "Dog"]) == 0.5


def _row(example_id, receiver, sender, mode, prediction, f1):
    return {"id": example_id, "model": receiver, "sender": sender, "mode": mode, "prediction": prediction,
            "exact_match": float(f1 == 1.0), "f1": f1}


def test_cross_decode_matrix_and_predictions_by_model():
    rows = [
        _row("q1", "a", "a", "latent", "x", 1.0), _row("q2", "a", "a", "latent", "y", 0.0),
        _row("q1", "b", "a", "cross", "x", 0.5), _row("q2", "b", "a", "cross", "y", 0.5),
        _row("q1", "a", "a", "shuffled", "z", 0.0), _row("q2", "a", "a", "shuffled", "z", 0.0),
    ]
    matrix = cross_decode_matrix(rows)
    assert matrix["a"]["a"] == {"n": 2, "exact_match": 50.0, "f1": 50.0}
    assert matrix["a"]["b"]["f1"] == 50.0 and "b" not in matrix  # shuffled rows are not in the matrix
    assert predictions_by_model(rows, "latent", ["q2", "q1"]) == {"a": ["y", "x"]}


def test_changed_by_shuffle_compares_normalised_answers_per_receiver():
    rows = [
        _row("q1", "a", "a", "latent", "The Dane", 1.0), _row("q1", "a", "a", "shuffled", "dane.", 1.0),
        _row("q2", "a", "a", "latent", "1992", 0.0), _row("q2", "a", "a", "shuffled", "2002", 0.0),
        _row("q1", "b", "b", "latent", "x", 0.0), _row("q1", "b", "b", "shuffled", "y", 0.0),
        _row("q2", "b", "b", "latent", "x", 0.0), _row("q2", "b", "b", "shuffled", "y", 0.0),
        _row("q1", "c", "c", "latent", "x", 0.0), _row("q2", "c", "c", "latent", "x", 0.0),  # no shuffled rows
    ]
    assert changed_by_shuffle(rows, ["q1", "q2"]) == {"a": 0.5, "b": 1.0}


@pytest.mark.parametrize("latent_f1, flows", [(20.0, True), (13.0, False)])
def test_information_flow_needs_the_margin_over_both_controls(latent_f1, flows):
    baselines = {"m": {"question_only": {"f1": 10.0}}}
    latent = {"scores": {"m": {"latent": {"f1": latent_f1}, "shuffled": {"f1": 11.5}}}}
    verdict = information_flow(baselines, latent)["m"]
    assert verdict["flows"] is flows
    assert verdict["margin_f1"] == INFORMATION_FLOW_MARGIN_F1


# ---- tiny system and checkpoint --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_encoder():
    from interlingua.models.encoder import SentenceEncoder

    return SentenceEncoder("tiny-encoder")


@pytest.fixture(scope="module")
def tiny_model(tiny_lms, tiny_encoder, tiny_config):
    spec = InterlinguaSpec(
        models=[frozen_model_info(tiny_lms[key]) for key in MODELS], encoder="tiny-encoder",
        d_sem=tiny_encoder.dim, interlingua=tiny_config.interlingua,
    )
    torch.manual_seed(0)
    return InterlinguaModel(spec).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model, tiny_config):
    """``run/step_000002/`` as training writes it: weights, trainer_state.json with the config, run config.yaml."""
    run = tmp_path_factory.mktemp("run")
    step = run / "step_000002"
    tiny_model.save_pretrained(step)
    (step / TRAINER_STATE_FILE).write_text(json.dumps(
        {"format_version": TRAINER_STATE_VERSION, "step": 2, "config": config_to_dict(tiny_config)}
    ))
    save_config(tiny_config, run / RESOLVED_CONFIG_FILE)
    return step


@pytest.fixture(scope="module")
def job_dir(checkpoint):
    return eval_job(checkpoint, limit=N_EXAMPLES, progress=False)


def read_rows(out_dir):
    return [json.loads(line) for line in (out_dir / PREDICTIONS_FILE).read_text().splitlines()]


@pytest.mark.e2e
def test_eval_job_writes_every_artifact(job_dir, checkpoint, tiny_model):
    assert job_dir == checkpoint.parent / "eval" / checkpoint.name  # beside the checkpoints, not inside one
    for name in (METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE, RESOLVED_CONFIG_FILE, CROSS_DECODE_PLOT, F1_BY_ROW_PLOT):
        assert (job_dir / name).stat().st_size > 0, name
    assert (job_dir / CROSS_DECODE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((job_dir / METRICS_FILE).read_text())
    assert metrics["checkpoint"]["fingerprint"] == tiny_model.fingerprint()
    assert metrics["run"]["config"]["models"][0]["spec"] == "tiny-llama"
    assert set(metrics["baselines"]["tiny-llama"]) == {"text", "token_budget", "question_only"}
    assert set(metrics["information_flow"]) == set(MODELS)
    report = (job_dir / REPORT_FILE).read_text()
    for text in ("Smoke run", "Information flows through z for tiny-llama", "margin", "Cross-decode", "Agreement",
                 "Interlingua distance", "Collapse diagnostics", "shuffled-z control", "question-only control",
                 "answers changed by shuffled z"):
        assert text in report, text


@pytest.mark.e2e
def test_rows_are_one_per_example_receiver_and_mode(job_dir):
    rows = read_rows(job_dir)
    n, models = N_EXAMPLES, len(MODELS)
    counts = Counter(row["mode"] for row in rows)
    assert counts == {"text": n * models, "token_budget": n * models, "question_only": n * models,
                      "latent": n * models, "shuffled": n * models, "cross": n * models * (models - 1)}
    assert len(rows) == n * (3 * models + models * (models + 1))
    latent = [r for r in rows if r["mode"] in ("latent", "shuffled", "cross")]
    assert len({(r["id"], r["model"], r["sender"], r["mode"]) for r in latent}) == len(latent)
    keys = {"id", "model", "sender", "mode", "prediction", "answers", "exact_match", "f1"}
    assert all(keys <= set(r) for r in latent)


@pytest.mark.e2e
def test_shuffled_control_uses_a_derangement(job_dir):
    rows = read_rows(job_dir)
    for model in MODELS:
        shuffled = [r for r in rows if r["mode"] == "shuffled" and r["model"] == model]
        assert all(r["z_id"] != r["id"] and r["sender"] == model for r in shuffled)
        assert sorted(r["z_id"] for r in shuffled) == sorted(r["id"] for r in shuffled)  # each z used once


@pytest.mark.e2e
def test_cross_decode_diagonal_is_the_latent_row(job_dir):
    latent = json.loads((job_dir / METRICS_FILE).read_text())["latent"]
    assert set(latent["cross_decode"]) == set(MODELS)
    for model in MODELS:
        assert latent["cross_decode"][model][model] == latent["scores"][model]["latent"]
        assert set(latent["cross_decode"][model]) == set(MODELS)
    assert {(p["a"], p["b"]) for p in latent["agreement"]["text"]} == {MODELS}
    assert math.isfinite(latent["distance"][0]["mean_l2"])
    messages = latent["messages"]["tiny-llama"]
    # tiny-llama adds BOS; M = 4 soft tokens; the cue "\nAnswer:" is 8 byte-level tokens
    assert messages["soft_prompt_positions"] == 1 + 4 + 8
    # pooling=mean: z is (d_inter,) per message; the default wire is fp32, and wire_bytes is the whole frame
    fp32_message = encode_message(torch.zeros(32), Precision.FP32, 32, "0" * 16)
    assert (messages["wire_precision"], messages["wire_group_size"]) == ("fp32", None)
    assert messages["wire_bytes"] == len(fp32_message) > 32 * 4
    rows = read_rows(job_dir)
    ids = [r["id"] for r in rows if r["mode"] == "latent" and r["model"] == MODELS[0]]
    for model in MODELS:
        assert latent["collapse"][model]["changed_by_shuffle_share"] == changed_by_shuffle(rows, ids)[model]


def test_checkpoint_config_prefers_trainer_state_then_run_config(checkpoint, tmp_path, tiny_config):
    from_state = checkpoint_config(checkpoint, overrides=["eval.batch_size=2"])
    assert from_state.models == tiny_config.models and from_state.eval.batch_size == 2
    # without trainer_state.json: the run folder's config.yaml
    bare = tmp_path / "run" / "step_000001"
    bare.mkdir(parents=True)
    save_config(replace(tiny_config, name="from-yaml"), tmp_path / "run" / RESOLVED_CONFIG_FILE)
    assert checkpoint_config(bare).name == "from-yaml"
    with pytest.raises(CheckpointError, match="no stored config"):
        checkpoint_config(tmp_path / "elsewhere")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / TRAINER_STATE_FILE).write_text('{"step": ')
    with pytest.raises(CheckpointError, match="unreadable trainer state"):
        checkpoint_config(corrupt)


@pytest.mark.parametrize(
    "change",
    [{"models": [ModelConfig("tiny-llama", PromptFormat.RAW)]}, {"encoder": "all-minilm-l6-v2"}],
)
def test_a_checkpoint_for_other_models_is_rejected(checkpoint, tiny_config, change):
    with pytest.raises(CheckpointError, match=r"trained with models \['tiny-llama', 'tiny-qwen2'\].*omit --config"):
        eval_job(checkpoint, config=replace(tiny_config, **change), limit=N_EXAMPLES, progress=False)


@pytest.mark.e2e
def test_latent_predictions_do_not_depend_on_the_batch_size(tiny_model, tiny_lms, tiny_encoder, tiny_config):
    system = Interlingua(tiny_model, tiny_lms, tiny_encoder)
    examples = validation_examples(replace(tiny_config, eval=replace(tiny_config.eval, limit=N_EXAMPLES)))

    def predictions(batch_size):
        config = replace(tiny_config, eval=replace(tiny_config.eval, batch_size=batch_size))
        rows, _ = evaluate_latent(system, examples, config, progress=False)
        return [(r["id"], r["model"], r["sender"], r["mode"], r["prediction"]) for r in rows]

    assert predictions(1) == predictions(4)


# ---- reusing stored baseline rows --------------------------------------------------------------
@pytest.mark.e2e
def test_reused_baselines_equal_recomputed_ones(checkpoint, job_dir, tmp_path):
    reused = eval_job(checkpoint, limit=N_EXAMPLES - 1, output_dir=tmp_path / "reuse", baselines_dir=job_dir,
                      progress=False)
    fresh = eval_job(checkpoint, limit=N_EXAMPLES - 1, output_dir=tmp_path / "fresh", progress=False)
    reused_metrics = json.loads((reused / METRICS_FILE).read_text())
    assert reused_metrics["baselines"] == json.loads((fresh / METRICS_FILE).read_text())["baselines"]
    assert reused_metrics["baselines_from"] == str(job_dir.resolve())
    assert read_rows(reused) == read_rows(fresh)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "overrides, limit, expected",
    [
        (["eval.max_new_tokens=3"], N_EXAMPLES, "eval.max_new_tokens"),
        (["data.max_prompt_tokens=64"], N_EXAMPLES, "data.max_prompt_tokens"),
        ([], N_EXAMPLES + 2, "needed rows are missing"),
        (["models.1.prompt_format=raw"], N_EXAMPLES, "prompt formats"),
    ],
)
def test_baselines_from_other_settings_are_refused(checkpoint, job_dir, tmp_path, overrides, limit, expected):
    from interlingua.eval.reuse import BaselineReuseError

    with pytest.raises(BaselineReuseError, match=expected):
        eval_job(checkpoint, overrides=overrides, limit=limit, output_dir=tmp_path / "o", baselines_dir=job_dir,
                 progress=False)


# ---- evaluation through the wire (compression.precision) ---------------------------------------
def _small_eval(tiny_config, **changes):
    config = replace(tiny_config, eval=replace(tiny_config.eval, limit=N_EXAMPLES))
    return replace(config, **changes), validation_examples(config)


@pytest.mark.e2e
@pytest.mark.parametrize("evaluate", [evaluate_latent, evaluate_own_latent])
def test_int4_eval_decodes_the_wire_z(evaluate, tiny_model, tiny_lms, tiny_encoder, tiny_config, monkeypatch):
    system = Interlingua(tiny_model, tiny_lms, tiny_encoder)
    decoded = []  # every z a receiver turns into a soft prompt
    original = system.soft_prompt
    monkeypatch.setattr(system, "soft_prompt", lambda key, z: decoded.append(z.clone()) or original(key, z))
    runs = {}
    for precision in (Precision.FP32, Precision.INT4):
        decoded.clear()
        config, examples = _small_eval(tiny_config, compression=CompressionConfig(precision=precision, group_size=8))
        _, summary = evaluate(system, examples, config, progress=False)
        runs[precision] = decoded[0], summary["messages"]["tiny-llama"]  # first decode: tiny-llama's own z, (4, 32)
    (sent, fp32_sizes), (received, int4_sizes) = runs[Precision.FP32], runs[Precision.INT4]
    assert not torch.equal(sent, received)
    bound = torch.stack([error_bound(row, Precision.INT4, 8) for row in sent])  # (4, 32)
    assert ((received - sent).abs().double() <= bound).all()
    message = encode_message(sent[0], Precision.INT4, 8, tiny_model.fingerprint())
    assert torch.equal(decode_message(message).z, received[0])  # what the receiver of the real message decodes
    assert int4_sizes["wire_bytes"] == len(message) < fp32_sizes["wire_bytes"]
    assert (int4_sizes["wire_precision"], int4_sizes["wire_group_size"]) == ("int4", 8)


@pytest.mark.e2e
def test_shared_sent_memo_encodes_once_per_checkpoint(tiny_model, tiny_lms, tiny_encoder, tiny_config, monkeypatch):
    system = Interlingua(tiny_model, tiny_lms, tiny_encoder)
    encodes = []
    original = system.encode_z
    monkeypatch.setattr(system, "encode_z", lambda key, *a: encodes.append(key) or original(key, *a))
    memo = SentZ()
    results = {}
    for precision in (Precision.FP16, Precision.INT8, Precision.INT4):
        config, examples = _small_eval(tiny_config, compression=CompressionConfig(precision=precision, group_size=8))
        with_memo = evaluate_own_latent(system, examples, config, progress=False, sent=memo)
        calls = len(encodes)
        assert with_memo == evaluate_own_latent(system, examples, config, progress=False)  # same result without it
        assert len(encodes) > calls  # (without the memo it encodes again)
        encodes = encodes[:calls]
        results[precision] = with_memo
    assert sorted(set(encodes)) == sorted(MODELS) and len(encodes) == len(MODELS)  # one batch each: 4 examples
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)  # another checkpoint: the memo must not answer for it
    evaluate_own_latent(system, examples, config, progress=False, sent=memo)
    assert len(encodes) == 2 * len(MODELS)
    evaluate_own_latent(system, examples[:3], config, progress=False, sent=memo)  # other texts
    assert len(encodes) == 3 * len(MODELS)


@pytest.mark.e2e
def test_own_latent_rows_are_the_latent_rows_of_the_full_evaluation(tiny_model, tiny_lms, tiny_encoder, tiny_config):
    system = Interlingua(tiny_model, tiny_lms, tiny_encoder)
    config, examples = _small_eval(tiny_config, compression=CompressionConfig(precision=Precision.INT8))
    own_rows, own = evaluate_own_latent(system, examples, config, progress=False)
    all_rows, full = evaluate_latent(system, examples, config, progress=False)
    assert own_rows == [row for row in all_rows if row["mode"] == "latent"]
    assert {model: set(scores) for model, scores in own["scores"].items()} == {model: {"latent"} for model in MODELS}
    assert own["messages"] == full["messages"]
    assert all("changed_by_shuffle_share" not in c for c in own["collapse"].values())  # no shuffled rows
    assert all("changed_by_shuffle_share" in c for c in full["collapse"].values())
    with pytest.raises(ConfigError, match="eval.limit"):
        evaluate_own_latent(system, examples[:1], config, progress=False)
