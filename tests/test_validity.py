"""Validity checks on synthetic windows: steady state, the energy cross-check, host-bound GPUs."""

from __future__ import annotations

import dataclasses

import pytest

from llenergymeasure import validity
from llenergymeasure.backends.base import BatchRecord
from llenergymeasure.steady import Step, steady_state
from llenergymeasure.timeline import GpuSample, TimelineSample, energy_cross_check


def static_batches(paces_s: list[float], steps: int = 11, prefill_s: float = 0.05) -> list[BatchRecord]:
    """Consecutive static batches on one clock, each: a prefill, then ``steps - 1`` decode steps at its pace."""
    out, t = [], 0.0
    for pace in paces_s:
        first = t + prefill_s
        end = first + pace * (steps - 1)
        out.append(
            BatchRecord(
                size=4,
                input_tokens=40,
                padded_input_tokens=48,
                output_tokens=4 * steps,
                steps=steps,
                latency_s=end - t,
                start_t=t,
                first_token_t=first,
                end_t=end,
            )
        )
        t = end
    return out


def test_steady_window_is_not_flagged():
    batches = static_batches([0.012, 0.0125, 0.0118, 0.012, 0.0121, 0.0119])
    s = steady_state("static", batches, [], (0.0, batches[-1].end_t))
    assert s["method"] == "per_batch_step_time" and s["cold_start_in_window"] is False and s["cold_excess_share"] == 0.0
    assert validity.cold_start_in_window(s) == []


def test_cold_batches_at_the_start_are_flagged_with_their_share():
    """Two first batches at 50 ms per decode step against a steady 12 ms: their extra time is the one-time cost."""
    batches = static_batches([0.05, 0.05, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012])
    window = (0.0, batches[-1].end_t)
    s = steady_state("static", batches, [], window)
    assert s["cold_start_in_window"] is True and s["cold_items"] == 2
    assert s["reference_step_s"] == pytest.approx(0.012)
    expected = 2 * (0.05 - 0.012) * 10 / (window[1] - window[0])
    assert s["cold_excess_share"] == pytest.approx(expected)
    ((code, message),) = validity.cold_start_in_window(s)
    assert code == "cold_start_in_window" and "%" in message


def test_prompt_length_alone_does_not_look_cold():
    """Batches with longer prompts take longer to prefill: that is the workload, not a cold start."""
    batches = static_batches([0.012] * 6)
    first = batches[0]
    batches[0] = dataclasses.replace(
        first, first_token_t=first.first_token_t + 0.3, end_t=first.end_t + 0.3, latency_s=first.latency_s + 0.3
    )
    # a long first prompt: 0.35 s of prefill for 7x the padded tokens (0.05 s for 48 elsewhere), the same pace
    batches[0] = dataclasses.replace(batches[0], input_tokens=280, padded_input_tokens=336)
    assert steady_state("static", batches, [], (0.0, batches[-1].end_t + 0.3))["cold_start_in_window"] is False
    # the same prefill time for as many tokens as the others: a cold prefill
    batches[0] = dataclasses.replace(batches[0], input_tokens=40, padded_input_tokens=48)
    s = steady_state("static", batches, [], (0.0, batches[-1].end_t + 0.3))
    assert s["cold_start_in_window"] is True and (s["cold_items"], s["cold_prefill_items"]) == (0, 1)
    ((_, message),) = validity.cold_start_in_window(s)
    assert "prefill at 0.00 s 7.00x" in message, message


def test_continuous_batching_uses_decode_step_blocks():
    steps, t = [], 0.0
    for k in range(200):
        dur = 0.06 if k < 20 else 0.012  # the first 20 engine steps are cold
        steps.append(Step(t, t + dur, prefill=(k % 50 == 0)))
        t += dur
    s = steady_state("continuous", [], steps, (0.0, t))
    assert s["method"] == "decode_step_blocks" and s["cold_start_in_window"] is True
    warm = [Step(i * 0.012, (i + 1) * 0.012) for i in range(200)]
    assert steady_state("continuous", [], warm, (0.0, 2.4))["cold_start_in_window"] is False
    assert steady_state("continuous", [], [], (0.0, 1.0))["method"] == "unavailable"


def buffered(power_w: float, start: float, end: float, dt: float = 0.02) -> list[tuple[float, float]]:
    n = int((end - start) / dt) + 2
    return [(start - dt + i * dt, power_w) for i in range(n)]


def test_cross_check_agrees_on_consistent_power():
    t0, t1 = 1_700_000_000.0, 1_700_000_012.0  # a 12 s window
    c = energy_cross_check(300.0 * 12, {"gpu0": buffered(300.0, t0, t1)}, (t0, t1), [], (5.0, 17.0))
    assert c["method"] == "nvml_buffered_power_samples_integral" and c["judged"] is True
    assert c["ratio"] == pytest.approx(1.0, abs=0.01) and validity.energy_cross_check_mismatch(c) == []


def test_cross_check_flags_a_counter_that_disagrees_on_a_long_window():
    t0, t1 = 1_700_000_000.0, 1_700_000_012.0
    c = energy_cross_check(300.0 * 12 * 1.1, {"gpu0": buffered(300.0, t0, t1)}, (t0, t1), [], (5.0, 17.0))
    ((code, _),) = validity.energy_cross_check_mismatch(c)
    assert code == "energy_cross_check_mismatch" and c["ratio"] == pytest.approx(1 / 1.1, rel=0.01)


def test_cross_check_is_not_judged_on_short_windows_and_falls_back_to_the_timeline():
    t0, t1 = 1_700_000_000.0, 1_700_000_002.0  # 2 s: the smoothed sensor lags the edges, no verdict
    c = energy_cross_check(300.0 * 2 * 1.2, {"gpu0": buffered(300.0, t0, t1)}, (t0, t1), [], (0.0, 2.0))
    assert c["judged"] is False and validity.energy_cross_check_mismatch(c) == []
    samples = [TimelineSample(0.1 * i, 1.0, gpus=(GpuSample("gpu0", power_w=250.0),)) for i in range(121)]
    c = energy_cross_check(250.0 * 12, {"gpu0": []}, (t0, t0 + 12), samples, (0.0, 12.0))  # no driver buffer
    assert c["method"] == "timeline_power_integral" and c["ratio"] == pytest.approx(1.0, abs=0.01)
    assert energy_cross_check(None, {}, (t0, t1), samples, (0.0, 2.0))["method"] == "unavailable"


def test_host_bound_gpu_is_flagged():
    def summary(util):
        return {
            "gpus": [
                {
                    "device": "gpu0",
                    "sm_util_pct": {"mean": util, "max": util, "min": util},
                    "throttle": {"thermal_s": 0, "power_cap_s": 0},
                }
            ]
        }

    ((code, message),) = validity.host_bound(summary(22.0))
    assert code == "host_bound" and "22 %" in message
    assert validity.host_bound(summary(85.0)) == [] and validity.host_bound(None) == []


def test_every_flag_is_declared_once_and_listed_in_the_readme_and_the_schemas():
    """The flag registry (with each backend's own flags) is the one list: the README's table, the raw schema's enum
    of codes and the aggregated schema's names of counted flags are all exactly it."""
    import json
    from pathlib import Path

    from llenergymeasure.backends import every_flag
    from llenergymeasure.record.flags import markdown_table

    flags = every_flag()
    root = Path(__file__).resolve().parent.parent
    table = markdown_table(flags)
    assert table in (root / "README.md").read_text(encoding="utf-8"), f"README's table of flags should be:\n{table}"
    schemas = root / "src" / "llenergymeasure" / "schemas"
    raw = json.loads((schemas / "raw_result.schema.json").read_text())
    code = raw["properties"]["flags"]["items"]["properties"]["code"]
    window = [c for c, f in flags.items() if f.scope == "window"]
    assert code["enum"] == window, f"raw_result.schema.json flags.items.code.enum should be {json.dumps(window)}"
    agg = json.loads((schemas / "aggregated_result.schema.json").read_text())
    assert agg["properties"]["flags"]["propertyNames"]["enum"] == list(flags), (
        f"aggregated_result.schema.json flags.propertyNames.enum should be {json.dumps(list(flags))}"
    )
    for f in flags.values():  # each names the function that holds its rule
        module, _, name = f.rule.partition(".")
        if module == "validity":
            assert callable(getattr(validity, name, None)), f
        assert name.split(".")[-1].isidentifier(), f


def test_a_flag_outside_the_registry_is_refused():
    flags: list = []
    validity.add(flags, "short_window", "x")
    validity.add(flags, "short_window", "a second one with that code is not added")
    assert flags == [{"code": "short_window", "message": "x"}]
    with pytest.raises(ValueError, match="'made_up' is not declared in the flag registry"):
        validity.add(flags, "made_up", "y")


def test_cold_excess_counts_the_decode_steps_not_the_prefill_steps_between_them():
    """Under continuous batching a block of decode steps can span prefill steps; its cost beyond the steady pace is
    its steps' own time beyond it, not its span (which holds the prefills)."""
    steps, t = [], 0.0
    for k in range(200):
        if k == 5:  # a 0.1 s prefill step inside the first (cold) block
            steps.append(Step(t, t + 0.1, prefill=True))
            t += 0.1
        dur = 0.02 if k < 10 else 0.012
        steps.append(Step(t, t + dur))
        t += dur
    s = steady_state("continuous", [], steps, (0.0, t))
    assert s["cold_start_in_window"] is True and s["reference_step_s"] == pytest.approx(0.012)
    assert s["cold_excess_s"] == pytest.approx(10 * (0.02 - 0.012))  # 0.08 s, not the 0.18 s the span would give
    assert s["cold_excess_share"] == pytest.approx(0.08 / t)


def test_a_slow_start_under_one_and_a_half_times_is_found_on_a_quiet_host():
    """The first blocks at 1.25x a steady, quiet pace: below the old 1.5x ratio, well above the noise."""
    import random

    rng = random.Random(1)
    steps, t = [], 0.0
    for k in range(400):
        dur = rng.gauss(0.012, 0.0001) * (1.25 if k < 40 else 1.0)
        steps.append(Step(t, t + dur))
        t += dur
    s = steady_state("continuous", [], steps, (0.0, t))
    assert s["cold_start_in_window"] is True and s["cold_items"] == 2
    assert s["seen"][0]["kind"] == "decode" and s["seen"][0]["pace_ratio"] == pytest.approx(1.25, abs=0.02)


def test_a_busy_host_rarely_passes_for_a_cold_start():
    """Fully warmed windows on a host busy with other work: every step's time varies (lognormal, 15 %) and now and
    then the scheduler takes the CPU away for a while (a 3x slower block, 2 % of blocks, anywhere). Such slowness is
    as likely late as early: in 500 such windows fewer than 3 % are flagged."""
    import math
    import random

    rng = random.Random(11)
    flagged = 0
    for _ in range(500):
        steps, t = [], 0.0
        for _block in range(20):
            slow = 3.0 if rng.random() < 0.02 else 1.0
            for _ in range(10):
                dur = 0.012 * math.exp(rng.gauss(0.0, 0.15)) * slow
                steps.append(Step(t, t + dur))
                t += dur
        flagged += steady_state("continuous", [], steps, (0.0, t))["cold_start_in_window"]
    assert flagged / 500 < 0.03, flagged


def test_a_warmup_that_did_not_converge_says_why_and_what_to_change():
    base = {"enabled": True, "converged": False, "target_cv": 0.05, "iterations_completed": 9, "final_cv": 0.12}
    faster = {**base, "latencies_ms": [200, 190, 180, 150, 140, 130, 100, 95, 90], "cv_loop_s": 12.0}
    ((code, message),) = validity.warmup_not_converged(faster, window_s=4.0)
    assert code == "warmup_not_converged" and "latency CV 0.120 still above 0.05 after 9 runs" in message
    assert "still getting faster (the last runs 50% quicker than the first), raise warmup.max_prompts" in message
    assert message.endswith("it took 12.0 s, longer than the 4.0 s window it was for")
    noisy = {**base, "latencies_ms": [100, 130, 90, 120, 95, 125, 100, 128, 92], "cv_loop_s": 1.0}
    ((_, message),) = validity.warmup_not_converged(noisy, window_s=4.0)
    assert "not getting faster, only noisy" in message and "warmup.cv_threshold" in message
    assert "longer than" not in message
    assert validity.warmup_not_converged({**base, "converged": True}) == []
