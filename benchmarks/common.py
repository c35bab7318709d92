"""Shared setup of the benchmarks: load a config's frozen models and a fresh interlingua, time things.

Every benchmark prints its measurements side by side from one run (same process, same inputs, same
threads), so the ratios hold on any machine even when the absolute numbers do not.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from interlingua.config import Config, load_config


def parse_args(description: str, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="embedded", help="config name or YAML path (default: embedded)")
    parser.add_argument("--json", type=Path, help="also write the measurements here as JSON")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides key=value (e.g. data.source=../shared/data/squad)")
    if extra:
        extra(parser)
    return parser.parse_args()


def config_of(args: argparse.Namespace, *more: str) -> Config:
    return load_config(args.config, [*args.overrides, *more])


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls of ``fn()`` and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def optimizer_step(recipe, step: int) -> dict:
    """One whole training step of a set-up ``TrainingRecipe``: forward/backward, clip, update; its loss sums."""
    sums, _ = recipe._forward_backward(step)
    recipe._clip_gradients(step)
    recipe.optimizer.step()
    recipe.optimizer.zero_grad(set_to_none=True)
    return sums


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def peak_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048,
                      seconds: float = 3.0) -> float:
    """Measured peak of this machine: FLOP/s of a large square matmul, best of ~``seconds`` of trials."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(title: str, rows: list[tuple[str, str]], data: dict, json_path: Path | None) -> None:
    print(f"\n== {title} ==")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"title": title, "machine": machine(), **data}, indent=2) + "\n")
        print(f"(written to {json_path})")
