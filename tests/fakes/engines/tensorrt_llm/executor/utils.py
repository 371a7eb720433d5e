"""Fake of the part of ``tensorrt_llm.executor.utils`` at 1.0.0 that decides where the executor runs."""

from __future__ import annotations

import os
from functools import cache


@cache
def enable_worker_single_process_for_tp1() -> bool:
    """TLLM_WORKER_USE_SINGLE_PROCESS=1 keeps a one-GPU executor in the calling process. As in the release the
    variable is read once per process (``functools.cache``): setting it after the first engine started changes
    nothing."""
    return os.environ.get("TLLM_WORKER_USE_SINGLE_PROCESS", "0") == "1"
