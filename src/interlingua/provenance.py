"""Where a result came from: the code version, the library versions and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_VERSIONED = ("interlingua", "torch", "transformers", "accelerate", "sentence-transformers", "safetensors", "gguf")


def git_hash() -> str | None:
    """Commit of the source tree (``+dirty`` if it has uncommitted changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


_KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
"""CPU features that change which bf16 / fp32 kernels oneDNN picks, and so the last digits of a CPU run: a run
repeated on a CPU with other flags is not bit-identical."""


def machine_info() -> dict:
    """The CPU model, core count and kernel-relevant ISA flags, and the GPU where one is used."""
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor() or None,
            "cpu_flags": None}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    if "model name" in fields:
        info["processor"] = fields["model name"]
    if "flags" in fields:
        present = set(fields["flags"].split())
        info["cpu_flags"] = [flag for flag in _KERNEL_FLAGS if flag in present]
    import torch

    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
