"""Evaluation throughput with and without batching: greedy answers from the text prompt (the largest
share of an evaluation) for the same examples at eval.batch_size = B and = 1.

    python benchmarks/eval_throughput.py --config embedded data.source=../shared/data/squad
    python benchmarks/eval_throughput.py --config tiny data.source=tests/assets/squad_mini --examples 8

Batches are formed longest-first (as the evaluation does); the answers must be the same both ways,
which the script checks.
"""

from __future__ import annotations

import dataclasses

from common import config_of, parse_args, report, timed
from interlingua.data.squad import load_squad
from interlingua.eval.baselines import evaluate_text_mode
from interlingua.models.system import load_frozen_model
from interlingua.runtime import frozen_dtype, resolve_device


def main() -> None:
    def extra(parser):
        parser.add_argument("--examples", type=int, default=48, help="validation examples (default 48)")
        parser.add_argument("--batch-size", type=int, default=16, help="batched size (default 16)")

    args = parse_args(__doc__.splitlines()[0], extra)
    config = config_of(args)
    device = resolve_device(config.runtime.device)
    examples = load_squad("validation", config.data.source, args.examples, config.data.seed)
    rows, data = [], {"config": config.name, "examples": len(examples), "batch_size": args.batch_size, "models": {}}
    for model_config in config.models:
        lm = load_frozen_model(config, model_config.spec, device, frozen_dtype(device, config.runtime.dtype))
        evaluate_text_mode(lm, examples[:2], "text", config, progress=False)  # warm-up
        results = {}
        for batch_size in (1, args.batch_size):
            run = dataclasses.replace(config, eval=dataclasses.replace(config.eval, batch_size=batch_size))
            seconds, out = timed(lambda run=run: evaluate_text_mode(lm, examples, "text", run, progress=False))
            results[batch_size] = (seconds, [row["prediction"] for row in out])
        (one_s, one), (many_s, many) = results[1], results[args.batch_size]
        same = sum(a == b for a, b in zip(one, many))
        data["models"][lm.key] = {
            "examples_per_s": {"unbatched": len(examples) / one_s, "batched": len(examples) / many_s},
            "speedup": one_s / many_s, "same_answers": same,
        }
        rows += [
            (f"{lm.key} unbatched", f"{len(examples) / one_s:.2f} ex/s"),
            (f"{lm.key} batch {args.batch_size}", f"{len(examples) / many_s:.2f} ex/s"),
            (f"{lm.key} speedup", f"{one_s / many_s:.2f}x  (same answer for {same}/{len(examples)})"),
        ]
    report(f"evaluation throughput, {config.name}", rows, data, args.json)


if __name__ == "__main__":
    main()
