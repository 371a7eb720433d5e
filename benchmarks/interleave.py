"""Variants of one workload timed in one run, interleaved: each is run once outside the comparison (warm-up), then
``reps`` times in alternating order, so drift and thermal state hit all of them alike. Shared by the overhead
benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def interleaved(variants: dict[str, Callable[[], tuple[float, int]]], reps: int) -> tuple[dict, dict, dict]:
    """Each variant returns (seconds, output tokens). Returns the median seconds, output tokens per second at the
    median, and every timing, per variant; prints one line per variant."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, int] = {}
    for rep in range(reps):
        for name in list(variants) if rep % 2 == 0 else list(reversed(variants)):
            seconds, tokens[name] = variants[name]()
            times[name].append(seconds)
    median = {name: statistics.median(v) for name, v in times.items()}
    tps = {name: tokens[name] / median[name] for name in variants}
    return median, tps, times


def print_rows(median: dict, tps: dict, times: dict) -> None:
    for name in median:
        spread = (max(times[name]) - min(times[name])) / median[name]
        print(
            f"  {name:<11} median {median[name]:.4f} s  {tps[name]:10.1f} output tok/s  (range {spread:.1%} of median)"
        )
