"""Plots and captions for ``snakemake --report``: efficiency with intervals and the Pareto front, energy per
cycle (drift), latency percentiles, and the power/temperature timeline of one run.

Every caption is written next to its plot from the campaign's own results, so it states the energy method of each
experiment, whether it is an estimate, the interval method, and the flags raised.
"""

from __future__ import annotations

import json
from pathlib import Path

from .record.layout import sidecar_of

#: the plots, each ``<name>.svg`` with its caption ``<name>.rst``, in the report's order
PLOTS = ("efficiency", "drift", "latency", "timeline")


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
        f"{p0['metric']} was within ±{percent(p0['target_relative_half_width'])} of it ({p0['min_cycles']} to "
        f"{p0['max_cycles']} cycles per experiment). Beside each point: the precision reached, the cycles run, "
        "and ✓ (target met) or ✗ max (max_cycles reached first, flagged precision_target_not_met).\n"
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
    for agg in aggs:
        cycles = [c["cycle"] for c in agg["per_cycle"]]
        energy = [c["energy_j"] for c in agg["per_cycle"]]
        if any(e is not None for e in energy):
            ax.plot(cycles, energy, "o-", label=_label(agg))
    ax.set_xlabel("cycle")
    ax.set_ylabel("window energy, gross (J)")
    ax.set_title("Energy per cycle (drift)")
    ax.grid(alpha=0.3)
    if aggs:
        ax.legend(fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
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
        "drift": f"Gross window energy of every cycle, per experiment: a trend across cycles means drift (thermal state, background load) rather than noise. {ci}\n\n{methods}",
        "latency": "Time to first token and end-to-end latency percentiles (p50, p90, p99), pooled over all requests of all cycles; request start is the submission of its batch; warm-up excluded; from per-step timestamps.",
        "timeline": (
            "Board power and temperature (GPU) or CPU utilisation (no GPU) during the measurement window of "
            f"{tl['run'] or 'no run (no timeline saved)'}, sampled at ≤ 10 Hz without touching the energy counter; "
            "shaded intervals are prefill." + _phases_text(tl.get("phases"))
        ),
    }
    for name in PLOTS:
        (out / f"{name}.rst").write_text(captions[name] + "\n", encoding="utf-8")
    return {"pareto": eff["pareto"], "timeline_run": tl["run"]}
