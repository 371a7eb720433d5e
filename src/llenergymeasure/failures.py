"""Failed measurements: the record each failing job leaves, the campaign's ``failures.json``, and the pass that
aggregates what completed once a campaign has failures.

A failed measurement job fails in Snakemake's sense too, and writes no raw result: a rerun therefore retries
exactly the failed experiment x cycle pairs (their raw results are the missing outputs), locally as on Slurm. Its
downstream jobs (aggregation, summary, gap audit, report, campaign notification) cannot run in that invocation:
Snakemake never runs a job whose input failed, even with ``--keep-going`` (which the workflow profiles set, so that
every other measurement still runs). So the workflow's ``onerror`` handler runs them once more in a second,
local Snakemake invocation over the raw results that exist (:mod:`llenergymeasure.snakemake_internals`): its jobs
are real jobs, so Snakemake records what they were built from, and the next full run, whose input set differs, builds them
again. ``failures.json`` (written by every aggregation) lists each planned measurement without a raw result: its
experiment id, config name, cycle, the error the job recorded, and the job's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from .record.layout import Layout
from .results import SCHEMA_VERSION


def record_path(root: str | Path, experiment_id: str, cycle: int) -> Path:
    return Path(Layout(str(root)).failure_record(experiment_id, cycle))


def write_record(root: str | Path, experiment_id: str, config_name: str, cycle: int, error: str, log: str) -> None:
    """What a failing measurement job leaves behind for ``failures.json`` (replaced by the next attempt)."""
    from .paths import utc_now_iso
    from .results import write_text_atomic

    record = {
        "experiment_id": experiment_id,
        "config_name": config_name,
        "cycle": cycle,
        "error": error,
        "log": log,
        "host": socket.gethostname(),
        "failed_at": utc_now_iso(),
        "failed_at_epoch_s": time.time(),
    }
    write_text_atomic(record_path(root, experiment_id, cycle), json.dumps(record, indent=1))


def clear_record(root: str | Path, experiment_id: str, cycle: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(root, experiment_id, cycle).unlink()


def read_record(root: str | Path, experiment_id: str, cycle: int) -> dict | None:
    try:
        data = json.loads(record_path(root, experiment_id, cycle).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def report(
    root: str | Path, names: dict[str, str], cycles: int | dict[str, int], present: set[tuple[str, int]]
) -> dict:
    """``failures.json``: every planned measurement (``names`` x 1..``cycles``; ``cycles`` per experiment in a
    precision-targeted campaign, as far as its decisions have scheduled) that has no raw result."""
    failures = []
    planned = 0
    for exp_id, name in names.items():
        n = cycles.get(exp_id, 0) if isinstance(cycles, dict) else cycles
        planned += n
        for cycle in range(1, n + 1):
            if (exp_id, cycle) in present:
                continue
            rec = read_record(root, exp_id, cycle) or {}
            failures.append(
                {
                    "experiment_id": exp_id,
                    "config_name": name,
                    "cycle": cycle,
                    "error": rec.get("error")
                    or "no raw result and no error recorded: the job did not run to its end "
                    "(stopped, killed, or out of time or memory); see its log",
                    "log": rec.get("log") or Layout(str(root)).measure_log(exp_id, cycle),
                    "failed_at": rec.get("failed_at"),
                    "host": rec.get("host"),
                }
            )
    return {
        "schema_version": SCHEMA_VERSION,
        "planned_measurements": planned,
        "completed_measurements": planned - len(failures),
        "failed_measurements": len(failures),
        "failures": failures,
        "retry": "rerun the campaign: exactly these measurements run again" if failures else None,
    }


def failed_in_this_run(
    root: str | Path, names: dict[str, str], cycles: int, since_epoch_s: float
) -> list[tuple[str, int]]:
    """Planned measurements without a raw result whose failure was recorded after ``since_epoch_s``."""
    out = []
    for exp_id in names:
        for cycle in range(1, cycles + 1):
            rec = read_record(root, exp_id, cycle)
            if (
                rec
                and rec.get("failed_at_epoch_s", 0) >= since_epoch_s
                and not os.path.exists(Layout(str(root)).raw(exp_id, cycle))
            ):
                out.append((exp_id, cycle))
    return out
