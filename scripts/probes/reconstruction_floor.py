"""The reconstruction loss a soft prompt must beat to carry anything: each frozen LLM's CE per token on
the first R tokens of the training prompts after ``[BOS?] + reconstruction cue`` alone (no soft prompt).

    python scripts/probes/reconstruction_floor.py --config embedded --examples 48 data.source=../shared/data/squad

L_rec in a run's metrics.jsonl is the sum of the per-model CEs, so compare it with the printed sum.
A soft prompt that carries the text drives L_rec toward 0; one that is the same for every text can
only learn what all texts share (the "Context:" template, the prior over first tokens).
"""

from __future__ import annotations

import argparse

import torch

from interlingua.config import load_config
from interlingua.constants import RECONSTRUCTION_CUE
from interlingua.data.prompts import sender_prompt
from interlingua.data.squad import load_squad
from interlingua.losses import k_token_ce
from interlingua.pipeline import load_frozen_models
from interlingua.runtime import frozen_dtype, resolve_device
from interlingua.training.step import reconstruction_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="embedded")
    parser.add_argument("--examples", type=int, default=48, help="first N training examples in the run's order")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    device = resolve_device(config.runtime.device)
    lms, _ = load_frozen_models(config, device, frozen_dtype(device))
    examples = load_squad("train", config.data.source, config.data.train_limit, config.data.seed)[: args.examples]
    tokenizers = [lm.tokenizer for lm in lms.values()]
    texts = [sender_prompt(tokenizers, e.context, e.question, config.data.max_prompt_tokens,
                           config.interlingua.conditioning) for e in examples]
    total = 0.0
    with torch.no_grad():
        for key, lm in lms.items():
            ce, positions = 0.0, 0
            for i in range(0, len(texts), 8):
                targets = reconstruction_targets(lm, texts[i : i + 8], config.pretrain.tokens)
                empty = torch.zeros(len(targets.ids), 0, lm.hidden_size, device=device, dtype=lm.dtype)
                logits = lm.target_logits(lm.soft_prefix(empty, cue=RECONSTRUCTION_CUE), targets)
                count = int(targets.mask.sum())
                ce += float(k_token_ce(logits, targets.ids, targets.mask)) * count
                positions += count
            total += ce / positions
            print(f"{key}: {ce / positions:.3f} nats/token on the first {config.pretrain.tokens} tokens, no soft prompt")
    print(f"sum over models (compare with L_rec): {total:.3f}")


if __name__ == "__main__":
    main()
