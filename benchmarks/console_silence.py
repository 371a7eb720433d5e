"""How long a campaign's console stays silent: the longest spans without a new line while Snakemake runs it.
Target: no span over 10 s.

    python benchmarks/console_silence.py                       # this checkout
    python benchmarks/console_silence.py --checkout OTHER      # another checkout's workflow and package, same run

The campaign is made to hold the long waits of a real one, on the embedded tiny model: an idle baseline measured
(not taken from the cache) for --baseline-s, thermal gaps of --config-gap-s between experiments and --cycle-gap-s
between cycles, two batch sizes x two cycles. Each checkout runs it in a copy of its files (those git tracks or
does not ignore) with its own package first on the path and a fresh cache folder (so every run waits the same gaps
and measures its baseline). Every console line is stamped as it arrives; printed per checkout: the run's time, the
longest silences and the line each followed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent.parent


def campaign(baseline_s: float, config_gap_s: float, cycle_gap_s: float) -> dict:
    return {
        "campaign_name": "silence",
        "model": "lem-tiny-llama",
        "dataset": "builtin",
        "num_samples": 8,
        "grid": {
            "backends": ["pytorch"],
            "shared": {
                "fp_precision": "float32",
                "device": "cpu",
                "max_input_tokens": 32,
                "max_output_tokens": 16,
                "min_output_tokens": 16,
                "decoder.preset": "deterministic",
                "baseline.duration_s": baseline_s,
            },
            "backend_overrides": {"pytorch": {"batch_size": [1, 4]}},
        },
        "execution": {
            "cycles": 2,
            "structure": "interleaved",
            "config_gap_s": config_gap_s,
            "cycle_gap_s": cycle_gap_s,
        },
    }


def copy_checkout(checkout: Path, into: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        src = checkout / name
        if src.is_file():
            dst = into / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def stamped_run(workdir: Path, cfg: Path, env: dict) -> list[tuple[float, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--config", f"campaign={cfg}"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    t0 = time.monotonic()
    lines = [(0.0, "(start)")]
    for line in proc.stdout:
        lines.append((time.monotonic() - t0, line.rstrip()))
    if proc.wait() != 0:
        sys.exit("the campaign failed:\n" + "\n".join(text for _, text in lines[-30:]))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", action="append", type=Path, default=[], help="another checkout (repeatable)")
    ap.add_argument("--baseline-s", type=float, default=20.0)
    ap.add_argument("--config-gap-s", type=float, default=15.0)
    ap.add_argument("--cycle-gap-s", type=float, default=25.0)
    ap.add_argument("--show", type=int, default=5, help="how many of the longest silences to print")
    args = ap.parse_args()
    cfg_data = campaign(args.baseline_s, args.config_gap_s, args.cycle_gap_s)
    for checkout in [HERE, *args.checkout]:
        with tempfile.TemporaryDirectory(prefix="lem-silence-") as tmp:
            work = Path(tmp) / "work"
            copy_checkout(checkout.resolve(), work)
            cfg = work / "silence.yaml"
            cfg.write_text(yaml.safe_dump(cfg_data, sort_keys=False))
            env = {
                **os.environ,
                "PYTHONPATH": str(work / "src"),
                "PYTHONUNBUFFERED": "1",
                "LLM_ENERGY_CACHE_DIR": str(Path(tmp) / "cache"),
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
            }
            lines = stamped_run(work, cfg, env)
        gaps = sorted(((b[0] - a[0], a) for a, b in itertools.pairwise(lines)), key=lambda g: g[0], reverse=True)
        print(f"{checkout}: {lines[-1][0]:.0f} s, {len(lines) - 1} console lines")
        for span, (at, text) in gaps[: args.show]:
            print(f"  {span:5.1f} s silent after t={at:6.1f} s: {text[:110]}")
        print(f"  longest silence {gaps[0][0]:.1f} s (target: at most 10 s)")


if __name__ == "__main__":
    main()
