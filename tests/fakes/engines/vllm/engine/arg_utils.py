"""``vllm.engine.arg_utils.EngineArgs``: the field names of vLLM 0.11.0's EngineArgs dataclass.

Only the names are checked (an unknown one raises TypeError, as the dataclass constructor does); defaults are
kept for the fields the measurement sets, because those are the ones the tests compare.
"""

from __future__ import annotations

from typing import Any

FIELDS = frozenset(
    ["model", "served_model_name", "tokenizer", "hf_config_path", "runner", "convert", "task", "skip_tokenizer_init", "enable_prompt_embeds", "tokenizer_mode", "trust_remote_code", "allowed_local_media_path", "allowed_media_domains", "download_dir", "safetensors_load_strategy", "load_format", "config_format", "dtype", "kv_cache_dtype", "seed", "max_model_len", "cuda_graph_sizes", "distributed_executor_backend", "pipeline_parallel_size", "tensor_parallel_size", "decode_context_parallel_size", "data_parallel_size", "data_parallel_rank", "data_parallel_start_rank", "data_parallel_size_local", "data_parallel_address", "data_parallel_rpc_port", "data_parallel_hybrid_lb", "data_parallel_backend", "enable_expert_parallel", "enable_dbo", "dbo_decode_token_threshold", "dbo_prefill_token_threshold", "eplb_config", "enable_eplb", "expert_placement_strategy", "_api_process_count", "_api_process_rank", "num_redundant_experts", "eplb_window_size", "eplb_step_interval", "eplb_log_balancedness", "max_parallel_loading_workers", "block_size", "enable_prefix_caching", "prefix_caching_hash_algo", "disable_sliding_window", "disable_cascade_attn", "swap_space", "cpu_offload_gb", "gpu_memory_utilization", "kv_cache_memory_bytes", "max_num_batched_tokens", "max_num_partial_prefills", "max_long_partial_prefills", "long_prefill_token_threshold", "max_num_seqs", "max_logprobs", "logprobs_mode", "disable_log_stats", "revision", "code_revision", "rope_scaling", "rope_theta", "hf_token", "hf_overrides", "tokenizer_revision", "quantization", "enforce_eager", "disable_custom_all_reduce", "limit_mm_per_prompt", "interleave_mm_strings", "media_io_kwargs", "mm_processor_kwargs", "disable_mm_preprocessor_cache", "mm_processor_cache_gb", "mm_processor_cache_type", "mm_shm_cache_max_object_size_mb", "mm_encoder_tp_mode", "io_processor_plugin", "skip_mm_profiling", "video_pruning_rate", "enable_lora", "enable_lora_bias", "max_loras", "max_lora_rank", "default_mm_loras", "fully_sharded_loras", "max_cpu_loras", "lora_dtype", "lora_extra_vocab_size", "ray_workers_use_nsight", "num_gpu_blocks_override", "num_lookahead_slots", "model_loader_extra_config", "ignore_patterns", "enable_chunked_prefill", "disable_chunked_mm_input", "disable_hybrid_kv_cache_manager", "structured_outputs_config", "reasoning_parser", "guided_decoding_backend", "guided_decoding_disable_fallback", "guided_decoding_disable_any_whitespace", "guided_decoding_disable_additional_properties", "logits_processor_pattern", "speculative_config", "show_hidden_metrics_for_version", "otlp_traces_endpoint", "collect_detailed_traces", "scheduling_policy", "scheduler_cls", "pooler_config", "override_pooler_config", "compilation_config", "worker_cls", "worker_extension_cls", "kv_transfer_config", "kv_events_config", "generation_config", "enable_sleep_mode", "override_generation_config", "model_impl", "override_attention_dtype", "calculate_kv_scales", "mamba_cache_dtype", "mamba_ssm_cache_dtype", "additional_config", "use_tqdm_on_load", "pt_load_map_location", "enable_multimodal_encoder_data_parallel", "logits_processors", "async_scheduling", "kv_sharing_fast_prefill"]
)

#: EngineArgs defaults in vLLM 0.11.0 for the fields the measurement passes (None: decided by the engine)
DEFAULTS: dict[str, Any] = {
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
    "pipeline_parallel_size": 1,
    "distributed_executor_backend": None,
    "enable_prefix_caching": None,
    "enable_chunked_prefill": None,
    "block_size": None,
    "max_model_len": None,
    "load_format": "auto",
    "kv_cache_dtype": "auto",
    "disable_sliding_window": False,
    "speculative_config": None,
    "enable_lora": False,
    "max_loras": 1,
    "max_lora_rank": 16,
    "lora_extra_vocab_size": 256,
    "disable_log_stats": False,
}


class EngineArgs:
    def __init__(self, **kwargs: Any) -> None:
        for name in kwargs:
            if name not in FIELDS:
                raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument '{name}'")
        self.__dict__.update(DEFAULTS)
        self.__dict__.update(kwargs)
