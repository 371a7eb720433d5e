"""Per-measurement fixed overhead of a finished campaign, from its raw results and Snakemake's job benchmarks.

    python benchmarks/job_overhead.py results/default

For every measurement job: wall time (Snakemake's benchmark file), and the parts the raw result accounts for
(idle baseline, model load, thermal gap, warm-up, window). The rest (interpreter and library start-up, job
dispatch, result building and writing) is the fixed overhead; printed per job and as a share of the total.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from llenergymeasure.record.layout import Layout


def main(root: str) -> None:
    root_p = Path(root)
    rows = []
    for raw_path in Layout(root_p).raw_files():
        raw = json.loads(raw_path.read_text())
        bench = root_p / "benchmarks" / "measure" / raw_path.parent.name / f"{raw_path.stem}.tsv"
        with open(bench, newline="") as fh:
            wall = float(next(csv.DictReader(fh, delimiter="\t"))["s"])
        ph = raw["phases_s"]
        accounted = ph["baseline_s"] + ph["load_s"] + ph["gap_s"] + ph["warmup_s"] + ph["window_s"]
        rows.append((raw["experiment_id"], raw["cycle"], wall, ph, wall - accounted))
    print(
        f"{'experiment':<45} {'cyc':>3} {'wall_s':>7} {'base':>5} {'load':>5} {'gap':>5} {'warm':>5} {'window':>6} {'fixed':>6} {'fixed%':>6}"
    )
    for exp_id, cycle, wall, ph, fixed in rows:
        print(
            f"{exp_id:<45} {cycle:>3} {wall:7.2f} {ph['baseline_s']:5.2f} {ph['load_s']:5.2f} {ph['gap_s']:5.2f} "
            f"{ph['warmup_s']:5.2f} {ph['window_s']:6.2f} {fixed:6.2f} {100 * fixed / wall:5.1f}%"
        )
    total = sum(r[2] for r in rows)
    fixed = sum(r[4] for r in rows)
    window = sum(r[3]["window_s"] for r in rows)
    print(
        f"\n{len(rows)} jobs: fixed overhead {fixed:.2f} s of {total:.2f} s job wall time = {fixed / total:.1%} "
        f"(mean {fixed / len(rows):.2f} s per job); measurement windows = {window / total:.1%} of job wall time"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/default")
