"""Is the measurement window in steady state? A check of the per-step times inside the window.

Work that a process does only the first time it meets a shape (a prompt length, a KV-cache length, a batch size:
kernel selection, allocator growth, compilation) costs tens of milliseconds per new shape on a GPU. A warm-up that
covers every shape of the window pays it before the window; when it did not, early parts of the window run slower
than the rest. This module finds such parts:

- static batching with at least two batches: one item per batch, its pace = decoding time (first to last token) /
  decoding steps. Prefill time is left out: it grows with the prompt length, which differs between batches by design;
- otherwise (continuous or in-flight batching, or a single static batch): the decode steps (steps that complete
  no request's first token, so their cost is not a prefill's), in consecutive blocks of at least four steps, a
  block's pace = its mean step duration.

The reference pace is the median pace of the items in the second half of the window (the first half is where cold
costs would sit). An item in the first half whose pace exceeds ``COLD_RATIO`` x the reference is cold. The window
is flagged ``cold_start_in_window`` when any item is cold, and the share of the window that cold items cost beyond
the reference pace is recorded (``cold_excess_share``): the one-time cost the window contains.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

COLD_RATIO = 1.5
MIN_BLOCK_STEPS = 4
TARGET_BLOCKS = 20


@dataclass(frozen=True)
class Step:
    """One generation step in perf_counter seconds: when it began and ended, and whether it completed a prefill."""

    start: float
    end: float
    prefill: bool = False


@dataclass(frozen=True)
class Item:
    start: float
    end: float
    pace_s: float  # seconds per step
    steps: int


def batch_items(batches: list) -> list[Item]:
    """One item per static batch (a ``BatchRecord``) with at least two steps: its decoding interval
    (``first_token_t`` to ``end_t``) over its ``steps - 1`` decoding steps."""
    return [
        Item(b.first_token_t, b.end_t, (b.end_t - b.first_token_t) / (b.steps - 1), b.steps - 1)
        for b in batches
        if b.steps >= 2 and b.end_t > b.first_token_t
    ]


def step_items(steps: list[Step]) -> list[Item]:
    """Decode steps in time order, grouped into consecutive blocks."""
    decode = sorted((s for s in steps if not s.prefill and s.end > s.start), key=lambda s: s.end)
    if not decode:
        return []
    size = max(MIN_BLOCK_STEPS, math.ceil(len(decode) / TARGET_BLOCKS))
    items = []
    for i in range(0, len(decode), size):
        block = decode[i : i + size]
        if len(block) < MIN_BLOCK_STEPS and items:  # a short tail joins the block before it
            prev = items.pop()
            block_start, n = prev.start, prev.steps + len(block)
            pace = (prev.pace_s * prev.steps + sum(s.end - s.start for s in block)) / n
            items.append(Item(block_start, block[-1].end, pace, n))
            continue
        items.append(
            Item(
                min(s.start for s in block), block[-1].end, statistics.fmean(s.end - s.start for s in block), len(block)
            )
        )
    return items


def analyse(items: list[Item], window: tuple[float, float], method: str) -> dict:
    """The steady-state record of a window from its items (see the module docstring)."""
    w0, w1 = window
    duration = w1 - w0
    out = {
        "method": method,
        "cold_ratio": COLD_RATIO,
        "items": len(items),
        "reference_step_s": None,
        "cold_items": 0,
        "cold_time_s": 0.0,
        "cold_excess_s": 0.0,
        "cold_excess_share": 0.0,
        "first_item_pace_ratio": None,
        "cold_start_in_window": False,
    }
    if len(items) < 2 or duration <= 0:
        out["method"] = "unavailable"
        out["reason"] = "fewer than two batches or step blocks in the window"
        return out
    mid = w0 + duration / 2
    late = [it.pace_s for it in items if it.start >= mid] or [it.pace_s for it in items]
    ref = statistics.median(late)
    cold = [it for it in items if it.start < mid and it.pace_s > COLD_RATIO * ref]
    excess = sum((it.end - it.start) * (1 - ref / it.pace_s) for it in cold)
    out.update(
        reference_step_s=ref,
        cold_items=len(cold),
        cold_time_s=sum(it.end - it.start for it in cold),
        cold_excess_s=excess,
        cold_excess_share=excess / duration,
        first_item_pace_ratio=items[0].pace_s / ref if ref > 0 else None,
        cold_start_in_window=bool(cold),
    )
    return out


def steady_state(scheduling: str, batches: list, steps: list[Step], window: tuple[float, float]) -> dict:
    """Per-batch items for static batching with several batches, decode-step blocks otherwise."""
    items = sorted(batch_items(batches), key=lambda it: it.start) if scheduling == "static" else []
    if len(items) >= 2:
        return analyse(items, window, "per_batch_step_time")
    return analyse(step_items(steps), window, "decode_step_blocks")
