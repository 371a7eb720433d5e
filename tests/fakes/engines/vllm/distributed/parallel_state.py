"""``vllm.distributed.parallel_state.cleanup_dist_env_and_memory``: here it only records that it was called."""

from __future__ import annotations

import gc

#: one entry per call: the ``shutdown_ray`` argument
calls: list[bool] = []


def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
    calls.append(shutdown_ray)
    gc.collect()
