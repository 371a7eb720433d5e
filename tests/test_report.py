"""Report plots and captions."""

from __future__ import annotations

from llenergymeasure.report import pareto_front


def test_pareto_front_maximises_throughput_and_minimises_energy():
    pts = [(100, 1.0), (200, 0.5), (150, 0.8), (300, 0.6), (50, 0.4)]
    # (150, 0.8) is dominated by (200, 0.5); the rest each win somewhere
    assert pareto_front(pts) == [4, 1, 3]
    assert pareto_front([(1, 1)]) == [0]
