"""Every metric of the aggregated results, in one registry.

A metric is one number per raw result (per cycle). The aggregation summarises each across cycles (mean, sample
std, CV, Student-t interval); the registry also says what it is measured in, which way is better, and where it is
used: ``cv`` (its CV across cycles decides ``cv_flag``), ``nonnegative`` (an interval below zero is flagged), ``target`` (a precision target may be set on it),
``compare`` (``lem compare`` tests it), ``summary`` (the statistics of it that ``summary.csv`` holds). The order
here is the order of the summary's metric columns and of the aggregated file's ``metrics``.

Adding a metric is one entry here (and its test): the aggregation, the summary, the precision target's choices
and ``lem compare`` derive from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: every statistic a metric gets across cycles, as the summary's column suffixes name them
STATISTICS = ("mean", "std", "cv", "ci_low", "ci_high")


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    read: Callable[[dict], float | None]
    meaning: str
    higher_is_better: bool | None = None  # None: neither (a count, a duration, a diagnostic)
    summary: tuple[str, ...] = ("mean",)
    cv: bool = False
    target: bool = False
    compare: bool = False
    #: the quantity cannot be negative (an energy, a rate, a duration, a count): an interval of it that reaches
    #: below zero is reported as computed and flagged ``interval_below_zero``
    nonnegative: bool = True

    def columns(self) -> list[str]:
        """This metric's columns in summary.csv: ``<name>_<statistic>``."""
        return [f"{self.name}_{s}" for s in self.summary]


def _component_j(r: dict, component: str) -> float | None:
    """Gross window energy of one kind of device (all GPUs, say); None when absent or any value is missing."""
    rows = [c for c in r["energy"]["components"] if c["component"] == component]
    if not rows or any(c["gross_energy_j"] is None for c in rows):
        return None
    return sum(c["gross_energy_j"] for c in rows)


def _per_output_token(value: float | None, r: dict) -> float | None:
    n = r["tokens"]["output_tokens"]
    return None if value is None or not n else value / n


def _load(r: dict, key: str):
    """A value of the serving-load section (None for an offline window, or a result written before it existed)."""
    return (r.get("load") or {}).get(key)


def _slo(r: dict, key: str):
    return (_load(r, "slo") or {}).get(key)


INTERVAL = ("mean", "ci_low", "ci_high")

REGISTRY: tuple[Metric, ...] = (
    Metric("output_tokens", "tokens", lambda r: r["tokens"]["output_tokens"], "tokens generated in the window"),
    Metric(
        "energy_j",
        "J",
        lambda r: r["energy"]["total"]["gross_energy_j"],
        "gross energy of every measured device over the window",
        higher_is_better=False,
        summary=STATISTICS,
        cv=True,
        target=True,
        compare=True,
    ),
    Metric(
        "energy_net_j",
        "J",
        lambda r: r["energy"]["total"]["net_energy_j"],
        "gross energy minus idle power x window duration",
        higher_is_better=False,
        summary=INTERVAL,
        compare=True,
    ),
    Metric(
        "j_per_output_token",
        "J/token",
        lambda r: r["efficiency"]["j_per_output_token"],
        "gross energy per output token",
        higher_is_better=False,
        summary=INTERVAL,
        cv=True,
        target=True,
        compare=True,
    ),
    Metric(
        "net_j_per_output_token",
        "J/token",
        lambda r: r["efficiency"]["net_j_per_output_token"],
        "net energy per output token",
        higher_is_better=False,
    ),
    Metric(
        "gpu_energy_j",
        "J",
        lambda r: _component_j(r, "gpu"),
        "gross energy of the experiment's GPUs",
        higher_is_better=False,
    ),
    Metric(
        "cpu_energy_j",
        "J",
        lambda r: _component_j(r, "cpu"),
        "gross energy of the CPU package(s)",
        higher_is_better=False,
    ),
    Metric(
        "gpu_j_per_output_token",
        "J/token",
        lambda r: _per_output_token(_component_j(r, "gpu"), r),
        "GPU energy per output token",
        higher_is_better=False,
    ),
    Metric(
        "output_tokens_per_s",
        "tokens/s",
        lambda r: r["throughput"]["output_tokens_per_s"],
        "output tokens per second of window",
        higher_is_better=True,
        summary=INTERVAL,
        target=True,
        compare=True,
    ),
    Metric(
        "mean_power_w",
        "W",
        lambda r: r["energy"]["total"]["mean_power_w"],
        "gross energy / window duration",
        compare=True,
    ),
    Metric(
        "e2e_latency_mean_ms",
        "ms",
        lambda r: r["latency"]["e2e_ms"]["mean"],
        "mean request latency, submission to last token",
        higher_is_better=False,
        compare=True,
    ),
    Metric(
        "ttft_mean_ms",
        "ms",
        lambda r: r["latency"]["ttft_ms"]["mean"],
        "mean time to first token",
        higher_is_better=False,
        summary=(),
    ),
    Metric(
        "itl_mean_ms",
        "ms",
        lambda r: r["latency"]["itl_ms"]["mean"],
        "mean inter-token latency",
        higher_is_better=False,
        summary=(),
    ),
    Metric(
        "j_per_request",
        "J/request",
        lambda r: r["efficiency"].get("j_per_request"),
        "gross energy per request",
        higher_is_better=False,
        summary=INTERVAL,
        compare=True,
    ),
    Metric(
        "ttft_p90_ms",
        "ms",
        lambda r: r["latency"]["ttft_ms"]["p90"],
        "90th percentile of time to first token (from the planned arrival under a serving load)",
        higher_is_better=False,
        summary=INTERVAL,
    ),
    # serving load (load.arrival other than offline; None for an offline window)
    Metric(
        "offered_rate_per_s",
        "requests/s",
        lambda r: _load(r, "offered_rate_per_s"),
        "request rate the schedule offered: (requests - 1) / span of the planned arrivals",
        summary=INTERVAL,
    ),
    Metric(
        "achieved_rate_per_s",
        "requests/s",
        lambda r: _load(r, "achieved_rate_per_s"),
        "request rate the engine achieved: (requests - 1) / span of the completions",
        higher_is_better=True,
        summary=INTERVAL,
    ),
    Metric(
        "mean_in_flight",
        "requests",
        lambda r: _load(r, "mean_in_flight"),
        "mean requests submitted and not finished, over the window",
        summary=INTERVAL,
    ),
    Metric(
        "idle_share",
        "1",
        lambda r: _load(r, "idle_share"),
        "share of the window with no request in flight",
        summary=INTERVAL,
    ),
    Metric(
        "queueing_delay_p90_ms",
        "ms",
        lambda r: (_load(r, "queueing_delay_ms") or {}).get("p90"),
        "90th percentile of submission - planned arrival",
        higher_is_better=False,
    ),
    Metric(
        "goodput_requests_per_s",
        "requests/s",
        lambda r: _slo(r, "goodput_requests_per_s"),
        "requests meeting load.slo per second of window",
        higher_is_better=True,
        summary=INTERVAL,
    ),
    Metric(
        "slo_attainment",
        "1",
        lambda r: _slo(r, "attainment"),
        "share of requests meeting load.slo",
        higher_is_better=True,
    ),
    Metric(
        "j_per_good_request",
        "J/request",
        lambda r: _slo(r, "j_per_good_request"),
        "gross energy per request that met load.slo",
        higher_is_better=False,
        summary=INTERVAL,
    ),
    Metric(
        "co2_kg",
        "kg",
        lambda r: r["energy"]["emissions"]["co2_kg"],
        "gross energy x the grid's carbon intensity",
        higher_is_better=False,
    ),
    Metric(
        "window_duration_s", "s", lambda r: r["timestamps"]["window_duration_s"], "length of the measurement window"
    ),
    Metric("total_flops", "FLOP", lambda r: r["flops"]["total_flops"], "floating-point operations of the window"),
    # measurement quality (absent from results written before these checks existed: None)
    Metric(
        "energy_net_uncertainty_j",
        "J",
        lambda r: r["energy"]["total"].get("net_energy_uncertainty_j"),
        "standard uncertainty of net energy from the idle baseline's",
    ),
    Metric(
        "energy_cross_check_ratio",
        "1",
        lambda r: (r["energy"].get("cross_check") or {}).get("ratio"),
        "GPU energy from integrated board power / the counter's",
    ),
    Metric(
        "cold_excess_share",
        "1",
        lambda r: (r.get("steady_state") or {}).get("cold_excess_share"),
        "share of the window spent on one-time costs (cold start)",
    ),
)

METRICS: dict[str, Metric] = {m.name: m for m in REGISTRY}

#: metrics whose CV across cycles decides ``cv_flag``
CV_METRICS = tuple(m.name for m in REGISTRY if m.cv)
#: metrics a precision target may be set on (``execution.precision_target.metric``)
TARGET_METRICS = tuple(m.name for m in REGISTRY if m.target)
#: metrics ``lem compare`` tests
COMPARE_METRICS = tuple(m.name for m in REGISTRY if m.compare)
