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
    reset_peak_memory(); run(prompts, batches, seed, progress) -> RunOutput; peak_memory() -> dict
    model_config()                           the HF config object the analytic FLOP count reads
    validity_flags(run_batches) -> list[(code, message)]
    version() -> dict                        engine and library versions, recorded in the raw result
    token_counting: str                      how input and output tokens are counted (recorded beside the counts)
    close()                                  free the engine (GPU memory, worker processes)

Engines are imported inside the backend modules only: the package imports with none of them installed. Which class
measures an experiment, and each backend's engine-free rules, come from the registry in
:mod:`llenergymeasure.backends`.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

from ..steady import Step

__all__ = [
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
        shapes = full_pass()
    full_s = time.perf_counter() - t0
    say.info(
        "warm-up: repeating a batch until its latency is stable (CV < %s, at most %d runs)",
        cfg["cv_threshold"],
        cfg["max_prompts"],
    )
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
            if final_cv < cfg["cv_threshold"]:
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
