"""Idle baseline per device: mean idle power, measured with nothing running, cached on disk with a TTL.

Net energy = gross energy - idle power x measurement-window duration (never the process's whole run time).
The cache lives in ``$LEM_CACHE_DIR`` (else ``$XDG_CACHE_HOME/llenergymeasure``, else
``~/.cache/llenergymeasure``), one file per device, so one baseline serves every experiment and campaign on that
device until it expires. Each record says explicitly whether it was measured now or read from the cache.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from .base import MeterSet

log = logging.getLogger(__name__)

#: How long to wait at most for GPU idle power to settle after earlier work, and what "settled" means.
SETTLE_TIMEOUT_S = 60.0
SETTLE_WINDOW_S = 1.0
SETTLE_TOLERANCE = 0.03


def cache_dir() -> Path:
    if os.environ.get("LEM_CACHE_DIR"):
        return Path(os.environ["LEM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llenergymeasure"


def _cache_file(device_key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_key)
    return cache_dir() / "baselines" / f"{safe}.json"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def read_cached(device_key: str, method: str, ttl_s: float, now: float | None = None) -> dict | None:
    path = _cache_file(device_key)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    now = time.time() if now is None else now
    age = now - record.get("measured_at_epoch_s", 0)
    if record.get("method") != method or not (0 <= age <= ttl_s) or record.get("power_w") is None:
        return None
    return {**record, "from_cache": True, "cache_age_s": age}


def write_cache(record: dict) -> None:
    from ..results import write_text_atomic

    stored = {k: v for k, v in record.items() if k not in ("from_cache", "cache_age_s")}
    write_text_atomic(_cache_file(record["device_key"]), json.dumps(stored, indent=1))


def wait_until_settled(meters: list, interval_s: float = 0.1, sleep=time.sleep, clock=time.monotonic) -> dict:
    """Poll cheap power readings every ``interval_s`` until two consecutive 1 s means agree within 3 % (GPU boards
    cool slowly: 3 s after load an H200 still drew 50 % above its idle power)."""
    with_power = [m for m in meters if hasattr(m, "power_w") and m.method == "nvml_counter"]
    if not with_power:
        return {"waited_s": 0.0, "settled": True, "checked": False}
    start = clock()
    previous = None
    while True:
        samples = []
        t_end = clock() + SETTLE_WINDOW_S
        while clock() < t_end:
            samples.append(sum(m.power_w() for m in with_power))
            sleep(interval_s)
        mean = statistics.fmean(samples)
        if previous is not None and abs(mean - previous) <= SETTLE_TOLERANCE * max(previous, 1e-9):
            return {"waited_s": clock() - start, "settled": True, "checked": True}
        if clock() - start > SETTLE_TIMEOUT_S:
            return {"waited_s": clock() - start, "settled": False, "checked": True}
        previous = mean


def measure_idle(meters: list, duration_s: float, interval_s: float = 0.1, sleep=time.sleep) -> dict[str, dict]:
    """Measure idle power of ``meters`` together over ``duration_s``, through their own energy counters."""
    settle = wait_until_settled(meters, interval_s, sleep=sleep)
    together = MeterSet(meters)
    together.start()
    sleep(duration_s)
    results = together.stop()
    out = {}
    now = time.time()
    for r in results:
        out[r.device_key] = {
            "device_key": r.device_key,
            "component": r.component,
            "method": r.method,
            "power_w": r.mean_power_w,
            "duration_s": r.duration_s,
            "measured_at": utc_now_iso(),
            "measured_at_epoch_s": now,
            "settle": settle,
            "flags": list(r.flags) + ([] if settle["settled"] else ["idle_power_not_settled"]),
            "from_cache": False,
            "cache_age_s": 0.0,
        }
    return out


def idle_baselines(meters: list, cfg: dict, sleep=time.sleep) -> dict[str, dict]:
    """Baseline per device key: cached when fresh, otherwise measured now (all stale devices at once)."""
    if not cfg.get("enabled", True):
        return {}
    ttl = float(cfg.get("cache_ttl_sec", 3600))
    out: dict[str, dict] = {}
    stale = []
    for m in meters:
        if m.method == "codecarbon":
            continue  # CodeCarbon's own estimates have no idle counterpart we could subtract honestly
        cached = read_cached(m.device_key, m.method, ttl)
        if cached:
            out[m.device_key] = cached
        else:
            stale.append(m)
    if stale:
        log.info("measuring idle baseline of %s for %.0f s", ", ".join(m.device_key for m in stale), cfg["duration_sec"])
        interval = cfg.get("sample_interval_ms", 100) / 1000.0
        fresh = measure_idle(stale, float(cfg["duration_sec"]), interval, sleep=sleep)
        for key, record in fresh.items():
            if record["power_w"] is not None:
                write_cache(record)
            out[key] = record
    return out
