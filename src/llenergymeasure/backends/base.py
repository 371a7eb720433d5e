"""What every backend gives the measurement, and the records it returns.

A backend is constructed with the resolved experiment config and the model location, and is driven by
:func:`llenergymeasure.measure.run_experiment` in this order (the energy window brackets ``run`` only)::

    resolve_device() -> "cuda" | "cpu"       before anything is loaded; picks the energy meters
    gpu_count() -> int                       physical GPUs the experiment occupies (energy is read once per GPU)
    load() -> dict                           load_s, device, dtype, parameters, model_size_bytes, architecture, weights
                                             (+ backend-specific facts, kept under model.details)
    plan(prompts) -> list[Batch]             how the prompts are submitted (static batches, or one continuous batch);
                                             tokenisation happens here, before the window
    warmup(prompts, batches, cfg) -> dict    outside the window: every shape the window will run, then the CV loop
                                             (:func:`warm_up`)
    reset_peak_memory(); run(prompts, batches, seed, progress, schedule) -> RunOutput; peak_memory() -> dict
                                             schedule: None (offline: everything at once) or a
                                             :class:`llenergymeasure.serving.Schedule` submitted through a
                                             :class:`llenergymeasure.serving.Dispatcher` (a backend that cannot
                                             refuses ``load.arrival`` in its rules)
    model_config()                           the HF config object the analytic FLOP count reads
    validity_flags(run_batches) -> list[(code, message)]
    version() -> dict                        engine and library versions, recorded in the raw result
    token_counting: str                      how input and output tokens are counted (recorded beside the counts)
    close()                                  free the engine (GPU memory, worker processes)

Every backend class derives from :class:`Backend`, which holds what they share: the constructor's common state,
the engine environment variables set for the engine's life and put back at :meth:`Backend.close`, the engine and
library versions, the lazily read model config, the GPU count from the backend's rules, the refusal of a config
its rules reject, the warm-up's output lengths and repeated prompts, and the memory report of an engine that
allocates outside this process's torch allocator. A backend module defines its rules (``RULES``) and one subclass;
the registry (:mod:`llenergymeasure.backends`) refuses a measuring class that is not a :class:`Backend`.

Engines are imported inside the backend modules only: the package imports with none of them installed. Which class
measures an experiment, and each backend's engine-free rules, come from the registry in
:mod:`llenergymeasure.backends`.
"""

from __future__ import annotations

import importlib
import logging
import os
import statistics
import time
from dataclasses import dataclass, field

from .. import heartbeat
from ..steady import Step

log = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "Batch",
    "BatchRecord",
    "ProcessShare",
    "RequestTiming",
    "RunOutput",
    "Step",
    "converge",
    "elapsed",
    "generation_eos",
    "shape",
    "stop_token_ids",
    "warm_up",
    "warmup_mode",
    "warmup_off",
]


@dataclass
class Batch:
    """A group of prompts submitted together. Continuous-batching engines get one Batch holding every prompt:
    the engine's scheduler, not this list, decides which sequences run together."""

    indices: list[int]  # positions in the prompt list
    prompt_tokens: list[int]  # unpadded prompt length of each request (after truncation)

    @property
    def padded_tokens(self) -> int:
        return len(self.indices) * max(self.prompt_tokens)


@dataclass
class RequestTiming:
    """One request's tokens and its latencies in seconds, all from observed token arrival times."""

    index: int
    input_tokens: int
    output_tokens: int
    ttft_s: float
    e2e_s: float
    itl_s: list[float] = field(default_factory=list)
    process_index: int = 0
    # under a serving load (:mod:`llenergymeasure.serving`): the planned arrival and the submission, perf_counter
    # seconds; ``ttft_s`` and ``e2e_s`` then count from the planned arrival
    planned_t: float | None = None
    submitted_t: float | None = None
    # the instant ``ttft_s`` and ``e2e_s`` count from, perf_counter seconds (the batch's submission, or the planned
    # arrival under a serving load): places the request's token arrivals in the window (None: not known)
    start_t: float | None = None


def _since(t: float | None, w0: float) -> float | None:
    return None if t is None else t - w0


@dataclass
class BatchRecord:
    """One submitted batch as the window ran it. Times are ``time.perf_counter`` seconds (``*_t``); in the raw
    result they become seconds since the window opened (``*_s``)."""

    size: int  # requests
    input_tokens: int  # unpadded prompt tokens
    padded_input_tokens: int  # rows x longest prompt for a padded batch; equal to input_tokens for token ids
    output_tokens: int
    steps: int  # generation steps (PyTorch) or engine steps / streamed responses carrying tokens (engines)
    latency_s: float
    start_t: float  # submission
    first_token_t: float  # the batch's first token
    end_t: float  # its last token
    peak_decoding_seqs: int | None = None  # continuous batching: most sequences given a token in one engine step
    mean_decoding_seqs: float | None = None
    process_index: int | None = None  # data parallel: the process that ran it

    def to_result(self, w0: float) -> dict:
        out = {
            "size": self.size,
            "input_tokens": self.input_tokens,
            "padded_input_tokens": self.padded_input_tokens,
            "output_tokens": self.output_tokens,
            "steps": self.steps,
            "latency_s": self.latency_s,
            "start_s": self.start_t - w0,
            "first_token_s": self.first_token_t - w0,
            "end_s": self.end_t - w0,
        }
        for key in ("peak_decoding_seqs", "mean_decoding_seqs", "process_index"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class ProcessShare:
    """Data parallelism: one process's part of a run (its span in perf_counter seconds, None when it had no batch)."""

    process_index: int
    num_requests: int
    input_tokens: int
    output_tokens: int
    num_batches: int
    generate_s: float
    device: str | None
    start_t: float | None
    end_t: float | None

    def to_result(self, w0: float) -> dict:
        return {
            "process_index": self.process_index,
            "num_requests": self.num_requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "num_batches": self.num_batches,
            "generate_s": self.generate_s,
            "device": self.device,
            "start_s": _since(self.start_t, w0),
            "end_s": _since(self.end_t, w0),
        }


@dataclass
class RunOutput:
    """One pass over the workload. ``scheduling`` is "static" when a batch's prefill and decode are separate
    intervals (batch start to first token, first to last token), and "continuous" when the engine interleaves
    prefills and decodes of different requests (no time split exists)."""

    requests: list[RequestTiming]
    batches: list[BatchRecord]
    generate_s: float  # engine time, tokenisation excluded where the engine allows
    scheduling: str = "static"
    latency_method: str = "per_step_timestamps"
    processes: list[ProcessShare] = field(default_factory=list)  # data parallel: each process's share
    steps: list[Step] = field(default_factory=list)  # every generation step, for the steady-state check


def warmup_mode(cfg: dict) -> str:
    """full | cv | off (``enabled: false`` is off whatever the mode)."""
    return cfg.get("mode", "full") if cfg["enabled"] else "off"


def warmup_off() -> dict:
    return {
        "enabled": False,
        "mode": "off",
        "converged": None,
        "iterations_completed": 0,
        "latencies_ms": [],
        "shapes": [],
        "full_pass_s": 0.0,
        "duration_s": 0.0,
    }


def shape(batch_size: int, padded_input_tokens: int, new_tokens: int, duration_s: float) -> dict:
    """One entry of ``warmup.shapes``: a batch shape the warm-up ran once, untimed."""
    return {
        "batch_size": batch_size,
        "padded_input_tokens": padded_input_tokens,
        "new_tokens": new_tokens,
        "duration_s": duration_s,
    }


def warm_up(cfg: dict, full_pass, repeat, batch_size: int, new_tokens: int) -> dict:
    """The warm-up every backend runs before the window. ``full_pass()`` runs each shape the window will run once
    (mode full) and returns their :func:`shape` records; ``repeat()`` runs one real batch and returns its latency
    in seconds, for the CV loop (:func:`converge`)."""
    mode = warmup_mode(cfg)
    if mode == "off":
        return warmup_off()
    say = logging.getLogger("llenergymeasure.progress")
    t0 = time.perf_counter()
    shapes: list[dict] = []
    if mode == "full":
        say.info("warm-up: one untimed pass over every batch shape of the window")
        heartbeat.phase("warm-up: one untimed pass over every batch shape of the window")
        shapes = full_pass()
    full_s = time.perf_counter() - t0
    say.info(
        "warm-up: repeating a batch until its latency is stable (CV < %s, at most %d runs)",
        cfg["cv_threshold"],
        cfg["max_prompts"],
    )
    heartbeat.phase("warm-up: repeating a batch until its latency is stable")
    record = converge(repeat, cfg, batch_size, new_tokens)
    say.info(
        "warm-up done: %d shape(s), %d CV runs (final CV %s) in %.1f s",
        len(shapes),
        record["iterations_completed"],
        "n/a" if record["final_cv"] is None else f"{record['final_cv']:.3f}",
        time.perf_counter() - t0,
    )
    return {**record, "mode": mode, "shapes": shapes, "full_pass_s": full_s, "duration_s": time.perf_counter() - t0}


def elapsed(timed: tuple) -> float:
    """Seconds between the first two items of ``(start, end, ...)`` as the backends' timed calls return them."""
    return timed[1] - timed[0]


def converge(repeat, cfg: dict, batch_size: int, new_tokens: int) -> dict:
    """The CV loop of the warm-up: call ``repeat()`` (one run of a real batch, returning its latency in seconds)
    until the coefficient of variation of the last ``window_size`` latencies (sample standard
    deviation, ddof 1) is below ``cv_threshold`` (after at least ``min_prompts`` runs), or ``max_prompts`` runs;
    with ``convergence_detection`` off, exactly ``max_prompts`` runs. Returns the record kept in the raw result."""
    latencies: list[float] = []
    final_cv = None
    converged = False
    window = cfg["window_size"]
    need = max(cfg["min_prompts"], window)
    t0 = time.perf_counter()
    for _ in range(cfg["max_prompts"]):
        latencies.append(repeat())
        if cfg["convergence_detection"] and len(latencies) >= need:
            last = latencies[-window:]
            final_cv = statistics.stdev(last) / statistics.fmean(last)
        cv = "" if final_cv is None else f", CV of the last {window} {final_cv:.3f}"
        heartbeat.detail(f"{len(latencies)} of at most {cfg['max_prompts']} runs{cv}")
        if cfg["convergence_detection"] and len(latencies) >= need and final_cv < cfg["cv_threshold"]:
            converged = True
            break
    return {
        "enabled": True,
        "converged": converged if cfg["convergence_detection"] else None,
        "final_cv": final_cv,
        "target_cv": cfg["cv_threshold"],
        "iterations_completed": len(latencies),
        "max_prompts": cfg["max_prompts"],
        "batch_size": batch_size,
        "max_new_tokens": new_tokens,
        "cv_loop_s": time.perf_counter() - t0,
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
    }


def stop_token_ids(primary: int | None, generation_eos) -> list[int]:
    """Every token id that ends a request: ``primary`` (the tokenizer's EOS) first, then the other ``eos_token_id``
    values of the checkpoint's generation config, ascending. vLLM 0.11.0 stops on all of them by itself
    (``SamplingParams.update_from_generation_config``, vllm/sampling_params.py:460-484); the other backends are
    given the same set, so output lengths and energy per token compare across backends."""
    extra = generation_eos if isinstance(generation_eos, (list, tuple, set)) else [generation_eos]
    ids = [] if primary is None else [int(primary)]
    ids += sorted({int(t) for t in extra if t is not None and int(t) != primary})
    return ids


def generation_eos(model_path: str):
    """The ``eos_token_id`` of a checkpoint's generation config (an int, a list or None), read as vLLM 0.11.0 reads
    it (vllm/transformers_utils/config.py:950-969): ``generation_config.json``, else derived from ``config.json``."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:
        try:
            return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path)).eos_token_id
        except (OSError, ValueError):
            return None


class Backend:
    """What every backend shares (see the module docstring). A subclass sets :attr:`name` (its registry name) and
    :attr:`token_counting`, and defines ``load``, ``plan``, ``warmup``, ``run`` and ``validity_flags``; it overrides
    the defaults below where its engine differs."""

    #: the backend's name in the registry (:data:`llenergymeasure.backends.BACKENDS`)
    name: str = ""
    #: how input and output tokens are counted (recorded beside the counts)
    token_counting: str = ""
    #: modules whose ``__version__`` :meth:`version` records, in this order (None where one does not import)
    version_modules: tuple[str, ...] = ("torch", "transformers")

    def __init__(self, config: dict, model_path: str) -> None:
        self.config = config
        self.model_path = model_path
        self.device: str | None = None
        self.tokenizer = None
        self.stop_token_ids: list[int] = []
        self._hf_config = None
        self._saved_env: dict[str, str | None] = {}

    # ------------------------------------------------------------------------------------------------ rules
    @property
    def rules(self):
        """The backend's engine-free rules (:class:`llenergymeasure.backends.BackendRules`)."""
        from . import rules

        return rules(self.name)

    def refuse_problems(self, problems: list[str] | None = None) -> None:
        """Raise the first of ``problems`` (default: what the backend's rules find in the config) as a
        MeasurementError: a config that did not come through campaign expansion is refused here too."""
        found = self.rules.problems(self.config) if problems is None else problems
        if found:
            from ..errors import MeasurementError

            raise MeasurementError(found[0])

    def gpu_count(self) -> int:
        """Physical GPUs the experiment occupies: the rules' count (tensor x pipeline ranks for the engines)."""
        return self.rules.gpus(self.config)

    # ------------------------------------------------------------------------------------------------ versions
    @classmethod
    def version(cls) -> dict:
        """Engine and library versions (``__version__`` of each of :attr:`version_modules`; None where one is not
        installed or does not import)."""
        out: dict = {}
        for module in cls.version_modules:
            try:
                out[module] = str(importlib.import_module(module).__version__)
            except Exception:  # noqa: BLE001 - not installed here, or broken: recorded as unknown
                out[module] = None
        return out

    def model_config(self):
        """The checkpoint's transformers config, read once."""
        if self._hf_config is None:
            from transformers import AutoConfig

            self._hf_config = AutoConfig.from_pretrained(self.model_path)
        return self._hf_config

    # ------------------------------------------------------------------------------------------------ environment
    def engine_environment(self) -> dict[str, str]:
        """Environment variables the engine needs set before it starts (name -> value); none by default."""
        return {}

    def set_environment(self) -> dict[str, str]:
        """Set :meth:`engine_environment` for the engine's life (put back by :meth:`close`); a different value
        already in the environment is replaced, with a warning, because the experiment names it. Returns what was
        set."""
        wanted = self.engine_environment()
        for name, value in wanted.items():
            previous = os.environ.get(name)
            if previous is not None and previous != value:
                log.warning(
                    "%s=%s from the environment replaced by %s (the experiment's setting)", name, previous, value
                )
            self._saved_env.setdefault(name, previous)
            os.environ[name] = value
        return wanted

    def restore_environment(self) -> None:
        """Put back every variable :meth:`set_environment` changed (unset where it was unset)."""
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def close(self) -> None:
        """Free the engine; the base puts back the environment variables set for it."""
        self.restore_environment()

    # ------------------------------------------------------------------------------------------------ warm-up
    def output_lengths(self) -> tuple[int, int]:
        """(max, min) new tokens of every request: the window's, which the warm-up runs too."""
        return self.config["max_output_tokens"], self.config["min_output_tokens"]

    def warmup_indices(self, batches: list[Batch]) -> list[int]:
        """The prompts the warm-up's CV loop repeats: the first batch's, at most the batching knob's value (one
        full engine batch for an engine that forms its own batches)."""
        return batches[0].indices[: self.rules.nominal_batch(self.config)[0]]

    # ------------------------------------------------------------------------------------------------ memory
    def reset_peak_memory(self) -> None:
        """Nothing to reset by default: an engine that allocates its own GPU memory, outside torch's allocator."""

    def peak_memory(self) -> dict:
        """For an engine that allocates outside this process's torch allocator: torch's CUDA peaks are null, and
        ``gpu_memory_used_bytes`` is NVML's used memory summed over the experiment's GPUs at the end of the window
        (whole devices, other processes included; null without NVML, and on a CPU, where the process's peak RSS is
        recorded with every result)."""
        from ..energy.nvml import memory_used_bytes

        return {
            "cuda_peak_allocated_bytes": None,
            "cuda_peak_reserved_bytes": None,
            "gpu_memory_used_bytes": memory_used_bytes(self.gpu_count()) if self.device != "cpu" else None,
        }
