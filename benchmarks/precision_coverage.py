"""Precision target: how far "target met" can be trusted, for the stopping rule the package uses and the plain one.

Drives the package's decision function (``precision.assess``) on simulated experiments: each cycle's value of the
target metric ~ Normal(1, CV), decisions after every cycle from ``min_cycles`` 3 to ``max_cycles`` 10, intervals at
95 %. The same simulated values go through both rules:

- ``plain``: the target is met when the observed Student-t interval is within it (the spread itself is judged);
- ``chi2``: the package's rule, the interval judged with the one-sided 90 % chi-squared upper bound of the spread.

Printed per (CV, target) row and rule: P(target met); the coverage of the true mean by the reported intervals of the
experiments that met it; the coverage by all reported intervals (met or stopped at max_cycles); the false-claim rate,
P(target met and the interval misses the true mean); and the mean cycles spent. The targets, checked for the
package's rule in every row:

- false-claim rate <= 1 - confidence;
- coverage of all reported intervals >= nominal - 1 point;
- where P(target met) >= 0.5, coverage given target met >= nominal - 2 points.

The process exits 1 when one of them fails.

    python benchmarks/precision_coverage.py [--replications 20000] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import sys

from llenergymeasure.precision import SPREAD_BOUND_CONFIDENCE, Target, assess

CVS = (0.01, 0.02, 0.03, 0.05, 0.10)
TARGETS = (0.02, 0.03, 0.05)
MIN_CYCLES, MAX_CYCLES, CONFIDENCE, TRUE_MEAN = 3, 10, 0.95, 1.0
RULES = {"plain": None, "chi2": SPREAD_BOUND_CONFIDENCE}


def run_experiment(values: list[float], target: Target) -> tuple[bool, bool, int]:
    """(target met, interval covers the true mean, cycles run) of one experiment whose cycles would give ``values``,
    deciding after each cycle from min_cycles as the workflow does."""
    for n in range(target.min_cycles, target.max_cycles + 1):
        verdict = assess(values[:n], target)
        if verdict["decision"] == "stop":
            covers = verdict["ci_low"] <= TRUE_MEAN <= verdict["ci_high"]
            return verdict["target_met"], covers, n
    raise AssertionError("no decision stopped at max_cycles")


def row(cv: float, relative_half_width: float, replications: int, seed: int) -> dict[str, dict]:
    rng = random.Random(f"{seed}-{cv}-{relative_half_width}")
    samples = [[rng.gauss(TRUE_MEAN, cv * TRUE_MEAN) for _ in range(MAX_CYCLES)] for _ in range(replications)]
    out = {}
    for name, bound in RULES.items():
        target = Target(relative_half_width, "j_per_output_token", MIN_CYCLES, MAX_CYCLES, CONFIDENCE, bound)
        met = covered = met_covered = cycles = 0
        for values in samples:
            m, c, n = run_experiment(values, target)
            met += m
            covered += c
            met_covered += m and c
            cycles += n
        out[name] = {
            "p_met": met / replications,
            "coverage_given_met": met_covered / met if met else None,
            "coverage_all": covered / replications,
            "false_claims": (met - met_covered) / replications,
            "mean_cycles": cycles / replications,
        }
    return out


def failures(r: dict) -> list[str]:
    """Which of the three targets a row of the package's rule misses."""
    nominal = CONFIDENCE
    missed = []
    if r["false_claims"] > 1 - nominal:
        missed.append("false claims")
    if r["coverage_all"] < nominal - 0.01:
        missed.append("coverage of all")
    if r["p_met"] >= 0.5 and r["coverage_given_met"] < nominal - 0.02:
        missed.append("coverage given met")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replications", type=int, default=20000, help="simulated experiments per row")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    def pct(x):
        return "   n/a" if x is None else f"{100 * x:6.1f}"

    print(
        f"{args.replications} simulated experiments per row; values ~ Normal(1, CV); {MIN_CYCLES} to {MAX_CYCLES} "
        f"cycles; {CONFIDENCE:.0%} intervals; chi2 = the package's rule ({SPREAD_BOUND_CONFIDENCE:.0%} upper bound "
        "of the spread), plain = the observed spread judged"
    )
    header = "  CV  target  rule   P(met) %  cov|met %  cov all %  false %  cycles  targets"
    print(header)
    print("-" * len(header))
    missed_rows = 0
    for cv in CVS:
        for t in TARGETS:
            result = row(cv, t, args.replications, args.seed)
            for name, r in result.items():
                verdict = ""
                if name == "chi2":
                    missed = failures(r)
                    missed_rows += bool(missed)
                    verdict = "missed: " + ", ".join(missed) if missed else "met"
                print(
                    f"{cv:4.2f}  {t:6.2f}  {name:5}  {pct(r['p_met']):>8}  {pct(r['coverage_given_met']):>9}  "
                    f"{pct(r['coverage_all']):>9}  {pct(r['false_claims']):>7}  {r['mean_cycles']:6.2f}  {verdict}"
                )
    rows = len(CVS) * len(TARGETS)
    print(f"the package's rule meets all three targets in {rows - missed_rows} of {rows} rows")
    return 1 if missed_rows else 0


if __name__ == "__main__":
    sys.exit(main())
