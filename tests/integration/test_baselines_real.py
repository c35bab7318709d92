"""The baselines command on the real embedded models and real SQuAD, a handful of examples."""

import json

import pytest

from interlingua.cli import main
from interlingua.constants import METRICS_FILE, PREDICTIONS_FILE
from tests.conftest import real_squad_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def squad_dir():
    folder = real_squad_dir()
    if folder is None:
        pytest.skip("SQuAD v1.1 not found: set INTERLINGUA_SQUAD_DIR or put it at ../shared/data/squad")
    return folder


def test_embedded_baselines_on_a_handful_of_examples(tmp_path, squad_dir):
    out = tmp_path / "run"
    code = main(["baselines", "-c", "embedded", "--limit", "6", "-o", str(out), "-q",
                 f"data.source={squad_dir}", "eval.batch_size=6"])
    assert code == 0
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["prompt_formats"] == {"smollm2-135m-instruct": "chat", "gemma3-270m": "raw"}
    rows = [json.loads(line) for line in (out / PREDICTIONS_FILE).read_text().splitlines()]
    assert len(rows) == 2 * 3 * 6
    for model in ("smollm2-135m-instruct", "gemma3-270m"):
        text = metrics["baselines"][model]["text"]
        budget = metrics["baselines"][model]["token_budget"]
        # Real models reading the whole context answer some of these; a broken prompt path gives 0.
        assert text["f1"] > 0
        assert budget["mean_prompt_tokens"] < text["mean_prompt_tokens"]
        predictions = [r["prediction"] for r in rows if r["model"] == model and r["mode"] == "text"]
        assert all("\n" not in p for p in predictions) and len(set(predictions)) > 1
