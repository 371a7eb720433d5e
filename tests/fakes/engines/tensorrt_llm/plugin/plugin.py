"""Fake of ``tensorrt_llm.plugin.plugin.PluginConfig`` at 1.0.0: the plugin and feature switches of an engine build.

Only the fields are modelled (with the release's defaults); nothing is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class PluginConfig:
    bert_attention_plugin: str = "float16"
    gpt_attention_plugin: str = "float16"
    gemm_plugin: str = None
    smooth_quant_gemm_plugin: str = None
    identity_plugin: str = None
    layernorm_quantization_plugin: str = None
    rmsnorm_quantization_plugin: str = None
    nccl_plugin: str = "float16"
    lookup_plugin: str = None
    lora_plugin: str = None
    weight_only_groupwise_quant_matmul_plugin: str = None
    weight_only_quant_matmul_plugin: str = None
    quantize_per_token_plugin: bool = False
    quantize_tensor_plugin: bool = False
    moe_plugin: str = "float16"
    mamba_conv1d_plugin: str = "float16"
    context_fmha: bool = True
    context_fmha_fp32_acc: bool = False
    paged_kv_cache: bool = True
    remove_input_padding: bool = True
    use_custom_all_reduce: bool = True
    multi_block_mode: bool = False
    enable_xqa: bool = True
    attention_qk_half_accumulation: bool = False
    tokens_per_block: int = 128
    use_paged_context_fmha: bool = False
    use_fp8_context_fmha: bool = False
    use_context_fmha_for_generation: bool = False
    multiple_profiles: bool = False
    paged_state: bool = True
    streamingllm: bool = False
    manage_weights: bool = False

    def __setattr__(self, name, value):
        # The real class only knows its declared switches; a typo must not pass silently.
        if name not in {f.name for f in fields(self)}:
            raise AttributeError(f"PluginConfig has no attribute {name!r}")
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def update_from_dict(self, config: dict) -> None:
        for name, value in config.items():
            setattr(self, name, value)
