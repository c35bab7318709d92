"""Where a result came from: the code version and the library versions."""

from __future__ import annotations

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
