#!/usr/bin/env bash
# The GPU acceptance check in one call (no network, no Snakemake; torch, transformers, accelerate, nvidia-ml-py and
# PyYAML): the GPU tests where pytest is installed, then benchmarks/gpu_check.py, which runs the reference workload
# (synthetic-weight Llama-3.2-1B, bf16, 128 in / 128 out, batch 8 and 64, 3 cycles, each cycle its own process) and
# prints every ratio beside its target. Everything it writes lands in one folder, $RESULTS (default: a new temp
# folder); with $OUT set, that folder is also packed into $OUT/gpu_check.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export LLM_ENERGY_CACHE_DIR="${LLM_ENERGY_CACHE_DIR:-$(mktemp -d)}"
RESULTS="${RESULTS:-$(mktemp -d)}"
mkdir -p "$RESULTS"
{
  nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader || true
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
  if python3 -c "import pytest" 2>/dev/null; then python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3; fi
  python3 benchmarks/gpu_check.py --out "$RESULTS" "$@"
} 2>&1 | tee "$RESULTS/gpu_check.txt"
status=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then tar -czf "$OUT/gpu_check.tar.gz" -C "$RESULTS" . && echo "packed into $OUT/gpu_check.tar.gz"; fi
exit "$status"
