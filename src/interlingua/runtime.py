"""Device, precision and seeding choices, made in one place (DESIGN §4.8)."""

from __future__ import annotations

import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu. Asking for cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device={name} but no CUDA device is available; use runtime.device=cpu or auto")
    return device


def frozen_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """Weights of the frozen models (``runtime.dtype``): ``auto`` is fp32 on CPU and bf16 on CUDA."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
