"""Pinned-loss regression: 3 training steps of configs/tiny.yaml (seed 0) give exactly these numbers.

Each loss term and the total of every step, the gradient norm of every step, the norm of the initial
learned weights, and the size of the optimizer's whole update (‖θ₃ − θ₀‖ and ‖θ₃‖ − ‖θ₀‖). Step 0's
losses pin the initialisation, the data order and the losses; steps 1-2 and the update pin the
optimizer (weight decay included) and its schedule. A change that moves any of them fails here,
even when every other test still passes; if the change is intended, re-pin:

    python -m tests.unit.test_pinned_losses      # prints PINNED as measured on this machine

A training run, so in the e2e tier (CI runs it); alone: ``pytest tests/unit/test_pinned_losses.py``.

Measured on CPU in fp32. Between 1 and 2 threads float32 rounding moves every value by < 1e-7 relative
except ``kd``, a KL divergence near 0.008 that moves by ~1e-7 absolute (1e-5 relative): hence the
tolerance is 1e-5 relative or 1e-6 absolute, whichever is larger (for ``norm_change``, about -0.001,
that is 0.1 %; removing the weight decay moves it by 20 %).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interlingua.config import load_config
from interlingua.constants import CHECKPOINT_WEIGHTS_FILE, METRICS_LOG_FILE
from interlingua.training import recipe
from tests.conftest import SQUAD_MINI

STEPS = 3
REL, ABS = 1e-5, 1e-6

PINNED = {
    # measured with `python -m tests.unit.test_pinned_losses` (torch 2.13.0+cpu, 2 threads)
    "step0/align": 0.18049274384975433,
    "step0/gen": 11.864339828491211,
    "step0/kd": 0.008868535049259663,
    "step0/sem": 1.0272393226623535,
    "step0/total": 12.05997085571289,
    "step0/grad_norm": 1.024017333984375,
    "step1/align": 0.1511966437101364,
    "step1/gen": 11.820537567138672,
    "step1/kd": 0.007722690235823393,
    "step1/sem": 1.0143905878067017,
    "step1/total": 11.999892234802246,
    "step1/grad_norm": 0.9227144718170166,
    "step2/align": 0.14773565530776978,
    "step2/gen": 11.832927703857422,
    "step2/kd": 0.007940433919429779,
    "step2/sem": 0.9885238409042358,
    "step2/total": 12.00802993774414,
    "step2/grad_norm": 0.929714560508728,
    "init_norm": 29.205946984100983,
    "update_norm": 0.11532034360485069,
    "norm_change": -0.001039779673622121,
}


def measure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Train the tiny config for ``STEPS`` steps with a fresh frozen-work cache; the numbers above, flat."""
    config = load_config("tiny", [
        f"data.source={SQUAD_MINI}", f"train.steps={STEPS}", f"train.save_every={STEPS}",
        f"cache.dir={tmp_path / 'cache'}", "runtime.device=cpu",  # fp32: on a GPU, auto would mean bf16
    ])
    initial = {}
    make_model = recipe.initial_model

    def recording_initial_model(*args):
        model = make_model(*args)
        initial.update({name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
        return model

    monkeypatch.setattr(recipe, "initial_model", recording_initial_model)
    final = recipe.train(config, tmp_path / "run", progress=False)
    measured = {}
    for line in (tmp_path / "run" / METRICS_LOG_FILE).read_text().splitlines():
        row = json.loads(line)
        measured |= {f"step{row['step']}/{term}": value for term, value in row["loss"].items()}
        measured[f"step{row['step']}/grad_norm"] = row["grad_norm"]
    trained = load_file(str(final / CHECKPOINT_WEIGHTS_FILE))
    assert trained.keys() == initial.keys()
    measured["init_norm"] = norm(initial)
    measured["update_norm"] = norm({name: trained[name].double() - initial[name].double() for name in initial})
    # Weight decay is ~20 % of this (Adam's steps barely change the norm), but ~0.002 % of update_norm.
    measured["norm_change"] = norm(trained) - norm(initial)
    return measured


def norm(tensors: dict[str, torch.Tensor]) -> float:
    """L2 norm of all ``tensors`` together, in float64."""
    return float(sum(t.double().pow(2).sum() for t in tensors.values()).sqrt())


@pytest.mark.e2e
def test_three_tiny_steps_give_the_pinned_losses(tmp_path, monkeypatch):
    measured = measure(tmp_path, monkeypatch)
    assert set(measured) == set(PINNED), sorted(set(measured) ^ set(PINNED))
    assert measured == pytest.approx(PINNED, rel=REL, abs=ABS), f"measured: {measured}"


if __name__ == "__main__":  # re-pin: prints the dictionary to paste above
    import tempfile

    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        values = measure(Path(folder), patch)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    print('PINNED = {\n' + ''.join(f'    "{name}": {value!r},\n' for name, value in values.items()) + '}')
