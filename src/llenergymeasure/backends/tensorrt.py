"""TensorRT-LLM backend: the LLM API over a compiled TensorRT engine (``tensorrt_llm._tensorrt_engine.LLM``).

Pinned to TensorRT-LLM 1.0.0 (container ``nvcr.io/nvidia/tensorrt-llm/release:1.0.0``). In that release the
default ``tensorrt_llm.LLM`` is the PyTorch flow; the engine flow used here lives in ``tensorrt_llm._tensorrt_engine``.

Engine source, in order: ``tensorrt.engine_path`` (a prebuilt engine folder, used as built); else an engine from
the cache, keyed by everything that changes the compiled engine (:func:`engine_cache_key`); else a build from the
checkpoint, saved into a temporary folder beside the cache entry and renamed into place only once complete, so an
interrupted build never leaves a folder that looks like a valid engine.

Prompts are tokenised here (the checkpoint's tokenizer, truncated to ``max_input_tokens``) and submitted as token
ids, all at once: the runtime's in-flight batching decides which requests run together, up to the engine's
``max_batch_size``. Latency comes from the engine's own streamed responses: every request is consumed as an
asyncio stream and each response's arrival on the host is timestamped with ``time.perf_counter``. Requests stop on
the tokenizer's EOS (``end_id``) and on the generation config's other EOS ids (``stop_token_ids``), the set the other
backends stop on. Under a serving load (``load.arrival`` other than offline) each request's task waits for its
planned arrival (open loop) or for one of ``load.concurrency`` slots (closed loop, an asyncio semaphore, first come
first served) and then calls ``generate_async``; its latencies count from the planned arrival. A one-GPU engine runs its executor in this process unless ``tensorrt.single_process`` is false
(see :func:`engine_environment`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .. import heartbeat
from ..config import canonical_json
from ..errors import MeasurementError
from ..record.flags import BATCH_NOT_SATURATED
from ..serving import Schedule
from . import BackendRules
from .base import (
    Backend,
    Batch,
    BatchRecord,
    RequestTiming,
    RunOutput,
    Step,
    elapsed,
    generation_eos,
    shape,
    stop_token_ids,
    warm_up,
)

log = logging.getLogger(__name__)

PINNED_VERSION = "1.0.0"
CONTAINER_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.0.0"

#: tensorrt.quantization -> (QuantAlgo name, KV cache QuantAlgo name or None), in the pinned release's names.
#: int4_gptq is absent: 1.0.0 cannot build it from a checkpoint (see :func:`problem`).
QUANT_ALGOS = {
    "fp8": ("FP8", "FP8"),
    "int8_sq": ("W8A8_SQ_PER_CHANNEL", None),
    "int8_weight_only": ("W8A16", None),
    "int4_awq": ("W4A16_AWQ", None),
}
#: modes whose scales come from calibration data (the others quantise weights alone)
CALIBRATED = ("fp8", "int8_sq", "int4_awq")
#: TensorRT's own builder optimisation level when none is set
TENSORRT_DEFAULT_OPT_LEVEL = 3
#: the calibration split the pinned release's loader reads (CalibConfig has no split field)
DEFAULT_CALIB_SPLIT = "train"
MARKER = "lem-engine.json"
DTYPES = ("float16", "bfloat16")
#: the ``tensorrt`` settings that shape the compiled engine, with their schema defaults: a prebuilt engine
#: (``engine_path``) is used as built, so none of them may be set with it
#: (max_batch_size and max_num_tokens are not among them: with a prebuilt engine they cap its runtime)
BUILD_DEFAULTS = {
    "max_input_len": None,
    "max_output_len": None,
    "quantization": "none",
    "builder_opt_level": 3,
    "strongly_typed": True,
    "multiple_profiles": False,
    "kv_cache_type": "paged",
    "extra_build_args": {},
    "force_rebuild": False,
    "engine_cache_dir": None,
}
#: the most samples TensorRT-LLM 1.0.0 calibrates AWQ on (quantization/quantize_by_modelopt.py, quantize_and_export:
#: a larger calib_size is replaced by 32)
AWQ_CALIB_SAMPLES = 32
CALIBRATION_DEFAULTS = {"dataset": "cnn_dailymail", "split": "train", "num_samples": 512, "max_length": 2048}


# ---------------------------------------------------------------------------------------------------- rules
# What this backend and TensorRT-LLM 1.0.0's engine flow refuse, or would silently ignore, and why; the GPUs an
# engine occupies; the batching knob; how parameters are counted. Engine-free (see llenergymeasure.backends).
# Release facts were read in NVIDIA/TensorRT-LLM at 1.0.0rc4 (commit 000a01de) and 1.2.0rc2 (commit b35ac1b6),
# the stored sources on either side of the 1.0.0 tag; the cited code is the same in both.


def problems(config: dict) -> list[str]:
    """Every reason this experiment cannot run on TensorRT-LLM 1.0.0's engine flow as configured."""
    return list(_problems(config))


def _problems(config: dict):
    trt = config["tensorrt"]
    if config["no_weights"]:
        yield "no_weights builds random weights in PyTorch; backend tensorrt loads checkpoints only"
    if config["fp_precision"] not in DTYPES:
        yield f"TensorRT-LLM builds float16/bfloat16 engines: fp_precision = {config['fp_precision']} is not supported"
    if config["adapter"]:
        yield "adapter (LoRA) is supported on backend vllm only in this version"
    if trt["draft_model"]:
        yield (
            f"tensorrt.draft_model = {trt['draft_model']}: TensorRT-LLM {PINNED_VERSION} runs draft-target speculative decoding on its "
            "PyTorch flow only, not on a TensorRT engine"
        )
    if trt["num_draft_tokens"] != 5:
        yield f"tensorrt.num_draft_tokens = {trt['num_draft_tokens']} applies to speculative decoding with a draft model, which is off"
    if trt["engine_path"]:
        for key, default in BUILD_DEFAULTS.items():
            if trt[key] != default:
                yield (
                    f"tensorrt.{key} = {trt[key]} is applied while building; tensorrt.engine_path names a prebuilt "
                    "engine, which is used as built"
                )
                break
    if trt["max_input_len"] is not None and trt["max_input_len"] < config["max_input_tokens"]:
        yield f"tensorrt.max_input_len = {trt['max_input_len']} is smaller than max_input_tokens = {config['max_input_tokens']}"
    if trt["max_output_len"] is not None and trt["max_output_len"] < config["max_output_tokens"]:
        yield f"tensorrt.max_output_len = {trt['max_output_len']} is smaller than max_output_tokens = {config['max_output_tokens']}"
    if trt["builder_opt_level"] != TENSORRT_DEFAULT_OPT_LEVEL:
        yield (
            f"tensorrt.builder_opt_level = {trt['builder_opt_level']}: TensorRT-LLM {PINNED_VERSION}'s BuildConfig has no optimisation level; "
            f"engines are built at TensorRT's default ({TENSORRT_DEFAULT_OPT_LEVEL})"
        )
    if trt["kv_cache_type"] == "continuous" and (trt["enable_chunked_context"] or trt["enable_kv_cache_reuse"]):
        yield (
            "tensorrt.kv_cache_type = continuous: chunked context and KV cache reuse need a paged KV cache "
            "(set tensorrt.enable_chunked_context and enable_kv_cache_reuse to false)"
        )
    if trt["quantization"] == "int4_gptq":
        yield (
            f"tensorrt.quantization = int4_gptq: TensorRT-LLM {PINNED_VERSION} cannot build it from a checkpoint. "
            "W4A16_GPTQ counts as needing calibration but is no ModelOpt format (models/modeling_utils.py, "
            "QuantConfig._requires_calibration / _requires_modelopt_quantization), so the model's quantize() takes "
            "the SmoothQuant path, which asserts (models/llama/convert.py, quantize: 'Call from_hugging_face when "
            "there is no quantization'); a GPTQ checkpoint is refused by its loader (see model_name's "
            "quantization_config)"
        )
    if trt["enable_kv_cache_reuse"] and config["warmup"]["mode"] != "off":
        yield (
            f"tensorrt.enable_kv_cache_reuse = true with warmup.mode = {config['warmup']['mode']}: the warm-up runs "
            f"the window's prompts first, and TensorRT-LLM {PINNED_VERSION} keeps reusable blocks until they are "
            "evicted (docs/source/features/kvcache.md, Reuse Across Requests) with no LLM API call that empties them, "
            "so the window's prefills would come from the cache; warmup.mode: off measures reuse among the window's "
            "own requests"
        )
    problem = _min_tokens_problem(config)
    if problem:
        yield problem
    problem = _calibration_problem(trt)
    if problem:
        yield problem
    problem = _checkpoint_problem(config)
    if problem:
        yield problem


def _min_tokens_problem(config: dict) -> str | None:
    """A minimum output length below the maximum, with a checkpoint whose generation config ends on several EOS ids:
    the runtime holds back only end_id below min_tokens (kernels/stopCriteriaKernels.cu, the stop-word check has no
    minimum), while vLLM holds back all of them, so output lengths would differ between the backends. Known where
    the generation config is readable here; otherwise checked again at load, from the local checkpoint."""
    low, high = config["min_output_tokens"], config["max_output_tokens"]
    if not 0 < low < high:
        return None
    from . import checkpoint_config

    gen = checkpoint_config(config["model_name"], "generation_config.json") or {}
    eos = gen.get("eos_token_id")
    ids = {eos} if isinstance(eos, int) else set(eos or [])
    if len(ids) < 2:
        return None
    return (
        f"min_output_tokens = {low} (below max_output_tokens = {high}): {config['model_name']} ends on EOS ids "
        f"{sorted(ids)}, and TensorRT-LLM {PINNED_VERSION} holds back only its end id below min_tokens "
        "(kernels/stopCriteriaKernels.cu), so a request could end on another before the minimum; set "
        "min_output_tokens to 0 or to max_output_tokens"
    )


def _calibration_problem(trt: dict) -> str | None:
    cal = trt["calibration"]
    if trt["quantization"] not in CALIBRATED:
        for key, default in CALIBRATION_DEFAULTS.items():
            if cal[key] != default:
                return (
                    f"tensorrt.calibration.{key} = {cal[key]} applies to the calibrating quantisation modes "
                    f"({', '.join(CALIBRATED)}), but tensorrt.quantization = {trt['quantization']}"
                )
        return None
    if trt["quantization"] == "int4_awq" and cal["num_samples"] != CALIBRATION_DEFAULTS["num_samples"]:
        return (
            f"tensorrt.calibration.num_samples = {cal['num_samples']} with int4_awq: TensorRT-LLM {PINNED_VERSION} "
            f"calibrates AWQ on at most {AWQ_CALIB_SAMPLES} samples whatever it is given "
            "(quantization/quantize_by_modelopt.py, quantize_and_export), below the schema's minimum of 64, so the "
            "setting would change nothing"
        )
    if cal["split"] != DEFAULT_CALIB_SPLIT:
        return (
            f"tensorrt.calibration.split = {cal['split']}: TensorRT-LLM {PINNED_VERSION}'s CalibConfig has no split; "
            "calibration reads 'train'"
        )
    return calibration_dataset_problem(cal["dataset"])


def calibration_dataset_problem(name: str, environ=None) -> str | None:
    """TensorRT-LLM 1.0.0 calibrates text models from ``pileval``, a name containing ``cnn_dailymail``, or a local
    dataset folder whose ``train`` split has a ``text`` column; anything else raises NotImplementedError at build
    (quantization/quantize_by_modelopt.py, get_calib_dataloader), and a name containing ``scienceqa`` or
    ``science_qa`` (a folder's too) is read as a multimodal set, which fails for a text model. The named sets come
    from the network while the engine builds (Hugging Face hub; pileval from the-eye.eu)."""
    environ = os.environ if environ is None else environ
    lower = name.lower()
    if "scienceqa" in lower or "science_qa" in lower:  # matched by name before a folder is looked for
        return (
            f"tensorrt.calibration.dataset = {name}: TensorRT-LLM {PINNED_VERSION} calibrates a ScienceQA set as "
            "image questions, through the preprocess_function of a multimodal model's processor "
            "(quantization/quantize_by_modelopt.py, get_calib_dataloader), which a text model's tokenizer lacks: "
            "its build fails"
        )
    folder = Path(name)
    if folder.is_dir():
        return _local_calibration_problem(folder)
    if not (name == "pileval" or "cnn_dailymail" in name):
        return (
            f"tensorrt.calibration.dataset = {name}: TensorRT-LLM {PINNED_VERSION} calibrates text models from "
            "cnn_dailymail, pileval or a local dataset folder with a 'train' split and a 'text' column"
        )
    offline = [
        var
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        if environ.get(var, "").lower() in ("1", "true", "yes", "on")
    ]
    if offline:
        return (
            f"tensorrt.calibration.dataset = {name} is downloaded while the engine builds, but {offline[0]} is "
            "set: use a local dataset folder with a 'train' split and a 'text' column"
        )
    return None


def _local_calibration_problem(folder: Path) -> str | None:
    try:
        from datasets import load_dataset
    except ImportError:  # checked again, by the engine, while it builds
        return None
    try:
        train = load_dataset(str(folder), split="train")
    except Exception as exc:  # noqa: BLE001 - no train split, or not a dataset
        return f"tensorrt.calibration.dataset = {folder}: no 'train' split could be read ({type(exc).__name__}: {exc})"
    if "text" not in train.column_names:
        return (
            f"tensorrt.calibration.dataset = {folder}: its 'train' split has no 'text' column "
            f"(columns: {', '.join(train.column_names)}), which TensorRT-LLM {PINNED_VERSION} calibrates from"
        )
    return None


#: checkpoint ``quantization_config`` that 1.0.0's loader maps to a quantisation (llmapi/llm_utils.py,
#: ModelLoader._update_from_hf_quant_config): FP8 with block scales, and MXFP4; anything else is NotImplementedError
def _loadable_prequantised(quant: dict) -> bool:
    return (quant.get("quant_method") == "fp8" and bool(quant.get("weight_block_size"))) or quant.get(
        "quant_method"
    ) == "mxfp4"


def _checkpoint_problem(config: dict) -> str | None:
    from . import checkpoint_quantization

    if config["tensorrt"]["engine_path"]:
        return None
    quant = checkpoint_quantization(config["model_name"])
    if not quant:  # unquantised, or not readable here (the engine's loader decides then)
        return None
    if not _loadable_prequantised(quant):
        return (
            f"model_name {config['model_name']} carries a quantization_config (quant_method = {quant.get('quant_method')}): "
            f"TensorRT-LLM {PINNED_VERSION} builds from unquantised checkpoints, FP8 block-scale and MXFP4 ones only "
            "(llmapi/llm_utils.py, _update_from_hf_quant_config raises NotImplementedError)"
        )
    if config["tensorrt"]["quantization"] != "none":
        return f"tensorrt.quantization = {config['tensorrt']['quantization']}, but {config['model_name']} is already quantised ({quant.get('quant_method')})"
    return None


def gpus(config: dict) -> int:
    """Tensor x pipeline parallel ranks, one GPU each."""
    return config["tensorrt"]["tp_size"] * config["tensorrt"]["pp_size"]


def nominal_batch(config: dict) -> tuple[int, str]:
    return config["tensorrt"]["max_batch_size"], "inflight"


def count_parameters(config: dict, counted: int | None, hf_config) -> tuple[int | None, str]:
    """A TensorRT engine does not report its weights: always from the model config."""
    from ..flops import analytic_parameters

    return analytic_parameters(hf_config), "analytic_from_model_config (the engine does not report its weights)"


def implementation(config: dict) -> str:
    return "llenergymeasure.backends.tensorrt:TensorRTBackend"


RULES = BackendRules(
    name="tensorrt",
    engine=f"TensorRT-LLM {PINNED_VERSION}",
    batch_knob="tensorrt.max_batch_size",
    batch_label="bs",
    gpus_knob="tensorrt.tp_size x pp_size",
    gpu_only=True,
    problems=problems,
    gpus=gpus,
    nominal_batch=nominal_batch,
    count_parameters=count_parameters,
    implementation=implementation,
    flags=(BATCH_NOT_SATURATED,),
)


def engine_environment(config: dict, environ=None) -> dict[str, str]:
    """Environment variables to set before the engine starts. On one GPU, ``tensorrt.single_process`` decides
    whether 1.0.0 runs its executor in this process (TLLM_WORKER_USE_SINGLE_PROCESS=1) or in an MPI worker spawned
    through mpi4py (executor/executor.py, GenerationExecutor.create; the variable is read once per process,
    executor/utils.py enable_worker_single_process_for_tp1). The spawned worker re-runs this process's main file
    with run_name '__worker__' (mpi4py/futures/_core.py:869-906, mpi4py 4.0.3) and needs MPI_Comm_spawn, which
    containers under Slurm often lack. Multi-GPU engines always run one MPI worker per rank."""
    trt = config["tensorrt"]
    if trt["tp_size"] * trt["pp_size"] > 1:
        return {}
    return {"TLLM_WORKER_USE_SINGLE_PROCESS": "1" if trt["single_process"] else "0"}


def _not_importable(reason: str) -> MeasurementError:
    return MeasurementError(
        f"tensorrt_llm is not importable here ({reason}); run TensorRT-LLM experiments in their container: "
        f"snakemake --sdm apptainer (image {CONTAINER_IMAGE}, TensorRT-LLM {PINNED_VERSION})"
    )


def _import_engine():
    """(tensorrt_llm module, engine-flow LLM class, tensorrt_llm.llmapi module), or a MeasurementError."""
    try:
        import tensorrt_llm
        from tensorrt_llm import llmapi
        from tensorrt_llm._tensorrt_engine import LLM
    except (ImportError, OSError) as exc:  # OSError: the package is there but its CUDA/TensorRT libraries are not
        raise _not_importable(f"{type(exc).__name__}: {exc}") from exc
    return tensorrt_llm, LLM, llmapi


def engine_cache_root(config: dict) -> Path:
    trt = config["tensorrt"]
    if trt["engine_cache_dir"]:
        return Path(trt["engine_cache_dir"])
    from ..paths import cache_dir

    return cache_dir() / "tensorrt-engines"


def gpu_architecture() -> str:
    """Compute capability of the first visible GPU ("sm_90"): torch.cuda, else NVML, else "unknown"."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm_{major}{minor}"
    except Exception:  # noqa: BLE001 - a torch without CUDA support still lets NVML answer
        pass
    try:
        from ..energy.nvml import visible_gpus

        gpus = visible_gpus()
        if gpus:
            import pynvml

            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(gpus[0]["handle"])
            return f"sm_{major}{minor}"
    except Exception:  # noqa: BLE001 - NVML absent or without this query: the architecture stays unknown
        pass
    return "unknown"


def resolved_lengths(config: dict) -> tuple[int, int]:
    """(max input length, max output length) the engine is built for, in tokens."""
    trt = config["tensorrt"]
    max_in = trt["max_input_len"] if trt["max_input_len"] is not None else config["max_input_tokens"]
    max_out = trt["max_output_len"] if trt["max_output_len"] is not None else config["max_output_tokens"]
    return max_in, max_out


def effective_calibration(trt: dict) -> dict:
    """The calibration the build uses: int4_awq calibrates on at most AWQ_CALIB_SAMPLES samples in TensorRT-LLM 1.0.0
    (quantize_and_export), so it is given that many, and the engine cache key holds what was used."""
    cal = dict(trt["calibration"])
    if trt["quantization"] == "int4_awq":
        cal["num_samples"] = min(cal["num_samples"], AWQ_CALIB_SAMPLES)
    return cal


def engine_key_fields(config: dict, model: str, gpu_arch: str, trt_llm_version: str) -> dict:
    """Everything that changes the compiled engine. Runtime settings (KV cache fraction and reuse, chunked
    context, extra_runtime_args) and sampling are absent: they apply to any engine at load time."""
    trt = config["tensorrt"]
    max_in, max_out = resolved_lengths(config)
    quant = trt["quantization"]
    return {
        "model": model,
        "dtype": config["fp_precision"],
        "gpu_arch": gpu_arch,
        "tensorrt_llm": trt_llm_version,
        "max_input_len": max_in,
        "max_output_len": max_out,
        "max_seq_len": max_in + max_out,
        "max_batch_size": trt["max_batch_size"],
        "tp_size": trt["tp_size"],
        "pp_size": trt["pp_size"],
        "quantization": quant,
        "calibration": effective_calibration(trt) if quant in CALIBRATED else None,
        "builder_opt_level": trt["builder_opt_level"],
        "strongly_typed": trt["strongly_typed"],
        "multiple_profiles": trt["multiple_profiles"],
        "max_num_tokens": trt["max_num_tokens"],
        "kv_cache_type": trt["kv_cache_type"],
        "extra_build_args": trt["extra_build_args"],
    }


def engine_cache_key(fields: dict) -> str:
    """First 16 hex digits of the sha256 of the fields' canonical JSON."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:16]


def is_complete_engine(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def _has_hf_config(path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        with open(cfg, encoding="utf-8") as fh:
            return "model_type" in json.load(fh)
    except (OSError, ValueError):
        return False


def _has_tokenizer(path) -> bool:
    return any((Path(path) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


class TensorRTBackend(Backend):
    token_counting = (
        "submitted prompt token ids (after truncation) for inputs; token ids the engine returned for outputs, "
        "plus the end token where a request ended on it (generated, but not returned by the engine)"
    )
    name = "tensorrt"
    version_modules = ("tensorrt_llm", "tensorrt", "torch", "transformers")

    def __init__(self, config: dict, model_path: str) -> None:
        super().__init__(config, model_path)
        self.llm = None
        self.engine_dir: Path | None = None
        self.end_id: int | None = None
        self.pad_id: int | None = None
        self._engine_config: dict | None = None
        self._encoded: tuple[list[str], list[list[int]]] | None = None
        self._llmapi = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------------------------------ setup
    def resolve_device(self) -> str:
        """Always CUDA. Checks that the engine is importable before the idle baseline is measured, so a job in the
        wrong environment fails in seconds."""
        import importlib.util

        try:
            found = importlib.util.find_spec("tensorrt_llm") is not None
        except (ImportError, ValueError):  # ValueError: a module entry without a spec
            found = False
        if not found:
            raise _not_importable("no module named 'tensorrt_llm'")
        return "cuda"

    def model_config(self):
        """The checkpoint's transformers config; with only an engine folder, a dict built from the engine's
        ``pretrained_config`` (the names the analytic FLOP count reads)."""
        if self._hf_config is None and self._engine_config is not None:
            return self._engine_model_config()
        return super().model_config()

    def _engine_model_config(self) -> dict:
        pc = self._engine_config["pretrained_config"]
        arch = str(pc.get("architecture") or "")
        model_type = {
            "LlamaForCausalLM": "llama",
            "MistralForCausalLM": "mistral",
            "Qwen2ForCausalLM": "qwen2",
            "Qwen3ForCausalLM": "qwen3",
            "GPT2LMHeadModel": "gpt2",
            "GPTNeoXForCausalLM": "gpt_neox",
            "PhiForCausalLM": "phi",
            "Phi3ForCausalLM": "phi3",
        }.get(arch, arch.lower() or "unknown")
        return {
            "model_type": model_type,
            "hidden_size": pc.get("hidden_size"),
            "num_hidden_layers": pc.get("num_hidden_layers"),
            "num_attention_heads": pc.get("num_attention_heads"),
            "num_key_value_heads": pc.get("num_key_value_heads"),
            "head_dim": pc.get("head_size"),
            "intermediate_size": pc.get("intermediate_size"),
            "vocab_size": pc.get("vocab_size"),
            "tie_word_embeddings": False,  # not recorded in the engine's config: the output layer is counted separately
        }

    def validity_flags(self, run_batches: list[BatchRecord]) -> list[tuple[str, str]]:
        limit = self.config["tensorrt"]["max_batch_size"]
        sizes = [b.size for b in run_batches]
        # under a serving load the batch in flight is what the arrivals make it (not flagged)
        if sizes and max(sizes) < limit and self.config["load"]["arrival"] == "offline":
            return [
                (
                    "batch_not_saturated",
                    f"{max(sizes)} requests submitted < tensorrt.max_batch_size {limit}: the engine never had a full batch in flight",
                )
            ]
        return []

    def close(self) -> None:
        try:
            if self.llm is not None:
                self.llm.shutdown()
        finally:
            self.llm = None
            if self._loop is not None:
                self._loop.close()
                self._loop = None
            super().close()

    # ------------------------------------------------------------------------------------------------ engine arguments
    def build_config(self, llmapi):
        """The BuildConfig for a build from the checkpoint (TypeError from the engine for an unknown extra key)."""
        from tensorrt_llm.bindings import KVCacheType

        trt = self.config["tensorrt"]
        max_in, max_out = resolved_lengths(self.config)
        extra = dict(trt["extra_build_args"])
        plugin_extra = extra.pop("plugin_config", None) or {}
        kwargs = {
            "max_batch_size": trt["max_batch_size"],
            "max_input_len": max_in,
            "max_seq_len": max_in + max_out,  # the pinned BuildConfig bounds prompt + generation, not generation alone
            "strongly_typed": trt["strongly_typed"],
            "kv_cache_type": KVCacheType.PAGED if trt["kv_cache_type"] == "paged" else KVCacheType.CONTINUOUS,
        }
        if trt["max_num_tokens"] is not None:
            kwargs["max_num_tokens"] = trt["max_num_tokens"]
        kwargs.update(extra)
        try:
            bc = llmapi.BuildConfig(**kwargs)
        except TypeError as exc:
            raise MeasurementError(
                f"tensorrt.extra_build_args: BuildConfig of TensorRT-LLM {PINNED_VERSION} refused them ({exc})"
            ) from exc
        bc.plugin_config.multiple_profiles = trt["multiple_profiles"]
        # Chunked context and KV block reuse are runtime switches, but the executor refuses both unless the engine
        # has paged context attention: every paged engine gets it, so one cached engine serves either setting.
        bc.plugin_config.paged_kv_cache = trt["kv_cache_type"] == "paged"
        bc.plugin_config.use_paged_context_fmha = trt["kv_cache_type"] == "paged"
        for name, value in plugin_extra.items():
            try:
                setattr(bc.plugin_config, name, value)
            except AttributeError as exc:
                raise MeasurementError(f"tensorrt.extra_build_args.plugin_config.{name}: {exc}") from exc
        return bc

    def quant_args(self, llmapi) -> dict:
        """quant_config (and calib_config for the calibrating modes), or nothing for quantization = none."""
        trt = self.config["tensorrt"]
        mode = trt["quantization"]
        if mode == "none":
            return {}
        algo, kv_algo = QUANT_ALGOS[mode]
        out = {
            "quant_config": llmapi.QuantConfig(
                quant_algo=llmapi.QuantAlgo[algo], kv_cache_quant_algo=llmapi.QuantAlgo[kv_algo] if kv_algo else None
            )
        }
        if mode in CALIBRATED:
            cal = effective_calibration(trt)
            out["calib_config"] = llmapi.CalibConfig(
                calib_dataset=cal["dataset"],
                calib_batches=cal["num_samples"],  # one sample per batch (calib_batch_size keeps its default, 1)
                calib_max_seq_length=cal["max_length"],
                tokenizer_max_seq_length=max(2048, cal["max_length"]),
            )
        return out

    def runtime_args(self, llmapi) -> dict:
        """LLM(...) arguments that apply to any engine, built now or loaded; extra_runtime_args go last."""
        trt = self.config["tensorrt"]
        args = {
            "tensor_parallel_size": trt["tp_size"],
            "pipeline_parallel_size": trt["pp_size"],
            "kv_cache_config": llmapi.KvCacheConfig(
                free_gpu_memory_fraction=trt["gpu_memory_utilization"], enable_block_reuse=trt["enable_kv_cache_reuse"]
            ),
            "enable_chunked_prefill": trt["enable_chunked_context"],
        }
        if trt["engine_path"]:  # a prebuilt engine: the batch and token limits cap its runtime (up to its build)
            args["max_batch_size"] = trt["max_batch_size"]
            if trt["max_num_tokens"] is not None:
                args["max_num_tokens"] = trt["max_num_tokens"]
        args.update(trt["extra_runtime_args"])
        return args

    def _construct(self, LLM, **kwargs):
        try:
            return LLM(**kwargs)
        except (TypeError, ValueError) as exc:
            raise MeasurementError(f"TensorRT-LLM {PINNED_VERSION} refused the engine arguments: {exc}") from exc

    # ------------------------------------------------------------------------------------------------ load
    def load(self) -> dict:
        self.refuse_problems()
        trt_llm, LLM, llmapi = _import_engine()
        self._llmapi = llmapi
        env_set = self.set_environment()
        trt = self.config["tensorrt"]
        t0 = time.perf_counter()
        details: dict = {"tensorrt_llm_pinned": PINNED_VERSION, "engine_flow": "tensorrt_llm._tensorrt_engine.LLM"}
        checkpoint = _has_hf_config(self.model_path)
        tokenizer_src = self.model_path if _has_tokenizer(self.model_path) else None
        if trt["engine_path"]:
            folder = Path(trt["engine_path"])
            if not (folder / "config.json").is_file():
                raise MeasurementError(f"tensorrt.engine_path = {folder}: no engine there (config.json missing)")
            self.llm = self._construct(
                LLM, model=str(folder), tokenizer=tokenizer_src or str(folder), **self.runtime_args(llmapi)
            )
            details.update(engine_source="engine_path", engine_dir=str(folder), engine_cache_key=None, build_s=None)
            self.engine_dir = folder
        else:
            arch = gpu_architecture()
            fields = engine_key_fields(self.config, self.model_path, arch, str(trt_llm.__version__))
            key = engine_cache_key(fields)
            root = engine_cache_root(self.config)
            folder = root / key
            details.update(engine_cache_key=key, gpu_arch=arch, engine_dir=str(folder))
            if is_complete_engine(folder) and not trt["force_rebuild"]:
                self.llm = self._construct(
                    LLM, model=str(folder), tokenizer=tokenizer_src or str(folder), **self.runtime_args(llmapi)
                )
                details.update(engine_source="cache_hit", build_s=None)
            else:
                build_s = self._build(LLM, llmapi, root, folder, fields, tokenizer_src)
                details.update(engine_source="rebuilt" if trt["force_rebuild"] else "built", build_s=build_s)
            self.engine_dir = folder
        with open(self.engine_dir / "config.json", encoding="utf-8") as fh:
            self._engine_config = json.load(fh)
        self._load_tokenizer(tokenizer_src)
        load_s = time.perf_counter() - t0

        if checkpoint:
            from transformers import AutoConfig

            self._hf_config = AutoConfig.from_pretrained(self.model_path)
            details["model_config_source"] = "checkpoint config.json (transformers AutoConfig)"
        else:
            details["model_config_source"] = "engine config.json pretrained_config (no checkpoint config beside it)"
        parameters, details["parameters_source"] = RULES.count_parameters(self.config, None, self.model_config())
        details["environment_set"] = env_set
        details["stop_token_ids"] = self.stop_token_ids
        engine_bytes = sum(p.stat().st_size for p in self.engine_dir.glob("rank*.engine"))
        details["model_size_source"] = "size of the engine files (rank*.engine) on disk"
        bc = self._engine_config.get("build_config", {})
        details["engine_build_config"] = {
            k: bc.get(k)
            for k in (
                "max_batch_size",
                "max_input_len",
                "max_seq_len",
                "max_num_tokens",
                "kv_cache_type",
                "strongly_typed",
            )
        }
        quant = self._engine_config.get("pretrained_config", {}).get("quantization") or {}
        details["quant_algo"] = quant.get("quant_algo")
        details["kv_cache_quant_algo"] = quant.get("kv_cache_quant_algo")
        dtype = self._engine_config.get("pretrained_config", {}).get("dtype") or self.config["fp_precision"]
        weights = {
            "engine_path": "prebuilt TensorRT engine (tensorrt.engine_path)",
            "cache_hit": "TensorRT engine from the cache",
            "built": "TensorRT engine built now from the checkpoint",
            "rebuilt": "TensorRT engine rebuilt now from the checkpoint (force_rebuild)",
        }[details["engine_source"]]
        if trt["quantization"] != "none" and details["engine_source"] != "engine_path":
            weights += f", quantization {trt['quantization']}"
        return {
            "load_s": load_s,
            "device": "cuda",
            "dtype": str(dtype),
            "parameters": parameters,
            "model_size_bytes": engine_bytes,
            "architecture": (
                self.model_config().get("model_type")
                if isinstance(self.model_config(), dict)
                else getattr(self.model_config(), "model_type", None)
            ),
            "weights": weights,
            **details,
        }

    def _build(self, LLM, llmapi, root: Path, folder: Path, fields: dict, tokenizer_src) -> float:
        """Build from the checkpoint, save into a temp folder next to the cache entry, then rename it into place.
        Returns the build time in seconds (LLM construction from the checkpoint: conversion, compilation and the
        runtime's start)."""
        root.mkdir(parents=True, exist_ok=True)
        kwargs = {
            "model": self.model_path,
            "tokenizer": tokenizer_src or self.model_path,
            "dtype": self.config["fp_precision"],
            "build_config": self.build_config(llmapi),
            **self.quant_args(llmapi),
            **self.runtime_args(llmapi),
        }
        heartbeat.phase(f"building TensorRT engine {folder.name} (cached for later jobs)")
        t0 = time.perf_counter()
        self.llm = self._construct(LLM, **kwargs)
        build_s = time.perf_counter() - t0
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=root))
        old = None
        try:
            self.llm.save(str(tmp))
            with open(tmp / MARKER, "w", encoding="utf-8") as fh:
                json.dump(
                    {"key": folder.name, "fields": fields, "build_s": build_s, "built_at_epoch_s": time.time()},
                    fh,
                    indent=2,
                )
            if folder.exists():  # force_rebuild: the old engine is moved aside, never half-overwritten
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=root))
                os.rmdir(old)
                os.replace(folder, old)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and old.exists():
                shutil.rmtree(old, ignore_errors=True)
        log.info("TensorRT engine %s built in %.1f s and saved to %s", folder.name, build_s, folder)
        return build_s

    def _load_tokenizer(self, tokenizer_src) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_src or self.engine_dir))
        self.end_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        try:
            eos = generation_eos(str(tokenizer_src or self.engine_dir))
        except Exception as exc:  # noqa: BLE001 - an engine folder without a readable generation config: EOS alone ends requests
            log.info("no generation config beside the engine (%s): stopping on the tokenizer's EOS only", exc)
            eos = None
        self.stop_token_ids = stop_token_ids(self.end_id, eos)

    def engine_environment(self) -> dict[str, str]:
        return engine_environment(self.config)

    # ------------------------------------------------------------------------------------------------ prompts
    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids per prompt, truncated to max_input_tokens (tokenised once per prompt list)."""
        if self._encoded is None or self._encoded[0] != prompts:
            enc = self.tokenizer(list(prompts), truncation=True, max_length=self.config["max_input_tokens"])
            self._encoded = (list(prompts), [list(ids) for ids in enc["input_ids"]])
        return self._encoded[1]

    def plan(self, prompts: list[str]) -> list[Batch]:
        """One batch with every prompt: in-flight batching, not this list, decides what runs together."""
        ids = self.encode(prompts)
        return [Batch(list(range(len(prompts))), [len(x) for x in ids])]

    def sampling_params(self, max_tokens: int, min_tokens: int, seed: int | None):
        return self._llmapi.SamplingParams(**self.sampling_kwargs(max_tokens, min_tokens, seed))

    def sampling_kwargs(self, max_tokens: int, min_tokens: int, seed: int | None) -> dict:
        """The ``SamplingParams`` arguments of one request. Given an ``end_id``, the release adds no stop token of its
        own (sampling_params.py, SamplingParams._setup), so the generation config's other EOS ids go in as
        ``stop_token_ids``: the stop set vLLM uses. Stop tokens end a request even under ``ignore_eos`` (the
        worker passes them as stop words and only replaces end_id by -1, executor/worker.py,
        GenerationExecutorWorker._enqueue_request), so a forced output length gets none. The runtime holds back
        only end_id below ``min_tokens`` (its stop-word check, kernels/stopCriteriaKernels.cu, has no minimum)."""
        dec = self.config["decoder"]
        forced = min_tokens >= max_tokens
        kwargs = {
            "max_tokens": max_tokens,
            "min_tokens": min_tokens,
            "end_id": self.end_id,
            "pad_id": self.pad_id,
            "seed": seed,
            "repetition_penalty": dec["repetition_penalty"],
            "ignore_eos": forced,
            "detokenize": False,  # text is never read; detokenising every streamed step would cost host time in the window
        }
        extra_stops = [t for t in self.stop_token_ids if t != self.end_id]
        if extra_stops and not forced:
            # kept in the output (the release trims stop tokens otherwise, executor/result.py _handle_sequence)
            kwargs.update(stop_token_ids=extra_stops, include_stop_str_in_output=True)
        if dec["do_sample"]:
            kwargs.update(temperature=dec["temperature"], top_k=dec["top_k"], top_p=dec["top_p"])
        else:
            # The release treats top_k = 1 (top_p unset) as greedy; temperature is then irrelevant.
            kwargs.update(temperature=None, top_k=1, top_p=None)
        return kwargs

    # ------------------------------------------------------------------------------------------------ generate
    async def _stream(self, idx: int, ids: list[int], params, on_done, at: float | None = None, slots=None) -> dict:
        """Submit one request and consume its stream. Arrival times are host perf_counter readings. Under a serving
        load the request waits for its planned arrival ``at`` (open loop), or for a free slot of ``slots`` (an
        asyncio semaphore: closed loop) before it is submitted."""
        if at is not None:
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if slots is not None:
            await slots.acquire()
        planned = at if at is not None else time.perf_counter() if slots is not None else None
        try:
            return await self._consume(idx, ids, params, on_done, planned)
        finally:
            if slots is not None:
                slots.release()

    async def _consume(self, idx: int, ids: list[int], params, on_done, planned: float | None) -> dict:
        submitted = time.perf_counter()
        result = self.llm.generate_async(ids, sampling_params=params, streaming=True)
        arrivals: list[tuple[float, int]] = []  # (arrival time, tokens that response added)
        seen = 0
        chunks = 0
        now = submitted
        async for out in result:
            now = time.perf_counter()
            n = len(out.outputs[0].token_ids)
            if n > seen:
                arrivals.append((now, n - seen))
                seen = n
                chunks += 1
        end = time.perf_counter()
        final = result.outputs[0]
        if final.finish_reason == "stop" and final.stop_reason is None and not params.ignore_eos:
            # ended on end_id, which the engine generated but does not return: counted, as vLLM and PyTorch count
            # their EOS, arriving with the response that ended the request
            arrivals.append((now, 1))
            seen += 1
        on_done()
        return {
            "index": idx,
            "input_tokens": len(ids),
            "output_tokens": seen,
            "planned": planned,
            "submitted": submitted,
            "arrivals": arrivals,
            "chunks": chunks,
            "end": end,
        }

    async def _generate(
        self,
        ids_list: list[list[int]],
        indices: list[int],
        params,
        progress,
        schedule: Schedule | None = None,
        start: float = 0.0,
    ) -> list[dict]:
        """Every request's stream, consumed concurrently: all submitted at once, or under a serving load each at
        its planned arrival (open loop) or when one of ``schedule.concurrency`` slots frees (closed loop, in
        order: asyncio's semaphore wakes its waiters first come, first served). ``params`` is one SamplingParams, or
        under a load a function of the request giving its own (a trace may force a request's length)."""
        done = [0]
        total = len(indices) if schedule is None else len(schedule.requests)

        def on_done():
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        if schedule is None:
            tasks = [asyncio.ensure_future(self._stream(i, ids_list[i], params, on_done)) for i in indices]
        else:  # the first arrival is the run's start
            slots = None if schedule.open_loop else asyncio.Semaphore(schedule.concurrency)
            tasks = [
                asyncio.ensure_future(
                    self._stream(
                        r.prompt,
                        ids_list[r.prompt],
                        params(r),
                        on_done,
                        start + r.offset_s if schedule.open_loop else None,
                        slots,
                    )
                )
                for r in schedule.requests
            ]
        return list(await asyncio.gather(*tasks))

    @staticmethod
    def timing(stream: dict) -> RequestTiming:
        """TTFT from submission (under a serving load: from the planned arrival) to the first response carrying
        tokens; ITL from response arrivals. A response carrying k > 1 tokens gives its gap to the first of them and
        0 to the other k - 1 (they arrived together), so a request with n tokens has n - 1 gaps; E2E from
        submission (planned arrival) to the last token's arrival."""
        planned = stream.get("planned")
        t0, arrivals = (stream["submitted"] if planned is None else planned), stream["arrivals"]
        when = {"start_t": t0}
        if planned is not None:
            when.update(planned_t=planned, submitted_t=stream["submitted"])
        if not arrivals:
            return RequestTiming(
                stream["index"], stream["input_tokens"], 0, stream["end"] - t0, stream["end"] - t0, [], **when
            )
        itl: list[float] = [0.0] * (arrivals[0][1] - 1)
        for (prev, _), (now, k) in itertools.pairwise(arrivals):
            itl.append(now - prev)
            itl.extend([0.0] * (k - 1))
        return RequestTiming(
            stream["index"],
            stream["input_tokens"],
            stream["output_tokens"],
            arrivals[0][0] - t0,
            arrivals[-1][0] - t0,
            itl,
            **when,
        )

    def _run_streams(
        self, prompts: list[str], indices: list[int], params, progress=None, schedule: Schedule | None = None
    ) -> tuple[float, float, list[dict]]:
        ids = self.encode(prompts)
        start = time.perf_counter()
        if self._loop is None:
            # One loop for the backend's life: each result is bound to the loop that submitted it, and reusing one
            # avoids creating and tearing down a loop around every run inside the measurement window.
            self._loop = asyncio.new_event_loop()
        streams = self._loop.run_until_complete(self._generate(ids, indices, params, progress, schedule, start))
        end = time.perf_counter()
        return start, end, streams

    def serving_params(self, schedule: Schedule, seed: int | None):
        """A request's SamplingParams under a serving load: the experiment's, or with the trace's forced length."""
        max_new, min_new = self.output_lengths()
        made: dict[tuple[int, int], object] = {}

        def params(request):
            lengths = schedule.output_lengths(request, max_new, min_new)
            if lengths not in made:
                made[lengths] = self.sampling_params(*lengths, seed)
            return made[lengths]

        return params

    def run(
        self,
        prompts: list[str],
        batches: list[Batch],
        seed: int | None,
        progress=None,
        schedule: Schedule | None = None,
    ) -> RunOutput:
        """Submit every request at once (under a serving load: each at its arrival) and consume all streams
        concurrently. ``progress(done, total)`` is called as requests finish."""
        if schedule is None:
            params = self.sampling_params(*self.output_lengths(), seed)
            indices = [i for b in batches for i in b.indices]
        else:
            params = self.serving_params(schedule, seed)
            indices = [r.prompt for r in schedule.requests]
        start, end, streams = self._run_streams(prompts, indices, params, progress, schedule)
        requests = [self.timing(s) for s in streams]
        first = [s["arrivals"][0][0] for s in streams if s["arrivals"]]
        inputs = sum(r.input_tokens for r in requests)
        batch = BatchRecord(
            size=len(indices),
            input_tokens=inputs,
            padded_input_tokens=inputs,  # token ids go in unpadded
            output_tokens=sum(r.output_tokens for r in requests),
            steps=sum(s["chunks"] for s in streams),  # streamed responses that carried tokens, all requests
            latency_s=end - start,
            start_t=start,
            first_token_t=min(first) if first else end,
            end_t=end,
        )
        return RunOutput(
            requests,
            [batch],
            end - start,
            scheduling="continuous",
            latency_method="engine_stream_token_arrival",
            steps=self.stream_steps(streams),
        )

    @staticmethod
    def stream_steps(streams: list[dict]) -> list[Step]:
        """The engine's iterations as each request saw them: submission to its first response (a prefill), then
        from one response to the next."""
        steps = []
        for s in streams:
            previous, prefill = s["submitted"], True
            for arrival, _ in s["arrivals"]:
                steps.append(Step(previous, arrival, prefill))
                previous, prefill = arrival, False
        return steps

    def warmup(self, prompts: list[str], batches: list[Batch], cfg: dict, schedule: Schedule | None = None) -> dict:
        """Before the window: the whole workload once, submitted as the window submits it (mode full; under a
        serving load the schedule is played once, so every in-flight batch size the window will see has run); then the
        first ``max_batch_size`` prompts repeated, at the full output length, until the latency CV over the last
        ``window_size`` runs (sample standard deviation, ddof 1) is below ``cv_threshold``, or ``max_prompts`` runs."""
        max_new, min_new = self.output_lengths()
        params = self.sampling_params(max_new, min_new, self.config["random_seed"])
        everything = [i for b in batches for i in b.indices]

        def full_pass() -> list[dict]:
            if schedule is None:
                start, end, streams = self._run_streams(prompts, everything, params)
            else:
                seed = self.config["random_seed"]
                start, end, streams = self._run_streams(
                    prompts, everything, self.serving_params(schedule, seed), schedule=schedule
                )
            return [
                shape(
                    len(everything),
                    sum(s["input_tokens"] for s in streams),
                    max((s["output_tokens"] for s in streams), default=0),
                    end - start,
                )
            ]

        indices = self.warmup_indices(batches)
        return warm_up(
            cfg,
            full_pass,
            lambda: elapsed(self._run_streams(prompts, indices, params)),
            len(indices),
            max_new,
        )

    # ------------------------------------------------------------------------------------------------ memory
    # The base's report: the runtime allocates its own GPU memory, outside torch's allocator (nothing to reset, no
    # CUDA peaks); NVML's used memory at the end of the window includes the preallocated KV cache.
