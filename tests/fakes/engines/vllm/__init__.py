"""A CPU stand-in for the part of vLLM 0.11.0's offline API that ``llenergymeasure.backends.vllm`` uses.

Mirrors vLLM 0.11.0 (read from the release wheel vllm-0.11.0-cp38-abi3-manylinux1_x86_64), same module paths:

- ``vllm.LLM`` = ``vllm.entrypoints.llm.LLM``: the constructor's explicit keyword arguments and their defaults;
  further keyword arguments must be ``EngineArgs`` field names (anything else raises TypeError, as
  ``EngineArgs(**kwargs)`` does); ``get_tokenizer()``, ``apply_model(func)``, ``reset_prefix_cache()``,
  ``llm_engine``.
- ``vllm.v1.engine.llm_engine.LLMEngine`` (what ``LLM.llm_engine`` is): ``add_request(request_id, prompt, params,
  arrival_time, lora_request, tokenization_kwargs, trace_headers, priority)``, ``step()``,
  ``has_unfinished_requests()``, ``get_num_unfinished_requests()``, ``get_tokenizer()``, ``vllm_config`` (the
  scheduler, cache, model, parallel, speculative and LoRA settings in effect) and ``engine_core.shutdown()``.
- ``vllm.SamplingParams`` = ``vllm.sampling_params.SamplingParams``: field names, defaults, the argument checks the
  backend can trigger, greedy normalisation (temperature 0 resets top_p, top_k, min_p); ``RequestOutputKind``.
- ``vllm.inputs.TokensPrompt``, ``vllm.outputs.RequestOutput`` / ``CompletionOutput``,
  ``vllm.lora.request.LoRARequest``, ``vllm.distributed.parallel_state.cleanup_dist_env_and_memory``.

Behaviour kept from the real engine: requests are scheduled as by V1's scheduler (running requests first, one
token each, then waiting requests admitted first come first served while fewer than ``max_num_seqs`` run and the
step's token budget ``max_num_batched_tokens`` lasts; prompts longer than the remaining budget are prefilled in
chunks over several steps, because vLLM 0.11.0 turns chunked prefill on for every generation model whatever
``enable_chunked_prefill`` says); a request's first token comes out of the step that finishes its prefill; every
later step gives each running request one token, or with n-gram speculative decoding the accepted draft tokens
plus one. Tokens are real: each one is the tiny HF model's next token for the sequence so far (transformers, CPU,
float32), greedy or sampled with temperature/top-k/top-p/min-p, repetition penalty and logit bias. Requests stop as
0.11.0 stops them: on the tokenizer's EOS unless ``ignore_eos``, and on every other ``eos_token_id`` of the
checkpoint's generation config, which the engine adds to ``stop_token_ids`` (``update_from_generation_config``);
stop tokens end a request even under ``ignore_eos``, and every one of them is held back below ``min_tokens``;
``max_tokens`` and ``max_model_len`` are enforced. Outputs are cumulative by default
(``RequestOutputKind.CUMULATIVE``), per step, for every request that got tokens, with empty text when
``detokenize`` is false. The quantisation method is settled as 0.11.0 settles it from the checkpoint's
``quantization_config``: Marlin kernels for AWQ/GPTQ checkpoints they can run unless ``awq``/``gptq`` is named
(then the legacy kernels, with the release's "forcing" notice in ``log_messages``), an error when the named method
contradicts the checkpoint, and BitsAndBytes forcing its own ``load_format``. As in 0.11.0, speculative decoding
proposes nothing when the engine core runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``; vLLM issue #27287,
fixed after 0.11.0).

Not modelled: GPU memory, the KV cache and preemption (so ``gpu_memory_utilization``, ``cpu_offload_gb``,
``block_size``, ``kv_cache_dtype`` and ``num_gpu_blocks`` are recorded, not acted on; ``swap_space`` is recorded and,
as in V1, no CPU blocks exist), prefix caching, the numerics of quantised kernels (quantised checkpoints run
unquantised in float32), tensor/pipeline parallelism (one process), attention backends, CUDA graphs and
compilation, LoRA weights (the request is validated and recorded, the base model answers), draft-model-based
speculative methods (EAGLE, Medusa: recorded, one token per step), the one-step lag between proposing and
verifying drafts, detokenisation into incremental text (``text`` is decoded from all tokens each step), logprob
objects (plain floats instead of ``Logprob``), stop strings, ``n`` > 1, and timing (no sleeps: steps take as long
as the CPU forward passes).
"""

from __future__ import annotations

__version__ = "0.11.0"
__version_tuple__ = (0, 11, 0)

from .entrypoints.llm import LLM
from .inputs import TextPrompt, TokensPrompt
from .outputs import CompletionOutput, RequestOutput
from .sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams", "TextPrompt", "TokensPrompt", "__version__"]
