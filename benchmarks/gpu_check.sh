#!/usr/bin/env bash
# One call on a GPU machine (no network, no Snakemake needed): the GPU tests, the reference workload through the
# package (2 batch sizes x 3 cycles on a synthetic-weight Llama-3.2-1B), and the measurement-overhead ratios.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export LEM_CACHE_DIR="${LEM_CACHE_DIR:-$(mktemp -d)}"
OUT="${OUT:-$(mktemp -d)}"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
if python3 -c "import pytest" 2>/dev/null; then python3 -m pytest -q tests/test_gpu.py 2>&1 | tail -5; fi
python3 benchmarks/gpu_check.py --batch-sizes 1,8 --cycles 3 --prompts 16 --out "$OUT/check" 2>&1 | grep -v -E "INFO|Loading|shards"
python3 benchmarks/measurement_overhead.py --model llama-3.2-1b --no-weights --device cuda --precision bfloat16 \
  --batch-size 8 --prompts 32 --new-tokens 128 --reps 5 2>&1 | grep -v -E "Loading|shards"
