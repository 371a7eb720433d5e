"""Fake of the configuration models of ``tensorrt_llm.llmapi.llm_args`` at 1.0.0 that the TensorRT flow takes.

The release's models are pydantic ``StrictBaseModel`` subclasses (``extra="forbid"``): an unknown field raises a
``ValidationError``, which is a ``ValueError``; the fakes raise ``ValueError`` the same way. ``TRT_LLM_ARG_NAMES``
lists the keywords ``LLM(...)`` accepts in the TensorRT flow (BaseLlmArgs plus TrtLlmArgs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class _Strict:
    _FIELDS: dict[str, Any] = {}

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self._FIELDS))
        if unknown:
            raise ValueError(f"{type(self).__name__}: extra inputs are not permitted: {', '.join(unknown)}")
        for name, default in self._FIELDS.items():
            setattr(self, name, kwargs.get(name, default))
        self._validate()

    def _validate(self) -> None:
        pass

    def model_dump(self) -> dict:
        return {name: getattr(self, name) for name in self._FIELDS}

    def __eq__(self, other):
        return type(self) is type(other) and self.model_dump() == other.model_dump()

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.model_dump().items())})"


class CalibConfig(_Strict):
    _FIELDS = {
        "device": "cuda",
        "calib_dataset": "cnn_dailymail",
        "calib_batches": 512,
        "calib_batch_size": 1,
        "calib_max_seq_length": 512,
        "random_seed": 1234,
        "tokenizer_max_seq_length": 2048,
    }


class KvCacheConfig(_Strict):
    _FIELDS = {
        "enable_block_reuse": True,
        "max_tokens": None,
        "max_attention_window": None,
        "sink_token_length": None,
        "free_gpu_memory_fraction": 0.9,
        "host_cache_size": None,
        "onboard_blocks": True,
        "cross_kv_cache_fraction": None,
        "secondary_offload_min_priority": None,
        "event_buffer_max_size": 0,
        "attention_dp_events_gather_period_ms": 5,
        "enable_partial_reuse": True,
        "copy_on_partial_reuse": True,
        "use_uvm": False,
        "max_gpu_total_bytes": 0,
        "dtype": "auto",
        "mamba_ssm_cache_dtype": "auto",
        "tokens_per_block": 32,
    }

    def _validate(self) -> None:
        if self.free_gpu_memory_fraction is not None and not 0 <= self.free_gpu_memory_fraction <= 1:
            raise ValueError("kv_cache_config.free_gpu_memory_fraction must be a float between 0 and 1")


class DraftTargetDecodingConfig(_Strict):
    """Draft-target speculative decoding; the release accepts it on the PyTorch backend only."""

    _FIELDS = {
        "max_draft_len": None,
        "speculative_model_dir": None,
        "num_extra_kv_tokens": 0,
        "load_format": None,
    }
    decoding_type = "Draft_Target"

    def supports_backend(self, backend: str | None) -> bool:
        return backend == "pytorch"


_BASE_LLM_ARGS = (
    "model",
    "tokenizer",
    "tokenizer_mode",
    "skip_tokenizer_init",
    "trust_remote_code",
    "tensor_parallel_size",
    "dtype",
    "revision",
    "tokenizer_revision",
    "pipeline_parallel_size",
    "context_parallel_size",
    "gpus_per_node",
    "moe_cluster_parallel_size",
    "moe_tensor_parallel_size",
    "moe_expert_parallel_size",
    "enable_attention_dp",
    "cp_config",
    "load_format",
    "enable_lora",
    "lora_config",
    "kv_cache_config",
    "enable_chunked_prefill",
    "guided_decoding_backend",
    "batched_logits_processor",
    "iter_stats_max_iterations",
    "request_stats_max_iterations",
    "peft_cache_config",
    "scheduler_config",
    "cache_transceiver_config",
    "speculative_config",
    "max_batch_size",
    "max_input_len",
    "max_seq_len",
    "max_beam_width",
    "max_num_tokens",
    "gather_generation_logits",
    "num_postprocess_workers",
    "postprocess_tokenizer_dir",
    "reasoning_parser",
    "decoding_config",
    "mpi_session",
    "backend",
    "return_perf_metrics",
)
_TRT_LLM_ARGS = (
    "enable_tqdm",
    "workspace",
    "enable_build_cache",
    "extended_runtime_perf_knob_config",
    "calib_config",
    "quant_config",
    "embedding_parallel_mode",
    "fast_build",
    "build_config",
    "enable_prompt_adapter",
    "max_prompt_adapter_token",
    "batching_type",
    "normalize_log_probs",
)
TRT_LLM_ARG_NAMES = frozenset(_BASE_LLM_ARGS + _TRT_LLM_ARGS)


def is_engine_dir(path) -> bool:
    """An engine folder's config.json has ``pretrained_config`` and ``build_config`` (the release's model-format
    probe); anything else with a config.json is taken as a Hugging Face checkpoint."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    with open(cfg, encoding="utf-8") as fh:
        data = json.load(fh)
    return "pretrained_config" in data and "build_config" in data
