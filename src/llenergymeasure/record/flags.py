"""Every validity flag, in one registry: its code, its scope, what it means and the rule that raises it.

A flag never changes a number; it says how far to trust one. ``window`` flags are raised on one measurement and
stored in its raw result's ``flags`` (code and a message with the specifics); ``experiment`` flags are raised by
the aggregation across cycles. The aggregated result counts every code of both scopes, and the summary lists them.

The codes here are the measurement's own (energy, baseline, window, tokens, timeline). Each backend declares the
flags its own checks raise in its rules (``BackendRules.flags``), with the same record; the backends' registry
(:func:`llenergymeasure.backends.every_flag`) joins the two. The raw result schema's enum of codes and the README's
table are tested against that whole list.
"""

from __future__ import annotations

from dataclasses import dataclass

SCOPES = ("window", "experiment")


@dataclass(frozen=True)
class Flag:
    code: str
    scope: str  # window | experiment
    meaning: str  # one line, for people
    rule: str  # where it is raised: the function that holds the rule


def _w(code: str, meaning: str, rule: str) -> Flag:
    return Flag(code, "window", meaning, rule)


CORE: tuple[Flag, ...] = (
    # the window
    _w("short_window", "the window is shorter than energy.min_window_s", "validity.short_window"),
    _w("warmup_not_converged", "warm-up stopped at max_prompts before its latency CV settled", "validity.warmup_not_converged"),
    _w("cold_start_in_window", "early parts of the window ran slower than its steady pace: one-time costs inside it", "validity.cold_start_in_window"),
    _w("no_output_tokens", "no token was generated", "validity.no_output_tokens"),
    _w("output_length_not_reached", "some requests ended before the forced output length", "validity.output_length_not_reached"),
    _w("load_not_sustained", "under a serving load, the achieved request rate fell more than 5 % short of the offered rate", "validity.load_not_sustained"),
    _w("flops_low_confidence", "the model's architecture is not modelled exactly: FLOPs are approximate", "validity.flops_confidence"),
    # energy
    _w("energy_unavailable", "a device gave no valid energy reading: the total is withheld", "validity.energy_readings"),
    _w("counter_reset", "an energy counter went backwards: its value is withheld", "validity.energy_readings"),
    _w("energy_estimated", "a component's energy is an estimate (TDP share, CodeCarbon), not a measurement", "validity.energy_readings"),
    _w("mig_parent_gpu_energy", "a MIG instance reports its whole parent GPU's energy", "validity.energy_readings"),
    _w("cpu_tdp_unknown", "the CPU estimate's part (its TDP or hardware threads) is unknown: it charged the parts table's median watts per thread", "validity.energy_readings"),
    _w("cpu_shared", "other processes used more than 10 % of the window's busy CPU time (see energy.cpu_attribution)", "validity.energy_readings"),
    _w("gpu_energy_unavailable", "GPU energy was not measured (no NVML)", "validity.unmeasured_components"),
    _w("cpu_energy_unavailable", "CPU energy was not measured", "validity.unmeasured_components"),
    _w("ram_energy_unavailable", "RAM energy was not measured (no RAPL dram domain)", "validity.unmeasured_components"),
    _w("net_energy_negative", "window energy below idle energy (noise or a stale baseline)", "validity.energy_readings"),
    _w("power_below_idle", "mean power during the window was below idle power", "validity.power_below_idle"),
    _w("power_above_limit", "mean power above the GPU's enforced power limit", "validity.power_above_limit"),
    _w("energy_cross_check_mismatch", "GPU energy from integrated board power disagrees with the counter's beyond the tolerance", "validity.energy_cross_check_mismatch"),
    # the idle baseline
    _w("no_idle_baseline", "no idle baseline: net energy unavailable", "validity.energy_readings"),
    _w("idle_not_settled", "idle power had not settled when the baseline was taken", "validity.energy_readings"),
    _w("baseline_not_idle", "the device was busy while the idle baseline was taken (not cached): net energy is understated", "validity.baseline_quality"),
    _w("idle_power_drifting", "idle power drifted during the baseline", "validity.baseline_quality"),
    _w("idle_baseline_uncertain", "the idle power's standard uncertainty exceeds 1 %", "validity.baseline_quality"),
    _w("baseline_counter_samples_disagree", "the baseline's counter and power samples disagree by more than 5 %", "validity.baseline_quality"),
    # the timeline
    _w("thermal_throttling", "a GPU throttled for temperature during the window", "validity.throttling"),
    _w("power_capped", "a GPU was held at its power cap during the window", "validity.throttling"),
    _w("host_bound", "a GPU's mean SM utilisation stayed low: the host, not the GPU, set the pace", "validity.host_bound"),
    # across cycles
    Flag("high_cv_across_cycles", "experiment", "the CV across cycles of a CV metric exceeds analysis.cv_threshold", "aggregate.aggregate_experiment"),
    Flag("missing_cycles", "experiment", "fewer cycles than planned were aggregated (some failed)", "aggregate.aggregate_experiment"),
    Flag("precision_target_not_met", "experiment", "max_cycles was reached before the precision target", "aggregate.aggregate_experiment"),
    Flag("cycles_span_runs", "experiment", "the cycles were measured in more than one campaign run, on more than one host or with other software: periods apart are pooled (wider intervals, drift that is not noise); measured_in says which cycles came from where", "aggregate.measured_in"),
    Flag("interval_below_zero", "experiment", "the interval of a quantity that cannot be negative reaches below zero (few cycles, a large spread, or a net value near zero): the value is not told apart from zero; the count is how many metrics, each marked ci_below_zero", "aggregate.aggregate_experiment"),
    Flag("raw_result_changed", "experiment", "a raw result is not the bytes a decision or an earlier aggregation recorded of that measurement (changed after it was used): per_cycle names the cycle and the digest recorded", "aggregate.changed_raw_results"),
    Flag("cycles_not_aggregated", "experiment", "raw results of the experiment on disk are left out (measured after the decision that stopped it, or beyond execution.cycles): cycles_not_aggregated lists them", "aggregate.aggregate_experiment"),
)  # fmt: skip

FLAGS: dict[str, Flag] = {f.code: f for f in CORE}

#: raised by every backend's own check, each against its batching knob (declared in each backend's rules)
BATCH_NOT_SATURATED = _w(
    "batch_not_saturated",
    "the engine's batches stayed below the batching knob (pytorch.batch_size, vllm.max_num_seqs, "
    "tensorrt.max_batch_size): the window measured a smaller batch than configured",
    "<backend>.validity_flags",
)

#: Flags a baseline record can carry (the baseline's own names, the same codes in a raw result)
BASELINE_FLAGS = tuple(f.code for f in CORE if f.rule == "validity.baseline_quality")


def joined(*groups) -> dict[str, Flag]:
    """Several groups of flags as one registry; ValueError when a code is declared twice with different records."""
    out: dict[str, Flag] = {}
    for group in groups:
        for f in group:
            if f.scope not in SCOPES:
                raise ValueError(f"flag {f.code}: scope {f.scope!r} is not one of {', '.join(SCOPES)}")
            if out.get(f.code, f) != f:
                raise ValueError(f"flag {f.code} is declared twice, differently: {out[f.code]} and {f}")
            out[f.code] = f
    return out


def markdown_table(flags: dict[str, Flag]) -> str:
    """The README's table of flags."""
    lines = ["| flag | scope | meaning |", "|---|---|---|"]
    lines += [f"| `{f.code}` | {f.scope} | {f.meaning} |" for f in flags.values()]
    return "\n".join(lines)
