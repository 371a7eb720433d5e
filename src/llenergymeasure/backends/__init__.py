"""Inference backends, and the registry that finds each backend's rules.

Where a backend's rules live
----------------------------
Each backend module (``pytorch.py``, ``vllm.py``, ``tensorrt.py``) defines ``RULES``, a :class:`BackendRules`,
at module level. Everything a campaign needs to know about that backend before anything runs is there, and
only there, next to the release facts that drive it:

- ``problems(config)``: what the backend (or its pinned engine release) cannot run, one line per rule broken
  naming the key, the value and the reason (so that a file's problems are all named in one run); ``problem`` is
  the first of them, or None. Campaign expansion refuses the experiment with them; the backend's ``load()`` calls
  ``problem`` again, so a config that did not come through expansion is refused too;
- ``gpus(config)``: the physical GPUs one experiment occupies (its energy is read on exactly those);
- ``nominal_batch(config)``: the batching knob's value and how batches form;
- ``count_parameters(config, counted, hf_config)``: how the model's parameter count is established;
- ``implementation(config)``: the class that measures (imported only when a measurement starts), a subclass of
  :class:`~llenergymeasure.backends.base.Backend`, which holds what every backend shares.

A new backend is one module (its ``RULES`` and its :class:`~llenergymeasure.backends.base.Backend` subclass) and its
name in :data:`BACKENDS`; the registry refuses a module without ``RULES`` or a measuring class that is not a
``Backend``, with a message naming what is wrong.

The modules import their engines lazily, inside the methods that use them, so reading rules never needs torch,
vLLM or TensorRT-LLM. Rules that span backends (a foreign backend's section, output-length bounds, decoder
presets, the GPU list matching ``gpus(config)``) live in :mod:`llenergymeasure.campaign`. A new rule for one
backend goes into that backend's ``problems``; nothing else has to change.

Nothing here imports a backend module at import time (:func:`implementation` imports :mod:`.base` when it checks
a class), and backend modules import only :mod:`.base` (records and the base class) and this registry's
:class:`BackendRules`; the base class reads the registry inside its methods: there is no import loop between the
registry, the records and the backends.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..record.flags import FLAGS, Flag, joined

#: Backends of this version, in the order they are documented.
BACKENDS = ("pytorch", "vllm", "tensorrt")


@dataclass(frozen=True)
class BackendRules:
    """A backend's engine-free rules (see the module docstring)."""

    name: str
    engine: str  # what runs the model, with the pinned release where there is one ("vLLM 0.11.0")
    batch_knob: str  # the dotted key of the batching knob ("vllm.max_num_seqs")
    batch_label: str  # its short form in experiment ids: "bs" (batch size) or "seqs" (running sequences)
    gpus_knob: str  # what decides the GPU count, for messages ("tensorrt.tp_size x pp_size")
    gpu_only: bool  # runs on CUDA GPUs only (the GPU list must then match gpus(config) exactly)
    problems: Callable[[dict], list[str]]  # every reason (a file's problems are all named in one run)
    gpus: Callable[[dict], int]
    nominal_batch: Callable[[dict], tuple[int, str]]
    count_parameters: Callable[[dict, int | None, Any], tuple[int | None, str]]
    implementation: Callable[[dict], str]  # "module:Class"
    flags: tuple[Flag, ...] = ()  # the flags its own checks raise (validity_flags), beside the registry's

    def problem(self, config: dict) -> str | None:
        """The first reason the backend cannot run ``config``, or None."""
        found = self.problems(config)
        return found[0] if found else None


def rules(backend: str) -> BackendRules:
    """The rules of one backend (ValueError for a name that is not a backend of this version; TypeError for a
    backend module whose ``RULES`` is not a :class:`BackendRules` of that name)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
    module = importlib.import_module(f"{__name__}.{backend}")
    found = getattr(module, "RULES", None)
    if not isinstance(found, BackendRules) or found.name != backend:
        raise TypeError(
            f"backend {backend!r}: {module.__name__}.RULES must be a BackendRules named {backend!r} "
            f"(found {type(found).__name__}{f' named {found.name!r}' if isinstance(found, BackendRules) else ''})"
        )
    return found


def implementation(config: dict) -> type:
    """The class that measures ``config``: a :class:`~llenergymeasure.backends.base.Backend` subclass named by the
    backend's rules (TypeError, naming it, for anything else)."""
    from .base import Backend

    backend = config["backend"]
    where = rules(backend).implementation(config)
    module, _, name = where.partition(":")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(
            f"backend {backend!r}: {where} must be a subclass of llenergymeasure.backends.base.Backend "
            f"(found {'nothing' if cls is None else repr(cls)})"
        )
    if cls.name != backend:
        raise TypeError(f"backend {backend!r}: {where} is named {cls.name!r}")
    return cls


def flags(backend: str) -> dict[str, Flag]:
    """Every flag a measurement on ``backend`` may raise: the registry's and the backend's own."""
    return joined(FLAGS.values(), rules(backend).flags)


def every_flag() -> dict[str, Flag]:
    """Every flag of this version: the registry's, then each backend's own (README and raw schema list these)."""
    return joined(FLAGS.values(), *(rules(b).flags for b in BACKENDS))


def create(config: dict, model_path: str):
    """The backend object that measures ``config`` (its engine is imported lazily, on first use)."""
    return implementation(config)(config, model_path)


def checkpoint_config(model: str, filename: str = "config.json") -> dict | None:
    """A JSON file of a checkpoint (its Hugging Face ``config.json`` unless ``filename`` names another, such as
    ``generation_config.json``), when it can be read without a network: a local folder, or a hub id already in the
    local Hugging Face cache. None when unknown here (the engine reads it at load)."""
    folder = Path(model)
    path = folder / filename if folder.is_dir() else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        try:
            found = try_to_load_from_cache(model, filename)
        except Exception:  # noqa: BLE001 - not a valid repo id: nothing cached under it
            return None
        path = Path(found) if isinstance(found, str) else None
    if path is None or not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def checkpoint_quantization(model: str) -> dict | None:
    """The ``quantization_config`` a checkpoint carries (pre-quantised weights), {} for none, None when unknown."""
    cfg = checkpoint_config(model)
    if cfg is None:
        return None
    quant = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")
    return dict(quant) if isinstance(quant, dict) else {}
