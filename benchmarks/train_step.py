"""Training throughput: the real step (cold and warm cache) vs a naive reference, and its FLOP/s vs
the machine's measured peak matmul FLOP/s.

    python benchmarks/train_step.py --config embedded data.source=../shared/data/squad
    python benchmarks/train_step.py --config tiny data.source=tests/assets/squad_mini --steps 2   # seconds

Measured in one process on the same batches: (1) the real step while it fills an empty cache (the first
epoch of the first run), (2) the real step on the same batches again, cache warm (every later epoch
and every later run on the same data), (3) the naive reference of benchmarks/naive_reference.py.
The timed steps are the QA stage's first ones (after ``pretrain.steps`` reconstruction steps, if any).
FLOPs are counted with torch's FlopCounterMode over one warm step (forward and backward matmuls and
attention; elementwise work is not counted), so "achieved FLOP/s" is a lower bound. The peak is measured
before and after the timed steps and the higher one is used (this VM's speed drifts by up to ~20 %).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import config_of, optimizer_step, parse_args, peak_matmul_flops, report, timed
from interlingua.training.recipe import TrainingRecipe
from naive_reference import naive_step_loss


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument("--steps", type=int, default=3))
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    config = config_of(args, f"cache.dir={workdir / 'cache'}", "train.log_every=100000")
    recipe = TrainingRecipe(config, workdir / "run", progress=False)
    recipe.setup(resume=False)
    first = config.pretrain.steps  # the QA stage: the step the naive reference implements
    steps = list(range(first, first + args.steps))
    batch = recipe.stream.global_batch_size

    def real(step: int) -> None:
        optimizer_step(recipe, step)

    def naive(step: int) -> None:
        for micro in recipe.stream.micro_batches(step):
            naive_step_loss(recipe.system, recipe.forward, micro, config.loss).backward()
        recipe._clip_gradients(step)
        recipe.optimizer.step()
        recipe.optimizer.zero_grad(set_to_none=True)

    device = recipe.accelerator.device
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # the peak before and after the steps, the higher one counts: a VM's speed drifts during a run
    peaks = [peak_matmul_flops(device, peak_dtype)]
    real(steps[0])  # warm-up of allocator and kernels (also fills the cache for step 0: excluded below)
    cold = [timed(lambda s=s: real(s))[0] for s in steps[1:]] or [float("nan")]
    warm = [timed(lambda s=s: real(s))[0] for s in steps]
    naive_times = [timed(lambda s=s: naive(s))[0] for s in steps]
    with FlopCounterMode(display=False) as counter:
        real(steps[0])
    flops = counter.get_total_flops()
    peaks.append(peak_matmul_flops(device, peak_dtype))
    peak = max(peaks)

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    cold_s, warm_s, naive_s = mean(cold), mean(warm), mean(naive_times)
    achieved = flops / warm_s
    data = {
        "config": config.name, "global_batch": batch, "steps_timed": len(steps),
        "seconds_per_step": {"naive": naive_s, "real_cold_cache": cold_s, "real_warm_cache": warm_s},
        "examples_per_s": {"naive": batch / naive_s, "real_cold_cache": batch / cold_s,
                           "real_warm_cache": batch / warm_s},
        "speedup_vs_naive": {"real_cold_cache": naive_s / cold_s, "real_warm_cache": naive_s / warm_s},
        "flops_per_step": flops, "achieved_flops_per_s": achieved, "peak_matmul_flops_per_s": peak,
        "peak_matmul_flops_per_s_before_after": peaks,
        "fraction_of_peak": achieved / peak, "cache": [store.stats() for store in recipe.caches],
    }
    rows = [
        ("global batch", f"{batch} examples, {len(steps)} steps timed per variant"),
        ("naive reference", f"{naive_s:.2f} s/step  {batch / naive_s:.2f} ex/s"),
        ("real, cold cache", f"{cold_s:.2f} s/step  {batch / cold_s:.2f} ex/s  ({naive_s / cold_s:.2f}x naive)"),
        ("real, warm cache", f"{warm_s:.2f} s/step  {batch / warm_s:.2f} ex/s  ({naive_s / warm_s:.2f}x naive)"),
        ("FLOPs per step", f"{flops / 1e9:.1f} GFLOP (matmul + attention, fwd + bwd)"),
        ("achieved", f"{achieved / 1e9:.1f} GFLOP/s"),
        ("peak matmul", f"{peak / 1e9:.1f} GFLOP/s  "
                        f"({'bf16' if device.type == 'cuda' else 'fp32'} 2048^3; the higher of "
                        f"{peaks[0] / 1e9:.0f} before and {peaks[1] / 1e9:.0f} after the steps)"),
        ("fraction of peak", f"{achieved / peak:.0%}"),
    ]
    report(f"training step, {config.name}", rows, data, args.json)
    recipe.cleanup(False)


if __name__ == "__main__":
    main()
