"""Decisions: the time between consecutive decisions of a precision-targeted campaign, by campaign size.

For each size N: a grid campaign of N experiments with a precision target (min_cycles 3), its embedded model built by
the workflow, the first 3 cycles of every experiment on disk as raw results (clones of one real raw result, all
alike, so every decision is "stop"), and the decisions of all but K experiments already taken (through the package,
as the decide jobs take them). A real ``snakemake --cores 1 --until aggregate`` run then takes the K pending decisions
one after another and aggregates. The interval between two consecutive decision files is one decide job plus what
Snakemake does between two jobs after a checkpoint: it re-evaluates the jobs depending on it (the aggregation, whose
input function walks the decisions of the experiments not yet settled) and updates the whole DAG. Printed per N: the median interval and its
excess over the smallest N's, which is the part that grows with the campaign.

    python benchmarks/decisions.py [--experiments 100,1000,10000] [--pending 6]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale import grid_campaign, template_result

TARGET = {"relative_half_width": 0.02, "min_cycles": 3, "max_cycles": 10}


def prepare(n: int, pending: int, work: Path, template: dict) -> list[str]:
    """The campaign's folder, raw results and decisions on disk; the experiments whose decision is pending."""
    from llenergymeasure.campaign import plan, resolve_campaign
    from llenergymeasure.precision import decide, from_params
    from llenergymeasure.results import write_json_atomic

    campaign = grid_campaign(work, "decisions", n, {"precision_target": TARGET})
    (work / "campaign.yaml").write_text(json.dumps(campaign))
    p = plan(resolve_campaign(campaign, work, work))
    root = work / p.results_root
    target = from_params(p.target.params())
    ids = [e.experiment_id for e in p.expansion.experiments]
    for i, experiment_id in enumerate(ids):
        raws = []
        for cycle in range(1, TARGET["min_cycles"] + 1):
            result = copy.deepcopy(template)
            result["experiment_id"] = experiment_id
            result["cycle"] = cycle
            path = str(root / "raw" / experiment_id / f"cycle_{cycle}.json")
            write_json_atomic(path, result)
            raws.append(path)
        if i >= pending:
            decide(
                raws,
                experiment_id,
                TARGET["min_cycles"],
                target,
                str(root / "decisions" / experiment_id / "after_cycle_3.json"),
            )
    return [str(root / "decisions" / e / "after_cycle_3.json") for e in ids[:pending]]


def snakemake(work: Path, *args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--config", "campaign=campaign.yaml", *args],
        cwd=work,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", default="100,1000,10000", help="campaign sizes (powers of 10 up to 10000)")
    ap.add_argument("--pending", type=int, default=6, help="decisions left to take in each run")
    args = ap.parse_args()
    sizes = [int(s) for s in args.experiments.split(",")]
    baseline = None
    with tempfile.TemporaryDirectory(prefix="lem-decisions-") as tmp:
        template = template_result(Path(tmp))
        for n in sizes:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            t0 = time.perf_counter()
            pending = prepare(n, args.pending, work, template)
            snakemake(work, "--until", "build_model", "--quiet", "all")  # the model first: no measurement reruns
            snakemake(work, "--until", "aggregate", "--quiet", "all")
            written = sorted(os.stat(p).st_mtime_ns for p in pending)
            intervals = [(b - a) / 1e9 for a, b in itertools.pairwise(written)]
            median = statistics.median(intervals)
            baseline = median if baseline is None else baseline
            print(
                f"{n} experiments, {args.pending} pending decisions: median interval between decisions {median:.2f} s "
                f"(each: {', '.join(f'{x:.2f}' for x in intervals)}); excess over {sizes[0]} experiments "
                f"{median - baseline:.2f} s; whole run with setup {time.perf_counter() - t0:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
