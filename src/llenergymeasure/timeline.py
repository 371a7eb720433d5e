"""Timeline of the measurement window: cheap reads at <= 10 Hz on a background thread.

Per GPU: board power (``nvmlDeviceGetPowerUsage``, a smoothed value that costs microseconds), temperature, SM and
memory utilisation, SM clock and the clock-event (throttle) reasons. For the CPU: machine-wide utilisation from
``/proc/stat``, this process's resident memory, and the CPU temperature where exposed. The energy counter is never
polled (one read takes a driver lock for milliseconds); energy comes from the window-edge counter reads, and the
timeline only says how it was distributed in time: which share went to prefill and which to decode, whether the
GPU throttled, how hot it ran.

Each tick also drains the driver's buffer of board-power samples (``nvmlDeviceGetSamples``, one sample every
20 ms on an H200, a ring of about 2.4 s: a 10 Hz drain never loses one). Integrated over the window they give an
independent estimate of its GPU energy, which :func:`energy_cross_check` compares with the counter.
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .energy.cpu import cpu_times

MIN_INTERVAL_S = 0.1  # at most 10 Hz

# NVML clock-event reason bits
THERMAL_BITS = 0x20 | 0x40  # software thermal slowdown, hardware thermal slowdown
POWER_BITS = 0x04 | 0x80  # software power cap, hardware power brake
HW_SLOWDOWN_BIT = 0x08


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def cpu_temperature_file() -> Path | None:
    """The sysfs file of the CPU package temperature (x86_pkg_temp and the like preferred), or None."""
    best = None
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
            int((zone / "temp").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("x86_pkg_temp", "k10temp", "cpu-thermal", "cpu_thermal"):
            return zone / "temp"
        best = best or zone / "temp"
    return best


def cpu_temperature_c(path: Path | None = None) -> float | None:
    """CPU temperature in °C from ``path`` (default: :func:`cpu_temperature_file`), or None where not exposed."""
    path = path or cpu_temperature_file()
    if path is None:
        return None
    try:
        return int(path.read_text()) / 1000.0
    except (OSError, ValueError):
        return None


def temperatures(meters) -> dict:
    """Temperatures readable now: each GPU of the experiment, and the CPU."""
    out: dict = {}
    for m in meters:
        if m.gpu is not None:
            out[m.device] = m.temperature_c()
    cpu = cpu_temperature_c()
    if cpu is not None:
        out["cpu"] = cpu
    return out


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one instant (None: not readable on this board)."""

    device: str
    power_w: float | None = None
    temperature_c: float | None = None
    sm_util_pct: float | None = None
    mem_util_pct: float | None = None
    sm_clock_mhz: float | None = None
    throttle_reasons: int | None = None


#: the per-GPU series a timeline sidecar holds
GPU_SERIES = ("power_w", "temperature_c", "sm_util_pct", "mem_util_pct", "sm_clock_mhz", "throttle_reasons")


@dataclass(frozen=True)
class TimelineSample:
    """The machine at one instant: ``t`` in perf_counter seconds; CPU utilisation over the interval before it."""

    t: float
    cpu_util_pct: float | None = None
    rss_bytes: int | None = None
    cpu_temperature_c: float | None = None
    gpus: tuple[GpuSample, ...] = ()


class TimelineSampler:
    """Samples on a daemon thread between :meth:`start` and :meth:`stop`; times are ``perf_counter`` seconds."""

    def __init__(self, gpu_meters: list, interval_s: float = MIN_INTERVAL_S) -> None:
        self.interval_s = max(float(interval_s), MIN_INTERVAL_S)
        self.gpus = [m for m in gpu_meters if m.gpu is not None]
        self.samples: list[TimelineSample] = []
        #: per GPU device: the driver's buffered power samples, (epoch seconds, watts)
        self.power_buffer: dict[str, list[tuple[float, float]]] = {m.device: [] for m in self.gpus}
        self._buffer_seen: dict[str, int] = {m.device: 0 for m in self.gpus}
        self._cpu_temp_file = cpu_temperature_file()  # found once: the sampling loop only reads it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nv = None
        if self.gpus:
            import pynvml

            self._nv = pynvml

    def _gpu_sample(self, m) -> GpuSample:
        nv, h = self._nv, m.gpu["handle"]
        out: dict = {"device": m.device}
        for key, fn in (
            ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ("temperature_c", lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
            ("sm_clock_mhz", lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))),
        ):
            try:
                out[key] = fn()
            except Exception:  # noqa: BLE001 - a reading NVML cannot give is missing from the sample
                out[key] = None
        try:
            util = nv.nvmlDeviceGetUtilizationRates(h)
            out["sm_util_pct"], out["mem_util_pct"] = float(util.gpu), float(util.memory)
        except Exception:  # noqa: BLE001 - a reading NVML cannot give is missing from the sample
            out["sm_util_pct"] = out["mem_util_pct"] = None
        try:
            getter = (
                getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                or nv.nvmlDeviceGetCurrentClocksThrottleReasons
            )
            out["throttle_reasons"] = int(getter(h))
        except Exception:  # noqa: BLE001 - a reading NVML cannot give is missing from the sample
            out["throttle_reasons"] = None
        return GpuSample(**out)

    def _drain_power_buffer(self, m) -> None:
        """Append the driver's power samples newer than the last one seen (none where the driver keeps none)."""
        nv = self._nv
        try:
            kind, samples = nv.nvmlDeviceGetSamples(
                m.gpu["handle"], nv.NVML_TOTAL_POWER_SAMPLES, self._buffer_seen[m.device]
            )
        except Exception:  # noqa: BLE001 - NVML_ERROR_NOT_FOUND: nothing new; NOT_SUPPORTED: no buffer on this board
            return
        out = self.power_buffer[m.device]
        for s in samples:
            if s.timeStamp <= self._buffer_seen[m.device]:
                continue
            self._buffer_seen[m.device] = s.timeStamp
            value = _sample_value(nv, kind, s.sampleValue)
            if value is not None:
                out.append((s.timeStamp / 1e6, value / 1000.0))  # microseconds, milliwatts

    def _run(self) -> None:
        prev = cpu_times()
        while True:
            t = time.perf_counter()
            cur = cpu_times()
            util = None
            if prev and cur and cur[1] > prev[1]:
                util = 100.0 * (cur[0] - prev[0]) / (cur[1] - prev[1])
            prev = cur
            temp = cpu_temperature_c(self._cpu_temp_file) if self._cpu_temp_file else None
            gpus = tuple(self._gpu_sample(m) for m in self.gpus)
            for m in self.gpus:
                self._drain_power_buffer(m)
            self.samples.append(TimelineSample(t, util, _rss_bytes(), temp, gpus))
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lem-timeline", daemon=True)
        self._thread.start()

    def stop(self) -> list[TimelineSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples


def _sample_value(nv, kind: int, value) -> float | None:
    """The number in an NVML sample's value union, by its declared type."""
    field = {
        nv.NVML_VALUE_TYPE_DOUBLE: "dVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    }.get(kind)
    return None if field is None else float(getattr(value, field))


def _stats(values: list) -> dict:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "max": None, "min": None}
    return {"mean": statistics.fmean(xs), "max": max(xs), "min": min(xs)}


def _held_s(samples: list[TimelineSample], interval_s: float) -> list[float]:
    """How long each sample's reading holds: until the next sample (the sampler's real spacing, which stretches when
    the host is busy), the last one for one nominal interval."""
    return [b.t - a.t for a, b in itertools.pairwise(samples)] + ([interval_s] if samples else [])


def summarise(samples: list[TimelineSample], interval_s: float) -> dict:
    """Means and maxima per device, throttle durations (the time each throttled sample holds until the next)."""
    out: dict = {
        "samples": len(samples),
        "interval_s": interval_s,
        "cpu_util_pct": _stats([s.cpu_util_pct for s in samples]),
        "cpu_temperature_c": _stats([s.cpu_temperature_c for s in samples]),
        "rss_bytes_max": max((s.rss_bytes for s in samples if s.rss_bytes is not None), default=None),
        "gpus": [],
    }
    n_gpus = len(samples[0].gpus) if samples else 0
    held = _held_s(samples, interval_s)
    for i in range(n_gpus):
        rows = [s.gpus[i] for s in samples]
        reasons = [(r.throttle_reasons, h) for r, h in zip(rows, held, strict=True) if r.throttle_reasons is not None]
        out["gpus"].append(
            {
                "device": rows[0].device,
                **{
                    key: _stats([getattr(r, key) for r in rows])
                    for key in ("power_w", "temperature_c", "sm_util_pct", "mem_util_pct", "sm_clock_mhz")
                },
                "throttle": {
                    "thermal_s": sum(h for x, h in reasons if x & THERMAL_BITS),
                    "power_cap_s": sum(h for x, h in reasons if x & POWER_BITS),
                    "hw_slowdown_s": sum(h for x, h in reasons if x & HW_SLOWDOWN_BIT),
                    "readable": bool(reasons),
                },
            }
        )
    return out


def sidecar(samples: list[TimelineSample], interval_s: float, w0: float) -> dict:
    """Every sample of a window as series (times in seconds since the window opened): the timeline sidecar file."""
    return {
        "interval_s": interval_s,
        "t_s": [round(s.t - w0, 4) for s in samples],
        "cpu_util_pct": [s.cpu_util_pct for s in samples],
        "rss_bytes": [s.rss_bytes for s in samples],
        "cpu_temperature_c": [s.cpu_temperature_c for s in samples],
        "gpus": [
            {
                "device": samples[0].gpus[i].device,
                **{key: [getattr(s.gpus[i], key) for s in samples] for key in GPU_SERIES},
            }
            for i in range(len(samples[0].gpus) if samples else 0)
        ],
    }


def power_series(
    samples: list[TimelineSample], cpu_tdp_w: float | None = None
) -> tuple[list[float], list[float], str] | None:
    """(times, watts, what) for phase attribution: summed GPU board power where GPUs are sampled, else CPU
    utilisation x TDP (an estimate); None when neither is available."""
    if samples and samples[0].gpus:
        # a sample with a GPU's power unreadable is missing, not 0 W: the step integral holds the last readable one
        pts = [(s.t, sum(g.power_w for g in s.gpus)) for s in samples if all(g.power_w is not None for g in s.gpus)]
        if not pts:
            return None
        what = "gpu_board_power"
    elif cpu_tdp_w and any(s.cpu_util_pct is not None for s in samples):
        pts = [(s.t, s.cpu_util_pct / 100.0 * cpu_tdp_w) for s in samples if s.cpu_util_pct is not None]
        what = "cpu_utilisation_x_tdp"
    else:
        return None
    return [p[0] for p in pts], [p[1] for p in pts], what


def integrate(times: list[float], watts: list[float], start: float, end: float) -> float:
    """Joules of a step-wise power series over [start, end] (each sample holds until the next)."""
    if end <= start or not times:
        return 0.0
    total = 0.0
    for i, t in enumerate(times):
        t_next = times[i + 1] if i + 1 < len(times) else max(end, t)
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            total += watts[i] * (hi - lo)
    # before the first sample, the first value holds
    if start < times[0]:
        total += watts[0] * (min(times[0], end) - start)
    return total


def phase_split(
    samples: list[TimelineSample],
    batches: list,
    window: tuple[float, float],
    energy_j: float | None,
    cpu_tdp_w: float | None = None,
) -> dict:
    """Split the window's counter energy between prefill (batch start to its first token) and decode (first to
    last token) in proportion to the power timeline's integral over those intervals (``batches``: BatchRecords)."""
    series = power_series(samples, cpu_tdp_w)
    if series is None or energy_j is None or len(series[0]) < 2:
        return {
            "method": "unavailable",
            "prefill_energy_j": None,
            "decode_energy_j": None,
            "other_energy_j": None,
            "reason": "no power timeline" if energy_j is not None else "no window energy",
        }
    times, watts, what = series
    w0, w1 = window
    whole = integrate(times, watts, w0, w1)
    prefill = sum(integrate(times, watts, b.start_t, b.first_token_t) for b in batches)
    decode = sum(integrate(times, watts, b.first_token_t, b.end_t) for b in batches)
    if whole <= 0:
        return {
            "method": "unavailable",
            "prefill_energy_j": None,
            "decode_energy_j": None,
            "other_energy_j": None,
            "reason": "power timeline integrates to zero",
        }
    share_p, share_d = prefill / whole, decode / whole
    return {
        "method": f"window_counter_energy_split_by_{what}",
        "prefill_energy_j": energy_j * share_p,
        "decode_energy_j": energy_j * share_d,
        "other_energy_j": energy_j * max(0.0, 1 - share_p - share_d),  # tokenisation, host work between batches
        "prefill_time_s": sum(b.first_token_t - b.start_t for b in batches),
        "decode_time_s": sum(b.end_t - b.first_token_t for b in batches),
        "timeline_samples": len(times),
        "note": "shares from a <=10 Hz timeline: phases shorter than a few samples are approximate",
    }


#: Counter vs power-integral disagreement that is flagged, and the shortest window it is judged on: the power
#: sensor is a smoothed average, so a short window's integral lags its edges (1-15 % low on 1.6 s windows).
CROSS_CHECK_TOLERANCE = 0.03
CROSS_CHECK_MIN_WINDOW_S = 10.0
#: Largest gap between buffered samples that still counts as covered (the driver samples every 20 ms).
BUFFER_MAX_GAP_S = 0.1


def _coverage(times: list[float], start: float, end: float, max_gap: float) -> float:
    """Fraction of [start, end] lying within ``max_gap`` after some sample (the step integral holds a value that
    long at most)."""
    if end <= start or not times:
        return 0.0
    covered = 0.0
    for i, t in enumerate(times):
        hold_end = min(t + max_gap, times[i + 1] if i + 1 < len(times) else t + max_gap)
        lo, hi = max(t, start), min(hold_end, end)
        if hi > lo:
            covered += hi - lo
    return covered / (end - start)


def energy_cross_check(
    counter_j: float | None,
    buffered: dict[str, list[tuple[float, float]]],
    window_epoch: tuple[float, float],
    samples: list[TimelineSample],
    window: tuple[float, float],
) -> dict:
    """GPU window energy from integrated board power, beside the counter's: the driver's buffered 50 Hz samples when
    they cover the window, else the timeline's 10 Hz readings. ``ratio`` = power integral / counter energy;
    ``judged`` says whether the window is long enough for the tolerance to apply."""
    out = {
        "method": "unavailable",
        "counter_energy_j": counter_j,
        "power_integral_j": None,
        "ratio": None,
        "samples": 0,
        "coverage": 0.0,
        "tolerance": CROSS_CHECK_TOLERANCE,
        "min_window_s": CROSS_CHECK_MIN_WINDOW_S,
        "judged": False,
    }
    duration = window[1] - window[0]
    if counter_j is None or counter_j <= 0:
        out["reason"] = "no GPU counter energy for the window"
        return out
    t0, t1 = window_epoch
    series = [sorted(v) for v in buffered.values() if v]
    if (
        series
        and len(series) == len(buffered)
        and all(_coverage([t for t, _ in s], t0, t1, BUFFER_MAX_GAP_S) >= 0.95 for s in series)
    ):
        integral = sum(integrate([t for t, _ in s], [w for _, w in s], t0, t1) for s in series)
        out.update(
            method="nvml_buffered_power_samples_integral",
            samples=sum(len(s) for s in series),
            coverage=min(_coverage([t for t, _ in s], t0, t1, BUFFER_MAX_GAP_S) for s in series),
        )
    else:
        ps = power_series(samples)
        if ps is None or len(ps[0]) < 2:
            out["reason"] = "no power samples of the GPUs"
            return out
        times, watts, _ = ps
        integral = integrate(times, watts, window[0], window[1])
        out.update(
            method="timeline_power_integral",
            samples=len(times),
            coverage=_coverage(times, window[0], window[1], 2 * MIN_INTERVAL_S),
        )
    out.update(power_integral_j=integral, ratio=integral / counter_j, judged=duration >= CROSS_CHECK_MIN_WINDOW_S)
    return out
