"""Fake of ``tensorrt_llm.models.modeling_utils.QuantConfig`` at 1.0.0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..quantization.mode import QuantAlgo

#: recipes whose scales come from running calibration data through the model (as the release's
#: ``QuantConfig._requires_calibration`` decides)
_CALIBRATED = {
    QuantAlgo.FP8,
    QuantAlgo.W4A16_AWQ,
    QuantAlgo.W4A8_AWQ,
    QuantAlgo.W8A8_SQ_PER_CHANNEL,
    QuantAlgo.W8A8_SQ_PER_TENSOR_PLUGIN,
    QuantAlgo.W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN,
    QuantAlgo.W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN,
    QuantAlgo.W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN,
    QuantAlgo.NVFP4,
}


@dataclass
class QuantConfig:
    quant_algo: Optional[QuantAlgo] = None
    kv_cache_quant_algo: Optional[QuantAlgo] = None
    group_size: int = 128
    smoothquant_val: float = 0.5
    clamp_val: Optional[List[float]] = None
    use_meta_recipe: bool = False
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: Optional[List[str]] = None
    mamba_ssm_cache_dtype: Optional[str] = None

    @property
    def _requires_calibration(self) -> bool:
        return self.quant_algo in _CALIBRATED or self.kv_cache_quant_algo in (QuantAlgo.INT8, QuantAlgo.FP8)
