#!/usr/bin/env bash
# The CUDA path in one short run (a few minutes on one GPU): bf16 autocast training steps, SDPA,
# gradient checkpointing, batched decoding, and the three benchmarks on the embedded pair.
#   bash benchmarks/gpu_check.sh [SQUAD_DIR]        (default ../shared/data/squad)
# Needs a CUDA build of torch and the package installed (scripts/setup.sh on a GPU machine installs
# the CUDA wheel of torch if you drop its CPU index). Writes JSON next to this script under gpu/.
set -euo pipefail
squad=${1:-../shared/data/squad}
out=benchmarks/gpu
mkdir -p "$out"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python -m pytest -q tests/unit/test_gpu_path.py tests/unit/test_frozen_lm.py -x
python -m interlingua train --config tiny -o "$out/tiny-run" data.source=tests/assets/squad_mini runtime.device=cuda \
  runtime.gradient_checkpointing=true train.steps=4
python benchmarks/train_step.py --json "$out/train_step.json" --steps 4 data.source="$squad" runtime.device=cuda
python benchmarks/receiver_ttft.py --json "$out/receiver_ttft.json" data.source="$squad" runtime.device=cuda
python benchmarks/eval_throughput.py --json "$out/eval_throughput.json" data.source="$squad" runtime.device=cuda
