"""Start a run's learned modules from another checkpoint (``train.init_from``): a compressed shape trained from
the uncompressed one. Tensors whose name and shape match are copied; every other tensor keeps its step-0 value,
which for the native design is one where information already flows (the fitted bridge at this ``d_inter``,
residual branches whose output starts at zero, window weights that start as the mean)."""

from __future__ import annotations

import logging
from pathlib import Path

from interlingua.constants import CHECKPOINT_WEIGHTS_FILE
from interlingua.errors import CheckpointError, ConfigError
from interlingua.models.interlingua import InterlinguaModel, load_weights, read_spec

log = logging.getLogger(__name__)


def initialise_from(model: InterlinguaModel, directory: str | Path) -> dict[str, list[str]]:
    """Copy into ``model`` every tensor of checkpoint ``directory`` whose name and shape match.

    Returns:
        ``{"copied": [...], "kept": [...]}``: tensor names taken from the checkpoint and those left at step 0.
    Raises:
        CheckpointError: not a checkpoint, damaged weights, another design, or other models (or order).
    """
    directory = Path(directory)
    saved = read_spec(directory)
    design, saved_design = model.spec.interlingua.design, saved.interlingua.design
    if saved_design != design:
        raise CheckpointError(f"train.init_from={directory} holds a {saved_design.value}-design interlingua, this run "
                              f"is {design.value}; start from a checkpoint of the same design")
    saved_models = [m.spec for m in saved.models]
    if saved_models != model.model_keys:
        raise CheckpointError(f"train.init_from={directory} was trained for models {saved_models}, this run has "
                              f"{model.model_keys} (the same models, in the same order, are needed)")
    tensors = load_weights(directory / CHECKPOINT_WEIGHTS_FILE)
    state = model.state_dict()
    copied = {name: tensor for name, tensor in tensors.items()
              if name in state and tuple(state[name].shape) == tuple(tensor.shape)}
    model.load_state_dict(copied, strict=False)
    kept = sorted(set(state) - set(copied))
    log.info("train.init_from=%s: %d tensors copied, %d kept at step 0%s", directory, len(copied), len(kept),
             f" ({', '.join(kept[:6])}{', …' if len(kept) > 6 else ''})" if kept else "")
    return {"copied": sorted(copied), "kept": kept}


def fit_wire(model, lms: dict, encoder, config) -> dict:
    """Fit a native model's narrow wire (``interlingua.d_wire``) in closed form on the z it starts with: every
    sender's kept positions of the first ``interlingua.wire_fit_examples`` training prompts (the order of
    ``data.seed``), as each sender encodes them in training. Returns the fit's measurements."""
    import torch

    from interlingua.data.prompts import sender_prompt
    from interlingua.data.squad import load_squad
    from interlingua.models.system import Interlingua

    cfg = config.interlingua
    examples = load_squad("train", config.data.source, cfg.wire_fit_examples, config.data.seed)
    tokenizers = [lm.tokenizer for lm in lms.values()]
    texts = [sender_prompt(tokenizers, e.context, e.question, config.data.max_prompt_tokens, cfg.conditioning)
             for e in examples]
    model.to(next(iter(lms.values())).device)  # where the frozen models are (a fresh model is built on the CPU)
    system = Interlingua(model, lms, encoder, config)
    was_training = model.training
    model.eval()  # dropout off: the directions of the z the receivers will read
    try:
        with model.wire_bypassed():
            rows = [row for key in lms for row in system.encode_rows(key, texts)]
    finally:
        model.train(was_training)
    try:
        fitted = model.wire.fit(torch.cat(rows))
    except ValueError as err:
        raise ConfigError(f"interlingua.d_wire={cfg.d_wire}: {err}") from None
    metrics = model.wire_metrics = {"examples": len(texts), "senders": list(lms), **fitted}
    log.info("interlingua.d_wire=%d: wire fitted on %d z vectors of %d prompts; it keeps %.1f%% of their variance",
             cfg.d_wire, metrics["rows"], len(texts), 100 * metrics["explained_variance"])
    return metrics
