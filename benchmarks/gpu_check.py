"""GPU acceptance check: does the tool measure the truth on this GPU? One run, ratios against targets.

    PYTHONPATH=src python benchmarks/gpu_check.py --out DIR                  # synthetic Llama-3.2-1B shape, bf16
    PYTHONPATH=src python benchmarks/gpu_check.py --tiny --device cpu --cycles 2 --batch-sizes 2 --out DIR  # smoke

Needs only torch, transformers, accelerate and nvidia-ml-py (no network, no Snakemake, no jsonschema: raw results
are validated later, on the host). Every experiment x cycle runs in a fresh process through
``python -m llenergymeasure.run``, as a campaign's jobs do, so each window pays what a real job pays. Printed, as
ratios beside their targets:

1. idle baseline: the package's baseline (``--baseline-sec``) against a plain counter reading over
   ``--reference-sec`` taken right after it (target: within 1 %);
2. per window: the cold share (one-time cost beyond the window's steady pace, target <= 2 %) and GPU energy from
   integrated board power against the counter (target: within 2 %);
3. per batch size, across cycles: CV of GPU energy and of J/output-token (target <= 2 %), throughput and GPU-only
   J/output-token beside the H200 reference figures;
4. at steady state, in one process: the backend's throughput against a bare ``generate`` loop (target >= 0.98) and
   measurement on/off (benchmarks/measurement_overhead.py).

Everything it writes (experiment files, raw results with their token times, logs, ``gpu_check_summary.json``)
goes into ``--out``, one folder without subfolders.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: H200 reference (methodology notes): batch size -> (output tok/s, gross GPU J per output token)
REFERENCE_H200 = {1: (91.6, 1.65), 8: (710.0, 0.21), 64: (5316.0, 0.036), 256: (20529.0, 0.0155)}
TARGETS = {"idle_ratio": 0.01, "cold_share": 0.02, "cross_check": 0.02, "cv": 0.02, "backend_vs_bare": 0.98}


def num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def mark(ok: bool | None) -> str:
    return "n/a " if ok is None else ("ok  " if ok else "MISS")


def experiment(args, batch_size: int) -> dict:
    """The experiment file of one batch size (experiment fields, as in a campaign's configs files)."""
    if args.tiny:
        model = {
            "model_name": "lem-tiny-llama",
            "fp_precision": "float32",
            "max_input_tokens": 64,
            "max_output_tokens": 16,
        }
    else:  # the reference workload: random weights of the Llama-3.2-1B architecture, built on the GPU
        model = {
            "model_name": "llama-3.2-1b",
            "no_weights": True,
            "fp_precision": "bfloat16",
            "max_input_tokens": 128,
            "max_output_tokens": 128,
        }
    return {
        **model,
        "device": args.device,
        "min_output_tokens": model["max_output_tokens"],
        "num_input_prompts": max(args.prompts, batch_size),
        "decoder": {"preset": "deterministic"},
        "pytorch": {"batch_size": batch_size},
        "baseline": {"duration_s": args.baseline_sec},
        "warmup": {"mode": "full", "min_prompts": 3, "window_size": 3, "max_prompts": 6},
        # a window of at least min_window_s: the energy cross-check is judged on windows of 10 s or more
        "energy": {"min_window_s": args.min_window, "repeat_to_min_window": True},
    }


def idle_check(args) -> dict:
    """The package's idle baseline against a reference: a plain counter difference over a longer idle period."""
    from llenergymeasure.energy.baseline import idle_baselines
    from llenergymeasure.energy.meters import select_meters

    on_gpu = args.device != "cpu"
    meters = select_meters({"backend": "auto", "cpu_tdp_w": None}, gpu_count=1 if on_gpu else 0)
    meter = next((m for m in meters.meters if m.gpu is not None), None) if on_gpu else meters.meters[0]
    if meter is None:
        return {"available": False, "reason": "no GPU visible through NVML"}
    # every meter an experiment will use (GPU and CPU), so that the experiments' processes find them all cached
    record = idle_baselines(meters.meters, {"enabled": True, "duration_s": args.baseline_sec, "cache_ttl_s": 3600})[
        meter.device_key
    ]
    e0, t0 = meter.read_j(), time.perf_counter()
    powers = []
    while time.perf_counter() - t0 < args.reference_sec:
        time.sleep(0.1)
        p = meter.power_w()
        if p is not None:
            powers.append(p)
    e1, t1 = meter.read_j(), time.perf_counter()
    reference = (e1 - e0) / (t1 - t0)
    return {
        "available": True,
        "device": meter.device_key,
        "baseline_w": record["power_w"],
        "baseline_uncertainty_w": record.get("uncertainty_w"),
        "baseline_duration_s": record["duration_s"],
        "baseline_flags": record.get("flags", []),
        "reference_w": reference,
        "reference_duration_s": t1 - t0,
        "reference_sensor_mean_w": statistics.fmean(powers) if powers else None,
        "ratio": record["power_w"] / reference if reference and record["power_w"] is not None else None,
    }


def run_cycles(args, out: Path) -> dict[int, list[dict]]:
    """Every batch size x cycle in its own process, interleaved (A1 B1 A2 B2 ...), as a campaign runs them."""
    import yaml

    results: dict[int, list[dict]] = {bs: [] for bs in args.batch_sizes}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    for cycle in range(1, args.cycles + 1):
        for bs in args.batch_sizes:
            spec = out / f"experiment_bs{bs}.yaml"
            spec.write_text(yaml.safe_dump(experiment(args, bs), sort_keys=False))
            raw = out / f"raw_bs{bs}_cycle{cycle}.json"
            cmd = [
                sys.executable,
                "-m",
                "llenergymeasure.run",
                str(spec),
                "--cycle",
                str(cycle),
                "--output",
                str(raw),
                "--state-dir",
                str(out),
                "--config-gap",
                str(args.gap),
                "--cycle-gap",
                str(2 * args.gap),
            ]
            t0 = time.perf_counter()
            with open(out / f"log_bs{bs}_cycle{cycle}.txt", "w") as log:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            if proc.returncode != 0 or not raw.exists():
                print(f"bs {bs} cycle {cycle}: FAILED (exit {proc.returncode}); see {out}/log_bs{bs}_cycle{cycle}.txt")
                continue
            r = json.loads(raw.read_text())
            r["_process_s"] = time.perf_counter() - t0
            results[bs].append(r)
            window(r, bs, cycle)
    return results


def gpu_j(r: dict) -> float | None:
    rows = [c for c in r["energy"]["components"] if c["component"] == "gpu"]
    return (
        sum(c["gross_energy_j"] for c in rows) if rows and all(c["gross_energy_j"] is not None for c in rows) else None
    )


def window(r: dict, bs: int, cycle: int) -> None:
    s, x = r["steady_state"], r["energy"]["cross_check"]
    cold = s["cold_excess_share"] if s["method"] != "unavailable" else None
    ratio = x.get("ratio")
    print(
        f"bs {bs:>3} cycle {cycle}: window {r['timestamps']['window_duration_s']:6.2f} s of a {r['_process_s']:5.1f} s process, "
        f"{r['throughput']['output_tokens_per_s']:9.1f} tok/s, cold share "
        f"{'n/a' if cold is None else f'{cold:6.2%}'} [{mark(None if cold is None else cold <= TARGETS['cold_share'])}], "
        f"power integral / counter {'n/a' if ratio is None else f'{ratio:.4f}'} "
        f"[{mark(None if ratio is None else abs(ratio - 1) <= TARGETS['cross_check'])}] ({x['method']}), "
        f"warm-up {r['warmup']['duration_s']:.1f} s over {len(r['warmup']['shapes'])} shape(s), "
        f"flags: {', '.join(f['code'] for f in r['flags']) or 'none'}"
    )


def cv(values: list) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.stdev(xs) / statistics.fmean(xs) if len(xs) >= 2 and statistics.fmean(xs) else None


def across_cycles(args, results: dict[int, list[dict]]) -> list[dict]:
    rows = []
    print(
        f"\n{'bs':>4} {'cycles':>6} {'tok/s':>9} {'GPU J':>9} {'CV(GPU J)':>10} {'J/tok':>9} {'CV(J/tok)':>10} "
        f"{'GPU J/tok':>10} {'ref tok/s':>9} {'ref J/tok':>9}"
    )
    for bs, runs in results.items():
        if not runs:
            continue
        gj = [gpu_j(r) for r in runs]
        jt = [r["efficiency"]["j_per_output_token"] for r in runs]
        gjt = [
            g / r["tokens"]["output_tokens"] if g is not None and r["tokens"]["output_tokens"] else None
            for g, r in zip(gj, runs, strict=True)
        ]
        row = {
            "batch_size": bs,
            "cycles": len(runs),
            "output_tokens_per_s": statistics.fmean(r["throughput"]["output_tokens_per_s"] for r in runs),
            "gpu_energy_j_cv": cv(gj),
            "j_per_output_token_cv": cv(jt),
            "gpu_j_per_output_token": statistics.fmean(x for x in gjt if x is not None)
            if any(x is not None for x in gjt)
            else None,
            "j_per_output_token": statistics.fmean(x for x in jt if x is not None)
            if any(x is not None for x in jt)
            else None,
            "gpu_energy_j": statistics.fmean(x for x in gj if x is not None)
            if any(x is not None for x in gj)
            else None,
            "cold_excess_share_max": max(r["steady_state"]["cold_excess_share"] for r in runs),
            "cross_check_ratios": [r["energy"]["cross_check"].get("ratio") for r in runs],
        }
        rows.append(row)
        ref = None if args.tiny else REFERENCE_H200.get(bs)

        main_cv = row["gpu_energy_j_cv"] if row["gpu_energy_j_cv"] is not None else row["j_per_output_token_cv"]
        print(
            f"{bs:>4} {len(runs):>6} {row['output_tokens_per_s']:9.1f} {num(row['gpu_energy_j'], '9.2f'):>9} "
            f"{num(row['gpu_energy_j_cv'], '.2%'):>10} {num(row['j_per_output_token'], '9.4f'):>9} {num(row['j_per_output_token_cv'], '.2%'):>10} "
            f"{num(row['gpu_j_per_output_token'], '.4f'):>10} {num(ref and ref[0], '9.1f'):>9} {num(ref and ref[1], '9.4f'):>9}  "
            f"[{mark(None if main_cv is None or len(runs) < 3 else main_cv <= TARGETS['cv'])} CV]"
        )
    return rows


def overhead(args, out: Path) -> dict:
    """backend vs bare generate, measurement on vs off: benchmarks/measurement_overhead.py in one process."""
    cmd = [
        sys.executable,
        str(HERE / "measurement_overhead.py"),
        "--device",
        args.device,
        "--batch-size",
        str(args.overhead_batch),
        "--prompts",
        str(args.overhead_prompts),
        "--reps",
        "5",
    ]
    if args.tiny:
        cmd += ["--new-tokens", "16"]
    else:
        cmd += ["--model", "llama-3.2-1b", "--no-weights", "--precision", "bfloat16", "--new-tokens", "128"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (out / "log_overhead.txt").write_text(proc.stdout + proc.stderr)
    found = {}
    for key, pattern in (
        ("on_off_time_ratio", r"on / off time ratio:\s+([0-9.]+)"),
        ("backend_vs_bare", r"backend / bare generate throughput:\s+([0-9.]+)"),
    ):
        m = re.search(pattern, proc.stdout)
        found[key] = float(m.group(1)) if m else None
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for everything the check writes (no subfolders)")
    ap.add_argument("--batch-sizes", default="8,64")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="the embedded tiny model instead of the 1B shape (smoke runs)")
    ap.add_argument(
        "--gap", type=float, default=2.0, help="config gap (s) between windows; the cycle gap is twice this"
    )
    ap.add_argument("--baseline-sec", type=float, default=10.0)
    ap.add_argument("--reference-sec", type=float, default=30.0)
    ap.add_argument(
        "--min-window", type=float, default=10.0, help="repeat the workload inside a window up to this long"
    )
    ap.add_argument("--overhead-batch", type=int, default=8)
    ap.add_argument("--overhead-prompts", type=int, default=8)
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    idle = idle_check(args)
    if idle["available"]:
        ok = None if idle["ratio"] is None else abs(idle["ratio"] - 1) <= TARGETS["idle_ratio"]
        print(
            f"idle baseline {num(idle['baseline_w'], '.2f')} W ± {num(idle['baseline_uncertainty_w'], '.2f')} W over "
            f"{idle['baseline_duration_s']:.1f} s vs reference {num(idle['reference_w'], '.2f')} W over "
            f"{idle['reference_duration_s']:.1f} s: ratio {num(idle['ratio'], '.4f')} [{mark(ok)}] (sensor mean "
            f"{num(idle['reference_sensor_mean_w'], '.2f')} W; flags: {', '.join(idle['baseline_flags']) or 'none'})\n"
        )
    else:
        print(f"idle baseline: {idle['reason']}\n")

    results = run_cycles(args, out)
    rows = across_cycles(args, results)
    over = {} if args.skip_overhead else overhead(args, out)
    if over:
        b = over.get("backend_vs_bare")
        print(
            f"\nsteady state, one process: backend / bare generate throughput {b if b is not None else 'n/a'} "
            f"[{mark(None if b is None else b >= TARGETS['backend_vs_bare'])}], measurement on / off time "
            f"{over.get('on_off_time_ratio') or 'n/a'}"
        )
    summary = {
        "idle": idle,
        "experiments": rows,
        "overhead": over,
        "targets": TARGETS,
        "total_s": time.perf_counter() - t_start,
    }
    (out / "gpu_check_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\ncheck took {summary['total_s']:.0f} s; results in {out}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
