"""Statistics across cycles and of latency samples.

Across cycles the tool reports mean, sample standard deviation (ddof 1), coefficient of variation and a
Student-t confidence interval of the mean. With three to five cycles a t-interval is the honest choice: a
percentile bootstrap of so few values is systematically too narrow. The t quantile is scipy's exact one; scipy is
imported only when an interval is computed (aggregation and ``lem compare`` run on the host), so the measurement
step, which needs :func:`distribution` alone, runs on the standard library.
"""

from __future__ import annotations

import functools
import math
import statistics


@functools.lru_cache(maxsize=1024)
def t_quantile(confidence: float, df: float) -> float:
    """Two-sided Student-t critical value: the ``(1 + confidence) / 2`` quantile with ``df`` degrees of freedom
    (``df`` may be fractional, as Welch's approximation gives it)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


@functools.lru_cache(maxsize=1024)
def chi2_spread_factor(confidence: float, df: int) -> float:
    """How much larger than a sample standard deviation with ``df`` degrees of freedom its one-sided upper
    confidence bound is: sqrt(df / q), q the ``1 - confidence`` quantile of chi-squared with ``df`` degrees of
    freedom (Normal values: the true deviation is below s times this with probability ``confidence``)."""
    from scipy.stats import chi2

    return math.sqrt(df / float(chi2.ppf(1 - confidence, df)))


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def distribution(values: list[float]) -> dict:
    """mean, p50, p90, p95, p99, min, max and n of pooled samples (all None when empty)."""
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p95": None, "p99": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
    }


def summarise(values: list[float | None], confidence: float = 0.95, spread_bound: float | None = None) -> dict:
    """Across-cycle statistics of one metric. ``None`` values (unavailable) are excluded and counted.

    With ``spread_bound``, the interval is built on the one-sided ``spread_bound`` upper confidence bound of the
    standard deviation instead of the standard deviation itself (:func:`chi2_spread_factor`; ``ci_method``
    ``student_t_chi2_spread_bound``): the interval of an experiment whose number of cycles depended on its spread
    (:mod:`llenergymeasure.precision`). ``std`` and ``cv`` stay the sample's own."""
    xs = [float(v) for v in values if v is not None]
    out = {
        "values": [None if v is None else float(v) for v in values],
        "n": len(xs),
        "n_missing": len(values) - len(xs),
        "mean": None,
        "std": None,
        "cv": None,
        "ci_low": None,
        "ci_high": None,
        "confidence": confidence,
        "ci_method": "student_t" if spread_bound is None else "student_t_chi2_spread_bound",
        "warning": None,
    }
    if spread_bound is not None:
        out["spread_bound_confidence"] = spread_bound
    if not xs:
        out["warning"] = "no values"
        return out
    mean = statistics.fmean(xs)
    out["mean"] = mean
    if len(xs) < 2:
        out["warning"] = "fewer than 2 values: no spread or interval"
        return out
    std = statistics.stdev(xs)
    half = t_quantile(confidence, len(xs) - 1) * std / math.sqrt(len(xs))
    if spread_bound is not None:
        half *= chi2_spread_factor(spread_bound, len(xs) - 1)
    out.update(std=std, cv=(std / abs(mean)) if mean else None, ci_low=mean - half, ci_high=mean + half)
    if len(xs) < 3:
        out["warning"] = "fewer than 3 values: interval unreliable"
    return out
