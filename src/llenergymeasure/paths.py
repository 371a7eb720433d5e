"""Where this tool keeps per-user state, and how it writes time.

The cache folder holds the idle baselines, the host's measurement lock and last-window record, the embedded model
for ``lem run`` and TensorRT-LLM engines: ``$LLM_ENERGY_CACHE_DIR``, else ``$XDG_CACHE_HOME/llenergymeasure``, else
``~/.cache/llenergymeasure``. ``LEM_CACHE_DIR``, the variable's earlier name, is still honoured.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

CACHE_ENV = "LLM_ENERGY_CACHE_DIR"
CACHE_ENV_OLD = "LEM_CACHE_DIR"


def cache_dir() -> Path:
    chosen = os.environ.get(CACHE_ENV) or os.environ.get(CACHE_ENV_OLD)
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llenergymeasure"


def cache_dir_is_set() -> bool:
    return bool(os.environ.get(CACHE_ENV) or os.environ.get(CACHE_ENV_OLD))


def utc_now_iso() -> str:
    """Now, in UTC, ISO-8601 with microseconds and a ``Z``: the form of every timestamp in a result."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
