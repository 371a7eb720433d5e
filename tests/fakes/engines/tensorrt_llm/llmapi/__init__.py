"""Fake of ``tensorrt_llm.llmapi`` at 1.0.0: the public names the TensorRT-engine flow uses."""

from ..builder import BuildConfig
from ..executor.result import CompletionOutput
from ..models.modeling_utils import QuantConfig
from ..quantization.mode import QuantAlgo
from ..sampling_params import SamplingParams
from .llm import LLM, RequestOutput
from .llm_args import CalibConfig, DraftTargetDecodingConfig, KvCacheConfig

__all__ = [
    "LLM",
    "BuildConfig",
    "CalibConfig",
    "CompletionOutput",
    "DraftTargetDecodingConfig",
    "KvCacheConfig",
    "QuantAlgo",
    "QuantConfig",
    "RequestOutput",
    "SamplingParams",
]
