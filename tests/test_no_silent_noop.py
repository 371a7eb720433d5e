"""No silent no-op: every leaf of the experiment schema either changes what the measurement hands its backend and
meters, or is refused when the campaign is expanded.

For each leaf and each backend it applies to, the test resolves a base experiment and the same experiment with that
leaf changed (through schema validation, resolution and the rules, as campaign expansion does), and compares
everything the backend and the measurement would be given: engine and ``generate`` arguments, sampling parameters,
environment variables, the prompts and how they are batched, the meters, the idle-baseline, warm-up and timeline
settings. A leaf whose change is accepted but leaves all of that equal fails the test. Settings the measurement
reads itself (warm-up, baseline, timeline, energy thresholds) are also shown to be read by a real measurement
(``test_every_measurement_setting_is_read``). A new schema key needs a value in ``ALT`` (or a reason in
``EXEMPT``) before this test passes.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import shutil
from pathlib import Path

import pytest

from conftest import QUICK_MEASUREMENT
from llenergymeasure.backends import rules as backend_rules
from llenergymeasure.campaign import resolve_experiment, semantic_problem
from llenergymeasure.config import _resolve, load_schema, schema_problems, set_dotted
from llenergymeasure.errors import ConfigError, MeasurementError

ROOT = load_schema("campaign")

#: leaves that are not settings of the measurement, and why
EXEMPT = {
    "config_name": "names the experiment (its results and the summary row); changes nothing measured",
    "backend": "chooses the backend itself: every input differs",
    "extra_metadata": "free-form labels recorded with the result; by definition they configure nothing",
}


def schema_leaves(schema=None, prefix=""):
    schema = _resolve(schema or ROOT["$defs"]["experiment"], ROOT)
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, ROOT)
        if "properties" in sub:
            yield from schema_leaves(sub, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", sub


LEAVES = dict(schema_leaves())


def _cases():
    for leaf in LEAVES:
        if leaf in EXEMPT:
            continue
        section = leaf.split(".")[0]
        for backend in (section,) if section in ("pytorch", "vllm", "tensorrt") else ("pytorch", "vllm", "tensorrt"):
            yield pytest.param(leaf, backend, id=f"{backend}:{leaf}")


# ------------------------------------------------------------------------------------------------- values
# ALT[leaf] lists (new value, companions[, with]): the leaf is changed to the new value on top of base + companions
# (plus ``with``: further changes that the new value needs, such as a GPU list matching a tensor-parallel size).
# Companions switch on what a setting is subordinate to, so that its effect (not only its refusal) is shown; a leaf
# without an entry gets the first other enum member, or the other boolean.
WORK = "__workdir__"  # replaced by the test's temporary folder
MODEL = "__model__"  # replaced by the tiny model's folder
ALT: dict[str, list[tuple]] = {
    "model_name": [(f"{WORK}/other-model", {})],
    "no_weights": [(True, {"model_name": f"{MODEL}/config.json"})],
    "fp_precision": [("bfloat16", {})],
    "device": [("cuda", {}), ("cpu", {}), ("auto", {})],
    "gpus": [
        ([1], {}),
        ([0, 1], {"vllm.tensor_parallel_size": 2, "tensorrt.tp_size": 2, "pytorch.num_processes": 2, "device": "cuda"}),
    ],
    "adapter": [("/adapters/a", {}), ("/adapters/b", {"adapter": "/adapters/a", "vllm.lora.enabled": True})],
    "max_input_tokens": [(16, {})],
    "max_output_tokens": [(5, {})],
    "min_output_tokens": [(1, {})],
    "num_input_prompts": [(3, {})],
    "random_seed": [(7, {}), (None, {})],
    "dataset.name": [(f"{WORK}/prompts.jsonl", {})],
    "dataset.split": [("test", {})],
    "dataset.subset": [("main", {})],
    "dataset.column": [("text", {}), ("other", {"dataset.name": f"{WORK}/prompts.jsonl"})],
    "dataset.shuffle": [(True, {})],
    "decoder.preset": [("creative", {}), ("factual", {})],
    "decoder.temperature": [(0.7, {}), (0.7, {"decoder.do_sample": False})],
    "decoder.do_sample": [(False, {})],
    "decoder.top_k": [(5, {}), (5, {"decoder.do_sample": False})],
    "decoder.top_p": [(0.8, {}), (0.8, {"decoder.do_sample": False})],
    "decoder.repetition_penalty": [(1.2, {}), (1.2, {"decoder.do_sample": False})],
    "pytorch.batch_size": [(2, {})],
    "pytorch.batching_strategy": [
        (name, {"pytorch.batch_size": 2, "dataset.name": f"{WORK}/prompts.jsonl"})
        for name in ("sorted_static", "dynamic", "sorted_dynamic")
    ]
    + [
        (
            name,
            {"max_input_tokens": 8, "pytorch.batch_size": 4, "dataset.name": f"{WORK}/prompts.jsonl"},
            {"pytorch.max_tokens_per_batch": 12},
        )
        for name in ("dynamic", "sorted_dynamic")
    ],
    "pytorch.max_tokens_per_batch": [
        (40, {}),
        (
            12,
            {
                "pytorch.batching_strategy": "dynamic",
                "pytorch.batch_size": 4,
                "max_input_tokens": 8,
                "pytorch.max_tokens_per_batch": 32,
                "dataset.name": f"{WORK}/prompts.jsonl",
            },
        ),
    ],
    "pytorch.attn_implementation": [("eager", {}), ("flash_attention_2", {})],
    "pytorch.min_p": [(0.1, {}), (0.1, {"decoder.do_sample": False})],
    "pytorch.no_repeat_ngram_size": [(3, {})],
    "pytorch.num_processes": [(2, {}), (2, {"device": "cuda"}, {"gpus": [0, 1]})],
    "pytorch.load_in_4bit": [(True, {}), (True, {"device": "cuda"})],
    "pytorch.load_in_8bit": [(True, {}), (True, {"device": "cuda"})],
    "pytorch.bnb_4bit_compute_dtype": [
        ("bfloat16", {}),
        ("bfloat16", {"device": "cuda", "pytorch.load_in_4bit": True}),
    ],
    "pytorch.bnb_4bit_quant_type": [("fp4", {}), ("fp4", {"device": "cuda", "pytorch.load_in_4bit": True})],
    "pytorch.bnb_4bit_use_double_quant": [(True, {}), (True, {"device": "cuda", "pytorch.load_in_4bit": True})],
    "pytorch.extra": [({"typical_p": 0.9}, {})],
    "pytorch.torch_compile": [(True, {}), ("max-autotune", {})],
    "pytorch.torch_compile_backend": [("cudagraphs", {}), ("aot_eager", {"pytorch.torch_compile": True})],
    "pytorch.cache_implementation": [("static", {}), ("static", {"pytorch.use_cache": False})],
    "warmup.mode": [("cv", {}), ("off", {}), ("cv", {"warmup.enabled": False})],
    "vllm.max_num_seqs": [(8, {})],
    "vllm.max_num_batched_tokens": [(512, {}), (100, {})],
    "vllm.gpu_memory_utilization": [(0.5, {})],
    "vllm.swap_space": [(8, {})],
    "vllm.cpu_offload_gb": [(1.5, {})],
    "vllm.tensor_parallel_size": [(2, {}), (2, {}, {"gpus": [0, 1]})],
    "vllm.pipeline_parallel_size": [(2, {}), (2, {}, {"gpus": [0, 1]})],
    "vllm.distributed_backend": [("ray", {}), ("ray", {"gpus": [0, 1], "vllm.tensor_parallel_size": 2})],
    "vllm.disable_custom_all_reduce": [(True, {}), (True, {"gpus": [0, 1], "vllm.tensor_parallel_size": 2})],
    "vllm.max_model_len": [(200, {}), (10, {})],
    "vllm.quantization": [("fp8", {}), ("awq", {})],
    "vllm.load_format": [("safetensors", {}), ("safetensors", {"vllm.quantization": "bitsandbytes"})],
    "vllm.attention.flash_version": [(3, {}), (3, {"vllm.attention.backend": "FLASH_ATTN"})],
    "vllm.min_p": [(0.05, {}), (0.05, {"decoder.do_sample": False})],
    "vllm.logprobs": [(2, {})],
    "vllm.logit_bias": [({"5": 1.5}, {})],
    "vllm.speculative.model": [
        ("org/eagle", {}),
        ("org/eagle", {"vllm.speculative.method": "eagle"}),
        ("org/draft", {"vllm.speculative.method": "eagle", "vllm.speculative.model": "org/eagle"}),
    ],
    "vllm.speculative.num_tokens": [
        (3, {}),
        (3, {"vllm.speculative.method": "ngram", "vllm.speculative.prompt_lookup_max": 4}),
    ],
    "vllm.speculative.method": [
        ("ngram", {"vllm.speculative.prompt_lookup_max": 4}),
        ("draft_model", {"vllm.speculative.model": MODEL}),
        ("eagle", {"vllm.speculative.model": "org/eagle"}),
        ("medusa", {"vllm.speculative.method": "eagle", "vllm.speculative.model": "org/eagle"}),
    ],
    "vllm.speculative.prompt_lookup_min": [
        (2, {}),
        (2, {"vllm.speculative.method": "ngram", "vllm.speculative.prompt_lookup_max": 4}),
        (2, {"vllm.speculative.method": "eagle", "vllm.speculative.model": "org/eagle"}),
    ],
    "vllm.speculative.prompt_lookup_max": [
        (4, {}),
        (5, {"vllm.speculative.method": "ngram", "vllm.speculative.prompt_lookup_max": 4}),
    ],
    "vllm.speculative.draft_tp_size": [
        (2, {}),
        (
            2,
            {
                "vllm.speculative.method": "eagle",
                "vllm.speculative.model": "org/eagle",
                "gpus": [0, 1],
                "vllm.tensor_parallel_size": 2,
            },
        ),
    ],
    "vllm.lora.enabled": [(True, {}), (True, {"adapter": "/adapters/a"})],
    "vllm.lora.max_loras": [(2, {}), (2, {"adapter": "/adapters/a", "vllm.lora.enabled": True})],
    "vllm.lora.max_rank": [(32, {}), (32, {"adapter": "/adapters/a", "vllm.lora.enabled": True})],
    "vllm.lora.extra_vocab_size": [(512, {}), (512, {"adapter": "/adapters/a", "vllm.lora.enabled": True})],
    "vllm.extra": [({"max_logprobs": 30}, {})],
    "tensorrt.max_batch_size": [(4, {}), (4, {"tensorrt.engine_path": f"{WORK}/engine"})],
    "tensorrt.max_num_tokens": [(512, {}), (512, {"tensorrt.engine_path": f"{WORK}/engine"})],
    "tensorrt.max_input_len": [(64, {}), (64, {"tensorrt.engine_path": f"{WORK}/engine"})],
    "tensorrt.max_output_len": [(16, {})],
    "tensorrt.quantization": [
        ("int8_weight_only", {}),
        ("fp8", {"tensorrt.calibration.dataset": f"{WORK}/calib"}),
        ("fp8", {}),
        ("int4_gptq", {}),
    ],
    "tensorrt.calibration.dataset": [
        (f"{WORK}/calib", {}),
        (f"{WORK}/calib", {"tensorrt.quantization": "fp8"}),
        ("pileval", {"tensorrt.quantization": "fp8"}),
        ("wikitext", {"tensorrt.quantization": "fp8"}),
    ],
    "tensorrt.calibration.split": [
        ("validation", {}),
        ("validation", {"tensorrt.quantization": "fp8", "tensorrt.calibration.dataset": f"{WORK}/calib"}),
    ],
    "tensorrt.calibration.num_samples": [
        (128, {}),
        (128, {"tensorrt.quantization": "fp8", "tensorrt.calibration.dataset": f"{WORK}/calib"}),
        (128, {"tensorrt.quantization": "int4_awq", "tensorrt.calibration.dataset": f"{WORK}/calib"}),
    ],
    "tensorrt.calibration.max_length": [
        (512, {}),
        (512, {"tensorrt.quantization": "fp8", "tensorrt.calibration.dataset": f"{WORK}/calib"}),
    ],
    "tensorrt.engine_path": [(f"{WORK}/engine", {})],
    "tensorrt.force_rebuild": [(True, {}), (True, {"tensorrt.engine_path": f"{WORK}/engine"})],
    "tensorrt.engine_cache_dir": [(f"{WORK}/cache", {}), (f"{WORK}/cache", {"tensorrt.engine_path": f"{WORK}/engine"})],
    "tensorrt.builder_opt_level": [(5, {})],
    "tensorrt.strongly_typed": [(False, {})],
    "tensorrt.multiple_profiles": [(True, {})],
    "tensorrt.tp_size": [(2, {}), (2, {}, {"gpus": [0, 1]})],
    "tensorrt.pp_size": [(2, {}), (2, {}, {"gpus": [0, 1]})],
    "tensorrt.kv_cache_type": [("continuous", {}), ("continuous", {"tensorrt.enable_chunked_context": False})],
    "tensorrt.enable_chunked_context": [(False, {})],
    "tensorrt.enable_kv_cache_reuse": [(True, {}), (True, {"warmup.mode": "off"})],
    "tensorrt.gpu_memory_utilization": [(0.5, {})],
    "tensorrt.single_process": [(False, {})],
    "tensorrt.draft_model": [("org/draft", {})],
    "tensorrt.num_draft_tokens": [(3, {})],
    "tensorrt.extra_build_args": [({"opt_batch_size": 2}, {})],
    "tensorrt.extra_runtime_args": [({"enable_tqdm": True}, {})],
    "warmup.cv_threshold": [(0.1, {}), (0.1, {"warmup.mode": "off"})],
    "warmup.max_prompts": [(4, {}), (4, {"warmup.mode": "off"})],
    "warmup.window_size": [(4, {}), (4, {"warmup.mode": "off"})],
    "warmup.min_prompts": [(4, {}), (4, {"warmup.mode": "off"})],
    "warmup.convergence_detection": [(False, {}), (False, {"warmup.mode": "off"})],
    "baseline.required": [(True, {}), (True, {"baseline.enabled": False})],
    "baseline.duration_s": [(2, {}), (2, {"baseline.enabled": False})],
    "baseline.cache_ttl_s": [(120, {}), (120, {"baseline.enabled": False})],
    "baseline.sample_interval_ms": [(200, {}), (200, {"baseline.enabled": False})],
    "energy.backend": [("estimate", {}), ("rapl", {}), ("nvml", {}), ("codecarbon", {})],
    # the TDP feeds the CPU estimate, which energy.backend = auto uses only where RAPL is unreadable
    "energy.cpu_tdp_w": [(95.0, {"energy.backend": "estimate"}), (95.0, {"energy.backend": "rapl"})],
    "energy.cpu_part_threads": [(96, {"energy.backend": "estimate"}), (96, {"energy.backend": "rapl"})],
    # whose CPU energy: RAPL's or the estimate's, booked to the machine or to the measuring process tree
    "energy.cpu_attribution": [("process", {}), ("process", {"energy.backend": "codecarbon"})],
    "energy.country_iso_code": [("FRA", {})],
    "energy.min_window_s": [(5.0, {})],
    "energy.repeat_to_min_window": [(True, {})],
    "timeline.save": [(True, {}), (True, {"timeline.enabled": False})],
    "timeline.interval_ms": [(200, {}), (200, {"timeline.enabled": False})],
    # the serving load: each field against a load that uses it, and against offline (where it is refused)
    "load.arrival": [
        ("poisson", {}, {"load.rate_per_s": 2}),
        ("constant", {}, {"load.rate_per_s": 2}),
        ("gamma", {}, {"load.rate_per_s": 2, "load.gamma_shape": 0.5}),
        ("closed", {}, {"load.concurrency": 2}),
        ("trace", {}, {"load.trace": f"{WORK}/trace.jsonl"}),
        ("constant", {"load.arrival": "poisson", "load.rate_per_s": 2}),
    ],
    "load.rate_per_s": [(3, {"load.arrival": "poisson", "load.rate_per_s": 2}), (3, {})],
    "load.gamma_shape": [
        (0.5, {"load.arrival": "gamma", "load.rate_per_s": 2, "load.gamma_shape": 2}),
        (0.5, {"load.arrival": "poisson", "load.rate_per_s": 2}),
    ],
    "load.concurrency": [(3, {"load.arrival": "closed", "load.concurrency": 2}), (3, {})],
    "load.trace": [
        (f"{WORK}/trace2.jsonl", {"load.arrival": "trace", "load.trace": f"{WORK}/trace.jsonl"}),
        (f"{WORK}/trace.jsonl", {}),
    ],
    "load.seed": [
        (5, {"load.arrival": "poisson", "load.rate_per_s": 2}),
        (5, {"load.arrival": "closed", "load.concurrency": 2}),
    ],
    "load.slo.ttft_ms": [(100, {"load.arrival": "poisson", "load.rate_per_s": 2}), (100, {})],
    "load.slo.tpot_ms": [(20, {"load.arrival": "poisson", "load.rate_per_s": 2}), (20, {})],
}


def alternatives(leaf: str) -> list[tuple]:
    if leaf in ALT:
        return ALT[leaf]
    sub = LEAVES[leaf]
    default = sub.get("default")
    if "enum" in sub:
        return [(next(v for v in sub["enum"] if v != default and v is not None), {})]
    if sub.get("type") == "boolean":
        return [(not default, {})]
    raise AssertionError(f"{leaf}: no alternative value; add one to ALT (or a reason to EXEMPT)")


BASE = {
    "pytorch": {"backend": "pytorch", "device": "cpu", "fp_precision": "float32"},
    "vllm": {"backend": "vllm", "fp_precision": "float16"},
    "tensorrt": {"backend": "tensorrt", "fp_precision": "float16"},
}
COMMON = {"max_input_tokens": 32, "max_output_tokens": 4, "num_input_prompts": 4}


def _substitute(value, work, model):
    if isinstance(value, str):
        return value.replace(WORK, str(work)).replace(MODEL, str(model))
    if isinstance(value, dict):
        return {k: _substitute(v, work, model) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, work, model) for v in value]
    return value


def resolved(backend: str, changes: dict, work, model) -> tuple[dict | None, str | None]:
    """(config, None) as campaign expansion resolves it, or (None, reason) when refused."""
    raw = copy.deepcopy({**QUICK_MEASUREMENT, "model_name": str(model), **COMMON, **BASE[backend]})
    raw["decoder"] = {}
    for key, value in changes.items():
        set_dotted(raw, key, _substitute(value, work, model))
    problems = schema_problems(raw, "campaign", ref="experiment")
    if problems:
        return None, str(ConfigError(problems))
    config = resolve_experiment(raw)
    problem = semantic_problem(config)
    return (None, problem) if problem else (config, None)


# ------------------------------------------------------------------------------------------------- what is received
def plain(value):
    """A comparable plain-data copy of engine objects (dataclasses, pydantic-like models, enums)."""
    if isinstance(value, enum.Enum):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return plain(value.model_dump())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {k: plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return value


def _attempt(fn):
    try:
        return fn()
    except (ConfigError, MeasurementError, ValueError, TypeError) as exc:
        return f"refused: {type(exc).__name__}: {exc}"


def received(config: dict, model: str, tokenizer, llmapi) -> dict:
    """Everything the measurement hands the backend and the meters for this experiment."""
    from llenergymeasure.energy.meters import select_meters
    from llenergymeasure.measure import emissions_section
    from llenergymeasure.process import select_gpus
    from llenergymeasure.prompts import load_prompts

    out: dict = {}
    env: dict = {}
    out["gpu_selection"] = (select_gpus(config, env), env)
    rules = backend_rules(config["backend"])
    out["implementation"], out["gpus"] = rules.implementation(config), rules.gpus(config)
    prompts = _attempt(lambda: load_prompts(config["dataset"], config["num_input_prompts"], config["random_seed"]))
    out["prompts"] = prompts
    # sections the measurement consumes as they are (test_every_measurement_setting_is_read shows each is read)
    out["measurement"] = {k: config[k] for k in ("warmup", "baseline", "timeline")}
    out["window"] = {k: config["energy"][k] for k in ("min_window_s", "repeat_to_min_window")}
    # the serving load: when each request is submitted (the schedule), and the objectives its goodput is judged by
    from llenergymeasure.serving import make_schedule

    out["schedule"] = (
        _attempt(lambda: repr(make_schedule(config["load"], prompts))) if isinstance(prompts, list) else None
    )
    out["window"]["slo"] = config["load"]["slo"]
    gpu_count = rules.gpus(config) if config["device"] != "cpu" else 0
    out["meters"] = {
        host: _on_host(host, lambda: _attempt(lambda: select_meters(config["energy"], gpu_count).describe()))
        for host in ("rapl_and_gpu", "bare")
    }
    out["emissions"] = emissions_section(1.0, config["energy"]["country_iso_code"], "x")
    n_out, n_min, seed = config["max_output_tokens"], config["min_output_tokens"], config["random_seed"]
    out["truncation"] = config["max_input_tokens"]
    if config["backend"] == "pytorch":
        from llenergymeasure.backends.pytorch import PyTorchBackend

        b = PyTorchBackend(config, model)
        b.tokenizer, b.stop_token_ids, b.pad_token_id = tokenizer, [tokenizer.eos_token_id], tokenizer.pad_token_id
        b.device = "cpu"  # where plan() puts the encoded batches
        out["load"] = {
            "dtype": config["fp_precision"],
            "attn_implementation": config["pytorch"]["attn_implementation"],
            "bitsandbytes": b.bnb_kwargs(),
            "weights": "random" if config["no_weights"] else config["model_name"],
            "device": _attempt(b.resolve_device),
            "requested_device": config["device"],
            "torch_compile": b.compile_kwargs(),
        }
        out["generate"] = b._generate_kwargs(n_out, n_min)
        out["seed"] = seed
        out["plan"] = [bt.indices for bt in b.plan(prompts)] if isinstance(prompts, list) else None
    elif config["backend"] == "vllm":
        from llenergymeasure.backends.vllm import (
            Installed,
            VllmBackend,
            engine_device,
            engine_environment,
            engine_kwargs,
        )

        b = VllmBackend(config, model)
        # where the engine runs, on a host with vLLM's CUDA build and on one with its CPU build
        out["device"] = [engine_device(config, Installed("0.32.0", cpu)) for cpu in (False, True)]
        out["engine"] = engine_kwargs(config, config["model_name"])
        out["environment"] = engine_environment(config, {})
        out["sampling"] = b.sampling_kwargs(n_out, n_min, b.request_seed(seed, 0))
        out["lora"] = b.lora_kwargs()
    else:
        from llenergymeasure.backends.tensorrt import (
            TensorRTBackend,
            engine_cache_root,
            engine_environment,
            engine_key_fields,
        )

        b = TensorRTBackend(config, model)
        out["build"] = _attempt(lambda: plain(b.build_config(llmapi)))
        out["quantization"] = plain(b.quant_args(llmapi))
        out["runtime"] = plain(b.runtime_args(llmapi))
        out["engine_key"] = engine_key_fields(config, config["model_name"], "sm_90", "1.0.0")
        out["engine_source"] = {
            "engine_path": config["tensorrt"]["engine_path"],
            "force_rebuild": config["tensorrt"]["force_rebuild"],
            "cache_root": str(engine_cache_root(config)),
        }
        out["environment"] = engine_environment(config, {})
        b.end_id, b.pad_id, b.stop_token_ids = tokenizer.eos_token_id, tokenizer.eos_token_id, [tokenizer.eos_token_id]
        out["sampling"] = b.sampling_kwargs(n_out, n_min, seed)
    return json.loads(json.dumps(out, default=str))


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model):
    """Files the alternative values name: another model folder, a prompt file, a calibration set, an engine."""
    folder = tmp_path_factory.mktemp("noop")
    shutil.copytree(tiny_model, folder / "other-model")
    rows = [{"prompt": "rain " * (6 - i), "text": f"text {i}", "other": f"other column {i}"} for i in range(6)]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, gap in (("trace.jsonl", 0.5), ("trace2.jsonl", 0.25)):
        arrivals = [{"arrival_s": i * gap, "prompt": i % 3} for i in range(4)]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in arrivals))
    (folder / "calib").mkdir()
    (folder / "calib" / "train.jsonl").write_text(
        "".join(json.dumps({"text": f"calibration {i}"}) + "\n" for i in range(4))
    )
    (folder / "engine").mkdir()
    return folder


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.padding_side = "left"
    return tok


HOSTS: dict = {}


def _on_host(name: str, fn):
    """Run ``fn`` as on a host with a readable RAPL domain and an NVIDIA GPU, or on one with neither: a meter choice
    shows on one of them (auto and rapl differ only where RAPL is missing, auto and nvml only without a GPU)."""
    from llenergymeasure.energy import meters

    rapl, gpus = HOSTS[name]
    saved = meters.rapl_domains, meters.visible_gpus
    meters.rapl_domains, meters.visible_gpus = (lambda *a, **k: rapl), (lambda: gpus)
    try:
        return fn()
    finally:
        meters.rapl_domains, meters.visible_gpus = saved


@pytest.fixture
def host(monkeypatch, tmp_path):
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (domain / "energy_uj").write_text("1000\n")
    rapl = [{"name": "package-0", "path": str(domain), "wrap_uj": 2**32}]
    gpu = {"cuda_index": 0, "nvml_index": 0, "uuid": "GPU-test", "name": "test board", "mig": False, "handle": None}
    HOSTS.update(rapl_and_gpu=(rapl, [gpu]), bare=([], []))
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------------------------- the property
def test_every_leaf_has_a_probe():
    missing = [
        leaf
        for leaf in LEAVES
        if leaf not in EXEMPT
        and leaf not in ALT
        and "enum" not in LEAVES[leaf]
        and LEAVES[leaf].get("type") != "boolean"
    ]
    assert missing == []


@pytest.mark.parametrize(("leaf", "backend"), list(_cases()))
def test_a_changed_setting_reaches_the_backend_or_is_refused(
    leaf, backend, work, tiny_model, tokenizer, host, fake_trt
):
    from tensorrt_llm import llmapi

    shown = 0
    for value, companions, *needs in alternatives(leaf):
        base, why = resolved(backend, companions, work, tiny_model)
        if base is None:  # these companions do not apply to this backend: nothing to show here
            assert companions, f"the base {backend} experiment is refused: {why}"
            continue
        changed, refused = resolved(
            backend, {**companions, leaf: value, **(needs[0] if needs else {})}, work, tiny_model
        )
        if changed == base:  # the base already has this value (e.g. device: cpu on PyTorch): no change to show
            continue
        if refused:
            shown += 1
            continue
        before = received(base, tiny_model, tokenizer, llmapi)
        after = received(changed, tiny_model, tokenizer, llmapi)
        assert before != after, (
            f"{leaf} = {value!r} (with {companions}) is accepted but changes nothing {backend} receives"
        )
        shown += 1
    assert shown, f"{leaf}: no alternative could be checked on {backend}"


class Tracked(dict):
    """A config mapping that records the dotted path of every value read from it (nested sections included)."""

    def __init__(self, data: dict, reads: set, prefix: str = "") -> None:
        super().__init__(data)
        self._reads, self._prefix = reads, prefix

    def __getitem__(self, key):
        value = super().__getitem__(key)
        path = f"{self._prefix}{key}"
        self._reads.add(path)
        return (
            Tracked(value, self._reads, path + ".")
            if isinstance(value, dict) and not isinstance(value, Tracked)
            else value
        )

    def get(self, key, default=None):
        return self[key] if key in self else default  # noqa: SIM401 - through __getitem__, which records the read


MEASUREMENT_SECTIONS = ("warmup", "baseline", "energy", "timeline")


def test_every_measurement_setting_is_read(tiny_model, tmp_path, monkeypatch):
    """The settings the measurement consumes itself (warm-up, idle baseline, meters, timeline) are each read during
    a real measurement: a key nothing reads cannot change anything."""
    from llenergymeasure.energy import meters
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.runtime import JobContext

    monkeypatch.setenv("LLM_ENERGY_CACHE_DIR", str(tmp_path / "cache"))  # the idle baseline is measured, not cached
    monkeypatch.setattr(meters, "rapl_domains", lambda *a, **k: [])  # the CPU estimate, as on this project's machines
    config, why = resolved(
        "pytorch", {"energy.country_iso_code": "FRA", "timeline.interval_ms": 200}, tmp_path, tiny_model
    )
    assert config is not None, why
    reads: set = set()
    run_experiment(
        Tracked(config, reads), "noop-probe", 1, tiny_model, None, JobContext(state_dir=str(tmp_path / "state"))
    )
    unread = [leaf for leaf in LEAVES if leaf.split(".")[0] in MEASUREMENT_SECTIONS and leaf not in reads]
    assert unread == []


# ------------------------------------------------------------------------------------------------- the real vLLM
#: leaves that reach the vLLM engine or its requests (the others are the measurement's, shown above)
VLLM_ENGINE_LEAVES = [
    leaf
    for leaf in LEAVES
    if leaf.split(".")[0] in ("vllm", "decoder")
    or leaf
    in (
        "model_name",
        "fp_precision",
        "random_seed",
        "max_input_tokens",
        "max_output_tokens",
        "min_output_tokens",
        "adapter",
    )
]
#: what every case adds: the CPU, where vLLM's CPU build runs here, in the precision it computes in
ON_CPU = {"device": "cpu", "fp_precision": "float32"}


@pytest.mark.workflow
def test_vllm_settings_reach_the_real_engine_on_the_cpu(vllm_python, work, tiny_model, tmp_path):
    """Each vLLM setting, on a CPU experiment: refused before any job, or it changes what the real engine (vLLM's
    CPU build) builds from the backend's arguments (EngineArgs.create_engine_config, no weights loaded) or the
    SamplingParams of its requests. An accepted setting the engine would reject fails too. Settings refused on a
    CPU are shown on GPUs, against the stand-in, by the test above."""
    import subprocess

    from conftest import REPO, vllm_environment
    from llenergymeasure.backends.vllm import RELEASES, engine_environment

    rel = RELEASES["0.32.0"]
    configs: dict[str, dict] = {}
    pairs = []
    refused = 0
    for leaf in VLLM_ENGINE_LEAVES:
        for n, (value, companions, *needs) in enumerate(alternatives(leaf)):
            companions = {**ON_CPU, **companions}
            base, _ = resolved("vllm", companions, work, tiny_model)
            if base is None:
                continue
            changed, why = resolved(
                "vllm", {**companions, leaf: value, **(needs[0] if needs else {})}, work, tiny_model
            )
            if changed == base:
                continue
            if why:
                refused += 1
                continue
            if any(not Path(c["vllm"]["speculative"]["model"] or ".").is_dir() for c in (base, changed)):
                continue  # an EAGLE or Medusa head: no such checkpoint here (shown against the stand-in above)
            key = f"{leaf}#{n}"
            configs[f"{key}:base"], configs[f"{key}:changed"] = base, changed
            pairs.append(key)
    # the same configuration twice: identical records, or the comparison below could not fail
    configs["self:a"] = configs["self:b"] = resolved("vllm", ON_CPU, work, tiny_model)[0]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": tiny_model, "engine_args": configs}))
    done = subprocess.run(
        [str(vllm_python), str(REPO / "tests" / "engines" / "vllm_probe.py"), str(spec), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=900,
        env=vllm_environment(),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads((tmp_path / "out.json").read_text())["engine_args"]
    assert seen["self:a"] == seen["self:b"] and "error" not in seen["self:a"]["engine"]

    def held(name: str) -> dict:
        config = configs[name]
        return {
            **seen[name],
            "environment": engine_environment(config, {}, rel),
            "lora": VllmBackend_lora(config),
        }

    rejected = [
        (key, seen[f"{key}:changed"]["engine"]["error"]) for key in pairs if "error" in seen[f"{key}:changed"]["engine"]
    ]
    assert rejected == [], "accepted here, rejected by the engine:\n" + "\n".join(
        f"{k}: {e[:400]}" for k, e in rejected
    )
    same = [key for key in pairs if held(f"{key}:base") == held(f"{key}:changed")]
    assert same == [], "accepted, but the real engine holds the same configuration and sampling parameters"
    print(f"{len(pairs)} changes reached the real engine; {refused} were refused before any job")
    assert len(pairs) > 20 and refused > 5  # both kinds were shown


def VllmBackend_lora(config: dict):
    from llenergymeasure.backends.vllm import VllmBackend

    return VllmBackend(config, config["model_name"]).lora_kwargs()
