"""vLLM backend: vLLM's offline engine (``vllm.LLM``, V1 engine) driven one scheduler step at a time.

Coded against vLLM 0.11.0 (:data:`PINNED_VERSION`), the release of the official image
``vllm/vllm-openai:v0.11.0`` that the campaign's ``containers.vllm`` names by default.

Workload: every prompt is tokenised with the engine's own tokenizer, truncated to ``max_input_tokens`` and submitted
as token ids, all at once; the engine's scheduler decides which sequences run together (continuous batching, at
most ``vllm.max_num_seqs`` at a time). :meth:`VllmBackend.run` then calls ``llm_engine.step()`` until no request is
left and timestamps on the host (``time.perf_counter``) the new tokens each step returns, per request:

- TTFT: submission of the workload to the arrival of the request's first token (seconds);
- ITL: gaps between consecutive token arrivals (seconds). A step can return several tokens of one request
  (speculative decoding accepts drafts): they arrive together, so the first of them gets the gap since the
  previous arrival and the others a gap of 0, and the gaps still sum to E2E - TTFT;
- E2E: submission to the arrival of the request's last token (seconds).

Output tokens are the length of the final output's token ids (EOS included when generated), input tokens the
number of prompt token ids submitted. Nothing is padded. Sampling seeds are per request (run seed + prompt index),
so a request's tokens do not depend on which other requests shared its steps.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so each ``step()`` is one scheduler
iteration; with speculative decoding it stays in its own process, because vLLM 0.11.0's in-process core drops the
drafter's proposals (vLLM issue #27287: speculation silently never happens). Energy, memory and everything else
the engine does in worker processes is measured from outside (NVML), not through this process.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import os
import statistics
import time
from pathlib import Path

from ..errors import MeasurementError
from . import BackendRules
from .base import Batch, BatchRecord, RequestTiming, RunOutput, Step, generation_eos, shape, stop_token_ids, warm_up

log = logging.getLogger(__name__)

#: The vLLM release this module is written against (engine arguments, module paths, environment variables).
PINNED_VERSION = "0.11.0"
#: Official image of that release (what ``containers.vllm`` defaults to).
PINNED_IMAGE = "docker://vllm/vllm-openai:v0.11.0"

#: Schema ``decoder.top_k`` = 0 means "no top-k"; vLLM 0.11.0 spells that 0 as well (-1 is also accepted).
TOP_K_DISABLED = 0
#: Schema speculative methods -> vLLM 0.11.0 ``speculative_config["method"]`` names.
SPEC_METHODS = {
    "ngram": "ngram",
    "eagle": "eagle",
    "eagle3": "eagle3",
    "medusa": "medusa",
    "mlp": "mlp_speculator",
    "draft_model": "draft_model",
}
#: Methods vLLM 0.11.0 accepts in its config but its V1 engine cannot run (it raises, or its model runner does).
SPEC_UNSUPPORTED = {"draft_model", "mlp_speculator"}
#: Schema quantisation -> what the engine is given. An explicit ``awq``/``gptq`` makes vLLM 0.11.0 keep the legacy
#: kernels even where Marlin applies ("... so forcing awq", model_executor/layers/quantization/awq_marlin.py:110-127,
#: gptq_marlin.py:181-199), so the schema's names ask for the Marlin kernels, which is what vLLM picks by itself for
#: a compatible checkpoint when the method is left open (null).
QUANTIZATION = {"awq": "awq_marlin", "gptq": "gptq_marlin", "fp8": "fp8", "bitsandbytes": "bitsandbytes"}
#: ``quantization_config.quant_method`` of a checkpoint each schema method needs (fp8 and bitsandbytes can also
#: quantise unquantised weights while loading).
CHECKPOINT_METHOD = {"awq": "awq", "gptq": "gptq", "fp8": "fp8", "bitsandbytes": "bitsandbytes"}
#: LoRA limits vLLM 0.11.0 checks when LoRA is enabled.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
LORA_EXTRA_VOCAB = (256, 512)
#: Environment variables read while the engine starts, recorded with the result.
ENGINE_ENV = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_ATTENTION_BACKEND",
    "VLLM_FLASH_ATTN_VERSION",
    "TORCH_COMPILE_DISABLE",
    "NCCL_P2P_DISABLE",
)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def missing_engine(exc: BaseException | None = None) -> MeasurementError:
    why = f"{type(exc).__name__}: {exc}" if exc is not None else "no module named 'vllm'"
    return MeasurementError(
        f"vllm is not importable here ({why}); run vLLM experiments in their container: snakemake --sdm apptainer "
        f"(containers.vllm, default {PINNED_IMAGE})"
    )


# ---------------------------------------------------------------------------------------------------- rules
# What this backend and vLLM 0.11.0 refuse, or would silently ignore, and why; the GPUs an engine occupies; the
# batching knob; how parameters are counted. Engine-free (see llenergymeasure.backends); each release fact is cited
# from the 0.11.0 wheel (vllm-0.11.0-cp38-abi3-manylinux1_x86_64, paths under vllm/).


def problems(config: dict) -> list[str]:
    """Every reason this experiment cannot run on vLLM 0.11.0 as configured."""
    return list(_problems(config))


def _problems(config: dict):
    v = config["vllm"]
    world = v["tensor_parallel_size"] * v["pipeline_parallel_size"]
    if config["no_weights"]:
        yield "no_weights builds random weights in PyTorch; backend vllm loads checkpoints only"
    if config["adapter"] and not v["lora"]["enabled"]:
        yield "adapter is set, but vllm.lora.enabled = false"
    lora = v["lora"]
    if not lora["enabled"]:
        changed = _changed(lora, LORA_DEFAULTS)
        if changed:
            yield f"vllm.lora.{changed} applies to LoRA adapters, but vllm.lora.enabled = false"
    else:
        if not config["adapter"]:
            yield "vllm.lora.enabled = true, but no adapter is set"
        if lora["max_rank"] not in LORA_RANKS:
            yield f"vllm.lora.max_rank = {lora['max_rank']}: vLLM {PINNED_VERSION} accepts {', '.join(map(str, LORA_RANKS))}"
        if lora["extra_vocab_size"] not in LORA_EXTRA_VOCAB:
            yield f"vllm.lora.extra_vocab_size = {lora['extra_vocab_size']}: vLLM {PINNED_VERSION} accepts 256 or 512"
    problem = _speculative_problem(v["speculative"])
    if problem:
        yield problem
    if v["swap_space"] != SWAP_SPACE_DEFAULT:
        yield (
            f"vllm.swap_space = {v['swap_space']}: vLLM {PINNED_VERSION}'s V1 engine allocates no CPU swap blocks "
            "(v1/engine/core.py:204), so the setting would change nothing"
        )
    if not v["enable_chunked_prefill"]:
        yield (
            f"vllm.enable_chunked_prefill = false: vLLM {PINNED_VERSION}'s V1 engine chunks the prefills of every "
            "generation model regardless (engine/arg_utils.py:1547-1548)"
        )
    if world == 1 and v["distributed_backend"] != "mp":
        yield (
            f"vllm.distributed_backend = {v['distributed_backend']} chooses how the workers of a multi-GPU engine "
            "are started; with one GPU vLLM runs its single worker in process"
        )
    if world == 1 and v["disable_custom_all_reduce"]:
        yield "vllm.disable_custom_all_reduce applies to tensor-parallel engines; with one GPU there is no all-reduce"
    budget = v["max_num_batched_tokens"]
    if budget is not None and budget < v["max_num_seqs"]:
        yield (
            f"vllm.max_num_batched_tokens = {budget} is smaller than vllm.max_num_seqs = {v['max_num_seqs']}: "
            f"vLLM {PINNED_VERSION} rejects that"
        )
    if v["max_model_len"] is not None and v["max_model_len"] < config["max_input_tokens"] + config["max_output_tokens"]:
        yield (
            f"vllm.max_model_len = {v['max_model_len']} is smaller than max_input_tokens + max_output_tokens = "
            f"{config['max_input_tokens'] + config['max_output_tokens']}"
        )
    if v["kv_cache_dtype"] == "fp8" and config["fp_precision"] == "float32":
        yield "vllm.kv_cache_dtype = fp8 with fp_precision = float32 is not supported by vLLM"
    if v["attention"]["flash_version"] is not None and v["attention"]["backend"] != "FLASH_ATTN":
        yield "vllm.attention.flash_version applies to vllm.attention.backend = FLASH_ATTN only"
    if not config["decoder"]["do_sample"] and v["min_p"] != 0:
        yield (
            f"vllm.min_p = {v['min_p']} shapes sampling, but decoding is greedy (decoder.do_sample = false); "
            f"vLLM {PINNED_VERSION} resets min_p for greedy requests (sampling_params.py:353-357)"
        )
    problem = _quantization_problem(config)
    if problem:
        yield problem


SWAP_SPACE_DEFAULT = 4
LORA_DEFAULTS = {"max_loras": 1, "max_rank": 16, "extra_vocab_size": 256}
SPECULATIVE_DEFAULTS = {"num_tokens": 5, "prompt_lookup_min": 1, "prompt_lookup_max": None, "draft_tp_size": 1}


def _changed(section: dict, defaults: dict) -> str | None:
    """The first key of ``section`` whose value differs from ``defaults``, as 'key = value'."""
    for key, default in defaults.items():
        if section[key] != default:
            return f"{key} = {section[key]}"
    return None


def _speculative_problem(spec: dict) -> str | None:
    if spec["method"] is None and spec["model"] is None:
        changed = _changed(spec, SPECULATIVE_DEFAULTS)
        return (
            f"vllm.speculative.{changed} applies to speculative decoding, which is off (no method, no model)"
            if changed
            else None
        )
    method = SPEC_METHODS[spec["method"] or "draft_model"]
    if method in SPEC_UNSUPPORTED:
        how = (
            f"vllm.speculative.method = {spec['method']}"
            if spec["method"]
            else "vllm.speculative.model without a method (draft_model)"
        )
        return f"{how} is not supported by vLLM {PINNED_VERSION}'s V1 engine (use ngram, eagle, eagle3 or medusa)"
    if method == "ngram":
        if spec["model"]:
            return "vllm.speculative.method = ngram looks tokens up in the prompt; it takes no draft model"
        if spec["prompt_lookup_max"] is None:
            return "vllm.speculative.method = ngram needs vllm.speculative.prompt_lookup_max"
        if spec["prompt_lookup_max"] < spec["prompt_lookup_min"]:
            return "vllm.speculative.prompt_lookup_max is smaller than prompt_lookup_min"
    else:
        if not spec["model"]:
            return f"vllm.speculative.method = {spec['method']} needs vllm.speculative.model"
        lookup = _changed(spec, {"prompt_lookup_min": 1, "prompt_lookup_max": None})
        if lookup:
            return f"vllm.speculative.{lookup} applies to method ngram only (method = {spec['method']})"
    if spec["draft_tp_size"] != 1:
        return (
            f"vllm.speculative.draft_tp_size = {spec['draft_tp_size']}: vLLM {PINNED_VERSION}'s V1 engine runs the "
            "drafter inside the target model's workers; the draft tensor-parallel size is checked "
            "(config/speculative.py:466-490) but no V1 code reads it"
        )
    return None


def _quantization_problem(config: dict) -> str | None:
    """What the checkpoint and the quantisation settings must agree on, where the checkpoint's config is readable
    here (a local folder, or the Hugging Face cache); otherwise the engine checks at load."""
    from . import checkpoint_quantization

    v = config["vllm"]
    method = v["quantization"]
    found = checkpoint_quantization(config["model_name"])
    found_method = (found or {}).get("quant_method")
    if v["load_format"] != "auto" and (method == "bitsandbytes" or found_method == "bitsandbytes"):
        return (
            f"vllm.load_format = {v['load_format']}: vLLM {PINNED_VERSION} loads BitsAndBytes weights with its "
            "bitsandbytes loader whatever load_format says (engine/arg_utils.py:1058-1059, 1398-1400)"
        )
    if method is None or found is None:
        return None
    if found_method is None and method in ("awq", "gptq"):
        return f"vllm.quantization = {method} needs a checkpoint quantised with {method.upper()}; {config['model_name']} has no quantization_config"
    if found_method is not None and found_method != CHECKPOINT_METHOD[method]:
        return (
            f"vllm.quantization = {method}, but {config['model_name']} is quantised with {found_method} "
            f"(vLLM {PINNED_VERSION} refuses the mismatch, config/model.py:952-957)"
        )
    return None


def gpus(config: dict) -> int:
    """Tensor x pipeline parallel ranks, one GPU each."""
    return config["vllm"]["tensor_parallel_size"] * config["vllm"]["pipeline_parallel_size"]


def nominal_batch(config: dict) -> tuple[int, str]:
    return config["vllm"]["max_num_seqs"], "continuous"


def count_parameters(config: dict, counted: int | None, hf_config) -> tuple[int | None, str]:
    """``counted``: ``numel()`` summed over the engine's model (None when the model lives in other processes).
    Quantised weights are stored packed (eight int4 values per int32 for AWQ/GPTQ, two per uint8 for 4-bit
    BitsAndBytes), so a quantised model's count comes from its config."""
    from ..flops import analytic_parameters

    if counted is None:
        return analytic_parameters(hf_config), "analytic_from_hf_config (model in worker processes)"
    prequantised = (
        getattr(hf_config, "quantization_config", None)
        if not isinstance(hf_config, dict)
        else hf_config.get("quantization_config")
    )
    if config["vllm"]["quantization"] is not None or prequantised:
        return analytic_parameters(hf_config), "analytic_from_hf_config (quantised weights are stored packed)"
    return counted, "engine_model_numel"


def implementation(config: dict) -> str:
    return "llenergymeasure.backends.vllm:VllmBackend"


RULES = BackendRules(
    name="vllm",
    engine=f"vLLM {PINNED_VERSION}",
    batch_knob="vllm.max_num_seqs",
    batch_label="seqs",
    gpus_knob="vllm.tensor_parallel_size x pipeline_parallel_size",
    gpu_only=True,
    problems=problems,
    gpus=gpus,
    nominal_batch=nominal_batch,
    count_parameters=count_parameters,
    implementation=implementation,
)


# ---------------------------------------------------------------------------------------------------- engine inputs


def speculative_config(spec: dict) -> dict | None:
    """The ``speculative_config`` engine argument from the schema's ``vllm.speculative`` (None: no speculation).
    The draft tensor-parallel size is left to vLLM (see :func:`problem`)."""
    if spec["method"] is None and spec["model"] is None:
        return None
    method = SPEC_METHODS[spec["method"] or "draft_model"]
    out = {"method": method, "model": spec["model"], "num_speculative_tokens": spec["num_tokens"]}
    if method == "ngram":
        out.update(prompt_lookup_min=spec["prompt_lookup_min"], prompt_lookup_max=spec["prompt_lookup_max"])
    return {k: v for k, v in out.items() if v is not None}


def engine_kwargs(config: dict, model_path: str) -> dict:
    """Keyword arguments of ``vllm.LLM`` for an experiment. Values that are null in the config are left out (the
    engine decides them); ``vllm.extra`` is applied last and wins."""
    v = config["vllm"]
    world = v["tensor_parallel_size"] * v["pipeline_parallel_size"]
    kw = {
        "model": model_path,
        "tokenizer": model_path,
        "dtype": config["fp_precision"],
        "seed": config["random_seed"],
        "max_num_seqs": v["max_num_seqs"],
        "max_num_batched_tokens": v["max_num_batched_tokens"],
        "gpu_memory_utilization": v["gpu_memory_utilization"],
        "cpu_offload_gb": v["cpu_offload_gb"],
        "tensor_parallel_size": v["tensor_parallel_size"],
        "pipeline_parallel_size": v["pipeline_parallel_size"],
        # vLLM uses its in-process executor for one GPU when this is unset; "mp" would move the single worker
        # into a second process, which no vLLM default does, so the choice is passed for multi-GPU engines only.
        "distributed_executor_backend": v["distributed_backend"] if world > 1 else None,
        "disable_custom_all_reduce": v["disable_custom_all_reduce"] if world > 1 else None,
        "enable_prefix_caching": v["enable_prefix_caching"],
        "block_size": v["block_size"],
        "max_model_len": v["max_model_len"] or config["max_input_tokens"] + config["max_output_tokens"],
        "enforce_eager": v["enforce_eager"],
        "quantization": QUANTIZATION.get(v["quantization"]),
        "load_format": v["load_format"],
        "kv_cache_dtype": v["kv_cache_dtype"],
        "disable_sliding_window": v["attention"]["disable_sliding_window"],
        "speculative_config": speculative_config(v["speculative"]),
        "enable_lora": v["lora"]["enabled"],
    }
    if v["lora"]["enabled"]:
        kw.update(
            max_loras=v["lora"]["max_loras"],
            max_lora_rank=v["lora"]["max_rank"],
            lora_extra_vocab_size=v["lora"]["extra_vocab_size"],  # deprecated in 0.11.0
        )
    kw = {k: val for k, val in kw.items() if val is not None}
    kw.update(v["extra"] or {})
    return kw


def engine_environment(config: dict, environ=None) -> dict[str, str]:
    """Environment variables to set before the engine starts (name -> value); variables already set by the user
    are kept, except the attention choices, which the experiment names explicitly."""
    environ = os.environ if environ is None else environ
    v = config["vllm"]
    out: dict[str, str] = {}
    speculative = speculative_config(v["speculative"]) is not None
    if "VLLM_ENABLE_V1_MULTIPROCESSING" not in environ and not speculative:
        out["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if v["enforce_eager"] and "TORCH_COMPILE_DISABLE" not in environ:
        out["TORCH_COMPILE_DISABLE"] = "1"
    if v["attention"]["backend"] != "auto":
        out["VLLM_ATTENTION_BACKEND"] = v["attention"]["backend"]
    if v["attention"]["flash_version"] is not None:
        out["VLLM_FLASH_ATTN_VERSION"] = str(v["attention"]["flash_version"])
    return out


def _weights(model) -> tuple[int, int]:
    """(parameters, bytes) of a torch module; runs inside the engine's worker via ``LLM.apply_model``."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def _checkpoint_bytes(model_path: str) -> int | None:
    folder = Path(model_path)
    if not folder.is_dir():
        return None
    files = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file()]
    return sum(f.stat().st_size for f in files) or None


def _plain(value):
    """A JSON-friendly copy (engine configs hold enums, dtypes and classes)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class VllmBackend:
    token_counting = (
        "submitted prompt token ids (after truncation) for inputs; token ids the engine returned for outputs"
    )
    name = "vllm"

    def __init__(self, config: dict, model_path: str) -> None:
        self.config = config
        self.model_path = model_path
        self.llm = None
        self.tokenizer = None
        self._hf_config = None
        self._saved_env: dict[str, str | None] = {}
        self._prompts: list[str] | None = None
        self._token_ids: list[list[int]] = []
        self._lora = None
        self._effective: dict = {}
        self._request_counter = 0

    # ------------------------------------------------------------------------------------------------ setup
    @staticmethod
    def version() -> dict:
        out: dict = {}
        for name in ("vllm", "torch", "transformers"):
            try:
                out[name] = str(importlib.import_module(name).__version__)
            except Exception:  # noqa: BLE001 - not installed here, or broken: recorded as unknown
                out[name] = None
        return out

    def resolve_device(self) -> str:
        """Always "cuda": vLLM runs on NVIDIA GPUs here (device = cpu is rejected when the campaign is expanded).
        Checks that vLLM can be found, so a missing engine fails before the idle baseline is measured."""
        if self.config["device"] == "cpu":
            raise MeasurementError("backend = vllm runs on CUDA GPUs only, but device = cpu")
        try:
            found = importlib.util.find_spec("vllm") is not None
        except (ImportError, ValueError) as exc:
            raise missing_engine(exc) from None
        if not found:
            raise missing_engine()
        return "cuda"

    def gpu_count(self) -> int:
        v = self.config["vllm"]
        return v["tensor_parallel_size"] * v["pipeline_parallel_size"]

    def model_config(self):
        if self._hf_config is None:
            from transformers import AutoConfig

            self._hf_config = AutoConfig.from_pretrained(self.model_path)
        return self._hf_config

    def _set_environment(self) -> dict[str, str]:
        wanted = engine_environment(self.config)
        for name, value in wanted.items():
            previous = os.environ.get(name)
            if previous is not None and previous != value:
                log.warning(
                    "%s=%s from the environment replaced by %s (the experiment's setting)", name, previous, value
                )
            self._saved_env.setdefault(name, previous)
            os.environ[name] = value
        speculative = speculative_config(self.config["vllm"]["speculative"]) is not None
        if speculative and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            log.warning(
                "VLLM_ENABLE_V1_MULTIPROCESSING=0 with speculative decoding: vLLM %s then never uses the "
                "drafts (vLLM issue #27287)",
                PINNED_VERSION,
            )
        return wanted

    def _restore_environment(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def load(self) -> dict:
        problem = RULES.problem(self.config)
        if problem:
            raise MeasurementError(problem)
        try:
            import vllm
            from vllm import LLM
        except ImportError as exc:
            raise missing_engine(exc) from None
        if not str(vllm.__version__).startswith(PINNED_VERSION):
            log.warning("vLLM %s is installed; this backend was written for %s", vllm.__version__, PINNED_VERSION)
        v = self.config["vllm"]
        kwargs = engine_kwargs(self.config, self.model_path)
        env_set = self._set_environment()
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        load_s = time.perf_counter() - t0
        self.tokenizer = self.llm.get_tokenizer()
        lora = self.lora_kwargs()
        if lora is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest(**lora)
        self._effective = self._read_effective()
        params, size, method = self._count_weights(env_set)
        self.stop_token_ids = stop_token_ids(self.tokenizer.eos_token_id, generation_eos(self.model_path))
        quant = self._effective.get("quantization")
        return {
            "load_s": load_s,
            "device": "cuda",
            "dtype": self.config["fp_precision"],
            "parameters": params,
            "model_size_bytes": size,
            "architecture": getattr(self.model_config(), "model_type", None),
            "weights": "checkpoint" if quant is None else f"checkpoint, {quant} quantisation",  # the engine's choice
            "quantization": {"requested": v["quantization"], "given": kwargs.get("quantization"), "effective": quant},
            "stop_token_ids": self.stop_token_ids,
            "engine": "vllm.LLM, stepped through llm_engine.add_request/step",
            "vllm_version": str(vllm.__version__),
            "pinned_version": PINNED_VERSION,
            "engine_args": _plain(kwargs),
            "engine_effective": self._effective,
            "environment": {name: os.environ.get(name) for name in ENGINE_ENV},
            "environment_set": sorted(env_set),
            "parameters_method": method,
            "lora_adapter": self.config["adapter"] if self._lora is not None else None,
        }

    def lora_kwargs(self) -> dict | None:
        """The ``LoRARequest`` every request carries (the adapter), or None without LoRA."""
        if not self.config["vllm"]["lora"]["enabled"]:
            return None
        adapter = self.config["adapter"]
        return {"lora_name": Path(adapter).name or "adapter", "lora_int_id": 1, "lora_path": adapter}

    def _read_effective(self) -> dict:
        """Settings the engine actually uses (it may override or fill in what it was given)."""
        cfg = getattr(self.llm.llm_engine, "vllm_config", None)

        def get(*path):
            obj = cfg
            for part in path:
                obj = getattr(obj, part, None)
                if obj is None:
                    return None
            return _plain(obj)

        return {
            "max_num_seqs": get("scheduler_config", "max_num_seqs"),
            "max_num_batched_tokens": get("scheduler_config", "max_num_batched_tokens"),
            "chunked_prefill": get("scheduler_config", "chunked_prefill_enabled"),
            "prefix_caching": get("cache_config", "enable_prefix_caching"),
            "block_size": get("cache_config", "block_size"),
            "kv_cache_dtype": get("cache_config", "cache_dtype"),
            "num_gpu_blocks": get("cache_config", "num_gpu_blocks"),
            "max_model_len": get("model_config", "max_model_len"),
            "executor": get("parallel_config", "distributed_executor_backend"),
            "speculative_method": get("speculative_config", "method"),
            "quantization": get("model_config", "quantization"),
            "load_format": get("load_config", "load_format"),
        }

    def _count_weights(self, env_set: dict) -> tuple[int | None, int | None, str]:
        """(parameters, bytes, method). The engine's model is asked when it lives in this process on one GPU;
        otherwise (tensor/pipeline shards in worker processes) the count comes from the HF config."""
        in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        counted = size = None
        if self.gpu_count() == 1 and in_process:
            try:
                (counted, size), *_ = self.llm.apply_model(_weights)
                counted, size = int(counted), int(size)
            except Exception as exc:  # noqa: BLE001 - the count is context; the measurement does not depend on it
                log.info("parameter count from the engine's model failed (%s); using the HF config", exc)
        params, method = RULES.count_parameters(self.config, counted, self.model_config())
        if size is None:
            quantised = self._effective.get("quantization") is not None
            size = (
                params * DTYPE_BYTES[self.config["fp_precision"]]
                if params is not None and not quantised
                else _checkpoint_bytes(self.model_path)
            )
        return params, size, method

    # ------------------------------------------------------------------------------------------------ workload
    def _tokens(self, prompts: list[str]) -> list[list[int]]:
        if self._prompts is not prompts and self._prompts != prompts:
            limit = self.config["max_input_tokens"]
            self._token_ids = [self.tokenizer(p, truncation=True, max_length=limit)["input_ids"] for p in prompts]
            self._prompts = prompts
        return self._token_ids

    def plan(self, prompts: list[str]) -> list[Batch]:
        """One batch holding every prompt: the engine's scheduler forms the running batch."""
        tokens = self._tokens(prompts)
        return [Batch(list(range(len(prompts))), [len(t) for t in tokens])]

    def sampling_params(self, max_tokens: int, min_tokens: int, seed: int | None):
        from vllm import SamplingParams

        return SamplingParams(**self.sampling_kwargs(max_tokens, min_tokens, seed))

    def sampling_kwargs(self, max_tokens: int, min_tokens: int, seed: int | None) -> dict:
        """The ``SamplingParams`` arguments of one request. Stop tokens are vLLM's own: the tokenizer's EOS and every
        ``eos_token_id`` of the generation config (the set recorded as ``stop_token_ids``). Detokenisation is off:
        token ids are all the measurement reads, and text would be built inside the window at every step
        (v1/engine/output_processor.py:138-147 skips the detokenizer when ``detokenize`` is false)."""
        dec, v = self.config["decoder"], self.config["vllm"]
        kwargs = {
            "n": 1,
            "max_tokens": max_tokens,
            "min_tokens": min_tokens,
            "temperature": dec["temperature"] if dec["do_sample"] else 0.0,  # 0 = greedy in vLLM
            "top_p": dec["top_p"],
            "top_k": dec["top_k"] if dec["top_k"] > 0 else TOP_K_DISABLED,
            "repetition_penalty": dec["repetition_penalty"],
            "min_p": v["min_p"],
            "ignore_eos": min_tokens >= max_tokens,  # forced output length: EOS must not end a request early
            "seed": seed,
            "detokenize": False,
        }
        if v["logprobs"] is not None:
            kwargs["logprobs"] = v["logprobs"]
        if v["logit_bias"]:
            kwargs["logit_bias"] = {int(token): float(bias) for token, bias in v["logit_bias"].items()}
        return kwargs

    def _stream(
        self,
        indices: list[int],
        tokens: list[list[int]],
        max_tokens: int,
        min_tokens: int,
        seed: int | None,
        progress=None,
    ) -> tuple[list[RequestTiming], BatchRecord, list[Step]]:
        """Submit the requests, step the engine until all are finished, timestamp every token arrival. Returns the
        requests' timings, the batch record and every engine step (a prefill step completes some request's first
        token)."""
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        n = len(indices)
        slot: dict[str, int] = {}
        params = [self.sampling_params(max_tokens, min_tokens, None if seed is None else seed + i) for i in indices]
        prompts = [TokensPrompt(prompt_token_ids=list(tokens[i])) for i in indices]
        seen = [0] * n
        first: list[float | None] = [None] * n
        last: list[float | None] = [None] * n
        final = [0] * n
        gaps: list[list[float]] = [[] for _ in range(n)]
        done = 0
        steps = 0
        peak = 0
        decoding_steps: list[int] = []
        step_log: list[Step] = []
        start = time.perf_counter()
        for k in range(n):
            self._request_counter += 1
            rid = f"lem-{self._request_counter}"
            slot[rid] = k
            engine.add_request(rid, prompts[k], params[k], lora_request=self._lora)
        previous = time.perf_counter()
        while engine.has_unfinished_requests():
            outputs = engine.step()
            now = time.perf_counter()
            steps += 1
            decoding = 0
            finished_now = 0
            prefill = False
            for out in outputs:
                k = slot.get(out.request_id)
                if k is None:
                    continue
                count = len(out.outputs[0].token_ids)
                new = count - seen[k]
                if new > 0:
                    decoding += 1
                    if first[k] is None:
                        first[k] = now
                        prefill = True
                    else:
                        gaps[k].append(now - last[k])
                    gaps[k].extend([0.0] * (new - 1))  # tokens of one step arrive together
                    last[k] = now
                    seen[k] = count
                if out.finished:
                    final[k] = count
                    if last[k] is None:  # finished without a token
                        first[k] = last[k] = now
                    finished_now += 1
            step_log.append(Step(previous, now, prefill))
            previous = now
            if decoding:
                decoding_steps.append(decoding)
                peak = max(peak, decoding)
            if finished_now:
                done += finished_now
                if progress is not None:
                    progress(done, n)
        end = time.perf_counter()
        requests = [
            RequestTiming(idx, len(tokens[idx]), final[k], first[k] - start, last[k] - start, gaps[k])
            for k, idx in enumerate(indices)
        ]
        input_tokens = sum(len(tokens[i]) for i in indices)
        batch = BatchRecord(
            size=n,
            input_tokens=input_tokens,
            padded_input_tokens=input_tokens,
            output_tokens=sum(final),
            steps=steps,
            latency_s=end - start,
            start_t=start,
            first_token_t=min((t for t in first if t is not None), default=end),
            end_t=end,
            peak_decoding_seqs=peak,
            mean_decoding_seqs=statistics.fmean(decoding_steps) if decoding_steps else 0.0,
        )
        return requests, batch, step_log

    def _reset_prefix_cache(self) -> None:
        """Cached prefixes from an earlier pass would make a repeated workload cheaper than a fresh one."""
        if self._effective.get("prefix_caching"):
            self.llm.reset_prefix_cache()

    def run(self, prompts: list[str], batches: list[Batch], seed: int | None, progress=None) -> RunOutput:
        """Submit every prompt at once and stream the engine. ``progress(done, total)`` as requests finish."""
        tokens = self._tokens(prompts)
        self._reset_prefix_cache()
        requests: list[RequestTiming] = []
        stats = []
        step_log: list[Step] = []
        for batch in batches:
            reqs, stat, steps = self._stream(
                batch.indices,
                tokens,
                self.config["max_output_tokens"],
                self.config["min_output_tokens"],
                seed,
                progress,
            )
            requests.extend(reqs)
            stats.append(stat)
            step_log.extend(steps)
        return RunOutput(
            requests,
            stats,
            sum(s.latency_s for s in stats),
            scheduling="continuous",
            latency_method="engine_step_token_arrival",
            steps=step_log,
        )

    def warmup(self, prompts: list[str], batches: list[Batch], cfg: dict) -> dict:
        """Before the window: the whole workload once, exactly as the window submits it (mode full); then the first
        ``max_num_seqs`` prompts repeated, at the full output length, until the latency CV over the last
        ``window_size`` runs (sample standard deviation, ddof 1) is below ``cv_threshold``, or ``max_prompts`` runs.
        The prefix cache is cleared afterwards, so the window never finds prefixes the warm-up left."""
        tokens = self._tokens(prompts)
        max_new, min_new = self.config["max_output_tokens"], self.config["min_output_tokens"]
        seed = self.config["random_seed"]

        def full_pass() -> list[dict]:
            shapes = []
            for batch in batches:
                self._reset_prefix_cache()
                reqs, stat, _ = self._stream(batch.indices, tokens, max_new, min_new, seed)
                shapes.append(
                    shape(
                        stat.size,
                        stat.padded_input_tokens,
                        max((r.output_tokens for r in reqs), default=0),
                        stat.latency_s,
                    )
                )
            return shapes

        indices = batches[0].indices[: self.config["vllm"]["max_num_seqs"]]

        def repeat() -> float:
            self._reset_prefix_cache()  # each run as the window will see it: no prefixes left by the run before
            return self._stream(indices, tokens, max_new, min_new, seed)[1].latency_s

        result = warm_up(cfg, full_pass, repeat, len(indices), max_new)
        self._reset_prefix_cache()
        return result

    # ------------------------------------------------------------------------------------------------ checks
    def validity_flags(self, run_batches: list[BatchRecord]) -> list[tuple[str, str]]:
        flags = []
        limit = self.config["vllm"]["max_num_seqs"]
        peak = max((b.peak_decoding_seqs or 0 for b in run_batches), default=0)
        if run_batches and peak < limit:
            message = (
                f"at most {peak} sequences got a token in one engine step, below vllm.max_num_seqs = {limit}: "
                "fewer prompts than max_num_seqs, or the KV cache or token budget kept the running batch smaller"
            )
            flags.append(("batch_not_saturated", message))
        return flags

    # ------------------------------------------------------------------------------------------------ memory
    def reset_peak_memory(self) -> None:
        """Nothing to reset: the engine's allocations live in its worker(s), and vLLM reserves its memory up front."""

    def peak_memory(self) -> dict:
        """``cuda_peak_*`` are null (this process does not allocate the engine's memory). ``gpu_memory_used_bytes``:
        NVML's used memory summed over the experiment's GPUs after the run (whole devices, other processes
        included; vLLM reserves ``gpu_memory_utilization`` of each at load, so this is also its peak);
        ``kv_cache_capacity_tokens``: KV cache blocks x block size, where the engine reports its blocks."""
        from ..energy.nvml import memory_used_bytes

        blocks, size = self._effective.get("num_gpu_blocks"), self._effective.get("block_size")
        return {
            "cuda_peak_allocated_bytes": None,
            "cuda_peak_reserved_bytes": None,
            "gpu_memory_used_bytes": memory_used_bytes(self.gpu_count()),
            "kv_cache_capacity_tokens": blocks * size if isinstance(blocks, int) and isinstance(size, int) else None,
        }

    def close(self) -> None:
        """Shut the engine core (and its workers) down, release distributed state and cached GPU memory, and put
        back the environment variables set for the engine."""
        llm, self.llm = self.llm, None
        self.tokenizer = None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as exc:  # noqa: BLE001 - a half-started engine: cleaning up what exists is all that is left to do
                log.warning("vLLM engine shutdown: %s", exc)
            del llm
            gc.collect()
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                ray = self.config["vllm"]["distributed_backend"] == "ray" and self.gpu_count() > 1
                cleanup_dist_env_and_memory(shutdown_ray=ray)
            except Exception as exc:  # noqa: BLE001 - cleanup after a failed start: what it cannot undo is logged
                log.warning("vLLM cleanup: %s", exc)
        self._restore_environment()
