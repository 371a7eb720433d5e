"""Is the measurement window in steady state? A check of the per-step times inside the window.

Work that a process does only the first time it meets a shape (a prompt length, a KV-cache length, a batch size:
kernel selection, allocator growth, compilation) costs tens of milliseconds per new shape on a GPU. A warm-up that
covers every shape of the window pays it before the window; when it did not, early parts of the window run slower
than the rest. This module finds such parts:

- static batching with at least two batches: one item per batch, its pace = decoding time (first to last token) /
  decoding steps (prefill grows with the prompt length, which differs between batches by design: judged apart);
- otherwise (continuous or in-flight batching, or a single static batch): the decode steps (steps that complete
  no request's first token, so their cost is not a prefill's), in consecutive blocks of at least four steps, a
  block's pace = its mean step duration;
- with static batching, each batch's prefill too, its pace = prefill time (submission to first token) / padded
  prompt tokens: cold prefill (a new prompt shape) shows there. A stepped engine's prefill steps are not judged:
  how long one takes depends on how many prompt tokens it holds, which the step records do not say, and an offline
  window's first steps prefill far more prompts than its later ones (``prefill_judged`` says which).

The reference pace is the median pace of the items in the second half of the window (the first half is where cold
costs would sit), and the noise is the spread of all the window's paces (1.4826 x their median absolute deviation
from their median, a standard deviation that a few slow outliers do not move; at least 1 % of the reference): a
host busy with other work spreads them all, while a short cold start leaves most of them alike. An item in the first half is
slow when its pace exceeds the reference by ``MIN_EFFECT`` (10 %) and by ``NOISE_SIGMAS`` (4) x the noise: a busy
host widens the noise, and with it what counts as slow.

A slow item is not yet a cold start: a host busy with other work makes a random part slow now and then, early as
often as late. One-time costs sit where the window begins, so the cold parts are the run of slow items that opens
the window, when chance explains it poorly: the rest of the window shows how often the host alone makes an item
slow (h), and a run of L slow items opening the window counts as a cold start when h^L < ``CHANCE_MAX`` (5 %; any
run when the rest of the window has no slow item). On a host whose items are slow at any rate by chance alone, that
flags at most about 1 / (e x items) of fully warmed windows (3 % with 12 items). The first half running
slower than the second as a whole (a one-sided rank-sum test at 1 %, its median at least ``MIN_EFFECT`` above the
reference) is a cold start too; its parts slower than the reference by ``MIN_EFFECT`` are the cold ones. Other slow items are counted
(``slow_items_not_cold``, and the flag's message says how many), but they do not make a cold start. The share of the
window that the cold items cost beyond the reference pace is recorded (``cold_excess_share``): their own step time
beyond it (decode-step blocks count their steps' time, not their span, which under continuous batching also holds
the prefill steps in between). ``benchmarks/cold_check.py`` measures how often fully warmed windows are flagged on a
busy host, and how often windows without warm-up are.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

MIN_EFFECT = 0.10
NOISE_SIGMAS = 4.0
NOISE_FLOOR = 0.01
RANK_TEST_P = 0.01
CHANCE_MAX = 0.05
MIN_BLOCK_STEPS = 4
TARGET_BLOCKS = 20
MAX_NAMED = 5


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

    @property
    def busy_s(self) -> float:
        """The item's own step time (a block of decode steps: the sum of their durations, not its span)."""
        return self.pace_s * self.steps


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


def _robust_spread(values: list[float]) -> float:
    """1.4826 x the median absolute deviation: the standard deviation of Normal values, unmoved by a few outliers."""
    m = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - m) for v in values)


def _rank_sum_p(early: list[float], late: list[float]) -> float:
    """One-sided p-value that ``early`` values are larger than ``late`` ones (Mann-Whitney U, Normal approximation
    with a continuity correction; ties get mid-ranks); 1.0 when either side has fewer than three values."""
    n1, n2 = len(early), len(late)
    if n1 < 3 or n2 < 3:
        return 1.0
    pooled = sorted([(v, 0) for v in early] + [(v, 1) for v in late])
    ranks = [0.0] * len(pooled)
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    u = sum(r for r, (_, side) in zip(ranks, pooled, strict=True) if side == 0) - n1 * (n1 + 1) / 2
    sd = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    z = (u - n1 * n2 / 2 - 0.5) / sd
    return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Judged:
    reference: float | None
    noise: float | None
    threshold: float | None
    cold: list[Item]  # the items judged a cold start
    slow_not_cold: int  # other items above the threshold: a busy host's


def judge(items: list[Item], mid: float) -> Judged:
    """Which items are slow against the second half's pace and noise, and which of them are a cold start (see the
    module docstring)."""
    late = [it.pace_s for it in items if it.start >= mid]
    early = [it for it in items if it.start < mid]
    if len(late) < 2 or not early:
        return Judged(None, None, None, [], 0)
    ref = statistics.median(late)
    noise = max(_robust_spread([it.pace_s for it in items]), NOISE_FLOOR * ref)
    threshold = max(ref * (1 + MIN_EFFECT), ref + NOISE_SIGMAS * noise)
    slow = [it.pace_s > threshold for it in items]
    run = next((k for k, s in enumerate(slow) if not s), len(slow))  # slow items from the window's first one on
    rest = slow[run:]
    chance = sum(rest) / len(rest) if rest else 0.0  # how often the rest of the window is slow: the host's hiccups
    cold = list(items[:run]) if run and chance**run < CHANCE_MAX else []
    early_paces = [it.pace_s for it in early]
    if statistics.median(early_paces) > ref * (1 + MIN_EFFECT) and _rank_sum_p(early_paces, late) < RANK_TEST_P:
        # the first half as a whole runs slower: its parts beyond the minimum effect are the cold ones
        leading = {id(it) for it in cold}
        cold = [it for it in items if (it.start < mid and it.pace_s > ref * (1 + MIN_EFFECT)) or id(it) in leading]
    cold_ids = {id(it) for it in cold}
    return Judged(
        ref, noise, threshold, cold, sum(s and id(it) not in cold_ids for it, s in zip(items, slow, strict=True))
    )


def analyse(items: list[Item], window: tuple[float, float], method: str, prefill: list[Item] | None = None) -> dict:
    """The steady-state record of a window from its items, and its prefill steps where they are separate (see the
    module docstring)."""
    w0, w1 = window
    duration = w1 - w0
    out = {
        "method": method,
        "min_effect": MIN_EFFECT,
        "noise_sigmas": NOISE_SIGMAS,
        "items": len(items),
        "reference_step_s": None,
        "noise_step_s": None,
        "threshold_step_s": None,
        "cold_items": 0,
        "cold_prefill_items": 0,
        "slow_items_not_cold": 0,
        "cold_time_s": 0.0,
        "cold_excess_s": 0.0,
        "cold_excess_share": 0.0,
        "first_item_pace_ratio": None,
        "cold_start_in_window": False,
        "seen": [],
    }
    if len(items) < 2 or duration <= 0:
        out["method"] = "unavailable"
        out["reason"] = "fewer than two batches or step blocks in the window"
        return out
    mid = w0 + duration / 2
    decode = judge(items, mid)
    if decode.reference is None:  # every item in the first half: the whole window is the reference
        ref = statistics.median(it.pace_s for it in items)
        decode = Judged(ref, None, None, [], 0)
    pre = judge(prefill or [], mid)
    cold = [(it, decode.reference, "decode") for it in decode.cold]
    cold_prefill = [(it, pre.reference, "prefill") for it in pre.cold]
    not_cold = decode.slow_not_cold + pre.slow_not_cold
    excess = sum(it.steps * (it.pace_s - ref) for it, ref, _ in cold + cold_prefill)
    seen = sorted(cold + cold_prefill, key=lambda c: c[0].start)[:MAX_NAMED]
    out.update(
        reference_step_s=decode.reference,
        noise_step_s=decode.noise,
        threshold_step_s=decode.threshold,
        cold_items=len(cold),
        cold_prefill_items=len(cold_prefill),
        slow_items_not_cold=not_cold,
        cold_time_s=sum(it.busy_s for it, _, _ in cold + cold_prefill),
        cold_excess_s=excess,
        cold_excess_share=min(1.0, excess / duration),
        first_item_pace_ratio=items[0].pace_s / decode.reference if decode.reference > 0 else None,
        cold_start_in_window=bool(cold or cold_prefill),
        seen=[
            {"kind": kind, "at_s": it.start - w0, "pace_ratio": it.pace_s / ref if ref else None}
            for it, ref, kind in seen
        ],
    )
    if pre.reference is not None:
        out["prefill_reference_s"] = pre.reference
    return out


def steady_state(scheduling: str, batches: list, steps: list[Step], window: tuple[float, float]) -> dict:
    """Per-batch items (and per-batch prefill) for static batching with several batches, decode-step blocks
    otherwise."""
    items = sorted(batch_items(batches), key=lambda it: it.start) if scheduling == "static" else []
    if len(items) >= 2:
        return {**analyse(items, window, "per_batch_step_time", prefill_items(batches)), "prefill_judged": True}
    return {**analyse(step_items(steps), window, "decode_step_blocks"), "prefill_judged": False}


def prefill_items(batches: list) -> list[Item]:
    """One item per static batch: its prefill (submission to first token) over its padded prompt tokens."""
    return sorted(
        (
            Item(
                b.start_t, b.first_token_t, (b.first_token_t - b.start_t) / b.padded_input_tokens, b.padded_input_tokens
            )
            for b in batches
            if b.padded_input_tokens > 0 and b.first_token_t > b.start_t
        ),
        key=lambda it: it.start,
    )
