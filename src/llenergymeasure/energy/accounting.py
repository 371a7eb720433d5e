"""The energy arithmetic of one window: per component gross, idle and net energy with its uncertainty, and the
totals. What the numbers say about their own quality (flags) is judged apart, in :mod:`llenergymeasure.validity`."""

from __future__ import annotations

from .base import ComponentEnergy

#: methods that estimate rather than measure (a share of measured machine energy by busy CPU time is an estimate)
ESTIMATES = ("estimate_tdp", "codecarbon", "rapl_process_share", "estimate_tdp_process_share")


def applied_share(c: ComponentEnergy) -> float:
    """The share of the machine's value that a component books (1 unless its CPU energy is attributed to the
    measuring process tree, :class:`llenergymeasure.energy.cpu.CpuAttribution`)."""
    share = (c.details.get("attribution") or {}).get("applied_share")
    return 1.0 if share is None else share


def energy_section(
    components: list[ComponentEnergy], baselines: dict, window_s: float, unavailable: list[dict]
) -> dict:
    """Per-component gross/idle/net energy and the totals. Net = gross - idle power x window duration. Its standard
    uncertainty combines, in quadrature, the idle power's x the window duration and the window's own edge error:
    the two counter reads that open and close the window are plain reads, each of which may lag its moment by up
    to the counter's step (100 ms on an NVML energy counter; ``gross_energy_uncertainty_j``, also the gross
    value's). Components are added in quadrature (independent devices). A CPU value attributed to the measuring
    process tree books the same share of the machine's idle power, so its net is that share of the machine's net.
    """
    rows = []
    for c in components:
        base = baselines.get(c.device_key)
        share = applied_share(c)
        idle_w = None if base is None or base.get("power_w") is None else base["power_w"] * share
        idle_u = None if base is None or base.get("uncertainty_w") is None else base["uncertainty_w"] * share
        idle_j = None if idle_w is None else idle_w * window_s
        net = None if (c.energy_j is None or idle_j is None) else c.energy_j - idle_j
        edge_u = c.edge_uncertainty_j or 0.0
        net_u = None if net is None or idle_u is None else ((idle_u * window_s) ** 2 + edge_u**2) ** 0.5
        row = {
            "component": c.component,
            "device": c.device,
            "method": c.method,
            "gross_energy_j": c.energy_j,
            "gross_energy_uncertainty_j": c.edge_uncertainty_j,
            "mean_power_w": c.mean_power_w,
            "idle_power_w": idle_w,
            "idle_power_uncertainty_w": idle_u,
            "idle_energy_j": idle_j,
            "net_energy_j": net,
            "net_energy_uncertainty_j": net_u,
            "counter_duration_s": c.duration_s,
            "baseline": None
            if base is None
            else {
                "method": base["method"],
                "from_cache": base["from_cache"],
                "cache_age_s": base["cache_age_s"],
                "measured_at": base["measured_at"],
                "duration_s": base["duration_s"],
                "settled": base["settle"]["settled"],
                "checks": base.get("checks", {}),
                "flags": base.get("flags", []),
            },
            "flags": list(c.flags),
            "details": c.details,
        }
        rows.append(row)
    valid = [r for r in rows if r["gross_energy_j"] is not None]
    gross = sum(r["gross_energy_j"] for r in valid) if valid and len(valid) == len(rows) else None
    nets = [r["net_energy_j"] for r in rows]
    net = sum(nets) if rows and all(n is not None for n in nets) else None
    net_us = [r["net_energy_uncertainty_j"] for r in rows]
    net_u = sum(u * u for u in net_us) ** 0.5 if net is not None and all(u is not None for u in net_us) else None
    method = "+".join(f"{r['component']}:{r['method']}" for r in rows) or "unavailable"
    return {
        "window_duration_s": window_s,
        "components": rows,
        "unavailable": unavailable,
        "total": {
            "gross_energy_j": gross,
            "net_energy_j": net,
            "net_energy_uncertainty_j": net_u,
            "method": method,
            "components": [r["component"] for r in rows],
            "includes_estimate": any(r["method"] in ESTIMATES for r in rows),
            "mean_power_w": None if gross is None or window_s <= 0 else gross / window_s,
        },
    }
