"""Fake of ``tensorrt_llm.bindings`` (the C++ extension): only the KV cache layout enum a BuildConfig takes."""

from __future__ import annotations

import enum


class KVCacheType(enum.Enum):
    CONTINUOUS = 0
    PAGED = 1
    DISABLED = 2

    @staticmethod
    def from_string(name: str) -> KVCacheType:
        return KVCacheType[name.upper()]
