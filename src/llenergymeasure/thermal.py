"""Thermal gaps between measurement windows: the host lock, the record of the last window, and the gap audit.

The gap is enforced inside the measurement job, right before its window (a separate job could be scheduled
anywhere). Every measurement on a host, whatever campaign (or ``lem run``) it belongs to, shares two small files in
the host's state folder: an exclusive lock held from idle baseline to window end, so that no two measurement
windows on a host overlap, and the end time of the last window. The gap before a window is ``execution.cycle_gap_s``
when the previous window belonged to another cycle, ``execution.config_gap_s`` otherwise, and the longer of the two
when it belonged to another campaign; a host's first window waits for nothing. Time already spent since the last
window (loading the model, for instance) counts towards the gap.

The host's state folder is ``<cache folder>/host`` (``$LLM_ENERGY_CACHE_DIR``, else ``~/.cache/llenergymeasure``: the
folder that also holds the idle baselines, which are host facts too); files are named after the host, so a cache
folder on a shared home directory serves every node of a cluster. A campaign is told apart by its own state folder
(``state_dir``: ``<results>/<campaign>/.state``).

After the campaign, :func:`thermal_audit` lists every window with the gap it asked for and the gap it got (the
``thermal_gaps`` rule's ``thermal_gaps.json``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path


def _host() -> str:
    return socket.gethostname()


def host_state_dir() -> Path:
    """Where this host's lock and last-window record live (see the module docstring)."""
    from .paths import cache_dir

    return cache_dir() / "host"


def _campaign_key(state_dir) -> str | None:
    return None if not state_dir else str(Path(state_dir).resolve())


@contextlib.contextmanager
def host_lock(state_dir: str | Path | None):
    """Exclusive lock of this host, held from idle baseline to window end; yields the seconds waited for it. Every
    measurement takes it, whatever its campaign (``state_dir``, which may be None for a lone measurement)."""
    import fcntl

    path = host_state_dir() / f"{_host()}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        t0 = time.monotonic()
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - t0
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _state_file() -> Path:
    return host_state_dir() / f"{_host()}.last_window.json"


def last_window(state_dir: str | Path | None = None) -> dict | None:
    """The last measurement window on this host (any campaign), or None."""
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def record_window(state_dir: str | Path | None, info: dict) -> None:
    """Record the window that just ended as this host's last one (with the campaign it belongs to)."""
    from .results import write_text_atomic

    write_text_atomic(_state_file(), json.dumps({**info, "campaign": _campaign_key(state_dir)}))


def required_gap(
    previous: dict | None, cycle: int, config_gap_s: float, cycle_gap_s: float, campaign: str | None = None
) -> tuple[float, str]:
    if previous is None:
        return 0.0, "first"
    if previous.get("campaign") != campaign:
        return float(max(config_gap_s, cycle_gap_s)), "other_campaign"
    if previous.get("cycle") != cycle:
        return float(cycle_gap_s), "cycle"
    return float(config_gap_s), "config"


def wait_gap(state_dir, cycle: int, config_gap_s: float, cycle_gap_s: float, sleep=time.sleep, now=time.time) -> dict:
    """Sleep what remains of the required gap since the previous window on this host; report what happened."""
    previous = last_window(state_dir)
    required, kind = required_gap(previous, cycle, config_gap_s, cycle_gap_s, _campaign_key(state_dir))
    since = None if previous is None else max(0.0, now() - previous["window_end_epoch_s"])
    remaining = 0.0 if since is None else max(0.0, required - since)
    if remaining > 0:
        sleep(remaining)
    return {
        "gap_kind": kind,
        "gap_required_s": required,
        "gap_waited_s": remaining,
        "since_previous_window_s": None if since is None else since + remaining,
        "previous_window": None
        if previous is None
        else {k: previous.get(k) for k in ("experiment_id", "cycle", "window_end")},
    }


# ------------------------------------------------------------------------------------------------ the gap audit

#: what the audit reads of a window's thermal record (the aggregation keeps these per cycle, so that the audit reads
#: one aggregated file per experiment rather than one raw result per cycle)
AUDITED_KEYS = (
    "gap_kind",
    "gap_required_s",
    "gap_waited_s",
    "since_previous_window_s",
    "temperature_start_c",
    "temperature_end_c",
)


def thermal_audit(aggregated_paths: list[str], output: str, tolerance_s: float = 0.5) -> dict:
    """Chronological list of every window with the gap it asked for and got; flags gaps shorter than asked for
    (possible when measurements ran in parallel) and overlapping windows on one host. Reads the per-cycle records
    of the aggregated results (one file per experiment, not one per cycle)."""
    from .results import AGGREGATED_SCHEMA, SCHEMA_VERSION, read_result, write_json_atomic

    windows = []
    for path in aggregated_paths:
        agg = read_result(path, AGGREGATED_SCHEMA)
        for c in agg["per_cycle"]:
            windows.append(
                {
                    "experiment_id": agg["experiment_id"],
                    "cycle": c["cycle"],
                    "window_start": c["window_start"],
                    "window_end": c["window_end"],
                    **c["thermal"],
                }
            )
    windows.sort(key=lambda w: w["window_start"])
    problems = []
    last_end: dict[str, str] = {}
    for w in windows:
        prev = last_end.get(w["host"])
        if prev is not None and w["window_start"] < prev:
            problems.append(
                {
                    "experiment_id": w["experiment_id"],
                    "cycle": w["cycle"],
                    "problem": "window overlaps the previous one on this host",
                }
            )
        since = w["since_previous_window_s"]
        if since is not None and since + tolerance_s < w["gap_required_s"]:
            problems.append(
                {
                    "experiment_id": w["experiment_id"],
                    "cycle": w["cycle"],
                    "problem": f"gap {since:.1f} s shorter than the {w['gap_required_s']} s asked for",
                }
            )
        last_end[w["host"]] = max(prev or "", w["window_end"])
    report = {"schema_version": SCHEMA_VERSION, "windows": windows, "problems": problems, "ok": not problems}
    write_json_atomic(output, report, durable=False)
    return report
