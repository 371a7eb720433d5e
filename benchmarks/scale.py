"""Scale: a 10,000-experiment campaign. Measures, in one run:

1. ``snakemake -n`` wall time on a grid campaign of N experiments (expansion, validation, DAG), against the
   target of 30 s on a 2-core machine;
2. aggregation of N synthetic raw results (one cycle each, cloned from a real raw result with varied energy,
   validated like real ones) into per-experiment files and the summary, against the target of 15 s.

    python benchmarks/scale.py [--experiments 10000] [--cycles 1]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
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


def dry_run(n: int, cycles: int, work: Path) -> float:
    for name in ("Snakefile", "workflow", "scripts", "envs", "config", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
    campaign = {"campaign_name": "scale", "model": "lem-tiny-llama", "num_samples": 10,
                "grid": {"backends": ["pytorch"], "shared": grid_for(n)}, "execution": {"cycles": cycles}}  # fmt: skip
    (work / "scale.yaml").write_text(json.dumps(campaign))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "scale.yaml", "--quiet"],
                         cwd=work, capture_output=True, text=True)  # fmt: skip
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return elapsed


def aggregation(n: int, work: Path) -> tuple[float, float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llenergymeasure.aggregate import write_aggregated_all
    from llenergymeasure.campaign import resolve_experiment
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.results import write_json_atomic
    from llenergymeasure.tiny_model import build_tiny_llama

    model = build_tiny_llama(work / "model")
    cfg = resolve_experiment({"model_name": str(model), "fp_precision": "float32", "num_input_prompts": 8,
                              "max_output_tokens": 8, "warmup": {"enabled": False}, "baseline": {"enabled": False}})  # fmt: skip
    template = run_experiment(cfg, "template", 1, str(model), None, {})
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
    write_aggregated_all(raw_paths, names, str(work / "results" / "aggregated"), str(work / "results" / "summary.csv"), 0.1, 0.95)
    return time.perf_counter() - t0, len(list(itertools.islice((work / "results" / "aggregated").iterdir(), n + 1)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lem-scale-") as tmp:
        work = Path(tmp)
        (work / "dry").mkdir()
        dry = dry_run(args.experiments, args.cycles, work / "dry")
        print(f"snakemake -n, {args.experiments} experiments x {args.cycles} cycles: {dry:.1f} s "
              f"(target 30 s: ratio {dry / 30:.2f})")  # fmt: skip
        (work / "agg").mkdir()
        agg, files = aggregation(args.experiments, work / "agg")
        print(f"aggregation of {args.experiments} raw results into {files} files + summary: {agg:.1f} s "
              f"(target 15 s: ratio {agg / 15:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
