"""``lem``: the command-line companion for what Snakemake does not do.

    lem validate [CAMPAIGN]        expansion preview: experiments, dropped combinations, estimated duration
                                   (--verbose: each experiment's non-default values; an experiment file works too)
    lem results [CAMPAIGN]         the summary table in the terminal (--sort COLUMN, --desc, --columns a,b)
    lem compare A B [CAMPAIGN]     two experiments side by side, with intervals and a significance test
    lem datasets                   prompt sources: the shipped set and the dataset aliases
    lem doctor                     what this machine can measure and run
    lem run EXPERIMENT.yaml        one experiment without Snakemake (same as python -m llenergymeasure.run)

Running a campaign is Snakemake's job: ``snakemake --cores 1 [--configfile CAMPAIGN]``.
``--json`` (or ``LLM_ENERGY_JSON_OUTPUT=1``) prints machine-readable JSON instead of tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from .errors import ConfigError, did_you_mean, problem_lines
from .record.layout import Layout
from .record.metrics import COMPARE_METRICS

DEFAULT_CAMPAIGN = "config/campaign.yaml"
CAMPAIGN_HELP = f"the campaign file (default: {DEFAULT_CAMPAIGN}; lem runs from the repository root)"


def _json_wanted(args) -> bool:
    return bool(args.json) or os.environ.get("LLM_ENERGY_JSON_OUTPUT", "").lower() in ("1", "true", "yes")


def _table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(lines)


def _load(campaign: str):
    from .campaign import load_campaign, plan

    return plan(load_campaign(campaign, "."))


def _load_for_validation(path: str):
    """The plan of a campaign file, or of an experiment file (no campaign_name; model_name or config_name) taken as a
    one-experiment campaign; and what to say about the file first."""
    import re

    from .campaign import USER_CONFIG_FILE, USER_CONFIG_KEYS, load_campaign, plan, read_yaml, resolve_campaign

    data = read_yaml(path)
    if isinstance(data, dict) and data and "campaign_name" not in data and set(data) <= USER_CONFIG_KEYS | {"docker"}:
        raise ConfigError(
            f"file '{path}' holds per-machine preferences ({', '.join(data)}), not a campaign: they are read "
            f"from {USER_CONFIG_FILE} in the working directory, and apply to every campaign run there"
        )
    is_experiment = (
        isinstance(data, dict) and "campaign_name" not in data and ("model_name" in data or "config_name" in data)
    )
    if not is_experiment:
        return plan(load_campaign(path, ".")), []
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).strip("-._")[:64] or "experiment"
    source = f"configs[{Path(path).name}]"
    try:
        campaign = resolve_campaign({"campaign_name": name, "configs": [Path(path).name]}, Path(path).parent, ".")
        the_plan = plan(campaign)
    except ConfigError as exc:  # its problems as the file's own, as lem run names them
        raise ConfigError([p.replace(f"'{source}.", "'").replace(f"{source}: ", "") for p in exc.problems]).located(
            path
        ) from None
    said = [
        f"{path} is an experiment file (no campaign_name): checked as a one-experiment campaign. To measure it, "
        f"list it under configs: in a campaign file, or measure it once with lem run {path}"
    ]
    return the_plan, [
        *said,
        *(n.replace(f"'{source}.", "'").replace(f"{source} ", "the file ") for n in the_plan.expansion.notes),
    ]


def _params_lines(params: dict) -> list[str]:
    from .config import dotted_items, flow

    return [f"    {key}: {flow(value)}" for key, value in dotted_items(params)]


# --------------------------------------------------------------------------------------------------- validate


def estimate_duration(p) -> dict:
    """Estimated wall time of the measurements still missing: finished jobs' measured times where the campaign
    has any (per experiment, else their median), a labelled assumption where it has none; plus the gaps."""
    root = Path(p.results_root)
    known: dict[str, list[float]] = {}
    done = set()
    for path in p.layout.raw_files():
        try:  # a file that cannot say its experiment, cycle and job time counts as not measured
            r = json.loads(path.read_text())
            key, seconds = (r["experiment_id"], r["cycle"]), float(r["phases_s"]["job_total_s"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        known.setdefault(key[0], []).append(seconds)
        done.add(key)
    all_times = [t for ts in known.values() for t in ts]
    fallback = statistics.median(all_times) if all_times else 60.0
    basis = "median of this campaign's finished jobs" if all_times else "assumed 60 s per job (no finished job yet)"
    ex = p.campaign["execution"]

    def duration(order):
        todo = [(e, c) for e, c in order if (e, c) not in done]
        seconds = 0.0
        prev_cycle = None
        for exp_id, cycle in todo:
            own = known.get(exp_id)
            seconds += statistics.median(own) if own else fallback
            if prev_cycle is not None:
                seconds += ex["cycle_gap_s"] if cycle != prev_cycle else ex["config_gap_s"]
            prev_cycle = cycle
        return todo, seconds

    order, order_max = p.order, p.order
    if p.target:  # from the cycles the decisions taken so far have scheduled, to max_cycles where they go on
        from .precision import planned_windows

        order, order_max = planned_windows(root, sorted(p.priority, key=p.priority.get, reverse=True), p.target)
    todo, seconds = duration(order)
    out = {
        "jobs_total": len(order),
        "jobs_done": len(done & set(order)),
        "jobs_to_run": len(todo),
        "estimated_s": seconds,
        "basis": basis,
    }
    if p.target:
        todo_max, seconds_max = duration(order_max)
        out.update(jobs_total_max=len(order_max), jobs_to_run_max=len(todo_max), estimated_max_s=seconds_max)
    return out


def cmd_validate(args) -> int:
    from .aggregate import raw_results_since_aggregation
    from .campaign import current_form, nominal_batch
    from .prompts import check_sources

    p, said = _load_for_validation(args.campaign)
    notes = said + p.campaign.get("_notes", []) + (p.expansion.notes if not said else [])
    ids = [e.experiment_id for e in p.expansion.experiments]
    notes += raw_results_since_aggregation(p.results_root, ids)  # what the results on disk rest on
    if p.target:
        from .precision import edited_decisions

        notes += [
            f"{path} is not the decision its values and raw results give ({problem}): the next run moves it to "
            f"{p.layout.state_dir}/set_aside/ and takes it again"
            for path, problem in edited_decisions(p.results_root, ids, p.target)
        ]
    warnings = check_sources([e.config for e in p.expansion.experiments], network_optional=True)
    est = estimate_duration(p)
    exps = [
        {
            "experiment_id": e.experiment_id,
            "config_name": e.config_name,
            "model": e.config["model_name"],
            "batch_size": nominal_batch(e.config)[0],
            "fp_precision": e.config["fp_precision"],
            "source": e.source,
            **({"params": current_form(e.params)} if args.verbose else {}),
        }
        for e in p.expansion.experiments
    ]
    out = {
        "campaign_name": p.name,
        "results": p.results_root,
        "cycles": p.campaign["execution"]["cycles"],
        **({"precision_target": p.target.params()} if p.target else {}),
        "structure": p.campaign["execution"]["structure"],
        "experiments": exps,
        "dropped": [{"config_name": n, "reason": r} for n, r in p.expansion.dropped],
        "duplicates": [{"config_name": n, "same_as": i} for n, i in p.expansion.duplicates],
        "duration": est,
        "notes": notes,
        "warnings": warnings,
    }
    if _json_wanted(args):
        print(json.dumps(out, indent=1))
        return 0
    cycles = f"{p.target.min_cycles}-{p.target.max_cycles}" if p.target else out["cycles"]
    print(
        f"Campaign '{p.name}' is valid: {len(exps)} experiments x {cycles} cycles ({out['structure']}), results in {p.results_root}/"
    )
    print(_table(exps, ["experiment_id", "config_name", "model", "batch_size", "fp_precision"]))
    for line in notes:
        print(f"note: {line}")
    for line in warnings:
        print(f"warning: {line}")
    if args.verbose:
        print("Resolved experiments: each one's values that differ from the defaults (its id is derived from them)")
        for e in exps:
            print(f"  {e['experiment_id']}  {e['config_name']}  ({e['source']})")
            print("\n".join(_params_lines(e["params"])))
    for d in out["dropped"]:
        print(f"dropped {d['config_name']}: {d['reason']}")
    for d in out["duplicates"]:
        print(f"duplicate {d['config_name']}: measured once as {d['same_as']}")
    hours = est["estimated_s"] / 3600
    if p.target:
        print(f"Precision target: cycles continue {p.target.describe()}.")
        print(
            f"{est['jobs_to_run']} to {est['jobs_to_run_max']} measurements to run (of {est['jobs_total']} to "
            f"{est['jobs_total_max']}), about {est['estimated_s'] / 60:.0f} to {est['estimated_max_s'] / 60:.0f} min "
            f"({hours:.1f} to {est['estimated_max_s'] / 3600:.1f} h) including gaps; basis: {est['basis']}"
        )
        return 0
    print(
        f"{est['jobs_to_run']} of {est['jobs_total']} measurements to run, about {est['estimated_s'] / 60:.0f} min"
        f" ({hours:.1f} h) including gaps; basis: {est['basis']}"
    )
    return 0


# --------------------------------------------------------------------------------------------------- results

RESULT_COLUMNS = [
    "config_name",
    "batch_size",
    "fp_precision",
    "cycles",
    "energy_j_mean",
    "energy_j_ci_low",
    "energy_j_ci_high",
    "j_per_output_token_mean",
    "output_tokens_per_s_mean",
    "energy_method",
    "cv_flag",
    "flags",
]
#: the widest a flags cell of the results table grows before it shows a count of the codes left out
FLAGS_CELL_WIDTH = 48
LEGEND = (
    "energy_method: measured = a device's energy counter; estimated = a model (TDP x busy CPU time, CodeCarbon)\n"
    "flags: how many, then the codes (all of them: --columns experiment_id,flags); meanings: README.md, flag table"
)


def flags_cell(flags: str | list | None, width: int | None = FLAGS_CELL_WIDTH) -> str:
    """Flag codes in a table cell: ``-`` for none, else their number and the codes, comma-separated; given a
    ``width``, as many as fit in it followed by ``+N`` for the rest (``9: cold_start_in_window, cpu_shared, +7``)."""
    codes = [c for c in (flags.split(";") if isinstance(flags, str) else flags or []) if c]
    if not codes:
        return "-"
    cell = f"{len(codes)}: {codes[0]}"
    for i, code in enumerate(codes[1:], 1):
        left = len(codes) - i - 1
        more = f", +{left}" if left else ""
        if width is not None and len(cell) + 2 + len(code) + len(more) > width:
            return f"{cell}, +{len(codes) - i}"
        cell += f", {code}"
    return cell


def _shown(row: dict, compact: bool = True) -> dict:
    """A summary row as the results table shows it: the energy method says measured or estimated; the flags are
    counted and listed (``compact``: as many as fit in :data:`FLAGS_CELL_WIDTH`)."""
    from .aggregate import energy_label

    return {
        **row,
        "energy_method": energy_label(row.get("energy_method"), row.get("includes_estimate")),
        "flags": flags_cell(row.get("flags"), FLAGS_CELL_WIDTH if compact else None) if "flags" in row else None,
    }


def _summary_path(campaign: str) -> Path:
    p = _load(campaign)
    return Path(p.layout.summary)


def cmd_results(args) -> int:
    from .aggregate import SUMMARY_COLUMNS, raw_results_since_aggregation, read_summary

    path = Path(args.summary) if args.summary else _summary_path(args.campaign)
    if not args.summary and not path.exists():
        raise ConfigError(f"no summary at {path}: run the campaign first (snakemake --cores 1)")
    rows = read_summary(str(path))
    ids = [r["experiment_id"] for r in rows]
    for line in raw_results_since_aggregation(path.parent, ids):  # numbers below not made from these bytes
        print(f"Note: {line}", file=sys.stderr)
    if not args.summary:
        from .workflow import stale_analysis

        stale = stale_analysis(_load(args.campaign))
        if stale:  # the intervals below are at a level the campaign no longer states
            print(f"Note: {stale}: rerun the campaign to aggregate again", file=sys.stderr)
    known = list(rows[0]) if rows else SUMMARY_COLUMNS  # with a precision target, its columns too
    precision = [c for c in ("precision_achieved_rel_half_width", "precision_target_met") if c in known]
    # a campaign under serving loads: which load each row is, and what a request cost under it
    served = [c for c in ("load", "j_per_request_mean", "ttft_p90_ms_mean") if c in known]
    if not any(row.get("load") not in (None, "offline") for row in rows):
        served = []
    columns = (
        args.columns.split(",")
        if args.columns
        else RESULT_COLUMNS[:1] + served[:1] + RESULT_COLUMNS[1:] + served[1:] + precision
    )
    for c in columns + ([args.sort] if args.sort else []):
        if c not in known:
            raise ConfigError(f"column '{c}' is not in summary.csv{did_you_mean(c, known)}")
    if args.sort:
        present = [r for r in rows if r[args.sort] is not None]
        absent = [r for r in rows if r[args.sort] is None]
        rows = sorted(present, key=lambda r: r[args.sort], reverse=args.desc) + absent
    if _json_wanted(args):
        print(json.dumps(rows, indent=1))
    else:
        print(_table([_shown(r, compact=not args.columns) for r in rows], columns))
        if {"energy_method", "flags"} & set(columns):
            print(LEGEND)
    return 0


# --------------------------------------------------------------------------------------------------- compare


def welch(a: list[float], b: list[float], confidence: float = 0.95) -> dict:
    """Welch's t-test on per-cycle values: difference of means, its interval, and whether it is significant."""
    from .stats import t_quantile

    if len(a) < 2 or len(b) < 2:
        return {"difference": None, "significant": None, "reason": "fewer than 2 cycles on a side"}
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    diff = mb - ma
    # relative to A's magnitude, so the sign is the difference's (a net energy can be negative)
    relative = diff / abs(ma) if ma else None
    if se == 0:
        return {
            "difference": diff,
            "relative": relative,
            "significant": diff != 0,
            "t": None,
            "df": None,
            "ci_low": diff,
            "ci_high": diff,
        }
    df = (va + vb) ** 2 / ((va**2) / (len(a) - 1) + (vb**2) / (len(b) - 1))
    crit = t_quantile(confidence, df)  # Welch-Satterthwaite degrees of freedom, fractional
    t = diff / se
    return {
        "difference": diff,
        "relative": relative,
        "t": t,
        "df": df,
        "ci_low": diff - crit * se,
        "ci_high": diff + crit * se,
        "significant": abs(t) > crit,
        "confidence": confidence,
    }


def _id_tokens_match(ref: str, exp_id: str) -> bool:
    """``ref`` is a run of whole dash-separated parts of the id: ``bs1`` or ``fp32-bs8`` (never ``bs1`` for ``bs16``)."""
    want, have = ref.lower().split("-"), exp_id.split("-")
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def find_experiment(ref: str, ids: list[str], names: dict[str, str]) -> str:
    """The one experiment ``ref`` designates: its id, an id prefix, its config name, a run of whole parts of its id
    as printed (``bs8``, ``fp32-bs8``), or part of its config name, tried in that order. ConfigError listing the
    candidates when none or several match."""
    rules = (
        lambda e: e == ref,
        lambda e: e.startswith(ref),
        lambda e: names.get(e) == ref,
        lambda e: _id_tokens_match(ref, e),
        lambda e: ref in names.get(e, ""),
    )
    for rule in rules:
        matches = [e for e in ids if rule(e)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(f"{e} ({names.get(e, '?')})" for e in matches[:10]) + (
                " ..." if len(matches) > 10 else ""
            )
            raise ConfigError(
                f"experiment '{ref}' is ambiguous: {len(matches)} experiments match: {shown}; give more of the id"
            )
    listed = ", ".join(f"{e} ({names.get(e, '?')})" for e in ids[:10]) + (" ..." if len(ids) > 10 else "")
    raise ConfigError(f"experiment '{ref}': no aggregated result matches; the campaign has: {listed or 'none'}")


def _aggregated(root: Path, ref: str) -> dict:
    from .results import AGGREGATED_SCHEMA, read_result

    layout = Layout(str(root))
    files = layout.aggregated_files()
    if not files:
        raise ConfigError(
            f"no aggregated results in {layout.aggregated_dir}: run the campaign first (snakemake --cores 1)"
        )
    names = _config_names(root, files)
    return read_result(files[find_experiment(ref, list(files), names)], AGGREGATED_SCHEMA)


def _config_names(root: Path, files: dict[str, Path]) -> dict[str, str]:
    """Experiment id -> config name, from summary.csv when it is readable (one file), else from each aggregated file."""
    import csv

    try:
        with open(Layout(str(root)).summary, newline="", encoding="utf-8") as fh:
            names = {r["experiment_id"]: r["config_name"] for r in csv.DictReader(fh)}
        if set(files) <= set(names):
            return names
    except (OSError, ValueError, KeyError, csv.Error):
        pass
    names = {}
    for exp_id, path in files.items():
        try:
            names[exp_id] = str(json.loads(path.read_text(encoding="utf-8")).get("config_name", ""))
        except (OSError, ValueError, AttributeError):
            names[exp_id] = ""
    return names


def _compared(agg: dict) -> dict:
    from .aggregate import energy_label

    return {
        "experiment_id": agg["experiment_id"],
        "config_name": agg["config_name"],
        "energy_method": agg["energy_method"],
        "includes_estimate": agg["includes_estimate"],
        "energy": energy_label(agg["energy_method"], agg["includes_estimate"]),
        "flags": agg["flags"],
    }


def energy_warning(a: dict, b: dict) -> str | None:
    """One line when the energy of either aggregated result is not a measurement, or the two were obtained by
    different methods (an estimate against a measurement, or two different counters); None otherwise."""
    from .aggregate import energy_kind, energy_label

    kinds = [energy_kind(x["energy_method"], x["includes_estimate"]) for x in (a, b)]
    labels = [energy_label(x["energy_method"], x["includes_estimate"]) for x in (a, b)]
    said = f"A's energy is {labels[0]} and B's {labels[1]}"
    if "unavailable" in kinds:
        return f"{said}: no energy difference to tell" if kinds[0] != kinds[1] else "neither has an energy value"
    if kinds[0] != kinds[1]:
        return f"{said}: an estimate set against a measurement, the energy difference is not a measured one"
    if a["energy_method"] != b["energy_method"]:
        return f"{said}: different methods, compare the energy with care"
    if kinds[0] == "estimated":
        return f"the energy of both is {labels[0]}, not measured: the energy difference is one between estimates"
    return None


def cmd_compare(args) -> int:
    p = _load(args.campaign)
    root = Path(p.results_root)
    a, b = _aggregated(root, args.a), _aggregated(root, args.b)
    conf = p.campaign["analysis"]["confidence"]
    rows = []
    for m in COMPARE_METRICS:
        ma, mb = a["metrics"][m], b["metrics"][m]
        test = welch([v for v in ma["values"] if v is not None], [v for v in mb["values"] if v is not None], conf)
        rows.append(
            {
                "metric": m,
                "a_mean": ma["mean"],
                "a_ci": [ma["ci_low"], ma["ci_high"]],
                "b_mean": mb["mean"],
                "b_ci": [mb["ci_low"], mb["ci_high"]],
                **test,
            }
        )
    out = {
        "a": _compared(a),
        "b": _compared(b),
        "test": "Welch's t-test on per-cycle values",
        "metrics": rows,
    }
    warning = energy_warning(a, b)
    if warning:
        out["warning"] = warning
    if _json_wanted(args):
        print(json.dumps(out, indent=1))
        return 0
    for side, agg in (("A", a), ("B", b)):
        print(f"{side} = {agg['config_name']} ({agg['experiment_id']}, {agg['cycles']} cycles)")
        print(f"    energy {out[side.lower()]['energy']}; flags {flags_cell(list(agg['flags']), None)}")

    def span(m, ci):
        return "-" if m is None else (f"{m:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]" if ci[0] is not None else f"{m:.4g}")

    table = [
        {
            "metric": r["metric"],
            "A (mean [CI])": span(r["a_mean"], r["a_ci"]),
            "B (mean [CI])": span(r["b_mean"], r["b_ci"]),
            "B - A": r["difference"],
            "relative": None if r.get("relative") is None else f"{r['relative']:+.1%}",
            f"differs at {conf:.0%}": {True: "yes", False: "no", None: "n/a"}[r["significant"]],
        }
        for r in rows
    ]
    print(_table(table, list(table[0])))
    if "warning" in out:
        print("warning:", out["warning"])
    return 0


# --------------------------------------------------------------------------------------------------- datasets


def cmd_datasets(args) -> int:
    from .prompts import BUILTIN_PATH, DATASET_ALIASES

    try:
        import datasets  # noqa: F401

        have = True
    except ImportError:
        have = False
    with open(BUILTIN_PATH, encoding="utf-8") as fh:
        n_builtin = sum(1 for line in fh if line.strip())
    rows = [
        {
            "name": "builtin",
            "source": "shipped with the package",
            "column": "prompt",
            "split": "-",
            "subset": "-",
            "needs": f"nothing ({n_builtin} prompts)",
        }
    ]
    for alias, spec in DATASET_ALIASES.items():
        if alias == "ai_energy_score":
            continue
        rows.append(
            {
                "name": alias,
                "source": spec["path"],
                "column": spec["column"],
                "split": spec["split"],
                "subset": spec["subset"] or "-",
                "needs": "network + datasets" + ("" if have else " (datasets NOT installed)"),
            }
        )
    if _json_wanted(args):
        print(json.dumps(rows, indent=1))
    else:
        print(_table(rows, ["name", "source", "column", "split", "subset", "needs"]))
        print("Also: any Hugging Face dataset id, or a local .jsonl/.txt file or dataset folder (dataset.name).")
    return 0


# --------------------------------------------------------------------------------------------------- doctor


def _version_of(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def diagnose() -> dict:
    import importlib.util
    import platform

    from . import __version__
    from .energy.cpu import cpu_model_name, machine_threads, rapl_domains, read_cpuinfo, resolve_thread_power
    from .energy.nvml import driver_info, visible_gpus
    from .paths import cache_dir

    report: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "llenergymeasure": __version__}
    try:
        import torch

        report["torch"] = {
            "version": torch.__version__,
            "cuda_available": torch.cuda.is_available(),
            "cuda": torch.version.cuda,
        }
    except ImportError:
        report["torch"] = None
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("transformers", "snakemake", "codecarbon", "datasets", "jsonschema", "accelerate"):
        try:
            report[mod] = version(mod)
        except PackageNotFoundError:
            report[mod] = None
    report["engines"] = {name: importlib.util.find_spec(name) is not None for name in ("vllm", "tensorrt_llm")}
    gpus = visible_gpus()
    report["nvml"] = {
        "available": bool(gpus) or (importlib.util.find_spec("pynvml") is not None and bool(driver_info())),
        "driver": driver_info() or None,
        "gpus": [{k: g[k] for k in ("cuda_index", "nvml_index", "uuid", "name", "mig")} for g in gpus],
    }
    report["cpu"] = {
        "model": cpu_model_name(),
        "logical_cpus": os.cpu_count(),
        "rapl_domains": [d["name"] for d in rapl_domains()],
        "estimate": resolve_thread_power(None, None, read_cpuinfo(), machine_threads()).to_dict(),
    }
    report["energy_sources"] = {
        "gpu": "nvml_counter" if gpus else "none (no NVIDIA GPU visible)",
        "cpu": "rapl" if report["cpu"]["rapl_domains"] else "estimate_tdp (RAPL not readable here)",
    }
    runtime = _version_of(["apptainer", "--version"]) or _version_of(["singularity", "--version"])
    report["containers"] = {"runtime": runtime, "images": _campaign_images()}
    report["slurm"] = {
        "sbatch": shutil.which("sbatch"),
        "sinfo": _version_of(["sinfo", "--version"]),
        "executor_plugin": importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None,
    }
    report["hub"] = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    report["hub"]["HF_TOKEN"] = "set" if os.environ.get("HF_TOKEN") else None  # never print the token
    report["baseline_cache"] = str(cache_dir())
    return report


#: where ``--sdm apptainer`` keeps the images it pulled, relative to the working directory (Snakemake's default
#: ``--apptainer-prefix``)
SNAKEMAKE_IMAGE_CACHE = Path(".snakemake") / "singularity"


def pulled_image(uri: str, cache: str | Path = SNAKEMAKE_IMAGE_CACHE) -> Path:
    """The file Snakemake pulls a remote image to. This reads Snakemake's image-cache layout, which it offers no
    public call for: ``<cache>/<md5 of the URI>.simg`` (snakemake/deployment/singularity.py, ``Image.hash`` and
    ``Image.path``, in 9.27). It is the only place that does; a test compares it with Snakemake's own ``Image``."""
    import hashlib

    return Path(cache) / (hashlib.md5(uri.encode("utf-8"), usedforsecurity=False).hexdigest() + ".simg")


def _campaign_images() -> dict:
    """Each backend's image in the default campaign (or the schema's defaults) and whether Snakemake has pulled it
    here (:func:`pulled_image`; a local .sif counts when the file exists)."""
    from .config import load_schema

    images = {k: v["default"] for k, v in load_schema("campaign")["properties"]["containers"]["properties"].items()}
    try:
        from .campaign import read_yaml

        images.update((read_yaml(Path("config/campaign.yaml")) or {}).get("containers") or {})
    except Exception:  # noqa: BLE001 - no or unreadable default campaign: the schema's images
        pass
    out = {}
    for backend, uri in images.items():
        if "://" in uri:
            cached = pulled_image(uri).exists()
        else:
            cached = Path(uri).exists()
        out[backend] = {"uri": uri, "cached": cached}
    return out


def cmd_doctor(args) -> int:
    report = diagnose()
    if _json_wanted(args):
        print(json.dumps(report, indent=1))
        return 0

    def line(label, value):
        print(f"{label:<22} {value}")

    line("python", report["python"])
    line("llenergymeasure", report["llenergymeasure"])
    t = report["torch"]
    line(
        "torch",
        f"{t['version']} (CUDA {'available, ' + str(t['cuda']) if t['cuda_available'] else 'not available'})"
        if t
        else "NOT installed",
    )
    for mod in ("transformers", "snakemake", "codecarbon", "datasets", "jsonschema", "accelerate"):
        line(mod, report[mod] or "not installed")
    line("engines", ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in report["engines"].items()))
    gpus = report["nvml"]["gpus"]
    line("GPUs (NVML)", "; ".join(f"{g['name']} {g['uuid']}{' (MIG)' if g['mig'] else ''}" for g in gpus) or "none")
    if report["nvml"]["driver"]:
        line("driver", report["nvml"]["driver"])
    line("CPU", f"{report['cpu']['model']}, {report['cpu']['logical_cpus']} logical CPUs")
    line("energy: GPU", report["energy_sources"]["gpu"])
    line("energy: CPU", report["energy_sources"]["cpu"])
    e = report["cpu"]["estimate"]
    line(
        "CPU estimate",
        f"{e['watts_per_thread']:.2f} W per busy hardware thread, {e['full_load_power_w']:.1f} W with all "
        f"{e['threads_usable']} busy: "
        + (
            f"{e['part']}, TDP {e['tdp_w']:g} W ({e['tdp_source']}) over {e['part_threads']} threads "
            f"({e['part_threads_source']})"
            if e["tdp_w"] is not None and e["part_threads"] is not None
            else "part unknown, the parts table's median (flagged cpu_tdp_unknown; set energy.cpu_tdp_w and "
            "energy.cpu_part_threads)"
        ),
    )
    line("container runtime", report["containers"]["runtime"] or "none (apptainer/singularity not on PATH)")
    for backend, image in report["containers"]["images"].items():
        line(f"image ({backend})", f"{image['uri']} ({'pulled' if image['cached'] else 'not pulled yet'})")
    s = report["slurm"]
    line(
        "Slurm",
        f"{s['sinfo'] or 'sinfo not on PATH'}; executor plugin {'installed' if s['executor_plugin'] else 'not installed'}",
    )
    line("baseline cache", report["baseline_cache"])
    return 0


# --------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lem", description=__doc__.splitlines()[0], epilog=None)
    ap.add_argument("--json", action="store_true", help="JSON output (also LLM_ENERGY_JSON_OUTPUT=1)")
    sub = ap.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="expansion preview of a campaign (or of one experiment file)")
    v.add_argument("campaign", nargs="?", default=DEFAULT_CAMPAIGN, help=CAMPAIGN_HELP)
    v.add_argument("--verbose", "-v", action="store_true", help="each experiment's resolved non-default values")
    r = sub.add_parser("results", help="summary table of a campaign")
    r.add_argument("campaign", nargs="?", default=DEFAULT_CAMPAIGN, help=CAMPAIGN_HELP)
    r.add_argument("--summary", help="read this summary.csv instead of the campaign's")
    r.add_argument("--sort", help="sort by this column")
    r.add_argument("--desc", action="store_true", help="sort descending")
    r.add_argument("--columns", help="comma-separated columns to show")
    c = sub.add_parser("compare", help="two experiments side by side")
    c.add_argument("a", help="the first experiment: its experiment_id or config_name")
    c.add_argument("b", help="the second experiment, compared with the first")
    c.add_argument("campaign", nargs="?", default=DEFAULT_CAMPAIGN, help=CAMPAIGN_HELP)
    sub.add_parser("datasets", help="prompt sources")
    sub.add_parser("doctor", help="environment check")
    run = sub.add_parser("run", help="one experiment without Snakemake", add_help=False)
    run.add_argument("rest", nargs=argparse.REMAINDER)
    for p in (v, r, c, sub.choices["datasets"], sub.choices["doctor"]):
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    return ap


def _at_the_root() -> None:
    """Refuses, in one line, a command that would read the default campaign outside the repository root."""
    if Path(DEFAULT_CAMPAIGN).exists():
        return
    here = Path.cwd()
    root = next((d for d in here.parents if (d / DEFAULT_CAMPAIGN).is_file() and (d / "Snakefile").is_file()), None)
    where = f"cd {root}" if root else "cd to the folder of the Snakefile"
    raise ConfigError(
        f"no {DEFAULT_CAMPAIGN} in {here}: lem runs from the repository root ({where}), or name the campaign file"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from .run import main as run_main

        return run_main(argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {
        "validate": cmd_validate,
        "results": cmd_results,
        "compare": cmd_compare,
        "datasets": cmd_datasets,
        "doctor": cmd_doctor,
    }
    from .aggregate import AggregationError
    from .results import ResultValidationError

    try:
        if getattr(args, "campaign", None) == DEFAULT_CAMPAIGN and not getattr(args, "summary", None):
            _at_the_root()
        return handlers[args.command](args)
    except ConfigError as exc:
        for line in problem_lines(exc, f"lem {args.command}: "):
            print(line, file=sys.stderr)
        return 1
    except (ResultValidationError, AggregationError) as exc:
        print(f"lem {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path that is a folder, unreadable, ...: one line, no traceback
        where = f"'{exc.filename}': " if exc.filename else ""
        print(f"lem {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
