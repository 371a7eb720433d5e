"""GPU check: real experiments through the package on an NVIDIA GPU, no network, no Snakemake.

    PYTHONPATH=src python benchmarks/gpu_check.py                 # synthetic-weight Llama-3.2-1B shape, bf16
    PYTHONPATH=src python benchmarks/gpu_check.py --tiny --device cpu --cycles 2   # smoke run anywhere

Needs torch, transformers, tokenizers and nvidia-ml-py (jsonschema optional: raw results are then validated
later, on the host). Runs each batch size for ``--cycles`` cycles in interleaved order with the thermal-gap
logic, aggregates across cycles, and prints gross/net energy, J/output-token, CV across cycles, how much of each
job the window was, and the reference figures measured on an H200 for the same workload (random-weight
Llama 1.24 B, bf16, HF generate, greedy, 128 prompt tokens, 128 new tokens forced).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from llenergymeasure.aggregate import aggregate_experiment
from llenergymeasure.campaign import experiment_id, resolve_experiment
from llenergymeasure.measure import run_experiment
from llenergymeasure.tiny_model import build_tiny_llama

#: H200 reference (methodology notes): batch size -> (output tok/s, gross J per output token)
REFERENCE_H200 = {1: (91.6, 1.65), 8: (710.0, 0.21), 64: (5316.0, 0.036), 256: (20529.0, 0.0155)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    ap.add_argument("--tiny", action="store_true", help="use the embedded tiny model instead of the 1B shape")
    ap.add_argument("--gap", type=float, default=5.0, help="config gap (s); the cycle gap is twice this")
    ap.add_argument("--baseline-sec", type=float, default=10.0)
    ap.add_argument("--out", default=None, help="folder for raw and aggregated results (default: a temp dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out or tempfile.mkdtemp(prefix="lem-gpu-check-"))
    if args.tiny:
        model, no_weights = str(build_tiny_llama(out / "model")), False
        precision, tokens_in, tokens_out = "float32", 64, 32
    else:  # the reference workload: random weights of the Llama-3.2-1B architecture, built on the GPU
        model, no_weights = "llama-3.2-1b", True
        precision, tokens_in, tokens_out = "bfloat16", 128, 128

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    experiments = {}
    for bs in batch_sizes:
        cfg = resolve_experiment(
            {
                "model_name": model,
                "no_weights": no_weights,
                "fp_precision": precision,
                "device": args.device,
                "max_input_tokens": tokens_in,
                "max_output_tokens": tokens_out,
                "min_output_tokens": tokens_out,
                "num_input_prompts": max(args.prompts, bs),
                "decoder": {"preset": "deterministic"},
                "pytorch": {"batch_size": bs},
                "baseline": {"duration_sec": args.baseline_sec},
                "warmup": {"max_prompts": 20},
            }
        )
        experiments[bs] = (experiment_id(cfg), cfg)
    state = out / "state"
    raws: dict[int, list[str]] = {bs: [] for bs in batch_sizes}
    for cycle in range(1, args.cycles + 1):  # interleaved: every batch size once per cycle
        for bs in batch_sizes:
            exp_id, cfg = experiments[bs]
            path = out / "raw" / exp_id / f"cycle_{cycle}.json"
            run_experiment(
                cfg,
                exp_id,
                cycle,
                model,
                str(path),
                {"state_dir": str(state), "config_gap_s": args.gap, "cycle_gap_s": 2 * args.gap, "campaign_name": "gpu-check"},
            )
            raws[bs].append(str(path))

    print(f"\n{'bs':>4} {'tok/s':>9} {'E gross J':>10} {'E net J':>9} {'J/tok':>8} {'net J/tok':>9} {'GPU J/tok':>9} "
          f"{'CV(E)':>6} {'window/job':>10} {'method':<34} ref tok/s, GPU J/tok (H200)")
    summary = []
    for bs in batch_sizes:
        agg = aggregate_experiment(raws[bs], f"bs{bs}", cv_threshold=0.1, confidence=0.95)
        m = agg["metrics"]
        jobs = [json.loads(Path(p).read_text()) for p in raws[bs]]
        share = sum(j["phases_s"]["window_s"] for j in jobs) / sum(j["phases_s"]["job_total_s"] for j in jobs)
        ref = REFERENCE_H200.get(bs)
        print(
            f"{bs:>4} {m['output_tokens_per_s']['mean']:9.1f} {m['energy_j']['mean'] or float('nan'):10.2f} "
            f"{m['energy_net_j']['mean'] or float('nan'):9.2f} {m['j_per_output_token']['mean'] or float('nan'):8.4f} "
            f"{m['net_j_per_output_token']['mean'] or float('nan'):9.4f} "
            f"{m['gpu_j_per_output_token']['mean'] or float('nan'):9.4f} {m['energy_j']['cv'] or 0:6.3f} {share:10.1%} "
            f"{agg['energy_method']:<34} {ref if ref and not args.tiny else '-'}"
        )
        summary.append({"batch_size": bs, "flags": agg["flags"], "cv_flag": agg["cv_flag"]})
    print("\nflags:", json.dumps(summary))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
