"""Fake of ``tensorrt_llm.models.modeling_utils.QuantConfig`` at 1.0.0."""

from __future__ import annotations

from dataclasses import dataclass

from ..quantization.mode import QuantAlgo

#: every weight/activation recipe (quantization/mode.py: QUANT_ALGO_LIST, the KV-cache-only INT8 and NO_QUANT aside)
_QUANT_ALGO_LIST = set(QuantAlgo) - {QuantAlgo.INT8, QuantAlgo.NO_QUANT}
_KV_CACHE_QUANT_ALGO_LIST = {QuantAlgo.FP8, QuantAlgo.INT8, QuantAlgo.NVFP4}
_W8A8_SQ_PLUGIN_LIST = {
    QuantAlgo.W8A8_SQ_PER_TENSOR_PLUGIN,
    QuantAlgo.W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN,
    QuantAlgo.W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN,
    QuantAlgo.W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN,
}
#: what ModelOpt quantises (QuantConfig._requires_modelopt_quantization)
_MODELOPT = {
    QuantAlgo.NVFP4,
    QuantAlgo.FP8,
    QuantAlgo.W4A16_AWQ,
    QuantAlgo.W4A8_AWQ,
    QuantAlgo.W8A8_SQ_PER_CHANNEL,
    QuantAlgo.MIXED_PRECISION,
}


@dataclass
class QuantConfig:
    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None
    group_size: int = 128
    smoothquant_val: float = 0.5
    clamp_val: list[float] | None = None
    use_meta_recipe: bool = False
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: list[str] | None = None
    mamba_ssm_cache_dtype: str | None = None

    @property
    def _use_plugin_sq(self) -> bool:
        return self.quant_algo in _W8A8_SQ_PLUGIN_LIST

    @property
    def _requires_calibration(self) -> bool:
        """Every recipe but weight-only INT8/INT4 and per-channel FP8 needs calibration, GPTQ included."""
        weights = self.quant_algo in (
            _QUANT_ALGO_LIST - {QuantAlgo.W8A16, QuantAlgo.W4A16, QuantAlgo.FP8_PER_CHANNEL_PER_TOKEN}
        )
        return weights or self.kv_cache_quant_algo in _KV_CACHE_QUANT_ALGO_LIST

    @property
    def _requires_modelopt_quantization(self) -> bool:
        if self.quant_algo in _MODELOPT:
            return True
        return self.quant_algo is None and self.kv_cache_quant_algo == QuantAlgo.FP8
