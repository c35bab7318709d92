"""The reconstruction loss a soft prompt must beat to carry anything: each frozen LLM's CE per token on
the first R tokens of the prompts after ``[BOS?] + reconstruction cue`` alone (no soft prompt) and,
with ``--checkpoint``, after the checkpoint's soft prompt built from each text's own z and from another
text's z (a seeded derangement, as the shuffled-z control of the evaluation).

    python scripts/probes/reconstruction_floor.py --config embedded --examples 48 data.source=../shared/data/squad
    python scripts/probes/reconstruction_floor.py --checkpoint runs/X/step_000250 --split validation \
        --examples 200 data.source=../shared/data/squad

L_rec in a run's metrics.jsonl is the sum of the per-model CEs, so compare it with the printed sums.
A soft prompt that carries the text drives L_rec toward 0 and below its shuffled-z value; one that is
the same for every text can only learn what all texts share (the "Context:" template, the prior over
first tokens), and then own z and shuffled z score the same.
"""

from __future__ import annotations

import argparse

import torch

from interlingua.config import load_config
from interlingua.data.prompts import sender_prompt
from interlingua.data.squad import load_squad
from interlingua.eval.latent import derangement
from interlingua.models.system import Interlingua, load_checkpoint, load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device
from interlingua.training.step import reconstruction_ce


def _mean_ce(lm, texts: list[str], tokens: int, soft_prompt_of) -> float:
    """CE per target token over ``texts`` in batches of 8; ``soft_prompt_of(start, stop)`` -> (b, M, d)."""
    ce, positions = 0.0, 0
    for i in range(0, len(texts), 8):
        batch = texts[i : i + 8]
        batch_ce, count = reconstruction_ce(lm, soft_prompt_of(i, i + len(batch)), batch, tokens)
        ce += float(batch_ce) * count
        positions += count
    return ce / positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="embedded", help="without --checkpoint: the run config")
    parser.add_argument("--checkpoint", help="a step_N/ folder: also measure its own-z and shuffled-z soft prompts")
    parser.add_argument("--split", choices=("train", "validation"), default="train")
    parser.add_argument("--examples", type=int, default=48, help="first N examples of the split in the run's order")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args()
    if args.checkpoint:
        model, config, device = load_checkpoint(args.checkpoint, None, args.overrides)
    else:
        model, config = None, load_config(args.config, args.overrides)
        device = resolve_device(config.runtime.device)
    lms, encoder = load_frozen_models(config, device, frozen_dtype(device, config.runtime.dtype))
    limit = config.data.train_limit if args.split == "train" else None
    examples = load_squad(args.split, config.data.source, limit, config.data.seed)[: args.examples]
    tokenizers = [lm.tokenizer for lm in lms.values()]
    texts = [sender_prompt(tokenizers, e.context, e.question, config.data.max_prompt_tokens,
                           config.interlingua.conditioning) for e in examples]
    rows = {"no soft prompt": {}}
    with torch.no_grad():
        for key, lm in lms.items():
            empty = lambda start, stop, lm=lm: torch.zeros(  # noqa: E731
                stop - start, 0, lm.hidden_size, device=device, dtype=lm.dtype)
            rows["no soft prompt"][key] = _mean_ce(lm, texts, config.pretrain.tokens, empty)
        if model is not None:
            system = Interlingua(model.to(device).eval(), lms, encoder)
            permutation = derangement(len(texts), config.runtime.seed)
            rows["own z"], rows["shuffled z"] = {}, {}
            for key, lm in lms.items():
                soft = system.soft_prompt(key, system.encode_z(key, texts))  # (n, M, d)
                rows["own z"][key] = _mean_ce(lm, texts, config.pretrain.tokens, lambda a, b, s=soft: s[a:b])
                shuffled = soft[permutation]
                rows["shuffled z"][key] = _mean_ce(lm, texts, config.pretrain.tokens, lambda a, b, s=shuffled: s[a:b])
    print(f"CE per token on the first {config.pretrain.tokens} tokens of {len(texts)} {args.split} prompts")
    for name, per_model in rows.items():
        cells = ", ".join(f"{key} {value:.3f}" for key, value in per_model.items())
        print(f"{name}: {cells}; sum over models (compare with L_rec): {sum(per_model.values()):.3f}")


if __name__ == "__main__":
    main()
