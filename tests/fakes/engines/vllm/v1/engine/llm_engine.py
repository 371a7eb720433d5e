"""``vllm.v1.engine.llm_engine.LLMEngine`` (what ``LLM.llm_engine`` is in vLLM 0.11.0), computing on the CPU.

One ``step()`` is one scheduler iteration: schedule within ``max_num_seqs`` and the token budget, run the model
for every scheduled request, return a ``RequestOutput`` for each request that got tokens (see the package
docstring for what is and is not modelled).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from ...outputs import CompletionOutput, RequestOutput
from ...sampling_params import RequestOutputKind, SamplingParams

_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
_QUANTIZATION = {
    "awq",
    "deepspeedfp",
    "tpu_int8",
    "fp8",
    "ptpc_fp8",
    "fbgemm_fp8",
    "modelopt",
    "modelopt_fp4",
    "bitblas",
    "gguf",
    "gptq_marlin_24",
    "gptq_marlin",
    "gptq_bitblas",
    "awq_marlin",
    "gptq",
    "compressed-tensors",
    "bitsandbytes",
    "hqq",
    "experts_int8",
    "ipex",
    "quark",
    "moe_wna16",
    "torchao",
    "auto-round",
    "rtn",
    "inc",
    "mxfp4",
    "petit_nvfp4",
}
_BLOCK_SIZES = (1, 8, 16, 32, 64, 128)
_KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc")
_SPEC_METHODS = {
    "ngram",
    "eagle",
    "eagle3",
    "medusa",
    "mlp_speculator",
    "draft_model",
    "deepseek_mtp",
    "ernie_mtp",
    "qwen3_next_mtp",
    "mimo_mtp",
    "longcat_flash_mtp",
    "mtp",
}
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
_LORA_EXTRA_VOCAB = (256, 512)
#: _set_default_args of 0.11.0 for the LLM class on GPUs under 70 GiB (16384 and 1024 on H100/H200-class GPUs)
_DEFAULT_BATCHED_TOKENS = 8192
_DEFAULT_MAX_SEQS = 256


def _awq_marlin_compatible(cfg: dict) -> bool:
    """AWQMarlinConfig.is_awq_marlin_compatible on an Ampere-or-newer GPU: 4-bit, zero point, Marlin group size."""
    return (
        str(cfg.get("quant_method", "")).lower() == "awq"
        and cfg.get("bits") == 4
        and cfg.get("zero_point") is not None
        and cfg.get("group_size") in (-1, 32, 64, 128)
    )


def _gptq_marlin_compatible(cfg: dict) -> bool:
    """GPTQMarlinConfig.is_gptq_marlin_compatible on an Ampere-or-newer GPU: 4 or 8 bits, symmetric, Marlin group."""
    return (
        str(cfg.get("quant_method", "")).lower() == "gptq"
        and cfg.get("bits") in (4, 8)
        and cfg.get("sym") is True
        and cfg.get("group_size") in (-1, 32, 64, 128)
    )


def _generation_config_fields(model: str) -> dict:
    """ModelConfig.try_get_generation_config (config/model.py:1315-1342, transformers_utils/config.py:950-969):
    generation_config.json, else one derived from config.json, as its non-default fields."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(model)
    except OSError:
        try:
            config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model))
        except OSError:
            return {}
    return config.to_diff_dict()


class _Request:
    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams, lora: Any, generator) -> None:
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.lora = lora
        self.generator = generator
        self.prefilled = 0  # prompt tokens already processed
        self.out: list[int] = []
        self.logprobs: list[dict[int, float]] = []
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.stop_reason: Any = None
        self.sent = 0  # tokens already returned (DELTA outputs)


class _EngineCore:
    """The in-process or background engine core client; only shutdown() is used from outside."""

    def __init__(self, multiprocess: bool) -> None:
        self.multiprocess = multiprocess
        self.is_shut_down = False

    def shutdown(self) -> None:
        self.is_shut_down = True


class LLMEngine:
    def __init__(self, args: dict, environment: Mapping[str, str | None]) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        hf = AutoConfig.from_pretrained(args["model"])
        self._check(args, hf)
        self.tokenizer = AutoTokenizer.from_pretrained(args["tokenizer"] or args["model"])
        # weights run unquantised in float32 whatever the checkpoint says (quantisation is recorded, not modelled)
        plain = copy.deepcopy(hf)
        if hasattr(plain, "quantization_config"):
            del plain.quantization_config
        self.model = AutoModelForCausalLM.from_pretrained(args["model"], config=plain, dtype=torch.float32).eval()
        self.eos_token_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else hf.eos_token_id
        self.vocab_size = hf.vocab_size
        #: lines the real engine logs while it configures itself (e.g. the "forcing awq" notice)
        self.log_messages: list[str] = []
        quantization = self._verify_quantization(args["quantization"], hf)
        load_format = args["load_format"]
        if quantization == "bitsandbytes":  # engine/arg_utils.py:1058-1059 and 1398-1400
            load_format = "bitsandbytes"
        #: the generation config's non-default fields, as Processor reads them (v1/engine/processor.py:52-53)
        self.generation_config_fields = _generation_config_fields(args["model"])

        max_model_len = args["max_model_len"] or hf.max_position_embeddings
        budget = args["max_num_batched_tokens"] or _DEFAULT_BATCHED_TOKENS
        max_seqs = args["max_num_seqs"] or min(_DEFAULT_MAX_SEQS, budget)
        if budget < max_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({budget}) must be greater than or equal to max_num_seqs ({max_seqs})."
            )
        multiprocess = (environment.get("VLLM_ENABLE_V1_MULTIPROCESSING") or "1") != "0"
        spec = self._speculative(args["speculative_config"])
        world = args["tensor_parallel_size"] * args["pipeline_parallel_size"]
        executor = args["distributed_executor_backend"] or ("uni" if world == 1 else "mp")
        lora = None
        if args["enable_lora"]:
            lora = SimpleNamespace(
                max_loras=args["max_loras"],
                max_lora_rank=args["max_lora_rank"],
                lora_extra_vocab_size=args["lora_extra_vocab_size"],
            )
        self.vllm_config = SimpleNamespace(
            model_config=SimpleNamespace(
                model=args["model"],
                max_model_len=max_model_len,
                dtype=args["dtype"],
                quantization=quantization,
                seed=args["seed"],
                hf_config=hf,
                enforce_eager=args["enforce_eager"],
                disable_sliding_window=args["disable_sliding_window"],
            ),
            scheduler_config=SimpleNamespace(
                max_num_seqs=max_seqs,
                max_num_batched_tokens=budget,
                max_model_len=max_model_len,
                enable_chunked_prefill=True,
                chunked_prefill_enabled=True,
            ),
            cache_config=SimpleNamespace(
                block_size=args["block_size"] or 16,
                cache_dtype=args["kv_cache_dtype"],
                enable_prefix_caching=args["enable_prefix_caching"] is not False,
                gpu_memory_utilization=args["gpu_memory_utilization"],
                swap_space=args["swap_space"],
                cpu_offload_gb=args["cpu_offload_gb"],
                num_gpu_blocks=None,
                num_cpu_blocks=0,  # V1: no CPU blocks (v1/engine/core.py:204)
            ),
            load_config=SimpleNamespace(load_format=load_format),
            parallel_config=SimpleNamespace(
                tensor_parallel_size=args["tensor_parallel_size"],
                pipeline_parallel_size=args["pipeline_parallel_size"],
                world_size=world,
                distributed_executor_backend=executor,
                disable_custom_all_reduce=args["disable_custom_all_reduce"],
            ),
            speculative_config=spec,
            lora_config=lora,
        )
        self.model_config = self.vllm_config.model_config
        self.engine_core = _EngineCore(multiprocess)
        # 0.11.0's in-process core never hands the drafter's proposals to the scheduler (vLLM issue #27287)
        self.drafts_used = spec is not None and spec.method == "ngram" and multiprocess
        self._generator = torch.Generator().manual_seed(args["seed"] if args["seed"] is not None else 0)
        self.waiting: list[_Request] = []
        self.running: list[_Request] = []
        self.ids: set[str] = set()
        #: what add_request received, in order: (request_id, prompt, params, lora_request)
        self.requests: list[tuple] = []
        self.steps = 0
        #: most requests that got a token in one step
        self.max_decoding = 0

    # -------------------------------------------------------------------------------------- configuration
    @staticmethod
    def _check(args: dict, hf) -> None:
        """The argument checks vLLM 0.11.0 makes while it builds its configuration."""
        if args["dtype"] not in _DTYPES:
            raise ValueError(f"Unknown dtype: {args['dtype']!r}")
        if args["quantization"] is not None and args["quantization"] not in _QUANTIZATION:
            raise ValueError(
                f"Unknown quantization method: {args['quantization']}. Must be one of {sorted(_QUANTIZATION)}."
            )
        if args["block_size"] is not None and args["block_size"] not in _BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {_BLOCK_SIZES}, got {args['block_size']}")
        if args["kv_cache_dtype"] not in _KV_CACHE_DTYPES:
            raise ValueError(f"Unknown kv cache dtype: {args['kv_cache_dtype']}")
        if not 0 < args["gpu_memory_utilization"] <= 1:
            raise ValueError(f"GPU memory utilization must be within (0, 1]. Got {args['gpu_memory_utilization']}.")
        if args["max_model_len"] is not None and args["max_model_len"] > hf.max_position_embeddings:
            raise ValueError(
                f"User-specified max_model_len ({args['max_model_len']}) is greater than the derived "
                f"max_model_len (max_position_embeddings={hf.max_position_embeddings})."
            )
        if args["distributed_executor_backend"] not in (None, "mp", "ray", "uni", "external_launcher"):
            raise ValueError(f"Unrecognized distributed executor backend {args['distributed_executor_backend']}.")
        if args["enable_lora"]:
            if args["max_lora_rank"] not in _LORA_RANKS:
                raise ValueError(f"max_lora_rank ({args['max_lora_rank']}) must be one of {_LORA_RANKS}.")
            if args["lora_extra_vocab_size"] not in _LORA_EXTRA_VOCAB:
                raise ValueError(
                    f"lora_extra_vocab_size ({args['lora_extra_vocab_size']}) must be one of {_LORA_EXTRA_VOCAB}."
                )
            if args["max_loras"] < 1:
                raise ValueError(f"max_loras ({args['max_loras']}) must be >= 1.")

    def _verify_quantization(self, given: str | None, hf) -> str | None:
        """ModelConfig._verify_quantization of 0.11.0 (config/model.py:879-962) for the methods measured here: the
        checkpoint's quantization_config decides unless the caller names a method; AWQ and GPTQ checkpoints that
        Marlin can run get the Marlin kernels unless awq/gptq is named explicitly, which keeps the legacy kernels
        (awq_marlin.py:110-127, gptq_marlin.py:181-199); a named method other than the checkpoint's is an error."""
        quant_cfg = getattr(hf, "quantization_config", None)
        if quant_cfg is None:
            return given
        method = str(quant_cfg.get("quant_method", "")).lower()
        for name, compatible in (("awq_marlin", _awq_marlin_compatible), ("gptq_marlin", _gptq_marlin_compatible)):
            legacy = name.split("_")[0]
            if compatible(quant_cfg):
                if given in (None, "marlin", name):
                    self.log_messages.append(f"The model is convertible to {name} during runtime. Using {name} kernel.")
                    return name
                if given == legacy:
                    self.log_messages.append(
                        f"Detected that the model can run with {name}, however you specified "
                        f"quantization={legacy} explicitly, so forcing {legacy}."
                    )
        if given is None:
            return method or None
        if given != method:
            raise ValueError(
                f"Quantization method specified in the model config ({method}) does not match the "
                f"quantization method specified in the `quantization` argument ({given})."
            )
        return given

    @staticmethod
    def _speculative(raw: dict | None):
        if raw is None:
            return None
        spec = SimpleNamespace(
            method=raw.get("method"),
            model=raw.get("model"),
            num_speculative_tokens=raw.get("num_speculative_tokens"),
            prompt_lookup_min=raw.get("prompt_lookup_min"),
            prompt_lookup_max=raw.get("prompt_lookup_max"),
            draft_tensor_parallel_size=raw.get("draft_tensor_parallel_size"),
        )
        unknown = (
            set(raw)
            - set(vars(spec))
            - {
                "quantization",
                "max_model_len",
                "revision",
                "disable_by_batch_size",
                "enforce_eager",
                "disable_logprobs",
                "speculative_token_tree",
            }
        )
        if unknown:
            raise ValueError(f"Unknown speculative_config keys: {sorted(unknown)}")
        if spec.method is not None and spec.method not in _SPEC_METHODS:
            raise ValueError(f"speculative method {spec.method!r} is not one of {sorted(_SPEC_METHODS)}")
        if spec.method == "draft_model":
            raise NotImplementedError(
                "Draft model speculative decoding is not supported yet. Please consider using "
                "other speculative decoding methods such as ngram, medusa, eagle, or mtp."
            )
        if spec.method == "ngram" or spec.model == "ngram":
            spec.method = "ngram"
            if spec.prompt_lookup_min is None and spec.prompt_lookup_max is None:
                spec.prompt_lookup_min = spec.prompt_lookup_max = 5
            spec.prompt_lookup_min = spec.prompt_lookup_min or spec.prompt_lookup_max
            spec.prompt_lookup_max = spec.prompt_lookup_max or spec.prompt_lookup_min
            if spec.prompt_lookup_min > spec.prompt_lookup_max:
                raise ValueError(
                    f"prompt_lookup_min={spec.prompt_lookup_min} must be <= prompt_lookup_max={spec.prompt_lookup_max}"
                )
        elif spec.model is None:
            raise ValueError("num_speculative_tokens was provided but without speculative model.")
        elif spec.method == "mlp_speculator":
            raise ValueError(f"Unknown speculative decoding method: {spec.method}")
        return spec

    # -------------------------------------------------------------------------------------- requests
    def get_tokenizer(self):
        return self.tokenizer

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def add_request(
        self,
        request_id: str,
        prompt: Any,
        params: SamplingParams,
        arrival_time: float | None = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Mapping[str, str] | None = None,
        priority: int = 0,
    ) -> None:
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a string, got {type(request_id)}")
        if request_id in self.ids:
            raise ValueError(f"Request id {request_id} already running.")
        if lora_request is not None and self.vllm_config.lora_config is None:
            raise ValueError(f"Got lora_request {lora_request} but LoRA is not enabled!")
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = list(prompt["prompt_token_ids"])
        else:
            ids = self.tokenizer(prompt["prompt"])["input_ids"]
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        if max(ids) > self.vocab_size - 1:
            raise ValueError(f"Token id {max(ids)} is out of vocabulary")
        max_len = self.vllm_config.model_config.max_model_len
        if len(ids) > max_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                f"{max_len}. Make sure that `max_model_len` is no smaller than the number of text tokens."
            )
        params = params.clone()
        if params.max_tokens is None:
            params.max_tokens = max_len - len(ids)
        params.update_from_generation_config(self.generation_config_fields, self.eos_token_id)  # processor.py:416-417
        generator = None
        if params.seed is not None:
            generator = self._torch.Generator().manual_seed(params.seed)
        self.requests.append((request_id, prompt, params, lora_request))
        self.ids.add(request_id)
        self.waiting.append(_Request(request_id, ids, params, lora_request, generator))

    def abort_request(self, request_ids: list[str]) -> None:
        self.waiting = [r for r in self.waiting if r.request_id not in request_ids]
        self.running = [r for r in self.running if r.request_id not in request_ids]
        self.ids.difference_update(request_ids)

    # -------------------------------------------------------------------------------------- stepping
    def step(self) -> list[RequestOutput]:
        sched = self.vllm_config.scheduler_config
        budget = sched.max_num_batched_tokens
        work: list[tuple[_Request, list[int]]] = []  # (request, draft tokens to verify)
        for req in list(self.running):  # running requests first, as V1 schedules
            if budget <= 0:
                break
            if req.prefilled < len(req.prompt_ids):
                take = min(len(req.prompt_ids) - req.prefilled, budget)
                req.prefilled += take
                budget -= take
                work.append((req, []))
            else:
                drafts = self._propose(req)[: max(0, budget - 1)]
                budget -= 1 + len(drafts)
                work.append((req, drafts))
        while self.waiting and len(self.running) < sched.max_num_seqs and budget > 0:
            req = self.waiting.pop(0)
            take = min(len(req.prompt_ids), budget)
            req.prefilled = take
            budget -= take
            self.running.append(req)
            work.append((req, []))
        self.steps += 1
        outputs: list[RequestOutput] = []
        decoding = 0
        for req, drafts in work:
            if req.prefilled < len(req.prompt_ids):
                continue  # a chunk of its prompt ran; no token yet
            before = len(req.out)
            self._generate(req, drafts)
            if len(req.out) > before:
                decoding += 1
            if req.finish_reason is not None:
                self.running.remove(req)
                self.ids.discard(req.request_id)
            output = self._output(req)
            if output is not None:
                outputs.append(output)
        self.max_decoding = max(self.max_decoding, decoding)
        return outputs

    def _propose(self, req: _Request) -> list[int]:
        """N-gram drafts: the tokens that followed the latest earlier occurrence of the sequence's last n tokens."""
        spec = self.vllm_config.speculative_config
        if not self.drafts_used:
            return []
        seq = req.prompt_ids + req.out
        room = min(spec.num_speculative_tokens, req.params.max_tokens - len(req.out) - 1)
        if room <= 0:
            return []
        for n in range(spec.prompt_lookup_max, spec.prompt_lookup_min - 1, -1):
            if len(seq) <= n:
                continue
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start : start + n] == tail:
                    return seq[start + n : start + n + room]
        return []

    def _generate(self, req: _Request, drafts: list[int]) -> None:
        """Emit the target model's next token, then keep going while it agrees with the drafts (one bonus token)."""
        for position in range(len(drafts) + 1):
            token = self._next_token(req)
            self._append(req, token)
            if req.finish_reason is not None:
                return
            if position < len(drafts) and token != drafts[position]:
                return

    def _next_token(self, req: _Request) -> int:
        torch = self._torch
        p = req.params
        seq = req.prompt_ids + req.out
        with torch.inference_mode():
            raw = self.model(torch.tensor([seq])).logits[0, -1]
        logits = raw.float().clone()  # a normal tensor: the penalties below edit it in place
        if p.logit_bias:
            for token, bias in p.logit_bias.items():
                logits[int(token)] += bias
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq)))
            picked = logits[seen]
            logits[seen] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if len(req.out) < p.min_tokens:  # every stop token is held back below min_tokens
            for stop in p.all_stop_token_ids:
                logits[stop] = -math.inf
        logprobs = torch.log_softmax(logits, dim=-1)
        if p.temperature < 1e-5:
            token = int(torch.argmax(logits))
        else:
            scaled = logits / p.temperature
            if p.top_k > 0:
                kth = torch.topk(scaled, min(p.top_k, scaled.numel())).values[-1]
                scaled[scaled < kth] = -math.inf
            probs = torch.softmax(scaled, dim=-1)
            if p.min_p > 0:
                probs[probs < p.min_p * probs.max()] = 0.0
            if p.top_p < 1.0:
                ordered, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(ordered, dim=-1) - ordered < p.top_p * ordered.sum()
                mask = torch.zeros_like(probs, dtype=torch.bool)
                mask[order[keep]] = True
                probs[~mask] = 0.0
            token = int(torch.multinomial(probs / probs.sum(), 1, generator=req.generator or self._generator))
        req.cumulative_logprob += float(logprobs[token])
        if p.logprobs is not None:
            top = torch.topk(logprobs, max(p.logprobs, 0)).indices.tolist() if p.logprobs > 0 else []
            req.logprobs.append({t: float(logprobs[t]) for t in [token, *top]})
        return token

    def _append(self, req: _Request, token: int) -> None:
        req.out.append(token)
        p = req.params
        if not p.ignore_eos and token == self.eos_token_id and len(req.out) >= p.min_tokens:
            req.finish_reason, req.stop_reason = "stop", None
        elif token in p.stop_token_ids:  # checked whatever ignore_eos says (v1/core/sched/utils.py:59-67)
            req.finish_reason, req.stop_reason = "stop", token
        elif (
            len(req.out) >= p.max_tokens
            or len(req.prompt_ids) + len(req.out) >= self.vllm_config.model_config.max_model_len
        ):
            req.finish_reason = "length"

    def _output(self, req: _Request) -> RequestOutput | None:
        kind = req.params.output_kind
        finished = req.finish_reason is not None
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return None
        if len(req.out) == req.sent and not finished:
            return None
        tokens = req.out[req.sent :] if kind is RequestOutputKind.DELTA else list(req.out)
        logprobs = None
        if req.params.logprobs is not None:
            logprobs = req.logprobs[req.sent :] if kind is RequestOutputKind.DELTA else list(req.logprobs)
        req.sent = len(req.out)
        # detokenize=False: no detokenizer for the request, text stays empty (v1/engine/output_processor.py:138-147)
        text = (
            self.tokenizer.decode(tokens, skip_special_tokens=req.params.skip_special_tokens)
            if req.params.detokenize
            else ""
        )
        completion = CompletionOutput(
            index=0,
            text=text,
            token_ids=tokens,
            cumulative_logprob=req.cumulative_logprob,
            logprobs=logprobs,
            finish_reason=req.finish_reason,
            stop_reason=req.stop_reason,
            lora_request=req.lora,
        )
        return RequestOutput(
            req.request_id,
            None,
            req.prompt_ids,
            None,
            [completion],
            finished,
            lora_request=req.lora,
            num_cached_tokens=0,
        )
