"""Validity checks of one measurement: each rule looks at one aspect of a finished window and says what is wrong.

A rule returns ``(code, message)`` pairs (none when the window passes). The codes become the raw result's
``flags`` and travel into the aggregated results and the summary; a flag never changes a number, it says how far
to trust it.
"""

from __future__ import annotations

import statistics

from .energy.accounting import ESTIMATES
from .record.flags import BASELINE_FLAGS, FLAGS

Finding = tuple[str, str]

#: Mean SM utilisation (percent) below which a GPU spent most of the window waiting for the host.
HOST_BOUND_SM_UTIL_PCT = 30.0


def add(flags: list[dict], code: str, message: str, known=FLAGS) -> None:
    """Append a flag unless one with that code is already there. ``known``: the flags that may be raised (the
    registry, :mod:`llenergymeasure.record.flags`, and the measuring backend's own); a code outside it is a
    programming error (ValueError), so every flag a result can carry is declared with its meaning."""
    if code not in known:
        raise ValueError(f"flag {code!r} is not declared in the flag registry (llenergymeasure.record.flags)")
    if not any(f["code"] == code for f in flags):
        flags.append({"code": code, "message": message})


def short_window(window_s: float, min_window_s: float) -> list[Finding]:
    if window_s < min_window_s:
        return [("short_window", f"window {window_s:.3f} s is shorter than energy.min_window_s = {min_window_s} s")]
    return []


def warmup_not_converged(warmup: dict, window_s: float | None = None) -> list[Finding]:
    """The warm-up's CV loop ran out of runs: say why, from its latencies (still getting faster, or only noisy),
    and what to change; and when it took longer than the window it was for."""
    if not (warmup["enabled"] and warmup["converged"] is False):
        return []
    cv = warmup["final_cv"]
    message = (
        f"latency CV {'n/a' if cv is None else f'{cv:.3f}'} still above {warmup['target_cv']} after "
        f"{warmup['iterations_completed']} runs"
    )
    runs = warmup.get("latencies_ms") or []
    third = len(runs) // 3
    if third >= 2:
        first, last = statistics.fmean(runs[:third]), statistics.fmean(runs[-third:])
        if last < first * (1 - warmup["target_cv"]):
            message += (
                f": still getting faster (the last runs {1 - last / first:.0%} quicker than the first), raise "
                "warmup.max_prompts"
            )
        else:
            message += (
                ": not getting faster, only noisy (a busy host, or latencies that vary by nature): quieten the host, "
                "or raise warmup.cv_threshold or warmup.window_size"
            )
    spent = warmup.get("cv_loop_s")
    if spent is not None and window_s and spent > window_s:
        message += f"; it took {spent:.1f} s, longer than the {window_s:.1f} s window it was for"
    return [("warmup_not_converged", message)]


def no_output_tokens(output_tokens: int) -> list[Finding]:
    return [("no_output_tokens", "no token was generated")] if output_tokens == 0 else []


def output_length_not_reached(
    min_output_tokens: int, max_output_tokens: int, at_max: int, requests: int
) -> list[Finding]:
    if min_output_tokens >= max_output_tokens and at_max < requests:
        return [("output_length_not_reached", "some requests ended before the forced output length")]
    return []


def power_below_idle(mean_power_w: float | None, idle_powers_w: list[float | None]) -> list[Finding]:
    if mean_power_w is None or not idle_powers_w or any(p is None for p in idle_powers_w):
        return []
    idle = sum(idle_powers_w)
    if mean_power_w < idle:
        return [("power_below_idle", f"mean power {mean_power_w:.2f} W below idle {idle:.2f} W")]
    return []


def power_above_limit(meters: list, mean_power_w: float | None) -> list[Finding]:
    out = []
    for m in meters:
        limit = m.power_limit_w()
        if limit and mean_power_w is not None and mean_power_w > limit * 1.05:
            out.append(("power_above_limit", f"{m.device}: mean power above the enforced limit {limit:.0f} W"))
    return out


def load_not_sustained(load: dict | None) -> list[Finding]:
    """Under a serving load: the engine completed requests more than 5 % slower than the schedule offered them, so
    its queue grew through the window and the window measured a backlog, not that load."""
    from .serving import not_sustained

    found = not_sustained(load)
    if not found:
        return []
    achieved, offered, short = found
    return [
        (
            "load_not_sustained",
            f"achieved {achieved:.3g} requests/s against {offered:.3g} offered ({short:.0%} short): the engine "
            "could not keep up and requests queued; lower load.rate_per_s to measure a load it sustains",
        )
    ]


def cold_start_in_window(steady: dict) -> list[Finding]:
    """What the steady-state check saw: the cold parts (where in the window, how much slower than the steady pace),
    the pace and noise it judged them against, and the one-time cost they add."""
    if not steady.get("cold_start_in_window"):
        return []
    parts = ", ".join(
        f"{p['kind']} at {p['at_s']:.2f} s {p['pace_ratio']:.2f}x" for p in steady.get("seen", []) if p["pace_ratio"]
    )
    count = steady["cold_items"] + steady.get("cold_prefill_items", 0)
    noise = steady.get("noise_step_s")
    pace = f"steady decode pace {steady['reference_step_s'] * 1000:.2f} ms/step" + (
        f" ± {noise * 1000:.2f} ms" if noise is not None else ""
    )
    others = steady.get("slow_items_not_cold", 0)
    busy = f"; {others} other slow part(s) look like a busy host, not a cold start" if others else ""
    return [
        (
            "cold_start_in_window",
            f"{count} early part(s) of the window ran slower than its {pace}: {parts}; one-time cost "
            f"~{steady['cold_excess_share']:.1%} of the window (warm-up too short, or off){busy}",
        )
    ]


def energy_cross_check_mismatch(cross: dict) -> list[Finding]:
    ratio = cross.get("ratio")
    if cross.get("judged") and ratio is not None and abs(ratio - 1) > cross["tolerance"]:
        return [
            (
                "energy_cross_check_mismatch",
                f"GPU energy from integrated board power ({cross['method']}) is "
                f"{ratio:.3f}x the counter's, beyond ±{cross['tolerance']:.0%}",
            )
        ]
    return []


def host_bound(timeline_summary: dict | None) -> list[Finding]:
    """A GPU whose SM utilisation stayed low spent the window waiting for the host: its energy follows the host's
    speed (Python, the CPU, other load), not the GPU's."""
    if not timeline_summary:
        return []
    out = []
    for g in timeline_summary["gpus"]:
        util = g["sm_util_pct"]["mean"]
        if util is not None and util < HOST_BOUND_SM_UTIL_PCT:
            out.append(
                (
                    "host_bound",
                    f"{g['device']}: mean SM utilisation {util:.0f} % < {HOST_BOUND_SM_UTIL_PCT:.0f} % "
                    "during the window: the host, not the GPU, set the pace",
                )
            )
    return out


def throttling(timeline_summary: dict | None) -> list[Finding]:
    if not timeline_summary:
        return []
    out = []
    for g in timeline_summary["gpus"]:
        if g["throttle"]["thermal_s"] > 0:
            out.append(
                (
                    "thermal_throttling",
                    f"{g['device']} throttled for temperature for ~{g['throttle']['thermal_s']:.1f} s",
                )
            )
        if g["throttle"]["power_cap_s"] > 0:
            out.append(
                ("power_capped", f"{g['device']} held at its power cap for ~{g['throttle']['power_cap_s']:.1f} s")
            )
    return out


def baseline_quality(device: str, baseline: dict | None) -> list[Finding]:
    if baseline is None:
        return []
    return [(code, f"{device}: {FLAGS[code].meaning}") for code in BASELINE_FLAGS if code in baseline.get("flags", [])]


def energy_readings(components: list, baselines: dict, rows: list[dict]) -> list[Finding]:
    """What each component's reading and idle baseline say about the energy (``rows``: the energy section's
    per-component rows, in the order of ``components``)."""
    out: list[Finding] = []
    for c, row in zip(components, rows, strict=True):
        base = baselines.get(c.device_key)
        if c.energy_j is None:
            out.append(("energy_unavailable", f"{c.component} ({c.device}): no valid reading ({', '.join(c.flags)})"))
        if "counter_reset" in c.flags:
            out.append(("counter_reset", f"{c.device}: energy counter went backwards; value withheld"))
        if c.method in ESTIMATES:
            out.append(("energy_estimated", f"{c.component} energy is an estimate ({c.method}), not a measurement"))
        if "cpu_tdp_unknown" in c.flags:
            out.append(("cpu_tdp_unknown", _unknown_part(c)))
        if "cpu_shared" in c.flags:
            out.append(("cpu_shared", _shared_cpu(c)))
        if "mig_parent_gpu_energy" in c.flags:
            out.append(("mig_parent_gpu_energy", f"{c.device} is a MIG instance: energy is the whole parent GPU's"))
        if base is None and c.method != "codecarbon":
            out.append(("no_idle_baseline", f"{c.device}: no idle baseline, net energy unavailable"))
        elif base is not None and not base["settle"]["settled"]:
            out.append(("idle_not_settled", f"{c.device}: idle power had not settled when the baseline was taken"))
        if row["net_energy_j"] is not None and row["net_energy_j"] < 0:
            out.append(
                ("net_energy_negative", f"{c.device}: window energy below idle energy (noise or stale baseline)")
            )
        out += baseline_quality(c.device, base)
    return out


def _unknown_part(c) -> str:
    d = c.details
    missing = [
        (what, setting)
        for key, what, setting in (
            ("tdp_w", "TDP", "energy.cpu_tdp_w"),
            ("part_threads", "hardware threads", "energy.cpu_part_threads"),
        )
        if d.get(key) is None
    ]
    return (
        f"{c.device}: {' and '.join(w for w, _ in missing)} of the CPU part {d['cpu_model']!r} unknown: charged "
        f"{d['watts_per_thread']:.2f} W per busy hardware thread ({d['watts_per_thread_source']}); set "
        f"{' and '.join(s for _, s in missing)} for this part"
    )


def _shared_cpu(c) -> str:
    a = c.details["attribution"]
    whose = (
        "the CPU energy is the machine's and includes their work (energy.cpu_attribution: process books the "
        "measuring process tree's share)"
        if a["mode"] == "machine"
        else "the CPU energy is the measuring process tree's share of the machine's"
    )
    return (
        f"{c.device}: other processes used {a['other_processes_share']:.0%} of the window's busy CPU time "
        f"({a['machine_busy_cpu_s']:.2f} CPU-s, the measuring process tree {a['process_tree_cpu_s']:.2f}): {whose}"
    )


def unmeasured_components(unavailable: list[dict]) -> list[Finding]:
    """A component the experiment could not measure at all (no NVML, no RAPL dram domain)."""
    return [(f"{u['component']}_energy_unavailable", u["reason"]) for u in unavailable]


def flops_confidence(flops: dict) -> list[Finding]:
    if flops["confidence"] == "low":
        return [("flops_low_confidence", f"architecture '{flops['model_dims']['model_type']}' not modelled exactly")]
    return []
