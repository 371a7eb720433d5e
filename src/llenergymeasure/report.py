"""Plots and captions for ``snakemake --report``: efficiency with intervals and the Pareto front, energy per
cycle (drift), latency percentiles, the power/temperature timeline of one run, and the load line (J/request and p90
TTFT against the offered request rate, one line per configuration, for experiments under a rated serving load).

Every caption is written next to its plot from the campaign's own results, so it states the energy method of each
experiment, whether it is an estimate, the interval method, and the flags raised.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .record.layout import sidecar_of
from .serving import RATED, SUSTAINED_RATIO

#: the plots, each ``<name>.svg`` with its caption ``<name>.rst``, in the report's order (every one is written, so
#: the report rule can declare them: a plot with nothing to show says so in its text)
PLOTS = ("efficiency", "drift", "latency", "timeline", "load")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when maximising x (tokens/s) and minimising y (J/token)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 >= x and y2 <= y) and (x2 > x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _label(agg: dict) -> str:
    return agg["config_name"]


def plot_efficiency(aggs: list[dict], out: Path) -> dict:
    """J/output-token against output tokens/s with intervals; circles are measured energy, squares energy that
    includes estimates (the legend says so); the Pareto front is a dashed line through its points, or a ring
    around its only point."""
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7.5, 5))
    pts, used = [], []
    for agg in aggs:
        m = agg["metrics"]
        x, y = m["output_tokens_per_s"], m["j_per_output_token"]
        if x["mean"] is None or y["mean"] is None:
            continue
        xerr = [[x["mean"] - x["ci_low"]], [x["ci_high"] - x["mean"]]] if x["ci_low"] is not None else None
        yerr = [[y["mean"] - y["ci_low"]], [y["ci_high"] - y["mean"]]] if y["ci_low"] is not None else None
        marker = "s" if agg["includes_estimate"] else "o"
        ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=yerr, fmt=marker, capsize=3, label=_label(agg))
        if agg.get("precision"):  # precision-targeted campaign: the achieved precision beside the point
            ax.annotate(
                precision_label(agg["precision"]),
                (x["mean"], y["mean"]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=7,
            )
        pts.append((x["mean"], y["mean"]))
        used.append(agg)
    front = pareto_front(pts)
    handles, labels = ax.get_legend_handles_labels()
    if len(front) > 1:
        (line,) = ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1)
        handles.append(line)
        labels.append("Pareto front")
    elif front:
        (ring,) = ax.plot([pts[front[0]][0]], [pts[front[0]][1]], "o", ms=16, mfc="none", mec="k", lw=1)
        handles.append(ring)
        labels.append("Pareto front (one experiment)")
    kinds = {a["includes_estimate"] for a in used}
    for estimate, text in ((False, "energy measured"), (True, "energy includes estimates")):
        if estimate in kinds:
            handles.append(Line2D([], [], ls="none", marker="s" if estimate else "o", color="grey"))
            labels.append(f"{'square' if estimate else 'circle'}: {text}")
    ax.set_xlabel("output tokens per second (mean, CI)")
    ax.set_ylabel("J per output token, gross (mean, CI)")
    ax.set_title("Energy efficiency vs throughput")
    ax.grid(alpha=0.3)
    if used:
        ax.legend(handles, labels, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return {"pareto": [_label(used[i]) for i in front], "marker_kinds": sorted(kinds)}


def precision_label(p: dict) -> str:
    """The achieved precision of a point: ``±1.8% (5 cycles)``, then ``✓`` (target met) or ``✗ max`` (max_cycles
    reached first) or ``… incomplete``."""
    achieved = "±n/a" if p["achieved_relative_half_width"] is None else f"±{p['achieved_relative_half_width']:.1%}"
    mark = {"target_met": "✓", "max_cycles_reached": "✗ max", "incomplete": "… incomplete"}[p["status"]]
    return f"{achieved} ({p['cycles_run']} cycles) {mark}"


def _precision_text(aggs: list[dict]) -> str:
    """The precision target and what each experiment reached, for captions (empty without a target)."""
    targeted = [a for a in aggs if a.get("precision")]
    if not targeted:
        return ""
    from .precision import percent

    p0 = targeted[0]["precision"]
    lines = [
        f"Precision target: cycles continued until the {p0['confidence']:.0%} interval of the mean "
        f"{p0['metric']}, judged with the {p0['spread_bound_confidence']:.0%} upper bound of the spread, was within "
        f"±{percent(p0['target_relative_half_width'])} of it ({p0['min_cycles']} to {p0['max_cycles']} cycles per "
        "experiment; where it was met, every interval is built on that bound). Beside each point: the precision "
        "reached, the cycles run, and ✓ (target met) or ✗ max (max_cycles reached first, flagged "
        "precision_target_not_met).\n"
    ]
    for a in targeted:
        p = a["precision"]
        achieved = (
            "±n/a" if p["achieved_relative_half_width"] is None else f"±{percent(p['achieved_relative_half_width'])}"
        )
        state = {
            "target_met": "target met",
            "max_cycles_reached": "max_cycles reached before the target",
            "incomplete": "incomplete (cycles failed or were still to come)",
        }[p["status"]]
        lines.append(f"- **{a['config_name']}**: {p['cycles_run']} cycles, {achieved}: {state}")
    return "\n".join(lines)


def plot_drift(aggs: list[dict], out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    from datetime import datetime

    for agg in aggs:
        # each cycle at the time its window started: cycles measured apart (another run) stand apart
        when = [datetime.fromisoformat(c["window_start"].replace("Z", "+00:00")) for c in agg["per_cycle"]]
        energy = [c["energy_j"] for c in agg["per_cycle"]]
        if any(e is not None for e in energy):
            spans = "cycles_span_runs" in agg.get("flags", {})
            ax.plot(when, energy, "o--" if spans else "o-", label=_label(agg) + (" (several runs)" if spans else ""))
    ax.set_xlabel("window start (UTC)")
    ax.set_ylabel("window energy, gross (J)")
    ax.set_title("Energy per cycle (drift)")
    ax.grid(alpha=0.3)
    if aggs:
        ax.legend(fontsize=7)
        fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_latency(aggs: list[dict], out: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharey=False)
    names = [_label(a) for a in aggs]
    for ax, key, title in zip(axes, ("ttft_ms", "e2e_ms"), ("time to first token", "end-to-end latency"), strict=True):
        for q, style in (("p50", "o"), ("p90", "^"), ("p99", "v")):
            ys = [a["latency_pooled_ms"][key][q] for a in aggs]
            ax.plot(range(len(aggs)), [y if y is not None else float("nan") for y in ys], style, label=q)
        ax.set_xticks(range(len(aggs)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("ms (pooled over cycles)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _rated(agg: dict) -> bool:
    """Under a rated serving load (a result of a version without serving loads has no ``load``: offline)."""
    load = agg["config"].get("load") or {}
    return load.get("arrival", "offline") in RATED and agg["metrics"]["offered_rate_per_s"]["mean"] is not None


def configuration(agg: dict) -> str:
    """What makes experiments one line of the load line: the experiment's config without ``load.rate_per_s`` and
    ``load.seed`` (the rate is the line's x; the seed only redraws the same kind of schedule)."""
    cfg = copy.deepcopy(agg["config"])
    for key in ("rate_per_s", "seed"):
        (cfg.get("load") or {}).pop(key, None)
    return json.dumps(cfg, sort_keys=True)


def _line_label(agg: dict) -> str:
    """A configuration in words: backend, model, batch knob, arrival (``vllm tiny-llama max_num_seqs 8 poisson``)."""
    from .campaign import nominal_batch

    cfg = agg["config"]
    load = cfg["load"]
    size, _ = nominal_batch(cfg)
    knob = {"pytorch": "batch_size", "vllm": "max_num_seqs", "tensorrt": "max_batch_size"}.get(cfg["backend"], "batch")
    arrival = f"gamma({load['gamma_shape']:g})" if load["arrival"] == "gamma" else load["arrival"]
    return f"{cfg['backend']} {cfg['model_name']} {knob} {size} {arrival}"


def load_lines(aggs: list[dict]) -> list[tuple[str, list[dict]]]:
    """The load line's lines: experiments under a rated serving load grouped by :func:`configuration`, each line's
    points in rate order, labelled by :func:`_line_label` (with the first point's config_name where two lines
    would read the same). Other experiments (offline, closed loop, trace) are left out."""
    groups: dict[str, list[dict]] = {}
    for agg in aggs:
        if _rated(agg):
            groups.setdefault(configuration(agg), []).append(agg)
    lines = []
    for members in groups.values():
        members.sort(key=lambda a: (a["config"]["load"]["rate_per_s"], a["metrics"]["offered_rate_per_s"]["mean"]))
        lines.append((_line_label(members[0]), members))
    labels = [label for label, _ in lines]
    return [
        (f"{label} ({members[0]['config_name']})" if labels.count(label) > 1 else label, members)
        for label, members in lines
    ]


def not_sustained(agg: dict) -> bool:
    """Whether a cycle of the experiment fell short of its offered rate (flag ``load_not_sustained``)."""
    return bool(agg["flags"].get("load_not_sustained"))


def _mean_and_bar(metric: dict) -> tuple[float, tuple[float, float]]:
    """A metric's mean (nan when missing) and its interval as error-bar lengths below and above (0 without one)."""
    mean = metric["mean"]
    if mean is None:
        return float("nan"), (0.0, 0.0)
    if metric.get("ci_low") is None or metric.get("ci_high") is None:
        return mean, (0.0, 0.0)
    return mean, (mean - metric["ci_low"], metric["ci_high"] - mean)


def plot_load(aggs: list[dict], out: Path) -> dict:
    """The load line: J/request (left) and p90 TTFT (right) against the offered request rate, one line per
    configuration through its points in rate order, with the intervals of both axes; a hollow marker is a point
    whose load was not sustained. Without a rated serving load in the campaign the figure says so."""
    plt = _plt()
    from matplotlib.lines import Line2D

    lines = load_lines(aggs)
    info: dict = {"lines": {}, "not_sustained": []}
    if not lines:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        ax.text(
            0.5,
            0.5,
            "no experiment in this campaign has a serving load at a stated rate\n"
            "(load.arrival poisson, constant or gamma, with load.rate_per_s)",
            ha="center",
            va="center",
        )
        ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)
        return info
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    panels = (
        ("j_per_request", "J per request, gross (mean, CI)"),
        ("ttft_p90_ms", "p90 time to first token, ms (mean, CI)"),
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, members) in enumerate(lines):
        colour = colours[n % len(colours)]
        xs = [_mean_and_bar(a["metrics"]["offered_rate_per_s"]) for a in members]
        hollow = [not_sustained(a) for a in members]
        for ax, (metric, _) in zip(axes, panels, strict=True):
            ys = [_mean_and_bar(a["metrics"][metric]) for a in members]
            ax.errorbar(
                [x for x, _ in xs],
                [y for y, _ in ys],
                xerr=[[b[0] for _, b in xs], [b[1] for _, b in xs]],
                yerr=[[b[0] for _, b in ys], [b[1] for _, b in ys]],
                fmt="-o",
                color=colour,
                capsize=3,
                label=label,
            )
            if any(hollow):  # white inside: the load of that point was not sustained
                ax.plot(
                    [x for (x, _), h in zip(xs, hollow, strict=True) if h],
                    [y for (y, _), h in zip(ys, hollow, strict=True) if h],
                    "o",
                    mfc="white",
                    mec=colour,
                    ls="none",
                    zorder=3,  # above errorbar's line (2.1)
                )
        info["lines"][label] = [a["metrics"]["offered_rate_per_s"]["mean"] for a in members]
        info["not_sustained"] += [a["config_name"] for a, h in zip(members, hollow, strict=True) if h]
    for ax, (_, ylabel) in zip(axes, panels, strict=True):
        ax.set_xlabel("offered request rate, requests/s (mean, CI)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("Energy per request vs offered load")
    axes[1].set_title("p90 TTFT vs offered load")
    handles, labels = axes[0].get_legend_handles_labels()
    if info["not_sustained"]:
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="grey"))
        labels.append("hollow: load not sustained")
    axes[0].legend(handles, labels, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return info


def _load_text(aggs: list[dict], info: dict, ci: str) -> str:
    """The load line's caption: what it shows, how to read it, and its lines."""
    if not info["lines"]:
        return (
            "No experiment in this campaign has a serving load at a stated rate (load.arrival poisson, constant or "
            "gamma), so there is no load line. A grid axis over load.rate_per_s gives one (config/README.md, "
            "Serving load)."
        )
    left_out = sum(not _rated(a) for a in aggs)
    hollow = (
        "Hollow markers: experiments flagged load_not_sustained (in at least one cycle the achieved request rate "
        f"fell more than {1 - SUSTAINED_RATIO:.0%} below the offered rate, so the engine's queue grew): {', '.join(info['not_sustained'])}."
        if info["not_sustained"]
        else "Every point's load was sustained (no load_not_sustained flag)."
    )
    lines = "\n".join(
        f"- **{label}**: offered {', '.join(_num(r) for r in rates)} requests/s"
        for label, rates in info["lines"].items()
    )
    return (
        "Gross energy per request (left) and the 90th percentile of time to first token, counted from each "
        "request's planned arrival (right), against the offered request rate, one line per configuration "
        "(experiments that differ only in load.rate_per_s and load.seed), points joined in rate order. "
        f"Bars on both axes: {ci[11:]} "
        "How to read it: at a low rate the engine idles between requests and that idle energy is part of what each "
        "request costs, so J/request falls as the rate rises; where it levels off and p90 TTFT turns sharply upward, "
        f"the engine is saturated and requests queue. {hollow}"
        + (
            f" Left out: {left_out} experiment(s) without a rated serving load (offline, closed loop or trace)."
            if left_out
            else ""
        )
        + f"\n\nLines:\n\n{lines}"
    )


def chosen_run(raw_paths: list[str]) -> Path | None:
    """The first raw result (campaign order) whose timeline was saved."""
    for p in raw_paths:
        if Path(sidecar_of(p)).exists():
            return Path(p)
    return None


def plot_timeline(raw_paths: list[str], out: Path) -> dict:
    plt = _plt()
    run = chosen_run(raw_paths)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    info: dict = {"run": None}
    if run is None:
        ax.text(0.5, 0.5, "no saved timeline in this campaign\n(set timeline.save: true)", ha="center", va="center")
        ax.set_axis_off()
    else:
        side = json.loads(Path(sidecar_of(run)).read_text())
        raw = json.loads(run.read_text())
        t = side["t_s"]
        if side["gpus"]:
            for g in side["gpus"]:
                ax.plot(
                    t, [v if v is not None else float("nan") for v in g["power_w"]], label=f"{g['device']} power (W)"
                )
            ax2 = ax.twinx()
            for g in side["gpus"]:
                ax2.plot(
                    t,
                    [v if v is not None else float("nan") for v in g["temperature_c"]],
                    "r:",
                    label=f"{g['device']} temperature (°C)",
                )
            ax2.set_ylabel("°C")
            ax.set_ylabel("board power (W)")
        else:
            util = [v if v is not None else float("nan") for v in side["cpu_util_pct"]]
            ax.plot(t, util, label="CPU utilisation (%)")
            ax.set_ylabel("CPU utilisation (%) — no GPU power on this machine")
            # the whole 0-100 % scale: matplotlib would zoom a flat line to 95-105 %
            ax.set_ylim(0, max([100.0] + [v for v in util if v == v]) * 1.05)
            temps = [v for v in side["cpu_temperature_c"] if v is not None]
            if temps:
                ax2 = ax.twinx()
                ax2.plot(t, side["cpu_temperature_c"], "r:", label="CPU temperature (°C)")
        for b in raw["batches"]:
            ax.axvspan(b["start_s"], b["first_token_s"], color="orange", alpha=0.15, lw=0)
        ax.set_xlabel("seconds since the window started (shaded: prefill)")
        ax.set_title(f"Timeline: {raw['experiment_id']} cycle {raw['cycle']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        info = {"run": f"{raw['experiment_id']} cycle {raw['cycle']}", "phases": raw["energy"]["phases"]}
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return info


def _num(value, unit: str = "") -> str:
    """A number for a caption: 4 significant digits (a reader never needs 15)."""
    if value is None:
        return "n/a"
    return f"{value:.4g}{' ' + unit if unit else ''}"


def _phases_text(phases: dict | None) -> str:
    """The window's prefill/decode energy split in words."""
    if not phases:
        return ""
    if phases.get("method") == "unavailable":
        return f" Prefill/decode energy split: unavailable ({phases.get('reason', 'no reason recorded')})."
    parts = [
        f"{label} {_num(phases.get(key), 'J')}"
        for key, label in (("prefill_energy_j", "prefill"), ("decode_energy_j", "decode"), ("other_energy_j", "other"))
    ]
    return f" Energy split: {', '.join(parts)} (method: {phases['method']})."


def _methods_text(aggs: list[dict]) -> str:
    lines = []
    for a in aggs:
        est = " (includes estimates)" if a["includes_estimate"] else ""
        flags = ", ".join(f"{k} ×{v}" for k, v in a["flags"].items()) or "none"
        lines.append(
            f"- **{a['config_name']}** (``{a['experiment_id']}``): energy {a['energy_method']}{est}; "
            f"FLOPs {a['flops_method']}; {a['cycles']} cycles; flags: {flags}"
        )
    return "\n".join(lines)


def write_report_files(aggregated_paths: list[str], raw_paths: list[str], out_dir: str) -> dict:
    """All plots (SVG) and their captions (RST) into ``out_dir``."""
    from .results import AGGREGATED_SCHEMA, read_result

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    aggs = [read_result(p, AGGREGATED_SCHEMA) for p in aggregated_paths]
    eff = plot_efficiency(aggs, out / "efficiency.svg")
    plot_drift(aggs, out / "drift.svg")
    plot_latency(aggs, out / "latency.svg")
    tl = plot_timeline(raw_paths, out / "timeline.svg")
    load = plot_load(aggs, out / "load.svg")
    conf = aggs[0]["aggregation"]["confidence"] if aggs else 0.95
    methods = _methods_text(aggs)
    precision = _precision_text(aggs)
    ci = f"Intervals: {conf:.0%} Student-t intervals of the mean across cycles (sample std, ddof 1)."
    front = eff["pareto"]
    if len(front) > 1:
        pareto = (
            f"The dashed line is the Pareto front (no other experiment is both faster and cheaper): {', '.join(front)}."
        )
    elif front:
        pareto = (
            f"The Pareto front (no other experiment is both faster and cheaper) is one experiment, ringed: {front[0]}."
        )
    else:
        pareto = "No experiment has both a throughput and an energy figure, so there is no Pareto front."
    markers = {
        frozenset([False]): "Circles: measured energy.",
        frozenset([True]): "Squares: energy that includes estimates.",
        frozenset([False, True]): "Circles: measured energy; squares: energy that includes estimates.",
    }
    captions = {
        "efficiency": (
            "J per output token against output tokens per second, one point per experiment, with "
            f"{ci[11:]} {markers.get(frozenset(eff['marker_kinds']), '')} {pareto}\n\n"
            + (f"{precision}\n\n" if precision else "")
            + f"Methods and flags:\n\n{methods}"
        ),
        "drift": f"Gross window energy of every cycle, per experiment, at the time its window started: a trend over time means drift (thermal state, background load) rather than noise. Dashed lines join cycles measured in more than one campaign run, host or environment (flag cycles_span_runs): their gaps in time are real. {ci}\n\n{methods}",
        "latency": "Time to first token and end-to-end latency percentiles (p50, p90, p99), pooled over all requests of all cycles; request start is the submission of its batch; warm-up excluded; from per-step timestamps.",
        "timeline": (
            "Board power and temperature (GPU) or CPU utilisation (no GPU) during the measurement window of "
            f"{tl['run'] or 'no run (no timeline saved)'}, sampled at ≤ 10 Hz without touching the energy counter; "
            "shaded intervals are prefill." + _phases_text(tl.get("phases"))
        ),
        "load": _load_text(aggs, load, ci),
    }
    for name in PLOTS:
        (out / f"{name}.rst").write_text(captions[name] + "\n", encoding="utf-8")
    return {"pareto": eff["pareto"], "timeline_run": tl["run"]}
