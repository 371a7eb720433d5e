"""``vllm.entrypoints.llm.LLM``: vLLM 0.11.0's constructor signature over the CPU engine of ``vllm.v1.engine``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any, ClassVar

from ..engine.arg_utils import EngineArgs
from ..v1.engine.llm_engine import LLMEngine


def _signature(
    model: str,
    *,
    runner: str = "auto",
    convert: str = "auto",
    tokenizer: str | None = None,
    tokenizer_mode: str = "auto",
    skip_tokenizer_init: bool = False,
    trust_remote_code: bool = False,
    allowed_local_media_path: str = "",
    allowed_media_domains: list[str] | None = None,
    tensor_parallel_size: int = 1,
    dtype: str = "auto",
    quantization: str | None = None,
    revision: str | None = None,
    tokenizer_revision: str | None = None,
    seed: int | None = None,
    gpu_memory_utilization: float = 0.9,
    swap_space: float = 4,
    cpu_offload_gb: float = 0,
    enforce_eager: bool = False,
    disable_custom_all_reduce: bool = False,
    hf_token: bool | str | None = None,
    hf_overrides: Any = None,
    mm_processor_kwargs: dict[str, Any] | None = None,
    pooler_config: Any = None,
    override_pooler_config: Any = None,
    structured_outputs_config: Any = None,
    kv_cache_memory_bytes: int | None = None,
    compilation_config: Any = None,
    logits_processors: list | None = None,
    **kwargs: Any,
) -> None:
    """The real ``LLM.__init__`` parameters (self omitted)."""


_SIG = inspect.signature(_signature)
#: names of the explicit parameters (the rest go to EngineArgs through **kwargs)
_EXPLICIT = [n for n, p in _SIG.parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]

#: environment variables the real engine reads while it starts, recorded at construction
_ENGINE_ENV = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_ATTENTION_BACKEND",
    "VLLM_FLASH_ATTN_VERSION",
    "TORCH_COMPILE_DISABLE",
    "NCCL_P2P_DISABLE",
)


class LLM:
    #: every LLM built in this process, newest last
    instances: ClassVar[list[LLM]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = _SIG.bind(*args, **kwargs)  # TypeError for positional extras, as the real keyword-only signature
        extra = bound.arguments.get("kwargs", {})
        EngineArgs(**extra)  # TypeError for anything that is not an EngineArgs field
        #: exactly what the caller passed (explicit parameters and EngineArgs fields, flattened)
        self.given = {k: v for k, v in bound.arguments.items() if k != "kwargs"} | dict(extra)
        bound.apply_defaults()
        explicit = {k: v for k, v in bound.arguments.items() if k != "kwargs"}
        extra.setdefault("disable_log_stats", True)  # LLM's own default, as in the real constructor
        #: every engine argument in effect (the given ones over the 0.11.0 defaults)
        self.engine_args = vars(EngineArgs(**extra)) | explicit
        self.environment = {name: os.environ.get(name) for name in _ENGINE_ENV}
        self.llm_engine = LLMEngine(self.engine_args, self.environment)
        self.prefix_cache_resets = 0
        self.applied: list[Callable] = []
        LLM.instances.append(self)

    def get_tokenizer(self):
        return self.llm_engine.get_tokenizer()

    def apply_model(self, func: Callable) -> list:
        """Run ``func`` on the model of each worker (one here)."""
        self.applied.append(func)
        return [func(self.llm_engine.model)]

    def reset_prefix_cache(self, device: Any = None) -> bool:
        self.prefix_cache_resets += 1
        return True
