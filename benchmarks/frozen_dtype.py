"""Frozen-model precision: the same training steps and greedy answers with the frozen LLMs in fp32 and in
bf16 (``runtime.dtype``), measured side by side in one process on the same batches and examples.

    python benchmarks/frozen_dtype.py --config native data.source=../shared/data/squad
    python benchmarks/frozen_dtype.py --config tiny data.source=tests/assets/squad_mini --examples 4 --steps 2

On CPUs with AMX (Sapphire Rapids and newer) bf16 matmuls run ~4x faster than fp32 through oneDNN; on
other CPUs bf16 can be slower, which this script shows. Besides the speed it prints how often the greedy
text-prompt answers agree between the two dtypes and their F1 on these examples (the quality cost), and
the loss of the first training step in both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import config_of, optimizer_step, parse_args, report, timed
from interlingua.data.squad import load_squad
from interlingua.eval.baselines import evaluate_text_mode
from interlingua.training.recipe import TrainingRecipe

DTYPES = ("float32", "bfloat16")


def measure(args, dtype: str, workdir: Path) -> dict:
    config = config_of(args, f"runtime.dtype={dtype}", f"cache.dir={workdir / 'cache'}", "train.log_every=100000")
    recipe = TrainingRecipe(config, workdir / f"run-{dtype}", progress=False)
    recipe.setup(resume=False)

    first_loss = optimizer_step(recipe, 0)  # also the warm-up of allocator and kernels
    step_times = [timed(lambda s=s: optimizer_step(recipe, s))[0] for s in range(1, args.steps + 1)]
    examples = load_squad("validation", config.data.source, args.examples, config.data.seed)
    generation = {}
    for key, lm in recipe.lms.items():
        evaluate_text_mode(lm, examples[:2], "text", config, progress=False)  # warm-up
        seconds, rows = timed(lambda lm=lm: evaluate_text_mode(lm, examples, "text", config, progress=False))
        generation[key] = {"seconds": seconds, "predictions": [r["prediction"] for r in rows],
                           "f1": 100 * sum(r["f1"] for r in rows) / len(rows)}
    recipe.cleanup(False)
    return {"step_seconds": sum(step_times) / len(step_times), "first_step_loss": first_loss,
            "global_batch": recipe.stream.global_batch_size, "generation": generation, "examples": len(examples)}


def main() -> None:
    def extra(parser):
        parser.add_argument("--examples", type=int, default=64, help="validation examples to answer (default 64)")
        parser.add_argument("--steps", type=int, default=2, help="training steps timed per dtype (default 2)")

    args = parse_args(__doc__.splitlines()[0], extra)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dtype-"))
    results = {dtype: measure(args, dtype, workdir) for dtype in DTYPES}
    fp32, bf16 = results["float32"], results["bfloat16"]
    rows = [("training step", f"fp32 {fp32['step_seconds']:.2f} s, bf16 {bf16['step_seconds']:.2f} s "
                              f"({fp32['step_seconds'] / bf16['step_seconds']:.2f}x), batch {fp32['global_batch']}"),
            ("first-step loss", "fp32 " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(fp32["first_step_loss"].items()))
             + " | bf16 " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(bf16["first_step_loss"].items())))]
    for key in fp32["generation"]:
        a, b = fp32["generation"][key], bf16["generation"][key]
        same = sum(x == y for x, y in zip(a["predictions"], b["predictions"]))
        rows += [(f"{key} greedy answers", f"fp32 {a['seconds']:.1f} s, bf16 {b['seconds']:.1f} s "
                                           f"({a['seconds'] / b['seconds']:.2f}x) for {fp32['examples']} examples"),
                 (f"{key} quality", f"F1 fp32 {a['f1']:.1f}, bf16 {b['f1']:.1f}; same answer for "
                                    f"{same}/{fp32['examples']}")]
    data = {"config": args.config, **results}
    report(f"frozen-model dtype, {args.config}", rows, data, args.json)


if __name__ == "__main__":
    main()
