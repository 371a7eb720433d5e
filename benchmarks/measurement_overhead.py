"""Does measuring disturb what is measured? Two ratios from one run, on the same prompts and batches:

1. measurement on vs off: our backend's run with energy meters read at the window edges, the timeline sampler,
   per-step timestamps, the progress count and a running heartbeat thread (as in a workflow job), against the same
   generate calls with none of them (target: <= 1 % slower);
2. our PyTorch backend vs a bare ``generate`` loop written the obvious way (target: throughput ratio >= 0.98).

The variants are interleaved for ``--reps`` repetitions (>= 5) after a shared warm-up, so drift and thermal state
hit all of them alike; ratios are of the medians.

    python benchmarks/measurement_overhead.py                         # embedded tiny model, CPU
    PYTHONPATH=src python benchmarks/measurement_overhead.py --model llama-3.2-1b --no-weights --device cuda \
        --precision bfloat16 --batch-size 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from interleave import interleaved, print_rows

from llenergymeasure.backends.pytorch import PyTorchBackend
from llenergymeasure.campaign import resolve_experiment
from llenergymeasure.energy.meters import select_meters
from llenergymeasure.heartbeat import Heartbeat
from llenergymeasure.measure import Progress
from llenergymeasure.prompts import load_prompts
from llenergymeasure.timeline import TimelineSampler
from llenergymeasure.tiny_model import build_tiny_llama


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model path or hub id (default: the embedded tiny model)")
    ap.add_argument(
        "--no-weights", action="store_true", help="--model names a shipped architecture (e.g. llama-3.2-1b)"
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    if args.reps < 5:
        ap.error("--reps must be >= 5")

    model = args.model or str(build_tiny_llama(tempfile.mkdtemp(prefix="lem-bench-") + "/lem-tiny-llama"))
    cfg = resolve_experiment(
        {
            "model_name": model,
            "no_weights": args.no_weights,
            "fp_precision": args.precision,
            "device": args.device,
            "max_input_tokens": 128,
            "max_output_tokens": args.new_tokens,
            "min_output_tokens": args.new_tokens,
            "num_input_prompts": args.prompts,
            "decoder": {"preset": "deterministic"},
            "pytorch": {"batch_size": args.batch_size},
        }
    )
    backend = PyTorchBackend(cfg, model)
    backend.load()
    prompts = load_prompts(cfg["dataset"], args.prompts)
    batches = backend.plan(prompts)
    meters = select_meters(cfg["energy"], gpu_count=1 if args.device == "cuda" else 0)
    kwargs = backend._generate_kwargs(args.new_tokens, args.new_tokens)
    tok, net = backend.tokenizer, backend.model

    import torch

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def measured() -> tuple[float, int]:
        sync()
        with Heartbeat("bench", lambda line: None):
            sampler = TimelineSampler(meters.meters)
            sampler.start()
            meters.start()
            t0 = time.perf_counter()
            out = backend.run(prompts, batches, None, Progress("bench"))
            dt = time.perf_counter() - t0
            meters.stop()
            sampler.stop()
        return dt, sum(r.output_tokens for r in out.requests)

    def unmeasured() -> tuple[float, int]:
        """Same generate calls as the backend, without meters and without the per-step clock."""
        sync()
        t0 = time.perf_counter()
        n = 0
        for b in batches:
            enc = tok(
                [prompts[i] for i in b.indices],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=cfg["max_input_tokens"],
            ).to(backend.device)
            with torch.inference_mode():
                out = net.generate(**enc, **kwargs)
            n += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
        sync()
        return time.perf_counter() - t0, n

    def bare() -> tuple[float, int]:
        """A bare loop: fixed-size chunks, default padding, plain generate."""
        sync()
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(prompts), args.batch_size):
            enc = tok(
                prompts[i : i + args.batch_size], return_tensors="pt", padding=True, truncation=True, max_length=128
            )
            enc = enc.to(backend.device)
            with torch.no_grad():
                out = net.generate(
                    **enc,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            n += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
        sync()
        return time.perf_counter() - t0, n

    med, tps, times = interleaved({"measured": measured, "unmeasured": unmeasured, "bare": bare}, args.reps)
    print(
        f"device {args.device}, batch {args.batch_size}, {args.prompts} prompts x {args.new_tokens} new tokens, {args.reps} interleaved reps"
    )
    print_rows(med, tps, times)
    print(f"measurement on / off time ratio:      {med['measured'] / med['unmeasured']:.4f}  (target <= 1.01)")
    print(f"backend / bare generate throughput:   {tps['measured'] / tps['bare']:.4f}  (target >= 0.98)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
