"""Statistics with the standard library only (the measurement step runs where numpy may be missing).

Across cycles the tool reports mean, sample standard deviation (ddof 1), coefficient of variation and a
Student-t confidence interval of the mean. With three to five cycles a t-interval is the honest choice: a
percentile bootstrap of so few values is systematically too narrow.
"""

from __future__ import annotations

import math
import statistics

# Two-sided 97.5 % quantiles of Student's t for df = 1..30 (the 95 % interval), then selected larger df.
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip
_T975_LARGE = [(40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960)]


def _t_quantile_975(df: int) -> float:
    if df <= 30:
        return _T975[df - 1]
    prev_df, prev_t = 30, _T975[-1]
    for d, t in _T975_LARGE:
        if df <= d:
            if d == math.inf:
                return t
            # interpolate linearly in 1/df, which is how these tables are meant to be read
            w = (1 / prev_df - 1 / df) / (1 / prev_df - 1 / d)
            return prev_t + w * (t - prev_t)
        prev_df, prev_t = d, t
    return 1.960


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided Student-t critical value. Exact table values at 95 %; other levels use a normal-based
    Cornish-Fisher expansion (accurate to about 1 % for df >= 3)."""
    if abs(confidence - 0.95) < 1e-12:
        return _t_quantile_975(df)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


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


def summarise(values: list[float | None], confidence: float = 0.95) -> dict:
    """Across-cycle statistics of one metric. ``None`` values (unavailable) are excluded and counted."""
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
        "ci_method": "student_t",
        "warning": None,
    }
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
    out.update(std=std, cv=(std / abs(mean)) if mean else None, ci_low=mean - half, ci_high=mean + half)
    if len(xs) < 3:
        out["warning"] = "fewer than 3 values: interval unreliable"
    return out
