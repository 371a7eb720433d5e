"""Statistics across cycles and latency percentiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llenergymeasure.stats import distribution, percentile, summarise, t_quantile


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(3)
    xs = list(rng.exponential(size=101))
    for q in (0, 1, 50, 90, 95, 99, 100):
        assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))


def test_summarise_mean_std_cv_and_t_interval():
    s = summarise([10.0, 12.0, 14.0])
    assert s["mean"] == 12.0
    assert s["std"] == pytest.approx(2.0)  # ddof 1
    assert s["cv"] == pytest.approx(2.0 / 12.0)
    half = 4.303 * 2.0 / math.sqrt(3)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((12 - half, 12 + half), abs=1e-3)
    assert s["warning"] is None and s["ci_method"] == "student_t"


def test_summarise_small_and_missing():
    one = summarise([5.0])
    assert one["mean"] == 5.0 and one["std"] is None and one["ci_low"] is None and "fewer than 2" in one["warning"]
    two = summarise([1.0, None, 3.0])
    assert two["n"] == 2 and two["n_missing"] == 1 and "unreliable" in two["warning"]
    none = summarise([None, None])
    assert none["mean"] is None and none["warning"] == "no values"


def test_t_quantiles_are_exact_at_every_level():
    """Published Student-t values (two-sided): the hand-made expansion this replaces was 12 % too small at 99 % with
    2 degrees of freedom (3 cycles) and 55 % too small with 1 (2 cycles)."""
    table = {
        (0.95, 1): 12.706,
        (0.95, 2): 4.303,
        (0.95, 30): 2.042,
        (0.99, 1): 63.657,
        (0.99, 2): 9.925,
        (0.99, 4): 4.604,
        (0.90, 2): 2.920,
        (0.90, 10): 1.812,
        (0.995, 20): 3.153,
        (0.80, 3): 1.638,
    }
    for (confidence, df), value in table.items():
        assert t_quantile(confidence, df) == pytest.approx(value, abs=1e-3), (confidence, df)
    assert t_quantile(0.95, 10**6) == pytest.approx(1.960, abs=1e-3)
    assert 2.0 < t_quantile(0.95, 2.5) < 4.303  # fractional degrees of freedom (Welch)


def test_interval_at_99_percent_with_three_cycles():
    s = summarise([10.0, 12.0, 14.0], confidence=0.99)
    half = 9.925 * 2.0 / math.sqrt(3)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((12 - half, 12 + half), abs=1e-3)


def test_distribution_empty():
    d = distribution([])
    assert d["n"] == 0 and d["p99"] is None
