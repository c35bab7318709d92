"""The public API on the real embedded pair with the native interlingua at step 0 (the fitted bridge): Gemma-3
reads what SmolLM2 sent and the other way round, through the wire, each side loading only its own models.

Run: pytest -m integration tests/integration/test_api_real.py  (the bridge fit takes ~1 min once, then it is cached)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interlingua import Interlingua
from interlingua.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad"
CONTEXT = "Context: The Eiffel Tower was completed in 1889 for the World's Fair in Paris."
QUESTION = "When was the tower completed?"


@pytest.fixture(scope="module")
def bridge_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("native") / "bridge"
    assert main(["bridge", "--config", "native", f"data.source={SQUAD}", "-o", str(out), "-q"]) == 0
    return out / "step_000000"


@pytest.mark.parametrize("sender, receiver", [("smollm2-135m-instruct", "gemma3-270m"),
                                              ("gemma3-270m", "smollm2-135m-instruct")])
def test_the_receiver_reads_the_other_familys_context(bridge_checkpoint, sender, receiver):
    il = Interlingua.from_pretrained(bridge_checkpoint)
    message = il.encode([CONTEXT], sender=sender)
    assert set(il.lms) == {sender}
    (answer,) = il.generate(message, receiver=receiver, question=[QUESTION])
    assert "1889" in answer  # the year is only in the context, which the receiver never saw as text
    int8 = il.encode([CONTEXT], sender=sender, precision="int8")
    assert int8.nbytes < message.nbytes / 3
    assert "1889" in il.generate(int8, receiver=receiver, question=[QUESTION])[0]
