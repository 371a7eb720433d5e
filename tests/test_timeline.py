"""Timeline summaries, throttle accounting and the prefill/decode energy split, on synthetic samples."""

from __future__ import annotations

import pytest

from llenergymeasure.backends.base import BatchRecord
from llenergymeasure.timeline import GpuSample, TimelineSample, TimelineSampler, integrate, phase_split, summarise


def gpu_samples(powers, reasons=None, dt=0.1):
    reasons = reasons or [0] * len(powers)
    return [
        TimelineSample(
            i * dt,
            50.0,
            100 + i,
            None,
            (
                GpuSample(
                    "gpu0",
                    power_w=p,
                    temperature_c=60.0 + i,
                    sm_util_pct=90.0,
                    mem_util_pct=40.0,
                    sm_clock_mhz=1900.0,
                    throttle_reasons=r,
                ),
            ),
        )
        for i, (p, r) in enumerate(zip(powers, reasons, strict=True))
    ]


def one_batch(start: float, first_token: float, end: float) -> BatchRecord:
    """One request of 8 prompt and 4 output tokens: prefill from ``start`` to ``first_token``, decode to ``end``."""
    return BatchRecord(
        size=1,
        input_tokens=8,
        padded_input_tokens=8,
        output_tokens=4,
        steps=4,
        latency_s=end - start,
        start_t=start,
        first_token_t=first_token,
        end_t=end,
    )


def test_integrate_step_series():
    times, watts = [0.0, 1.0, 2.0], [100.0, 200.0, 300.0]
    assert integrate(times, watts, 0.0, 3.0) == pytest.approx(100 + 200 + 300)
    assert integrate(times, watts, 0.5, 1.5) == pytest.approx(50 + 100)
    assert integrate(times, watts, -1.0, 0.5) == pytest.approx(100 * 1.0 + 50)  # first value holds before
    assert integrate(times, watts, 2.0, 2.0) == 0.0


def test_summary_and_throttle_durations():
    s = summarise(gpu_samples([100, 200, 300, 400], reasons=[0, 0x20, 0x04 | 0x20, 0x08]), 0.1)
    g = s["gpus"][0]
    assert g["power_w"] == {"mean": 250.0, "max": 400.0, "min": 100.0}
    assert g["temperature_c"]["max"] == 63.0
    assert g["throttle"]["thermal_s"] == pytest.approx(0.2) and g["throttle"]["power_cap_s"] == pytest.approx(0.1)
    assert g["throttle"]["hw_slowdown_s"] == pytest.approx(0.1) and s["rss_bytes_max"] == 103


def test_throttle_durations_follow_the_real_sample_spacing():
    """A busy host stretches the 0.1 s sampling interval: a throttled sample counts until the next one arrives."""
    import dataclasses

    samples = gpu_samples([100, 200, 300], reasons=[0x20, 0x20, 0])
    # the second reading came 0.35 s after the first
    samples = [dataclasses.replace(x, t=t) for x, t in zip(samples, (0.0, 0.35, 0.45), strict=True)]
    g = summarise(samples, 0.1)["gpus"][0]
    assert g["throttle"]["thermal_s"] == pytest.approx(0.35 + 0.10)
    last = summarise(gpu_samples([100, 200], reasons=[0, 0x20]), 0.1)["gpus"][0]
    assert last["throttle"]["thermal_s"] == pytest.approx(0.1)  # the last sample holds one nominal interval


def test_unreadable_gpu_power_is_missing_not_zero():
    """A sample whose board power could not be read is left out of the power series: the readable value before it
    holds (0 W would shift energy between phases and pull the fallback cross-check down)."""
    from llenergymeasure.timeline import energy_cross_check

    samples = gpu_samples([200.0, None, None, 200.0, 200.0])
    batches = [one_batch(0.0, 0.25, 0.5)]
    split = phase_split(samples, batches, (0.0, 0.5), energy_j=100.0)
    assert split["prefill_energy_j"] == pytest.approx(50.0) and split["timeline_samples"] == 3
    check = energy_cross_check(100.0, {}, (0.0, 0.5), samples, (0.0, 0.5))
    assert check["method"] == "timeline_power_integral" and check["power_integral_j"] == pytest.approx(100.0)
    assert check["coverage"] < 1.0  # the unreadable stretch shows as missing coverage
    none = phase_split(gpu_samples([None, None]), batches, (0.0, 0.5), energy_j=100.0)
    assert none["method"] == "unavailable"


def test_phase_split_follows_power():
    # 1 s at 300 W (prefill), then 3 s at 100 W (decode): 300 J vs 300 J of a 600 J window
    samples = gpu_samples([300] * 10 + [100] * 30)
    batches = [one_batch(0.0, 1.0, 4.0)]
    split = phase_split(samples, batches, (0.0, 4.0), energy_j=660.0)
    assert split["method"] == "window_counter_energy_split_by_gpu_board_power"
    assert split["prefill_energy_j"] == pytest.approx(330.0) and split["decode_energy_j"] == pytest.approx(330.0)
    assert split["other_energy_j"] == pytest.approx(0.0, abs=1e-9)
    assert phase_split(samples, batches, (0.0, 4.0), energy_j=None)["method"] == "unavailable"
    assert phase_split([], batches, (0.0, 4.0), energy_j=1.0)["prefill_energy_j"] is None


def test_sampler_thread_collects_at_most_10_hz():
    import time

    s = TimelineSampler([], interval_s=0.01)  # asked for 100 Hz: held at 10 Hz
    assert s.interval_s == 0.1
    s.start()
    time.sleep(0.55)
    samples = s.stop()
    assert 4 <= len(samples) <= 8 and samples[0].rss_bytes > 0
