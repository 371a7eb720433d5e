"""Idle baseline per device: mean idle power, measured with nothing running, cached on disk with a TTL.

Net energy = gross energy - idle power x measurement-window duration (never the process's whole run time).

How a baseline is taken (:func:`measure_idle`):

1. wait until GPU board power has settled (two consecutive 1 s means within 3 %; boards cool slowly);
2. read every counter at a tick: an NVML energy counter changes every 100 ms, so a plain read can lag the moment
   it is taken by up to 100 ms; polling until the value changes pins each edge to a few milliseconds;
3. sample power meanwhile (GPU: the cheap board-power sensor; CPU meters: counter differences) and the machine's
   CPU utilisation, to check that the device was idle and that power did not drift;
4. idle power = counter difference / time between the synchronised edges. Its standard uncertainty combines the
   edge timing, the drift (half the change between the halves of the baseline) and the spread of the power
   samples (standard error over ~1 s independent intervals for a smoothed power sensor; over every sample where
   the samples are counter differences over disjoint intervals), in quadrature; it is recorded and carried into net
   energy (idle-power uncertainty x window duration).

A baseline taken while the device was busy (``baseline_not_idle``) is used, flagged, and never cached. The cache
lives in the cache folder (:mod:`llenergymeasure.paths`), one file per host and device, and is reused only while younger than ``baseline.cache_ttl_s`` and at least as long as the
baseline an experiment asks for. Each record says explicitly whether it was measured now or read from the cache.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import statistics
import time
from pathlib import Path

from .. import heartbeat
from ..paths import cache_dir, utc_now_iso

log = logging.getLogger(__name__)
progress = logging.getLogger("llenergymeasure.progress")

#: How long to wait at most for GPU idle power to settle after earlier work, and what "settled" means.
SETTLE_TIMEOUT_S = 60.0
SETTLE_WINDOW_S = 1.0
SETTLE_TOLERANCE = 0.03
#: A CPU meter's baseline is not idle when the machine's CPUs were busier than this on average.
CPU_BUSY_MAX = 0.20
#: A GPU's baseline is not idle when its mean SM utilisation exceeded this (percent).
GPU_UTIL_MAX_PCT = 5.0
#: Drift between the two halves of a baseline, relative to idle power, above which it is flagged.
DRIFT_MAX = 0.02
#: Counter vs power-sample disagreement above which a baseline is flagged (the sensor is smoothed, not exact).
SAMPLES_DISAGREE_MAX = 0.05
#: Relative standard uncertainty of a measured (not estimated) idle power above which it is flagged.
UNCERTAINTY_MAX = 0.01
#: Power readings of NVML are smoothed over about a second: samples closer than that are not independent. Samples
#: that are counter differences over consecutive, disjoint intervals (CPU meters) are each independent.
INDEPENDENT_SAMPLE_S = 1.0


def _host() -> str:
    return socket.gethostname()


def _cache_file(device_key: str, host: str | None = None) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{host or _host()}--{device_key}")
    return cache_dir() / "baselines" / f"{safe}.json"


def read_cached(
    device_key: str, method: str, ttl_s: float, now: float | None = None, min_duration_s: float = 0.0
) -> dict | None:
    """A cached baseline of this host's device, if it was taken with ``method``, is younger than ``ttl_s`` and
    lasted at least ``min_duration_s``; else None."""
    path = _cache_file(device_key)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    now = time.time() if now is None else now
    age = now - record.get("measured_at_epoch_s", 0)
    if (
        record.get("method") != method
        or record.get("host") != _host()
        or not (0 <= age <= ttl_s)
        or record.get("power_w") is None
        or record.get("duration_s", 0) < min_duration_s * 0.98  # a shorter, less certain baseline than asked for
    ):
        return None
    return {**record, "from_cache": True, "cache_age_s": age}


def write_cache(record: dict) -> None:
    from ..results import write_text_atomic

    stored = {k: v for k, v in record.items() if k not in ("from_cache", "cache_age_s")}
    write_text_atomic(_cache_file(record["device_key"], record["host"]), json.dumps(stored, indent=1))


def wait_until_settled(meters: list, interval_s: float = 0.1, sleep=time.sleep, clock=time.monotonic) -> dict:
    """Poll cheap power readings every ``interval_s`` until two consecutive 1 s means agree within 3 % (GPU boards
    cool slowly: 3 s after load an H200 still drew 50 % above its idle power)."""
    with_power = [m for m in meters if m.gpu is not None and m.power_w() is not None]
    if not with_power:
        return {"waited_s": 0.0, "settled": True, "checked": False}
    start = clock()
    previous = None
    while True:
        samples = []
        t_end = clock() + SETTLE_WINDOW_S
        while clock() < t_end:
            samples.append(sum(m.power_w() or 0.0 for m in with_power))
            sleep(interval_s)
        mean = statistics.fmean(samples)
        if previous is not None and abs(mean - previous) <= SETTLE_TOLERANCE * max(previous, 1e-9):
            return {"waited_s": clock() - start, "settled": True, "checked": True}
        if clock() - start > SETTLE_TIMEOUT_S:
            return {"waited_s": clock() - start, "settled": False, "checked": True}
        previous = mean


def _machine_busy_s() -> float | None:
    from .cpu import busy_cpu_seconds

    return busy_cpu_seconds()


def _halves(series: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    if len(series) < 4:
        return None, None
    mid = (series[0][0] + series[-1][0]) / 2
    first = [w for t, w in series if t <= mid]
    second = [w for t, w in series if t > mid]
    if not first or not second:
        return None, None
    return statistics.fmean(first), statistics.fmean(second)


def idle_power_record(
    meter,
    energy_j: float,
    duration_s: float,
    edge_resolution_s: float,
    series: list[tuple[float, float]],
    utilization: list[float],
    cpu_busy_fraction: float | None,
    counter_samples: bool = False,
) -> dict:
    """Idle power of one device from its synchronised counter difference, checked against the power samples taken
    meanwhile (``series``: (time s, watts)); returns the power, its standard uncertainty and the checks.
    ``counter_samples``: the samples are counter differences over disjoint intervals (no smoothing sensor), so the
    standard error of their mean counts every sample, not one per ``INDEPENDENT_SAMPLE_S``."""
    power = energy_j / duration_s if duration_s > 0 else None
    flags: list[str] = []
    checks: dict = {"samples": len(series), "edge_resolution_s": edge_resolution_s}
    if power is None:
        return {"power_w": None, "uncertainty_w": None, "checks": checks, "flags": ["no_duration"]}
    watts = [w for _, w in series]
    u_edges = math.sqrt(2) * meter.read_uncertainty_j(power, edge_resolution_s) / duration_s
    u_stat = u_drift = 0.0
    if len(watts) >= 2:
        mean = statistics.fmean(watts)
        n_independent = (
            float(len(watts))
            if counter_samples
            else max(1.0, duration_s / max(INDEPENDENT_SAMPLE_S, duration_s / len(watts)))
        )
        u_stat = statistics.stdev(watts) / math.sqrt(n_independent)
        checks["samples_mean_power_w"] = mean
        checks["counter_vs_samples_ratio"] = power / mean if mean > 0 else None
        if mean > 0 and abs(power / mean - 1) > SAMPLES_DISAGREE_MAX:
            flags.append("baseline_counter_samples_disagree")
    first, second = _halves(series)
    if first is not None:
        drift = second - first
        u_drift = abs(drift) / 2
        checks["drift_w"] = drift
        if power > 0 and abs(drift) / power > DRIFT_MAX:
            flags.append("idle_power_drifting")
    uncertainty = math.sqrt(u_edges**2 + u_stat**2 + u_drift**2)
    checks["uncertainty_parts_w"] = {"edges": u_edges, "samples": u_stat, "drift": u_drift}
    busy = False
    if utilization:
        checks["utilization_mean_pct"] = statistics.fmean(utilization)
        busy = checks["utilization_mean_pct"] > GPU_UTIL_MAX_PCT
    if meter.component in ("cpu", "ram") and cpu_busy_fraction is not None:
        checks["machine_cpu_busy_fraction"] = cpu_busy_fraction
        busy = busy or cpu_busy_fraction > CPU_BUSY_MAX
    if busy:
        flags.append("baseline_not_idle")
    if meter.method in ("nvml_counter", "rapl") and power > 0 and uncertainty / power > UNCERTAINTY_MAX:
        flags.append("idle_baseline_uncertain")
    return {"power_w": power, "uncertainty_w": uncertainty, "checks": checks, "flags": flags}


def measure_idle(
    meters: list, duration_s: float, interval_s: float = 0.1, sleep=time.sleep, clock=None
) -> dict[str, dict]:
    """Measure idle power of ``meters`` together over ``duration_s`` (see the module docstring)."""
    clock = clock or (meters[0].clock if meters else time.perf_counter)  # the meters' own time base
    settle = wait_until_settled(meters, interval_s, sleep=sleep)
    busy0, t_busy0 = _machine_busy_s(), clock()
    starts = {}
    for m in meters:
        starts[m.device_key] = m.synchronised_read_j(sleep=sleep)
    t_begin = clock()
    series: dict[str, list[tuple[float, float]]] = {m.device_key: [] for m in meters}
    utilization: dict[str, list[float]] = {m.device_key: [] for m in meters}
    last = {m.device_key: (starts[m.device_key][0], starts[m.device_key][1]) for m in meters}
    from_counter: set[str] = set()
    while clock() - t_begin < duration_s:
        sleep(min(interval_s, max(0.0, duration_s - (clock() - t_begin))))
        for m in meters:
            now = clock()
            power = m.power_w()
            if power is None:  # a counter without a power sensor: the difference since the last sample
                e_now = m.read_j()
                e_last, t_last = last[m.device_key]
                if now > t_last:
                    power = (e_now - e_last) / (now - t_last)
                last[m.device_key] = (e_now, now)
                from_counter.add(m.device_key)
            series[m.device_key].append((now, power))
            util = m.utilization_pct()
            if util is not None:
                utilization[m.device_key].append(util)
    ends = {m.device_key: m.synchronised_read_j(sleep=sleep) for m in meters}
    busy1, t_busy1 = _machine_busy_s(), clock()
    busy_fraction = None
    if busy0 is not None and busy1 is not None and t_busy1 > t_busy0:
        busy_fraction = (busy1 - busy0) / ((t_busy1 - t_busy0) * (os.cpu_count() or 1))
    out = {}
    now_epoch = time.time()
    for m in meters:
        e0, t0, r0 = starts[m.device_key]
        e1, t1, r1 = ends[m.device_key]
        elapsed = t1 - t0
        delta = e1 - e0
        flags = []
        if delta < 0:
            if m.wrap_j:
                delta += m.wrap_j
            else:
                flags.append("counter_reset")
        rec = (
            idle_power_record(
                m,
                delta,
                elapsed,
                max(r0, r1),
                series[m.device_key],
                utilization[m.device_key],
                busy_fraction,
                counter_samples=m.device_key in from_counter,
            )
            if "counter_reset" not in flags
            else {"power_w": None, "uncertainty_w": None, "checks": {}, "flags": []}
        )
        out[m.device_key] = {
            "device_key": m.device_key,
            "host": _host(),
            "component": m.component,
            "method": m.method,
            "power_w": rec["power_w"],
            "uncertainty_w": rec["uncertainty_w"],
            "duration_s": elapsed,
            "measured_at": utc_now_iso(),
            "measured_at_epoch_s": now_epoch,
            "settle": settle,
            "checks": rec["checks"],
            "flags": flags + rec["flags"] + ([] if settle["settled"] else ["idle_power_not_settled"]),
            "from_cache": False,
            "cache_age_s": 0.0,
        }
    return out


def _describe(record: dict) -> str:
    u = record.get("uncertainty_w")
    power = f"{record['power_w']:.2f} W" + (f" ± {u:.2f} W" if u is not None else "")
    if record["from_cache"]:
        return f"{record['device_key']}: {power}, cached, measured {record['measured_at']} ({record['cache_age_s'] / 60:.0f} min ago)"
    return f"{record['device_key']}: {power}, measured now over {record['duration_s']:.1f} s"


def idle_baselines(meters: list, cfg: dict, sleep=time.sleep, clock=None) -> dict[str, dict]:
    """Baseline per device key: cached when fresh (and at least as long as asked for), otherwise measured now (all
    stale devices at once). Fresh baselines are cached unless flagged as not idle."""
    if not cfg.get("enabled", True):
        return {}
    ttl = float(cfg.get("cache_ttl_s", 3600))
    duration = float(cfg["duration_s"])
    out: dict[str, dict] = {}
    stale = []
    for m in meters:
        if m.method == "codecarbon":
            continue  # CodeCarbon's own estimates have no idle counterpart we could subtract honestly
        cached = read_cached(m.device_key, m.method, ttl, min_duration_s=duration)
        if cached:
            out[m.device_key] = cached
            progress.info("idle baseline %s", _describe(cached))
        else:
            stale.append(m)
    if stale:
        progress.info(
            "measuring the idle baseline of %s: %.0f s (ETA %.0f s, more if GPU power has not settled)",
            ", ".join(m.device for m in stale),
            duration,
            duration,
        )
        heartbeat.phase(f"measuring the idle baseline of {', '.join(m.device for m in stale)}", total_s=duration)
        interval = cfg.get("sample_interval_ms", 100) / 1000.0
        fresh = measure_idle(stale, duration, interval, sleep=sleep, clock=clock)
        for key, record in fresh.items():
            if record["power_w"] is not None and "baseline_not_idle" not in record["flags"]:
                write_cache(record)
            elif "baseline_not_idle" in record["flags"]:
                log.warning(
                    "idle baseline of %s taken while the device was busy: used for this measurement only, not cached",
                    key,
                )
            out[key] = record
            if record["power_w"] is not None:
                progress.info("idle baseline %s", _describe(record))
    return out
