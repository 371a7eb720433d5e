"""Fake of ``tensorrt_llm.builder`` at 1.0.0: ``BuildConfig`` (a dataclass: unknown keywords raise TypeError) and
the engine folder's ``config.json`` layout (``version``, ``pretrained_config``, ``build_config``)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields

from .bindings import KVCacheType
from .plugin import PluginConfig


@dataclass
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: int = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: int | None = None
    max_prompt_embedding_table_size: int = 0
    kv_cache_type: KVCacheType = None
    gather_context_logits: int = False
    gather_generation_logits: int = False
    strongly_typed: bool = True
    force_num_profiles: int | None = None
    profiling_verbosity: str = "layer_names_only"
    enable_debug_output: bool = False
    max_draft_len: int = 0
    speculative_decoding_mode: int = 1  # SpeculativeDecodingMode.NONE
    use_refit: bool = False
    input_timing_cache: str = None
    output_timing_cache: str = "model.cache"
    lora_config: dict = field(default_factory=dict)
    auto_parallel_config: dict = field(default_factory=dict)
    weight_sparsity: bool = False
    weight_streaming: bool = False
    plugin_config: PluginConfig = field(default_factory=PluginConfig)
    use_strip_plan: bool = False
    max_encoder_input_len: int = 1024
    dry_run: bool = False
    visualize_network: str = None
    monitor_memory: bool = False
    use_mrope: bool = False

    def to_dict(self) -> dict:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        if out["kv_cache_type"] is not None:
            out["kv_cache_type"] = out["kv_cache_type"].name
        out["plugin_config"] = self.plugin_config.to_dict()
        return out

    @classmethod
    def from_dict(cls, config: dict) -> BuildConfig:
        config = dict(config)
        plugin = PluginConfig()
        plugin.update_from_dict(config.pop("plugin_config", {}))
        if config.get("kv_cache_type") is not None:
            config["kv_cache_type"] = KVCacheType.from_string(config["kv_cache_type"])
        return cls(plugin_config=plugin, **config)

    def update_from_dict(self, config: dict) -> None:
        for name, value in config.items():
            if not hasattr(self, name):
                raise AttributeError(f"{self.__class__} object has no attribute {name}")
            setattr(self, name, value)


class EngineConfig:
    """An engine folder's ``config.json``."""

    def __init__(self, pretrained_config: dict, build_config: BuildConfig, version: str) -> None:
        self.pretrained_config = pretrained_config
        self.build_config = build_config
        self.version = version

    @classmethod
    def from_json_file(cls, path) -> EngineConfig:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return cls(data["pretrained_config"], BuildConfig.from_dict(data["build_config"]), data["version"])

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "pretrained_config": self.pretrained_config,
            "build_config": self.build_config.to_dict(),
        }
