#!/usr/bin/env bash
# Runs inside the freshly created conda environment, from the workflow's working directory.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e .
