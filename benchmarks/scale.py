"""Scale: a 10,000-experiment campaign. Measures, in one run:

1. ``snakemake -n`` wall time on a grid campaign of N experiments (expansion, validation, DAG), against the
   target of 30 s on a 2-core machine: with a fixed number of cycles; with a precision target
   (``execution.precision_target``), whose dry run schedules the minimum plan (min_cycles measurements and one
   decision per experiment) and leaves the rest to the decisions; and, for
   comparison, with a fixed min_cycles. Each line also gives the time per planned job and, as the least that many
   script jobs cost Snakemake on this machine, the dry run of a bare Snakefile planning the same number of jobs
   (one ``script:`` rule, as ours are, one output file per job, no input functions, params or resources), timed in
   the same run, with our time's ratio to it;
2. aggregation of N synthetic raw results (one cycle each, cloned from a real raw result with varied energy,
   validated like real ones) into per-experiment files and the summary, against the target of 15 s.

    python benchmarks/scale.py [--experiments 10000] [--cycles 1] [--min-cycles 3] [--max-cycles 10]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def grid_for(n: int) -> dict:
    """A grid whose product is exactly n experiments (n = 10^k: four axes)."""
    sizes = {"pytorch.batch_size": 10, "max_output_tokens": 10, "max_input_tokens": 10, "random_seed": 10}
    total = 1
    axes = {}
    for key, size in sizes.items():
        take = min(size, max(1, n // total))
        axes[key] = list(range(1, take + 1)) if key != "max_input_tokens" else [32 * (i + 1) for i in range(take)]
        total *= take
    if total != n:
        raise SystemExit(f"--experiments must be a power of 10 up to 10000 (got {n})")
    return axes


def grid_campaign(work: Path, name: str, n: int, execution: dict) -> dict:
    """The workflow copied into ``work``, and a campaign of n experiments on the tiny model with that execution."""
    for part in ("Snakefile", "workflow", "scripts", "envs", "config", "profiles"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / part)
    return {
        "campaign_name": name,
        "model": "lem-tiny-llama",
        "num_samples": 10,
        "grid": {"backends": ["pytorch"], "shared": grid_for(n)},
        "execution": execution,
    }


def dry_run(n: int, execution: dict, work: Path) -> tuple[float, dict[str, int]]:
    """Wall time of ``snakemake -n`` on an n-experiment grid, and the jobs it plans per rule."""
    campaign = grid_campaign(work, "scale", n, execution)
    (work / "scale.yaml").write_text(json.dumps(campaign))
    elapsed, output = timed_dry_run(work, "--configfile", "scale.yaml")
    table = output.split("Job stats:")[-1]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}
    return elapsed, jobs


BARE_SNAKEFILE = """\
rule all:
    input:
        expand("out/{i}.json", i=range(int(config["jobs"]))),


rule job:
    output:
        "out/{i}.json",
    script:
        "job.py"
"""


def bare_floor(jobs: int, work: Path) -> float:
    """Wall time of ``snakemake -n`` on a bare Snakefile planning ``jobs`` jobs: Snakemake's own per-job cost."""
    work.mkdir()
    (work / "Snakefile").write_text(BARE_SNAKEFILE)
    (work / "job.py").write_text("")
    return timed_dry_run(work, "--config", f"jobs={jobs - 1}")[0]


def timed_dry_run(work: Path, *args: str) -> tuple[float, str]:
    """Wall time and output (stdout and stderr) of ``snakemake -n --cores 1 ARGS --quiet rules`` in ``work``."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args, "--quiet", "rules"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return elapsed, out.stdout + out.stderr


def report_dry(what: str, dry: float, jobs: dict[str, int], work: Path) -> None:
    total = sum(jobs.values())
    floor = bare_floor(total, work)
    print(
        f"snakemake -n, {what}: {dry:.1f} s (target 30 s: ratio {dry / 30:.2f}; {1000 * dry / total:.2f} ms per job; "
        f"a bare Snakefile of the same {total} jobs: {floor:.1f} s, ratio {dry / floor:.2f})"
    )


def template_result(work: Path) -> dict:
    """One real raw result of the tiny model (a one-cycle measurement on this machine), to clone."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llenergymeasure.campaign import resolve_experiment
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.tiny_model import build_tiny_llama

    model = build_tiny_llama(work / "model")
    cfg = resolve_experiment(
        {
            "model_name": str(model),
            "fp_precision": "float32",
            "num_input_prompts": 8,
            "max_output_tokens": 8,
            "warmup": {"enabled": False},
            "baseline": {"enabled": False},
        }
    )
    return run_experiment(cfg, "template", 1, str(model), None)


def aggregation(n: int, work: Path) -> tuple[float, float]:
    from llenergymeasure.aggregate import write_aggregated_all
    from llenergymeasure.results import write_json_atomic

    template = template_result(work)
    raw_paths: dict[str, list[str]] = {}
    for i in range(n):
        r = copy.deepcopy(template)
        exp_id = f"pytorch-synthetic-fp32-bs1-{i:010d}"
        r["experiment_id"] = exp_id
        r["energy"]["total"]["gross_energy_j"] = 10.0 + (i % 17) * 0.1
        p = work / "results" / "raw" / exp_id / "cycle_1.json"
        write_json_atomic(p, r)
        raw_paths[exp_id] = [str(p)]
    names = {e: e for e in raw_paths}
    t0 = time.perf_counter()
    write_aggregated_all(
        raw_paths, names, str(work / "results" / "aggregated"), str(work / "results" / "summary.csv"), 0.1, 0.95
    )
    return time.perf_counter() - t0, len(list(itertools.islice((work / "results" / "aggregated").iterdir(), n + 1)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=1)
    ap.add_argument("--min-cycles", type=int, default=3, help="min_cycles of the precision-targeted dry run")
    ap.add_argument("--max-cycles", type=int, default=10, help="max_cycles of the precision-targeted dry run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lem-scale-") as tmp:
        work = Path(tmp)
        (work / "dry").mkdir()
        dry, jobs = dry_run(args.experiments, {"cycles": args.cycles}, work / "dry")
        report_dry(f"{args.experiments} experiments x {args.cycles} cycles", dry, jobs, work / "bare-dry")
        (work / "target").mkdir()
        target = {"relative_half_width": 0.02, "min_cycles": args.min_cycles, "max_cycles": args.max_cycles}
        dry, jobs = dry_run(args.experiments, {"precision_target": target}, work / "target")
        planned = ", ".join(f"{jobs.get(rule, 0)} {rule}" for rule in ("measure", "decide"))
        what = (
            f"{args.experiments} experiments, precision target ±2 %, {args.min_cycles} to {args.max_cycles} cycles "
            f"(minimum plan: {planned})"
        )
        report_dry(what, dry, jobs, work / "bare-target")
        (work / "fixed-min").mkdir()
        dry, jobs = dry_run(args.experiments, {"cycles": args.min_cycles}, work / "fixed-min")
        what = (
            f"{args.experiments} experiments x {args.min_cycles} cycles (fixed, the measurements of that minimum plan)"
        )
        report_dry(what, dry, jobs, work / "bare-fixed-min")
        (work / "agg").mkdir()
        agg, files = aggregation(args.experiments, work / "agg")
        print(
            f"aggregation of {args.experiments} raw results into {files} files + summary: {agg:.1f} s "
            f"(target 15 s: ratio {agg / 15:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
