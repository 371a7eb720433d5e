"""PyTorch / transformers backend: ``generate`` on CPU or CUDA with four batching strategies.

Latency is taken natively: a stopping criterion that never stops records a timestamp after every decoding step
of a batched ``generate`` (synchronising CUDA first, where ``generate`` synchronises anyway), so each request's
first-token time, inter-token gaps and end-to-end latency come from real step times, at any batch size.
Tokens are counted from the attention mask and the position of EOS, never including padding.

Host work inside the window is kept to ``generate`` itself: prompts are tokenised, padded and moved to the device
when the batches are planned, before the window; a forced output length (``min_output_tokens`` >=
``max_output_tokens``) switches EOS stopping off instead of adding a logits processor that masks EOS at every step.
``pytorch.torch_compile`` compiles the model's forward (compilation happens in the warm-up, which runs every shape
of the window once); ``pytorch.cache_implementation`` picks generate's KV cache.

Serving load (``load.arrival`` other than offline, see :mod:`llenergymeasure.serving`): the requests go through
transformers' own continuous batching instead of ``generate`` (``model.init_continuous_batching``, transformers >=
5.19; earlier releases are refused at campaign expansion). Its manager runs engine steps on a thread of its own; this
process submits each request (``add_request``, token ids tokenised before the window) when the dispatcher says it is
due, waiting on the engine's finished outputs until the next arrival, so a request is submitted within milliseconds
of its planned time, and records its planned and submitted times. Each generated token carries the perf_counter
stamp the engine took when the token was produced (``record_timestamps``): TTFT and E2E count from the planned
arrival (open loop) or the submission (closed loop), ITL are the gaps between the stamps. Every engine step is timed
(the manager's step, wrapped); a step whose stamps include a request's first token is a prefill step. The engine is
created at load, warmed up and started once (in the warm-up, or at the first request) and stopped at close. What
each setting means under a load:

- ``pytorch.batch_size``: the most requests one engine step runs (``max_requests_per_batch``); on a CPU the paged KV
  cache holds ``batch_size`` requests of max_input + max_output tokens, on CUDA transformers sizes it from free memory;
- ``pytorch.batching_strategy``: static: the step's token budget is batch_size x max_input_tokens; dynamic: it is
  ``pytorch.max_tokens_per_batch`` (``max_batch_tokens``); the sorted strategies reorder prompts and are refused;
- ``pytorch.attn_implementation``: used as set (eager runs as transformers' paged eager; no switch to flash);
- ``pytorch.torch_compile`` / ``torch_compile_backend``: compile continuous batching's step (both its paths) with
  that mode and backend, in the warm-up; the model's forward is not compiled separately;
- ``pytorch.use_cache`` false and ``cache_implementation`` static are refused (a paged cache, always); no prefix
  sharing, so no prefill is served from blocks an earlier request (the warm-up's) left;
- BitsAndBytes weights are served as loaded; ``num_processes`` > 1 (data parallel) is refused;
- decoding: do_sample, temperature, top_k, top_p and ``pytorch.min_p`` go into the generation config continuous
  batching builds its processors from; sampling is seeded once, with ``random_seed``, when the engine starts. The
  repetition penalty, ``no_repeat_ngram_size``, ``pytorch.extra`` and a minimum output length below the maximum are
  refused (continuous batching does not support those processors); a forced length (min >= max, or a trace's
  ``output_tokens``) gives the request no EOS, so it runs to its length; otherwise ``stop_token_ids`` end it.

Warm-up under a load: the window's schedule played once through the engine (mode full: every prompt, output length
and running-batch size the window meets), then the first ``batch_size`` prompts repeated until the latency CV
settles. The window's result is one continuous batch
(size = requests, start = the first arrival, end = the last completion, steps, peak and mean requests given a token
per step).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import statistics
import time

from ..record.flags import BATCH_NOT_SATURATED, Flag
from . import BackendRules
from .base import (
    Backend,
    Batch,
    BatchRecord,
    RequestTiming,
    RunOutput,
    Step,
    elapsed,
    shape,
    stop_token_ids,
    warm_up,
    warmup_mode,
)

__all__ = ["RULES", "Batch", "PyTorchBackend", "RequestTiming", "RunOutput", "count_new_tokens", "plan_batches"]

log = logging.getLogger(__name__)

#: How a forced output length is obtained (recorded in the raw result's model details).
LENGTH_EOS_OFF = "eos_stopping_off"  # no EOS: generate runs to max_new_tokens, no per-step logits processor
LENGTH_MIN_NEW_TOKENS = "min_new_tokens_logits_processor"  # EOS masked until min_new_tokens (a processor per step)
LENGTH_FREE = "eos_or_max_new_tokens"  # the model stops at EOS or max_new_tokens


# ---------------------------------------------------------------------------------------------------- rules
# What this backend refuses and why, the GPUs it occupies, its batching knob and how it counts parameters: read
# at campaign expansion without importing torch (see llenergymeasure.backends).


def problems(config: dict) -> list[str]:
    """Every reason PyTorch/transformers cannot run this experiment as configured."""
    return list(_problems(config))


def _problems(config: dict):
    pt = config["pytorch"]
    bnb = pt["load_in_4bit"] or pt["load_in_8bit"]
    if pt["load_in_4bit"] and pt["load_in_8bit"]:
        yield "pytorch.load_in_4bit and pytorch.load_in_8bit are mutually exclusive"
    if bnb and config["device"] == "cpu":
        yield "BitsAndBytes quantisation (pytorch.load_in_4bit/8bit) needs a CUDA device, but device = cpu"
    if bnb and (config["no_weights"] or pt["num_processes"] > 1):
        yield "BitsAndBytes quantisation is supported for a single process loading a checkpoint"
    if not pt["load_in_4bit"]:
        changed = [k for k, default in BNB_4BIT_DEFAULTS.items() if pt[k] != default]
        if changed:
            yield f"pytorch.{changed[0]} = {pt[changed[0]]} applies to 4-bit BitsAndBytes weights only, but pytorch.load_in_4bit = false"
    if config["adapter"]:
        yield "adapter (LoRA) is supported on backend vllm only in this version"
    if not config["decoder"]["do_sample"] and pt["min_p"] != 0:
        yield f"pytorch.min_p = {pt['min_p']} shapes sampling, but decoding is greedy (decoder.do_sample = false)"
    if config["device"] == "cpu" and pt["attn_implementation"] == "flash_attention_2":
        yield "pytorch.attn_implementation = flash_attention_2 needs a CUDA device, but device = cpu"
    problem = compile_problem(config)
    if problem:
        yield problem
    yield from _load_problems(config)
    budget = pt["max_tokens_per_batch"]
    if budget is None and pt["batching_strategy"] in ("dynamic", "sorted_dynamic"):
        static = pt["batching_strategy"].replace("dynamic", "static")
        yield (
            f"pytorch.batching_strategy = {pt['batching_strategy']} packs prompts up to pytorch.max_tokens_per_batch; "
            f"without one the budget is batch_size x max_input_tokens, which every batch fits, so it would batch "
            f"as {static}: set pytorch.max_tokens_per_batch"
        )
    if budget is not None and pt["batching_strategy"] not in ("dynamic", "sorted_dynamic"):
        yield (
            f"pytorch.max_tokens_per_batch is the token budget of dynamic batches; batching_strategy = "
            f"{pt['batching_strategy']} forms batches of batch_size prompts and never reads it"
        )
    if budget is not None and budget < config["max_input_tokens"]:
        yield (
            f"pytorch.max_tokens_per_batch = {budget} is smaller than max_input_tokens = "
            f"{config['max_input_tokens']}: a single prompt might not fit in a batch"
        )


#: the transformers releases whose continuous batching serves a load here. Both were read for what the serving path
#: uses: ``ContinuousBatchingConfig`` (max_requests_per_batch, max_batch_tokens, num_blocks, seed,
#: auto_switch_to_flash, drop_unsupported_processors, allow_block_sharing, varlen/decode_compile_config;
#: generation/configuration_utils.py:1692 in 5.25, :1683 in 5.19), ``add_request`` with a per-request
#: ``max_new_tokens``, ``eos_token_id`` and ``record_timestamps`` (continuous_batching/continuous_api.py:920 in 5.25,
#: :905 in 5.19), a negative EOS id meaning none (continuous_batching/requests.py:160-165 in 5.25, :194-199 in 5.19)
#: and a perf_counter stamp per generated token (requests.py:215 in 5.25, :249 in 5.19). Earlier releases were not
#: checked (4.x has no ``ContinuousBatchingConfig``), so they are refused.
CB_MIN_TRANSFORMERS = (5, 19)


def transformers_release() -> tuple[int, ...] | None:
    """The installed transformers release as numbers (None when not installed), read without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("transformers")
    except PackageNotFoundError:
        return None
    parts = []
    for part in found.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _load_problems(config: dict):
    """Under a serving load the requests go through transformers' continuous batching (the manager of
    ``model.init_continuous_batching``); what it cannot honour is refused here."""
    arrival = config["load"]["arrival"]
    if arrival == "offline":
        return
    pt, dec = config["pytorch"], config["decoder"]
    where = f"load.arrival = {arrival}"
    release = transformers_release()
    if release is None or release[:2] < CB_MIN_TRANSFORMERS:
        have = "not installed" if release is None else ".".join(map(str, release))
        yield (
            f"{where} is served by transformers' continuous batching, checked on transformers >= "
            f"{'.'.join(map(str, CB_MIN_TRANSFORMERS))}; transformers here is {have}"
        )
    if pt["num_processes"] > 1:
        yield (
            f"pytorch.num_processes = {pt['num_processes']}: data-parallel processes split a static workload; "
            f"under {where} one continuous-batching engine serves the requests (use num_processes: 1)"
        )
    if pt["batching_strategy"].startswith("sorted"):
        yield (
            f"pytorch.batching_strategy = {pt['batching_strategy']} reorders prompts by length; under {where} "
            "requests run in arrival order (use static, or dynamic with max_tokens_per_batch)"
        )
    if not pt["use_cache"]:
        yield f"pytorch.use_cache = false: continuous batching always keeps a paged KV cache (under {where})"
    if pt["cache_implementation"] != "dynamic":
        yield (
            f"pytorch.cache_implementation = {pt['cache_implementation']} picks generate's KV cache; continuous "
            f"batching (under {where}) uses its own paged cache"
        )
    lo, hi = config["min_output_tokens"], config["max_output_tokens"]
    if 0 < lo < hi:
        # MinNewTokensLengthLogitsProcessor.supports_continuous_batching = False (generation/logits_process.py:201
        # in 5.25 and 5.19): continuous batching would drop or misapply it
        yield (
            f"min_output_tokens = {lo} (< max_output_tokens = {hi}) needs a per-step EOS mask, which transformers' "
            f"continuous batching does not support (under {where}); use 0, or min = max for a forced length"
        )
    if dec["repetition_penalty"] != 1.0:
        # RepetitionPenaltyLogitsProcessor.supports_continuous_batching = False (logits_process.py:356 in 5.25 and
        # 5.19): it reads each sequence's own tokens, which a continuous batch does not hand it
        yield (
            f"decoder.repetition_penalty = {dec['repetition_penalty']}: transformers' continuous batching does not "
            f"support the repetition penalty (under {where}); use 1.0"
        )
    if pt["no_repeat_ngram_size"]:
        # NoRepeatNGramLogitsProcessor reads each row's token history; continuous batching hands processors one
        # flattened row of every request's tokens
        yield (
            f"pytorch.no_repeat_ngram_size = {pt['no_repeat_ngram_size']} reads each sequence's own tokens, which "
            f"transformers' continuous batching does not hand it (under {where}); use 0"
        )
    if pt["extra"]:
        key = sorted(pt["extra"])[0]
        yield (
            f"pytorch.extra.{key} = {pt['extra'][key]} is a generate() argument; under {where} requests go through "
            "continuous batching, which takes none of generate's arguments"
        )


def compile_problem(config: dict) -> str | None:
    """torch.compile and KV-cache settings that cannot apply as combined (torch's and transformers' own rules)."""
    pt = config["pytorch"]
    mode, backend = pt["torch_compile"], pt["torch_compile_backend"]
    if mode is False and backend != "inductor":
        return f"pytorch.torch_compile_backend = {backend} has no effect while pytorch.torch_compile = false"
    if mode not in (False, True, "default") and backend != "inductor":
        # torch.compile hands a mode to a non-inductor backend as a keyword it does not take (torch/__init__.py,
        # _TorchCompileWrapper): modes are inductor's
        return (
            f"pytorch.torch_compile = {mode} is a mode of the inductor backend; torch_compile_backend = {backend} "
            "takes none (use torch_compile: true)"
        )
    if config["device"] == "cpu" and (mode == "reduce-overhead" or (mode and backend == "cudagraphs")):
        return "pytorch.torch_compile: CUDA graphs (mode reduce-overhead, backend cudagraphs) need a CUDA device, but device = cpu"
    if mode and (pt["load_in_4bit"] or pt["load_in_8bit"]):
        # transformers' quantizers report is_compileable = False for BitsAndBytes (quantizers/base.py)
        return "pytorch.torch_compile: transformers does not compile BitsAndBytes-quantised models"
    if pt["cache_implementation"] == "static" and not pt["use_cache"]:
        return "pytorch.cache_implementation = static has no effect with pytorch.use_cache = false"
    return None


#: 4-bit BitsAndBytes settings and their defaults (read by transformers only with load_in_4bit)
BNB_4BIT_DEFAULTS = {
    "bnb_4bit_compute_dtype": "float16",
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": False,
}


def gpus(config: dict) -> int:
    """One GPU per data-parallel process on CUDA, none on CPU."""
    return 0 if config["device"] == "cpu" else config["pytorch"]["num_processes"]


def nominal_batch(config: dict) -> tuple[int, str]:
    return config["pytorch"]["batch_size"], config["pytorch"]["batching_strategy"]


def count_parameters(config: dict, counted: int | None, hf_config) -> tuple[int | None, str]:
    """``counted`` is the sum of ``numel()`` over the model's tensors. 4-bit BitsAndBytes stores two weights per
    uint8 element, so there the count comes from the model config instead."""
    if config["pytorch"]["load_in_4bit"]:
        from ..flops import analytic_parameters

        return analytic_parameters(hf_config), "analytic_from_hf_config (4-bit weights are packed two per byte)"
    return counted, "numel"


def implementation(config: dict) -> str:
    if config["pytorch"]["num_processes"] > 1:
        return "llenergymeasure.backends.data_parallel:DataParallelPyTorch"
    return "llenergymeasure.backends.pytorch:PyTorchBackend"


#: the flags of this backend's own checks (validity_flags here and in data_parallel.py)
HALF_PRECISION_ON_CPU = Flag(
    "half_precision_on_cpu",
    "window",
    "float16 or bfloat16 on a CPU: most CPUs emulate it, several times slower than float32",
    "pytorch.PyTorchBackend.validity_flags",
)
IDLE_PROCESS = Flag(
    "idle_process",
    "window",
    "a data-parallel process got no prompt: fewer prompts than processes",
    "data_parallel.DataParallelPyTorch.validity_flags",
)

RULES = BackendRules(
    name="pytorch",
    engine="PyTorch/transformers",
    batch_knob="pytorch.batch_size",
    batch_label="bs",
    gpus_knob="pytorch.num_processes",
    gpu_only=False,
    problems=problems,
    gpus=gpus,
    nominal_batch=nominal_batch,
    count_parameters=count_parameters,
    implementation=implementation,
    flags=(
        BATCH_NOT_SATURATED,
        HALF_PRECISION_ON_CPU,
        IDLE_PROCESS,
    ),
)


@functools.cache
def _generation_fields() -> frozenset[str]:
    """The settings this transformers release's GenerationConfig knows (some arrived in later releases)."""
    from transformers import GenerationConfig

    return frozenset(vars(GenerationConfig()))


def plan_batches(prompt_tokens: list[int], strategy: str, batch_size: int, token_budget: int) -> list[Batch]:
    """Group prompts into batches.

    static: consecutive prompts, ``batch_size`` at a time. sorted_static: the same after sorting by token length
    (less padding). dynamic: consecutive prompts packed while the padded batch (rows x longest prompt) stays
    within ``token_budget`` and ``batch_size``. sorted_dynamic: packing after sorting by token length.
    """
    order = list(range(len(prompt_tokens)))
    if strategy.startswith("sorted"):
        order.sort(key=lambda i: (prompt_tokens[i], i))
    batches: list[Batch] = []
    if strategy in ("static", "sorted_static"):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batches.append(Batch(idx, [prompt_tokens[i] for i in idx]))
        return batches
    current: list[int] = []
    for i in order:
        candidate = [*current, i]
        padded = len(candidate) * max(prompt_tokens[j] for j in candidate)
        if current and (len(candidate) > batch_size or padded > token_budget):
            batches.append(Batch(current, [prompt_tokens[j] for j in current]))
            candidate = [i]
        current = candidate
    if current:
        batches.append(Batch(current, [prompt_tokens[j] for j in current]))
    return batches


def count_new_tokens(rows: list[list[int]], eos_ids: set[int]) -> list[int]:
    """Generated tokens per row, up to and including the first EOS; what follows EOS is padding."""
    counts = []
    for row in rows:
        n = len(row)
        for pos, tok in enumerate(row):
            if tok in eos_ids:
                n = pos + 1
                break
        counts.append(n)
    return counts


class PyTorchBackend(Backend):
    token_counting = "attention_mask for inputs; generated tokens up to and including EOS for outputs"
    name = "pytorch"

    def __init__(self, config: dict, model_path: str) -> None:
        super().__init__(config, model_path)
        self.model = None
        self._inputs: dict[tuple[int, ...], object] = {}  # planned batch -> its encoded, padded inputs on the device
        self._never_stop = None  # the step clock's constant answer, allocated once per batch size
        self.pad_token_id = None
        # under a serving load: transformers' continuous-batching manager, the prompts' token ids, engine steps
        self.serving = config["load"]["arrival"] != "offline"
        self._cb = None
        self._cb_started = False
        self._token_ids: list[list[int]] = []
        self._step_log: list[tuple[float, float]] = []
        self._request_counter = 0

    # ------------------------------------------------------------------------------------------------ setup
    def resolve_device(self) -> str:
        import torch

        wanted = self.config["device"]
        if wanted == "cuda" and not torch.cuda.is_available():
            from ..errors import MeasurementError

            raise MeasurementError("device = cuda, but torch sees no CUDA device")
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return wanted

    def gpu_count(self) -> int:
        """One GPU on CUDA (this process's copy of the model), none on a CPU."""
        return 1 if self.resolve_device() == "cuda" else 0

    def model_config(self):
        return self.model.config

    def validity_flags(self, run_batches: list[dict]) -> list[tuple[str, str]]:
        pt = self.config["pytorch"]
        flags = []
        # under a serving load the running batch is what the arrivals make it (not flagged, as on the engines)
        sizes = [b.size for b in run_batches]
        mean = statistics.fmean(sizes) if sizes else 0.0
        if not self.serving and mean < pt["batch_size"] and pt["batching_strategy"] in ("static", "sorted_static"):
            flags.append(
                (
                    "batch_not_saturated",
                    f"mean batch {mean:.2f} < batch_size {pt['batch_size']}: fewer prompts than a full batch, or a partial last batch",
                )
            )
        if self.device == "cpu" and self.config["fp_precision"] != "float32":
            flags.append(
                (
                    "half_precision_on_cpu",
                    f"fp_precision = {self.config['fp_precision']} on a CPU: most CPUs emulate it, "
                    "several times slower than float32; the numbers describe that",
                )
            )
        return flags

    def close(self) -> None:
        if self._cb is not None:
            if self._cb_started:
                self._cb.stop(block=True, timeout=60)
            self._cb = None
            self._cb_started = False
        self.model = None
        super().close()

    def bnb_kwargs(self) -> dict | None:
        """The ``BitsAndBytesConfig`` arguments from the ``pytorch`` section (dtype by name), or None."""
        pt = self.config["pytorch"]
        if pt["load_in_8bit"]:
            return {"load_in_8bit": True}
        if not pt["load_in_4bit"]:
            return None
        return {
            "load_in_4bit": True,
            "bnb_4bit_compute_dtype": pt["bnb_4bit_compute_dtype"],
            "bnb_4bit_quant_type": pt["bnb_4bit_quant_type"],
            "bnb_4bit_use_double_quant": pt["bnb_4bit_use_double_quant"],
        }

    def quantization_config(self):
        """BitsAndBytes settings from the ``pytorch`` section, or None."""
        kwargs = self.bnb_kwargs()
        if kwargs is None:
            return None
        import torch
        from transformers import BitsAndBytesConfig

        if "bnb_4bit_compute_dtype" in kwargs:
            kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
        return BitsAndBytesConfig(**kwargs)

    def load(self) -> dict:
        self.refuse_problems()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = self.resolve_device()
        if self.device == "cpu" and self.config["fp_precision"] != "float32":
            log.warning(
                "fp_precision = %s on a CPU: most CPUs emulate it, several times slower than float32 "
                "(the result is flagged half_precision_on_cpu)",
                self.config["fp_precision"],
            )
        t0 = time.perf_counter()
        dtype = getattr(torch, self.config["fp_precision"])  # the schema's names are torch's
        attn = self.config["pytorch"]["attn_implementation"]
        if self.config["no_weights"]:
            from ..synthetic import build, resolve_architecture

            model, tok = build(resolve_architecture(self.config["model_name"]), dtype, self.device, attn)
            weights = "random (seeded), no_weights"
        else:
            tok = AutoTokenizer.from_pretrained(self.model_path)
            quant = self.quantization_config()
            if quant is None:
                model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype, attn_implementation=attn)
                model.to(self.device)
            else:  # quantised weights are placed on the GPU while loading and cannot be moved afterwards
                model = AutoModelForCausalLM.from_pretrained(
                    self.model_path,
                    dtype=dtype,
                    attn_implementation=attn,
                    quantization_config=quant,
                    device_map={"": 0},
                )
            weights = (
                "checkpoint"
                if quant is None
                else f"checkpoint, bitsandbytes {'8-bit' if self.config['pytorch']['load_in_8bit'] else '4-bit'}"
            )
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.eval()
        if self.serving:
            compiled = self._serving_compile()
        else:
            compiled = self._compile(model)
            self._check_cache_implementation(model)
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.model, self.tokenizer = model, tok
        self.pad_token_id = tok.pad_token_id
        self.stop_token_ids = stop_token_ids(tok.eos_token_id, model.generation_config.eos_token_id)
        params, params_method = RULES.count_parameters(
            self.config, sum(p.numel() for p in model.parameters()), model.config
        )
        pt = self.config["pytorch"]
        serving = None
        if self.serving:
            serving = self._init_serving()
        return {
            "load_s": time.perf_counter() - t0,
            "device": self.device,
            "dtype": str(dtype).replace("torch.", ""),
            "parameters": params,
            "model_size_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "architecture": getattr(model.config, "model_type", None),
            "weights": weights,
            "output_length_forcing": self.length_forcing(),
            "cache_implementation": (
                "paged (continuous batching)"
                if self.serving
                else pt["cache_implementation"]
                if pt["use_cache"]
                else "none (use_cache = false)"
            ),
            "torch_compile": compiled,
            "parameters_method": params_method,
            "stop_token_ids": self.stop_token_ids,
            **({"continuous_batching": serving} if serving else {}),
        }

    def compile_kwargs(self) -> dict | None:
        """The ``torch.compile`` arguments of ``pytorch.torch_compile`` / ``torch_compile_backend`` (None: no compile)."""
        pt = self.config["pytorch"]
        mode = pt["torch_compile"]
        if mode is False:
            return None
        mode = "default" if mode is True else mode
        return {"mode": None if mode == "default" else mode, "backend": pt["torch_compile_backend"]}

    def _compile(self, model) -> dict | None:
        """``pytorch.torch_compile``: compile the model's forward (generate calls it for every step). Compilation
        itself happens on the first call of each shape, in the warm-up."""
        kwargs = self.compile_kwargs()
        if kwargs is None:
            return None
        mode = kwargs["mode"] or "default"
        if self.device == "cpu" and (mode == "reduce-overhead" or kwargs["backend"] == "cudagraphs"):
            from ..errors import MeasurementError

            raise MeasurementError(
                f"pytorch.torch_compile = {mode} with backend {kwargs['backend']} records CUDA "
                "graphs, but the experiment runs on the CPU"
            )
        import torch

        model.forward = torch.compile(model.forward, **kwargs)
        return {"mode": mode, "backend": kwargs["backend"], "target": "model.forward", "compiled_during": "warm-up"}

    def _check_cache_implementation(self, model) -> None:
        """A static cache on a model that cannot hold one would be ignored by generate (with a warning only)."""
        pt = self.config["pytorch"]
        if pt["cache_implementation"] == "static" and pt["use_cache"]:
            supports = getattr(model, "_supports_default_dynamic_cache", None)
            if supports is not None and not supports():
                from ..errors import MeasurementError

                raise MeasurementError(
                    f"pytorch.cache_implementation = static: {type(model).__name__} does not use "
                    "transformers' cache classes, so generate would ignore the setting"
                )

    def length_forcing(self) -> str:
        if self.config["min_output_tokens"] >= self.config["max_output_tokens"]:
            return LENGTH_EOS_OFF
        return LENGTH_MIN_NEW_TOKENS if self.config["min_output_tokens"] > 0 else LENGTH_FREE

    def count_prompt_tokens(self, prompts: list[str]) -> list[int]:
        enc = self.tokenizer(prompts, truncation=True, max_length=self.config["max_input_tokens"])
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: list[str]):
        """Tokenised, left-padded and truncated inputs of one batch, on the model's device."""
        return self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.config["max_input_tokens"]
        ).to(self.device)

    def plan(self, prompts: list[str]) -> list[Batch]:
        """Batches of the workload, each tokenised and moved to the device here, before the window."""
        pt = self.config["pytorch"]
        budget = pt["max_tokens_per_batch"] or pt["batch_size"] * self.config["max_input_tokens"]
        if self.serving:  # continuous batching takes each prompt's token ids: tokenised once, nothing padded
            counts = [len(ids) for ids in self._serving_tokens(prompts)]
        else:
            counts = self.count_prompt_tokens(prompts)
        batches = plan_batches(counts, pt["batching_strategy"], pt["batch_size"], budget)
        if not self.serving:
            self._inputs = {tuple(b.indices): self.encode([prompts[i] for i in b.indices]) for b in batches}
        return batches

    def _batch_inputs(self, prompts: list[str], batch: Batch):
        enc = self._inputs.get(tuple(batch.indices))
        return enc if enc is not None else self.encode([prompts[i] for i in batch.indices])

    # ------------------------------------------------------------------------------------------------ generate
    def _sampling_kwargs(self) -> dict:
        """The decoder's sampling arguments, as ``generate`` and continuous batching's generation config take them."""
        dec, pt = self.config["decoder"], self.config["pytorch"]
        if not dec["do_sample"]:
            # Greedy: neutral sampling values, so transformers does not warn about unused ones.
            return {"temperature": None, "top_k": None, "top_p": None}
        kwargs = {"temperature": dec["temperature"], "top_k": dec["top_k"], "top_p": dec["top_p"]}
        if pt["min_p"]:
            kwargs["min_p"] = pt["min_p"]
        return kwargs

    def _generate_kwargs(self, max_new_tokens: int, min_new_tokens: int) -> dict:
        dec = self.config["decoder"]
        pt = self.config["pytorch"]
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": dec["do_sample"],
            "use_cache": pt["use_cache"],
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.stop_token_ids,  # the tokenizer's EOS and the generation config's: vLLM's stop set
            "repetition_penalty": dec["repetition_penalty"],
        }
        if min_new_tokens >= max_new_tokens:
            kwargs["eos_token_id"] = None  # a forced length: no EOS stopping, so no EOS mask at every step
        elif min_new_tokens:
            kwargs["min_new_tokens"] = min_new_tokens
        if pt["use_cache"]:
            kwargs["cache_implementation"] = pt["cache_implementation"]
            if pt["cache_implementation"] == "static" and "max_cache_len" in _generation_fields():
                # one cache size for every batch: no reallocation (and no recompilation) when prompt lengths differ
                kwargs["max_cache_len"] = self.config["max_input_tokens"] + self.config["max_output_tokens"]
        if "disable_compile" in _generation_fields():
            # no compilation but pytorch.torch_compile's (generate would add its own for a static cache)
            kwargs["disable_compile"] = True
        kwargs.update(self._sampling_kwargs())
        if pt["no_repeat_ngram_size"]:
            kwargs["no_repeat_ngram_size"] = pt["no_repeat_ngram_size"]
        kwargs.update(pt.get("extra") or {})
        return kwargs

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def generate_batch(self, enc, max_new_tokens: int, min_new_tokens: int, seed: int | None):
        """One ``generate`` call on encoded inputs (:meth:`encode`). Returns (start time, end time, step times,
        output token count per row, input tokens per row)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        backend = self
        steps: list[float] = []
        rows = enc["input_ids"].shape[0]
        if self._never_stop is None or self._never_stop.shape[0] != rows:
            self._never_stop = torch.zeros(rows, dtype=torch.bool, device=enc["input_ids"].device)
        never_stop = self._never_stop

        class StepClock(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                backend._sync()
                steps.append(time.perf_counter())
                return never_stop

        input_tokens = enc["attention_mask"].sum(dim=1).tolist()
        if seed is not None:
            torch.manual_seed(seed)
        kwargs = self._generate_kwargs(max_new_tokens, min_new_tokens)
        self._sync()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, stopping_criteria=StoppingCriteriaList([StepClock()]), **kwargs)
        self._sync()
        end = time.perf_counter()
        new = out[:, enc["input_ids"].shape[1] :]
        if "eos_token_id" in kwargs and kwargs["eos_token_id"] is None:
            eos_ids: set[int] = set()  # nothing stopped the rows: every generated token counts
        else:
            eos = kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
            eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        return start, end, steps, count_new_tokens(new.tolist(), eos_ids), input_tokens

    def run(
        self, prompts: list[str], batches: list[Batch], seed: int | None, progress=None, schedule=None
    ) -> RunOutput:
        """Generate every batch. ``progress(done_requests, total_requests)`` is called after each batch. With a
        ``schedule`` (a serving load), the requests go through continuous batching at their arrival times instead
        (:meth:`serve`)."""
        if schedule is not None:
            return self.serve(prompts, schedule, progress)
        max_new, min_new = self.output_lengths()
        total_requests = sum(len(b.indices) for b in batches)
        requests: list[RequestTiming] = []
        batch_stats = []
        step_log: list[Step] = []
        total = 0.0
        for b_idx, batch in enumerate(batches):
            start, end, steps, counts, in_tokens = self.generate_batch(
                self._batch_inputs(prompts, batch),
                max_new,
                min_new,
                None if seed is None else seed + b_idx,
            )
            total += end - start
            for row, idx in enumerate(batch.indices):
                n = counts[row]
                times = steps[:n]
                ttft = (times[0] - start) if times else end - start
                e2e = (times[-1] - start) if times else end - start
                itl = [b - a for a, b in itertools.pairwise(times)]
                requests.append(RequestTiming(idx, in_tokens[row], n, ttft, e2e, itl, start_t=start))
            step_log.extend(
                Step(a, b, prefill=(k == 0)) for k, (a, b) in enumerate(itertools.pairwise([start, *steps]))
            )
            batch_stats.append(
                BatchRecord(
                    size=len(batch.indices),
                    input_tokens=int(sum(in_tokens)),
                    padded_input_tokens=batch.padded_tokens,
                    output_tokens=int(sum(counts)),
                    steps=len(steps),
                    latency_s=end - start,
                    start_t=start,
                    first_token_t=steps[0] if steps else end,
                    end_t=end,
                )
            )
            if progress is not None:
                progress(len(requests), total_requests)
        return RunOutput(requests, batch_stats, total, steps=step_log)

    def warmup(self, prompts: list[str], batches: list[Batch], cfg: dict, schedule=None) -> dict:
        """Before the window: each distinct batch shape (batch size, padded prompt length) of ``batches`` once, with
        the window's generate arguments, seeds and output lengths (mode full); then the first planned batch repeated
        until the latency CV over a sliding window (sample standard deviation, ddof 1) is below the threshold, or
        the maximum number of runs. Under a serving load, through continuous batching (:meth:`_serving_warmup`)."""
        if self.serving:
            return self._serving_warmup(prompts, batches, cfg, schedule)
        max_new, min_new = self.output_lengths()
        seed = self.config["random_seed"]

        def full_pass() -> list[dict]:
            seen: dict[tuple[int, int], dict] = {}
            for b_idx, batch in enumerate(batches):
                key = (len(batch.indices), batch.padded_tokens)
                if key in seen:
                    continue
                start, end, steps, _, _ = self.generate_batch(
                    self._batch_inputs(prompts, batch), max_new, min_new, None if seed is None else seed + b_idx
                )
                seen[key] = shape(key[0], key[1], len(steps), end - start)
            return list(seen.values())

        first = batches[0]
        return warm_up(
            cfg,
            full_pass,
            lambda: elapsed(self.generate_batch(self._batch_inputs(prompts, first), max_new, min_new, seed)),
            len(first.indices),
            max_new,
        )

    # ------------------------------------------------------------------------------------------------ serving
    # Under a serving load (load.arrival other than offline) requests go through transformers' continuous batching:
    # a ContinuousBatchingManager runs engine steps on its own thread; this process submits each request at its
    # arrival time and reads the finished requests, each with a perf_counter stamp per generated token.

    def cb_config_kwargs(self) -> dict:
        """The ``ContinuousBatchingConfig`` arguments: what each ``pytorch`` setting means under a load."""
        pt = self.config["pytorch"]
        budget = pt["max_tokens_per_batch"] or pt["batch_size"] * self.config["max_input_tokens"]
        kwargs = {
            "max_requests_per_batch": pt["batch_size"],  # the most requests one engine step runs
            "max_batch_tokens": budget,  # tokens (prefill chunks + decodes) one engine step runs
            "seed": self.config["random_seed"],  # the sampling generator, seeded when the engine starts
            "auto_switch_to_flash": False,  # pytorch.attn_implementation is used as set
            "drop_unsupported_processors": False,  # a sampling setting is never dropped silently
            "allow_block_sharing": False,  # no prefix cache: no prefill is served from the warm-up's blocks
        }
        if self.resolve_device() == "cpu":
            # the KV cache for batch_size requests of max_input + max_output tokens, in whole pages (on a CPU
            # transformers would otherwise take a share of the host's free memory)
            page = 256  # ContinuousBatchingConfig.page_size's default
            need = self.config["max_input_tokens"] + self.config["max_output_tokens"]
            kwargs["num_blocks"] = pt["batch_size"] * -(-need // page)
        compile_kwargs = self.compile_kwargs()
        if compile_kwargs is not None:
            from transformers.generation.configuration_utils import CompileConfig

            # continuous batching compiles its own step (forward, logits processing, sampling) per path; paged
            # attention is excluded from the graph, so no fullgraph (continuous_batching/initialization.py:193)
            for path in ("varlen_compile_config", "decode_compile_config"):
                kwargs[path] = CompileConfig(fullgraph=False, **compile_kwargs)
        return kwargs

    def cb_generation_kwargs(self) -> dict:
        """The ``GenerationConfig`` continuous batching builds its logits processors and sampling from."""
        return {
            "max_new_tokens": self.config["max_output_tokens"],
            "do_sample": self.config["decoder"]["do_sample"],
            "eos_token_id": list(self.stop_token_ids) or None,
            "pad_token_id": self.pad_token_id,
            **self._sampling_kwargs(),
        }

    def _serving_compile(self) -> dict | None:
        kwargs = self.compile_kwargs()
        if kwargs is None:
            return None
        return {
            "mode": kwargs["mode"] or "default",
            "backend": kwargs["backend"],
            "target": "continuous batching step (varlen and decode paths)",
            "compiled_during": "warm-up",
        }

    def _init_serving(self) -> dict:
        """Create the continuous-batching manager (started at first use); returns what it resolved."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        gen = GenerationConfig(**self.cb_generation_kwargs())
        cb = ContinuousBatchingConfig(**self.cb_config_kwargs())
        self._cb = self.model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
        resolved = self._cb.continuous_batching_config
        cuda_graph = resolved.use_cuda_graph
        return {
            "attn_implementation": self.model.config._attn_implementation,
            "max_requests_per_batch": resolved.max_requests_per_batch,
            "max_batch_tokens": resolved.max_batch_tokens,
            "num_blocks": resolved.num_blocks,
            "page_size": resolved.page_size,
            "use_cuda_graph": list(cuda_graph) if isinstance(cuda_graph, tuple) else cuda_graph,
            "use_async_batching": resolved.use_async_batching,
            "prefix_sharing": False,
            "scheduler": resolved.scheduler_type,
        }

    def _engine(self):
        """The started manager. Its warm-up (compilation, CUDA graphs where enabled) runs before its thread starts;
        every engine step is timed (the manager's own step, on its thread)."""
        if self._cb is None:
            self._init_serving()
        if not self._cb_started:
            self._cb.warmup()
            step = self._cb._generation_step
            backend = self

            def timed_step():
                t0 = time.perf_counter()
                step()
                backend._step_log.append((t0, time.perf_counter()))

            self._cb._generation_step = timed_step
            self._cb.start()
            self._cb_started = True
        return self._cb

    def _serving_tokens(self, prompts: list[str]) -> list[list[int]]:
        if len(self._token_ids) != len(prompts) or getattr(self, "_token_prompts", None) is not prompts:
            limit = self.config["max_input_tokens"]
            self._token_ids = [self.tokenizer(p, truncation=True, max_length=limit)["input_ids"] for p in prompts]
            self._token_prompts = prompts
        return self._token_ids

    def serve(self, prompts: list[str], schedule, progress=None, start: float | None = None) -> RunOutput:
        """The requests of ``schedule`` through continuous batching, each submitted when the dispatcher says it is
        due (the submission loop waits on the engine's outputs until the next arrival, so a request is submitted
        within a few milliseconds of its time, between or during engine steps). TTFT and E2E count from the planned
        arrival (open loop) or the submission (closed loop); ITL from the token stamps."""
        from ..errors import MeasurementError
        from ..serving import Dispatcher

        engine = self._engine()
        tokens = self._serving_tokens(prompts)
        max_new, min_new = self.output_lengths()
        n = len(schedule.requests)
        slot: dict[str, int] = {}
        planned = [0.0] * n
        submitted = [0.0] * n
        outputs: list = [None] * n
        self._step_log = []
        dispatcher = Dispatcher(schedule, start)
        in_flight = done = 0
        while dispatcher.remaining or in_flight:
            for request, planned_t in dispatcher.due(time.perf_counter(), in_flight):
                k = len(slot)
                length, floor = schedule.output_lengths(request, max_new, min_new)
                self._request_counter += 1
                rid = f"lem-{self._request_counter}"
                slot[rid] = k
                planned[k] = planned_t
                submitted[k] = time.perf_counter()
                engine.add_request(
                    tokens[request.prompt],
                    request_id=rid,
                    max_new_tokens=length,
                    eos_token_id=-1 if floor >= length else list(self.stop_token_ids) or -1,
                    record_timestamps=True,
                )
                in_flight += 1
            if not in_flight:
                dispatcher.wait(in_flight)
                continue
            t = dispatcher.next_arrival()
            timeout = 1.0 if t is None else min(1.0, max(0.0, t - time.perf_counter()))
            out = engine.get_result(timeout=timeout)
            if out is None:
                if not engine.is_running() or engine.background_thread_status.fatal_error is not None:
                    raise MeasurementError(
                        f"transformers' continuous batching stopped with {in_flight} request(s) in flight: "
                        f"{engine.background_thread_status.fatal_error}"
                    )
                continue
            k = slot.get(out.request_id)
            if k is None or not out.is_finished():
                continue
            if out.error is not None:
                raise MeasurementError(f"continuous batching failed request {out.request_id}: {out.error}")
            outputs[k] = out
            in_flight -= 1
            done += 1
            if progress is not None:
                progress(done, n)
        steps_raw = list(self._step_log)
        requests: list[RequestTiming] = []
        stamps: list[float] = []
        firsts: list[float] = []
        for k, (request, out) in enumerate(zip(schedule.requests, outputs, strict=True)):
            times = list(out.timestamps or [])
            count = len(out.generated_tokens)
            first = times[0] if times else out.lifespan[1]
            last = times[-1] if times else out.lifespan[1]
            stamps.extend(times)
            firsts.append(first)
            requests.append(
                RequestTiming(
                    request.prompt,
                    len(tokens[request.prompt]),
                    count,
                    first - planned[k],
                    last - planned[k],
                    [b - a for a, b in itertools.pairwise(times)],
                    planned_t=planned[k],
                    submitted_t=submitted[k],
                    start_t=planned[k],
                )
            )
        end = max((r.planned_t + r.e2e_s for r in requests), default=dispatcher.start)
        step_log, per_step = self._steps(steps_raw, sorted(stamps), sorted(firsts))
        input_tokens = sum(r.input_tokens for r in requests)
        batch = BatchRecord(
            size=n,
            input_tokens=input_tokens,
            padded_input_tokens=input_tokens,
            output_tokens=sum(r.output_tokens for r in requests),
            steps=len(steps_raw),
            latency_s=end - dispatcher.start,
            start_t=dispatcher.start,
            first_token_t=min(firsts, default=end),
            end_t=end,
            peak_decoding_seqs=max(per_step) if per_step else None,
            mean_decoding_seqs=statistics.fmean(per_step) if per_step else None,
        )
        return RunOutput(
            requests,
            [batch],
            end - dispatcher.start,
            scheduling="continuous",
            latency_method="continuous_batching_token_timestamps",
            steps=step_log,
        )

    def _steps(self, raw: list[tuple[float, float]], stamps: list[float], firsts: list[float]):
        """Engine steps as :class:`Step` records and the requests given a token in each. A step's tokens are stamped
        after it, before the next step starts (synchronous batching); with asynchronous batching (CUDA) the stamps
        of one step land during the next, so no step is attributed and none are returned."""
        if not raw or self._cb.continuous_batching_config.use_async_batching:
            return [], []
        out, per_step = [], []
        for i, (a, b) in enumerate(raw):
            until = raw[i + 1][0] if i + 1 < len(raw) else float("inf")
            tokens = bisect.bisect_left(stamps, until) - bisect.bisect_left(stamps, b)
            prefill = bisect.bisect_left(firsts, until) > bisect.bisect_left(firsts, b)
            out.append(Step(a, b, prefill=prefill))
            if tokens:
                per_step.append(tokens)
        return out, per_step

    def _serving_warmup(self, prompts: list[str], batches: list[Batch], cfg: dict, schedule=None) -> dict:
        """Before the window, through the same continuous-batching engine: the window's schedule played once (mode
        full: every prompt, output length and running-batch size the window meets; without a schedule, every
        prompt submitted at once at the window's output lengths); then the first
        ``batch_size`` prompts repeated until the latency CV is below the threshold (or the maximum number of
        runs). Starts the engine when it has not started (warm-up off: at the window's first request)."""
        from ..serving import Request, Schedule

        def closed(indices: list[int]) -> Schedule:
            return Schedule("closed", tuple(Request(i, None) for i in indices), max(1, len(indices)))

        def full_pass() -> list[dict]:
            everything = list(range(len(prompts)))
            out = self.serve(prompts, schedule if schedule is not None else closed(everything))
            stat = out.batches[0]
            return [
                shape(stat.size, stat.padded_input_tokens, max(r.output_tokens for r in out.requests), stat.latency_s)
            ]

        indices = self.warmup_indices(batches)
        if warmup_mode(cfg) != "off":
            self._engine()
        return warm_up(
            cfg,
            full_pass,
            lambda: self.serve(prompts, closed(indices)).batches[0].latency_s,
            len(indices),
            self.output_lengths()[0],
        )

    # ------------------------------------------------------------------------------------------------ memory
    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> dict:
        """CUDA peaks since :meth:`reset_peak_memory` (null on CPU, where the timeline's RSS peak applies)."""
        out: dict = {"cuda_peak_allocated_bytes": None, "cuda_peak_reserved_bytes": None}
        if self.device == "cuda":
            import torch

            out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
            out["cuda_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
        return out
