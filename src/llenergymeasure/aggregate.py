"""Aggregation across cycles (one file per experiment) and the campaign summary CSV."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

from .backends import rules as backend_rules
from .precision import status
from .record.layout import Layout, cycle_of, experiment_of
from .record.metrics import CV_METRICS, METRICS, REGISTRY
from .record.raw import RawResult
from .results import (
    AGGREGATED_SCHEMA,
    RAW_SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_SCHEMA,
    read_result_and_digest,
    sha256_of,
    validate_result,
    write_json_atomic,
    write_text_atomic,
)
from .stats import distribution, summarise
from .thermal import AUDITED_KEYS


class AggregationError(ValueError):
    pass


def measured_in(raws: list[dict]) -> list[dict]:
    """The separate settings an experiment's cycles were measured in: one entry per distinct campaign run (run_id),
    host, software versions and package version, with its cycles, in order of first window. One entry is the normal
    case; more mean the cycles pool periods measured apart (cycles added by a later run, another host or a changed
    environment), flagged ``cycles_span_runs``."""
    groups: dict[str, dict] = {}
    for r in raws:
        env = r["environment"]
        key = {
            "run_id": r.get("run_id"),
            "host": env.get("host"),
            "software": env.get("software"),
            "package_version": (r.get("provenance") or {}).get("package_version"),
        }
        entry = groups.setdefault(json.dumps(key, sort_keys=True), {**key, "cycles": [], "first_window_start": None})
        entry["cycles"].append(r["cycle"])
        start = r["timestamps"]["window_start"]
        if entry["first_window_start"] is None or start < entry["first_window_start"]:
            entry["first_window_start"] = start
    return sorted(groups.values(), key=lambda g: g["first_window_start"])


def aggregate_experiment(
    raw_paths: list[str],
    config_name: str,
    cv_threshold: float,
    confidence: float,
    planned_cycles: int | None = None,
    target=None,
    decisions: list[tuple[str, dict]] | None = None,
    previous: dict | None = None,
    left_out: list[dict] | None = None,
) -> dict:
    """Read and validate every cycle of one experiment and summarise them.

    Refuses inconsistent inputs instead of averaging them: every file must belong to the same experiment id and
    resolved config, carry the cycle its file name says, and use the same energy method. Fewer cycles than
    ``planned_cycles`` (some failed) are summarised as they are and flagged ``missing_cycles``. With a precision
    target (:class:`llenergymeasure.precision.Target`) the result also says how precise the target metric's mean
    is and whether the target was met (``precision``); an experiment stopped by ``max_cycles`` before meeting it is
    flagged ``precision_target_not_met``.

    Each cycle records the sha256 of the raw result's bytes it was read from (``per_cycle[].raw_sha256``). Those
    bytes are compared with what was recorded of the same measurement before: by ``decisions`` (path and record of
    each decision the cycles rest on, :func:`llenergymeasure.precision.decisions_used`) and by ``previous`` (this
    experiment's aggregated result being replaced, for the cycles whose window start is the same: a cycle measured
    again is another measurement). A cycle whose bytes differ is flagged ``raw_result_changed`` and keeps the digest
    recorded first (``raw_sha256_recorded``, and where: ``raw_sha256_recorded_in``), so the flag stays on every
    later aggregation until that cycle is measured again. A decision whose raw results are the bytes it recorded
    but which is not what the decision rule gives for them (edited by hand) is refused. ``left_out``: raw results
    of the experiment on disk that are not aggregated (cycle, reason), listed as ``cycles_not_aggregated`` and
    flagged so.
    """
    records, digests = [], {}
    for path in raw_paths:
        data, digest = read_result_and_digest(path, RAW_SCHEMA)
        rec = RawResult.from_dict(data)
        expected_cycle = cycle_of(path)
        if rec.cycle != expected_cycle:
            raise AggregationError(f"{path}: holds cycle {rec.cycle}, file name says {expected_cycle}")
        records.append(rec)
        digests[rec.cycle] = digest
    if not records:
        raise AggregationError("no raw results to aggregate")
    for rec, path in zip(records, raw_paths, strict=True):
        for key, get in (
            ("experiment_id", lambda x: x.experiment_id),
            ("config", lambda x: x.provenance.config_sha256),
            ("energy method", lambda x: x.energy_total.method),
        ):
            if get(rec) != get(records[0]):
                raise AggregationError(
                    f"{path}: {key} differs from {raw_paths[0]} ({get(rec)!r} vs {get(records[0])!r})"
                )
    cycles = [rec.cycle for rec in records]
    if len(set(cycles)) != len(cycles):
        raise AggregationError(f"cycle numbers repeat across {raw_paths}: {sorted(cycles)}")
    records.sort(key=lambda rec: rec.cycle)
    raws = [rec.document for rec in records]
    first, head = raws[0], records[0]
    cycles_sorted = [rec.cycle for rec in records]
    precision = None
    if target is not None:
        precision = status([METRICS[target.metric].read(r) for r in raws], cycles_sorted, target)
    # an experiment stopped because its target was met ran as many cycles as its spread allowed: every interval
    # of it is built on the spread's upper bound (precision.assess says why)
    bound = target.spread_bound_confidence if precision is not None and precision["target_met"] else None
    metrics = {m.name: summarise([m.read(r) for r in raws], confidence, bound) for m in REGISTRY}
    cvs = {m: metrics[m]["cv"] for m in CV_METRICS}
    cv_flag = any(v is not None and v > cv_threshold for v in cvs.values())
    flag_counts = Counter(code for rec in records for code in rec.flag_codes)
    if cv_flag:
        flag_counts["high_cv_across_cycles"] = 1
    if planned_cycles and len(raws) < planned_cycles:
        flag_counts["missing_cycles"] = planned_cycles - len(raws)
    if precision is not None and precision["max_cycles_reached"]:
        flag_counts["precision_target_not_met"] = 1
    below_zero = [m.name for m in REGISTRY if m.nonnegative and (metrics[m.name]["ci_low"] or 0) < 0]
    for name in below_zero:
        metrics[name]["ci_below_zero"] = True
    if below_zero:
        flag_counts["interval_below_zero"] = len(below_zero)
    sessions = measured_in(raws)
    if len(sessions) > 1:
        flag_counts["cycles_span_runs"] = len(sessions)
    changed = changed_raw_results(records, digests, decisions or [], previous)
    if changed:
        flag_counts["raw_result_changed"] = len(changed)
    if left_out:
        flag_counts["cycles_not_aggregated"] = len(left_out)
    pooled = {
        key: distribution([x for r in raws for x in r["latency"]["per_request"][key]]) for key in ("ttft_ms", "e2e_ms")
    }
    cfg = first["config"]
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment_id": head.experiment_id,
        "config_name": config_name,
        "campaign_name": head.campaign_name,
        "backend": head.backend,
        "backend_version": first["backend_version"],
        "model_name": head.model_name,
        "device": first["model"]["device"],
        "cycles": len(records),
        "cycle_numbers": cycles_sorted,
        "energy_method": head.energy_total.method,
        "flops_method": f"{first['flops']['method']} ({first['flops']['confidence']} confidence)",
        "includes_estimate": head.energy_total.includes_estimate,
        "aggregation": {
            "method": (
                "one value per cycle; mean, sample std (ddof 1), CV, Student-t interval of the mean"
                + ("; intervals built on the spread's upper confidence bound (precision target met)" if bound else "")
            ),
            "confidence": confidence,
            "num_processes": head.num_processes,
            "cv_threshold": cv_threshold,
            "cv_metrics": list(CV_METRICS),
        },
        "metrics": metrics,
        "latency_pooled_ms": pooled,
        "cv_flag": cv_flag,
        "flags": dict(sorted(flag_counts.items())),
        "per_cycle": [
            {
                "cycle": rec.cycle,
                "run_id": rec.document.get("run_id"),
                "window_start": rec.timestamps.window_start,
                "window_end": rec.timestamps.window_end,
                **{m.name: m.read(rec.document) for m in REGISTRY},
                "flags": rec.flag_codes,
                "thermal": {
                    "host": rec.document["environment"]["host"],
                    **{k: rec.document["thermal"].get(k) for k in AUDITED_KEYS},
                },
                "raw_sha256": digests[rec.cycle],
                **changed.get(rec.cycle, {}),
            }
            for rec in records
        ],
        **({"cycles_not_aggregated": list(left_out)} if left_out else {}),
        **({"measured_in": sessions} if len(sessions) > 1 else {}),
        "time_span": {
            "first_window_start": records[0].timestamps.window_start,
            "last_window_end": records[-1].timestamps.window_end,
        },
        "config": cfg,
        "environment": first["environment"],
        "provenance": first["provenance"],
        **({"precision": precision} if precision is not None else {}),
    }


def changed_raw_results(records: list, digests: dict, decisions: list[tuple[str, dict]], previous: dict | None):
    """Cycle -> ``raw_sha256_recorded`` and ``raw_sha256_recorded_in`` for every cycle whose raw result's bytes
    (``digests``) differ from those recorded of the same measurement: first by the aggregated result being replaced
    (``previous``: its own recorded digest where it flagged the cycle, so a change is never forgotten), then by each
    decision (path, record) that read the cycle. A decision that read the very bytes aggregated now, and is not the
    decision they give, is an :class:`AggregationError`."""
    from .precision import against_raws, recorded_digests

    by_cycle = {rec.cycle: rec for rec in records}
    refs: dict[int, list[tuple[str, str]]] = {}
    if previous:
        where = previous.get("path", "the previous aggregated result")
        for entry in previous.get("per_cycle") or []:
            if not isinstance(entry, dict):
                continue
            rec = by_cycle.get(entry.get("cycle"))
            if rec is None or entry.get("window_start") != rec.timestamps.window_start:
                continue  # not aggregated now, or measured again since
            if isinstance(entry.get("raw_sha256_recorded"), str):
                refs.setdefault(rec.cycle, []).append(
                    (entry["raw_sha256_recorded"], entry.get("raw_sha256_recorded_in") or where)
                )
            elif isinstance(entry.get("raw_sha256"), str):
                refs.setdefault(rec.cycle, []).append((entry["raw_sha256"], where))
    for path, record in decisions:
        n = record["after_cycle"]
        recorded = recorded_digests(record, n)
        for cycle, digest in enumerate(recorded or [], 1):
            refs.setdefault(cycle, []).append((digest, path))
        read = [digests.get(c) for c in range(1, n + 1)]
        if None in read:
            continue  # cycles missing
        problem = against_raws(record, [by_cycle[c].document for c in range(1, n + 1)], read)
        if problem:
            raise AggregationError(
                f"{path} is not the decision its raw results give ({problem}; edited by hand?): delete it and rerun, "
                "which takes it again from them"
            )
    changed = {}
    for cycle, found in sorted(refs.items()):
        for digest, where in found:
            if digest != digests[cycle]:
                changed[cycle] = {"raw_sha256_recorded": digest, "raw_sha256_recorded_in": where}
                break
    return changed


def raw_result_notes(agg: dict) -> list[str]:
    """One line per cycle of an aggregated result flagged ``raw_result_changed`` and per raw result it left out."""
    eid = agg["experiment_id"]
    lines = [
        f"raw_result_changed: {eid} cycle {entry['cycle']}: its raw result is not the bytes "
        f"{entry['raw_sha256_recorded_in']} recorded (sha256 {entry['raw_sha256_recorded'][:12]}..., now "
        f"{entry['raw_sha256'][:12]}...)"
        for entry in agg["per_cycle"]
        if "raw_sha256_recorded" in entry
    ]
    lines += [
        f"cycles_not_aggregated: {eid} cycle {entry['cycle']}: {entry['reason']}"
        for entry in agg.get("cycles_not_aggregated", [])
    ]
    return lines


def raw_results_since_aggregation(root: str | Path, experiment_ids: list[str] | None = None) -> list[str]:
    """What a reader of a campaign's aggregated results must know about the raw results they were made from, one
    line each: a raw result whose bytes are no longer those aggregated (its sha256 differs from the one recorded,
    or it is gone), and a cycle the aggregation flagged ``raw_result_changed``. Aggregated results of a version
    that recorded no digests, and files that cannot be read, say nothing."""
    layout = Layout(str(root))
    files = layout.aggregated_files()
    lines = []
    for eid in experiment_ids if experiment_ids is not None else list(files):
        path = files.get(eid)
        if path is None:
            continue
        try:
            per_cycle = json.loads(path.read_text(encoding="utf-8"))["per_cycle"]
            entries = [(int(e["cycle"]), e) for e in per_cycle if isinstance(e.get("raw_sha256"), str)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        for cycle, entry in entries:
            raw = layout.raw(eid, cycle)
            now = sha256_of(raw)
            if now is None:
                lines.append(f"{raw} was aggregated in {path} and is gone (a rerun measures that cycle again)")
            elif now != entry["raw_sha256"]:
                lines.append(
                    f"{raw} is not the bytes aggregated in {path} (sha256 {entry['raw_sha256'][:12]}..., now "
                    f"{now[:12]}...): changed since; a rerun aggregates it again, flagged raw_result_changed"
                )
            if isinstance(entry.get("raw_sha256_recorded"), str):
                lines.append(
                    f"{eid} cycle {cycle} is flagged raw_result_changed: {raw} is not the bytes "
                    f"{entry.get('raw_sha256_recorded_in')} recorded (sha256 {entry['raw_sha256_recorded'][:12]}...)"
                )
    return lines


def previous_aggregated(path: str | Path) -> dict | None:
    """The aggregated result about to be replaced, as plain JSON with its ``path`` (None when there is none or it
    cannot be read: then only the decisions say what was recorded)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {"path": str(path), "per_cycle": data.get("per_cycle")} if isinstance(data, dict) else None


def write_aggregated_all(
    raw_paths: dict[str, list[str]],
    names: dict[str, str],
    out_dir: str,
    summary: str,
    cv_threshold: float,
    confidence: float,
    planned_cycles: int | dict[str, int] | None = None,
    target=None,
    decisions: dict[str, list[tuple[str, dict]]] | None = None,
    left_out: dict[str, list[dict]] | None = None,
    said: list[str] | None = None,
) -> list[dict]:
    """Every experiment of a campaign in one pass: ``<out_dir>/<experiment_id>.json`` each, then the summary CSV
    (rows in ``raw_paths`` order). One job for the whole campaign keeps big campaigns fast: the work is a few
    milliseconds per experiment, a job per experiment would cost an interpreter start each.

    Every raw result is read and checked before any derived file is replaced (the new per-experiment files are
    written to a staging folder beside ``out_dir`` first), so that a bad one, named in the error, leaves the previous
    derived files as they were. Files of experiments that left the campaign are removed last. Each experiment's
    raw results are compared with what its ``decisions`` and its aggregated result being replaced recorded of them
    (:func:`aggregate_experiment`); ``left_out`` lists its raw results on disk that are not aggregated. A line for
    each changed raw result and each one left out is appended to ``said``."""
    import shutil
    import tempfile

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = []
        for exp_id, paths in raw_paths.items():
            planned = planned_cycles.get(exp_id) if isinstance(planned_cycles, dict) else planned_cycles
            agg = aggregate_experiment(
                paths,
                names.get(exp_id, exp_id),
                cv_threshold,
                confidence,
                planned,
                target,
                (decisions or {}).get(exp_id),
                previous_aggregated(out / f"{exp_id}.json"),
                (left_out or {}).get(exp_id),
            )
            rows.append(summary_row(agg))
            if said is not None:
                said.extend(raw_result_notes(agg))
            write_json_atomic(staging / f"{exp_id}.json", agg, AGGREGATED_SCHEMA, durable=False)
        out.mkdir(exist_ok=True)
        for path in staging.iterdir():
            os.replace(path, out / path.name)
        write_summary_rows(rows, summary)
        for stale in out.glob("*.json"):
            if stale.stem not in raw_paths:
                stale.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def group_by_experiment(raw_paths: list[str]) -> dict[str, list[str]]:
    """``.../raw/<experiment_id>/cycle_<n>.json`` paths grouped by experiment id, in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for p in raw_paths:
        grouped.setdefault(experiment_of(p), []).append(str(p))
    return grouped


# ------------------------------------------------------------------------------------------------ summary CSV

#: identity columns before the metrics, and after them
SUMMARY_HEAD = [
    "experiment_id",
    "config_name",
    "backend",
    "model",
    "batch_size",
    "batching_strategy",
    "fp_precision",
    "device",
    "load",
    "cycles",
]
SUMMARY_TAIL = ["energy_method", "includes_estimate", "flops_method", "cv_flag", "flags"]
#: percentiles of every request's latency pooled across cycles (not a per-cycle metric): column -> (key, statistic),
#: placed after the metric named by POOLED_AFTER
POOLED_COLUMNS = {
    "ttft_p50_ms": ("ttft_ms", "p50"),
    "ttft_p99_ms": ("ttft_ms", "p99"),
    "e2e_p50_ms": ("e2e_ms", "p50"),
    "e2e_p99_ms": ("e2e_ms", "p99"),
}
POOLED_AFTER = "e2e_latency_mean_ms"


def _metric_columns() -> list[str]:
    out = []
    for m in REGISTRY:
        out += m.columns()
        if m.name == POOLED_AFTER:
            out += list(POOLED_COLUMNS)
    return out


#: the summary's columns: identity, ``<metric>_<statistic>`` of every metric the registry puts in the summary
#: (:mod:`llenergymeasure.record.metrics`), the pooled latency percentiles, then how the numbers were obtained
SUMMARY_COLUMNS = SUMMARY_HEAD + _metric_columns() + SUMMARY_TAIL


#: columns of a precision-targeted campaign's summary (after SUMMARY_COLUMNS), from the aggregated ``precision``
PRECISION_COLUMNS = {
    "precision_metric": "metric",
    "precision_target_rel_half_width": "target_relative_half_width",
    "precision_achieved_rel_half_width": "achieved_relative_half_width",
    "precision_judged_rel_half_width": "judged_relative_half_width",
    "precision_target_met": "target_met",
    "precision_max_cycles_reached": "max_cycles_reached",
    "precision_status": "status",
}


def load_label(load: dict | None) -> str:
    """The serving load of an experiment in a few characters: ``offline``, ``poisson 2/s``, ``gamma(0.5) 2/s``,
    ``closed 4``, ``trace <file>`` (a result of a version without serving loads is offline)."""
    if not load or load.get("arrival", "offline") == "offline":
        return "offline"
    arrival = load["arrival"]
    if arrival == "closed":
        return f"closed {load['concurrency']}"
    if arrival == "trace":
        return f"trace {os.path.basename(load['trace'])}"
    shape = f"({load['gamma_shape']:g})" if arrival == "gamma" else ""
    return f"{arrival}{shape} {load['rate_per_s']:g}/s"


def energy_kind(method: str | None, includes_estimate: bool | None) -> str:
    """How an experiment's energy was obtained, in one word: ``measured``, ``estimated`` (its total includes an
    estimate: a TDP share of busy CPU time, CodeCarbon, a share of machine energy) or ``unavailable``."""
    if not method or method == "unavailable":
        return "unavailable"
    return "estimated" if includes_estimate else "measured"


def energy_label(method: str | None, includes_estimate: bool | None) -> str:
    """The energy method as shown beside an energy value: ``measured (gpu:nvml_counter)``,
    ``estimated (cpu:estimate_tdp)``, ``unavailable``."""
    kind = energy_kind(method, includes_estimate)
    return kind if kind == "unavailable" else f"{kind} ({method})"


def campaign_energy(rows: list[dict]) -> str:
    """One line on how the energy of a campaign's summary rows was obtained: ``measured``, ``estimated`` or
    ``mixed``, with the methods (for the end of a run)."""
    if not rows:
        return "Energy: no experiment aggregated"
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(energy_kind(row["energy_method"], row["includes_estimate"]), []).append(row)

    def methods(kind_rows):
        return ", ".join(dict.fromkeys(r["energy_method"] for r in kind_rows if r["energy_method"] != "unavailable"))

    if len(by_kind) == 1:
        kind, kind_rows = next(iter(by_kind.items()))
        how = f" ({methods(kind_rows)})" if kind != "unavailable" else ""
        note = ": a model, not a measurement" if kind == "estimated" else ""
        return f"Energy: {kind} in all {len(rows)} experiment(s){how}{note}"
    parts = "; ".join(
        f"{len(kind_rows)} {kind}" + (f" ({methods(kind_rows)})" if kind != "unavailable" else "")
        for kind, kind_rows in sorted(by_kind.items())
    )
    return f"Energy: mixed: {parts}; lem results shows which experiment is which"


def summary_row(agg: dict) -> dict:
    """One CSV row: identity columns, then ``<metric>_<stat>`` columns read from the aggregated metrics."""
    cfg = agg["config"]
    batch_size, strategy = backend_rules(cfg["backend"]).nominal_batch(cfg)
    pooled = agg["latency_pooled_ms"]
    row = {
        "experiment_id": agg["experiment_id"],
        "config_name": agg["config_name"],
        "backend": agg["backend"],
        "model": agg["model_name"],
        "batch_size": batch_size,
        "batching_strategy": strategy,
        "fp_precision": cfg["fp_precision"],
        "device": agg["device"],
        "load": load_label(cfg.get("load")),
        "cycles": agg["cycles"],
        **{column: pooled[key][stat] for column, (key, stat) in POOLED_COLUMNS.items()},
        "energy_method": agg["energy_method"],
        "includes_estimate": agg["includes_estimate"],
        "cv_flag": agg["cv_flag"],
        "flags": ";".join(agg["flags"]),
        "flops_method": agg["flops_method"],
    }
    for m in REGISTRY:
        for stat in m.summary:
            row[f"{m.name}_{stat}"] = agg["metrics"][m.name][stat]
    missing = [c for c in SUMMARY_COLUMNS if c not in row]
    if missing:
        raise AggregationError(f"summary columns without a source: {missing}")
    if agg.get("precision") is not None:
        row.update({column: agg["precision"][key] for column, key in PRECISION_COLUMNS.items()})
    return row


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_summary_rows(rows: list[dict], output: str) -> None:
    for row in rows:
        validate_result(row, SUMMARY_SCHEMA, f"{output} row {row['experiment_id']}")
    columns = SUMMARY_COLUMNS + (
        list(PRECISION_COLUMNS) if any(PRECISION_COLUMNS.keys() & row.keys() for row in rows) else []
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    write_text_atomic(output, buf.getvalue(), durable=False)


def read_summary(path: str) -> list[dict]:
    """Parse summary.csv back into typed rows (types from the summary-row schema) and validate each; a file that is
    not such a summary (missing, a folder, binary, other columns, a truncated row) is a one-line
    :class:`AggregationError` naming it."""
    from .config import load_schema

    props = load_schema(SUMMARY_SCHEMA)["properties"]
    what = f"{path} is not a summary.csv of this tool"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise AggregationError(f"{path} does not exist: run the campaign first (snakemake --cores 1)") from None
    except OSError as exc:
        raise AggregationError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if b"\x00" in data[:8192]:
        raise AggregationError(f"{what} (a binary file)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AggregationError(f"{what} (not UTF-8 text)") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        unknown = [c for c in header if c not in props]
        if not header or unknown:
            raise AggregationError(f"{what} (unknown column {unknown[0]!r})" if unknown else f"{what} (it is empty)")
        rows = []
        for n, raw in enumerate(reader, 2):
            if None in raw or any(v is None for v in raw.values()):
                raise AggregationError(
                    f"{what}: line {n} has {'more' if None in raw else 'fewer'} fields than the header (truncated or damaged?)"
                )
            row = {}
            for key, text_value in raw.items():
                types = props[key]["type"]
                types = types if isinstance(types, list) else [types]
                try:
                    if text_value == "":
                        row[key] = None if "null" in types else text_value
                    elif "boolean" in types:
                        row[key] = text_value == "true"
                    elif "integer" in types:
                        row[key] = int(text_value)
                    elif "number" in types:
                        row[key] = float(text_value)
                    else:
                        row[key] = text_value
                except ValueError:
                    raise AggregationError(f"{what}: line {n}, column {key} = {text_value!r} is not a number") from None
            validate_result(row, SUMMARY_SCHEMA, f"{path} line {n} ({row.get('experiment_id')})")
            rows.append(row)
    except csv.Error as exc:
        raise AggregationError(f"{what} ({exc})") from None
    return rows
