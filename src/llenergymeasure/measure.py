"""One measurement: one experiment x one cycle -> one raw result.

The measurement runs in two parts. :func:`run_window` does everything that touches the machine and returns a
:class:`WindowRecord` (the sequence below); the ``*_section`` functions then build each part of the raw result
from that record, :mod:`llenergymeasure.validity` judges it, and :func:`build_result` assembles the file.

1. take the host lock (no two measurement windows overlap on a host);
2. idle baseline per device, from the cache or measured now with nothing loaded;
3. load prompts and the model, plan batches;
4. wait what remains of the thermal gap since the previous window;
5. warm up: every batch shape of the window once, then until latency is stable;
6. window: counters read, all batches generated, counters read (the timeline samples meanwhile);
7. record the window end for the next job's gap, release the lock.

Every phase that can take more than a moment says so on the ``llenergymeasure.progress`` logger.
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import heartbeat, validity
from .backends import create as create_backend
from .backends import flags as backend_flags
from .backends.base import RunOutput
from .campaign import identity_form
from .config import canonical_json
from .energy.accounting import energy_section
from .energy.base import ComponentEnergy, MeterSet
from .energy.baseline import idle_baselines
from .energy.meters import carbon_intensity_g_per_kwh, select_meters
from .environment import collect, provenance
from .errors import MeasurementError
from .flops import flops_section, model_dims
from .paths import utc_now_iso
from .prompts import load_prompts, prompts_sha256
from .record import token_times
from .record.layout import sidecar_of, token_times_of
from .record.raw import Efficiency, Provenance, Throughput, Timestamps, Tokens
from .results import RAW_SCHEMA, SCHEMA_VERSION, write_json_atomic
from .runtime import JobContext
from .serving import Schedule, make_schedule, window_section
from .stats import distribution
from .steady import steady_state
from .thermal import host_lock, record_window, wait_gap
from .timeline import TimelineSample, TimelineSampler, energy_cross_check, phase_split, temperatures
from .timeline import sidecar as timeline_sidecar
from .timeline import summarise as summarise_timeline

log = logging.getLogger(__name__)
say = logging.getLogger("llenergymeasure.progress")


@dataclass(frozen=True)
class WindowRecord:
    """What :func:`run_window` observed: the phases before the window, the window's runs, energy readings and
    timeline. ``w0``/``w1`` are the window's edges in perf_counter seconds, ``e0``/``e1`` the same in epoch seconds."""

    job_start: str
    phases: dict[str, float]
    meters: MeterSet
    baselines: dict[str, dict]
    prompts: list[str]
    load_info: dict
    gap: dict
    warmup: dict
    temperature_start: dict
    temperature_end: dict
    runs: list[RunOutput]
    schedule: Schedule | None  # a serving load's (None offline)
    components: list[ComponentEnergy]
    samples: list[TimelineSample]
    power_buffer: dict[str, list[tuple[float, float]]]
    window_start: str  # UTC ISO-8601
    window_end: str
    w0: float
    w1: float
    e0: float
    e1: float

    @property
    def duration_s(self) -> float:
        return self.w1 - self.w0

    @property
    def requests(self) -> list:
        return [r for run in self.runs for r in run.requests]

    @property
    def batches(self) -> list:
        return [b for run in self.runs for b in run.batches]

    @property
    def steps(self) -> list:
        return [s for run in self.runs for s in run.steps]

    @property
    def scheduling(self) -> str:
        return self.runs[0].scheduling


def emissions_section(total_j: float | None, country: str | None, method: str) -> dict:
    if not country:
        return {"co2_kg": None, "method": "unavailable", "reason": "energy.country_iso_code not set"}
    found = carbon_intensity_g_per_kwh(country)
    if found is None:
        return {
            "co2_kg": None,
            "method": "unavailable",
            "reason": f"no carbon intensity for {country} (CodeCarbon data missing)",
        }
    intensity, source = found
    co2 = None if total_j is None else total_j / 3.6e6 * intensity / 1000.0
    return {
        "co2_kg": co2,
        "method": "energy_x_grid_intensity",
        "energy_method": method,
        "country_iso_code": country,
        "carbon_intensity_g_per_kwh": intensity,
        "intensity_source": source,
    }


def timeline_section(w: WindowRecord, cfg: dict, output: str | None) -> tuple[dict, tuple[str, dict] | None]:
    """Summary of the window's timeline (always), the prefill/decode split of the energy of the device the timeline
    follows, and the sidecar to write beside the raw result (path and data, when ``timeline.save``)."""
    if not cfg["enabled"]:
        return {
            "enabled": False,
            "summary": None,
            "sidecar": None,
            "phases": {
                "method": "unavailable",
                "prefill_energy_j": None,
                "decode_energy_j": None,
                "other_energy_j": None,
                "reason": "timeline.enabled = false",
            },
        }, None
    interval = max(cfg["interval_ms"] / 1000.0, 0.1)
    summary = summarise_timeline(w.samples, interval)
    gpu = [c for c in w.components if c.component == "gpu"]
    primary = gpu or [c for c in w.components if c.component == "cpu"]
    energy = None if not primary or any(c.energy_j is None for c in primary) else sum(c.energy_j for c in primary)
    tdp = next((c.details.get("full_load_power_w") for c in w.components if c.method.startswith("estimate_tdp")), None)
    phases = phase_split(w.samples, w.batches, (w.w0, w.w1), energy, None if gpu else tdp)
    phases["component"] = primary[0].component if primary else None
    if w.scheduling != "static" and phases["method"] != "unavailable":
        phases = {
            "method": "unavailable",
            "prefill_energy_j": None,
            "decode_energy_j": None,
            "other_energy_j": None,
            "reason": "continuous batching interleaves prefills and decodes of different requests: no time split exists",
        }
    path = sidecar_of(output) if cfg["save"] and output else None
    section = {"enabled": True, "summary": summary, "sidecar": path and os.path.basename(path), "phases": phases}
    return section, (
        (path, {"schema_version": SCHEMA_VERSION, **timeline_sidecar(w.samples, interval, w.w0)}) if path else None
    )


def cross_check_section(w: WindowRecord) -> dict:
    """The GPU counter energy against integrated board power (see :func:`llenergymeasure.timeline.energy_cross_check`)."""
    gpu_rows = [c for c in w.components if c.component == "gpu"]
    if not gpu_rows:
        return {"method": "unavailable", "ratio": None, "judged": False, "reason": "no GPU in the experiment"}
    gpu_j = None if any(c.energy_j is None for c in gpu_rows) else sum(c.energy_j for c in gpu_rows)
    return energy_cross_check(gpu_j, w.power_buffer, (w.e0, w.e1), w.samples, (w.w0, w.w1))


def tokens_section(w: WindowRecord, config: dict, counting: str) -> Tokens:
    reqs, batches = w.requests, w.batches
    out_tokens = sum(r.output_tokens for r in reqs)
    in_tokens = sum(r.input_tokens for r in reqs)
    return Tokens(
        input_tokens=in_tokens,
        output_tokens=out_tokens,
        total_tokens=in_tokens + out_tokens,
        padded_input_tokens=sum(b.padded_input_tokens for b in batches),
        num_requests=len(reqs),
        num_batches=len(batches),
        mean_batch_size=statistics.fmean(b.size for b in batches),
        workload_repetitions=len(w.runs),
        scheduling=w.scheduling,
        requests_at_max_output_tokens=sum(1 for r in reqs if r.output_tokens >= config["max_output_tokens"]),
        counting=counting,
    )


def throughput_section(w: WindowRecord, tokens: Tokens) -> Throughput:
    window_s = w.duration_s
    return Throughput(
        output_tokens_per_s=_per(tokens.output_tokens, window_s),
        total_tokens_per_s=_per(tokens.total_tokens, window_s),
        requests_per_s=_per(tokens.num_requests, window_s),
        generate_time_s=sum(run.generate_s for run in w.runs),
        denominator="measurement window duration",
    )


def efficiency_section(total: dict, tokens: Tokens) -> Efficiency:
    return Efficiency(
        j_per_output_token=_per(total["gross_energy_j"], tokens.output_tokens),
        net_j_per_output_token=_per(total["net_energy_j"], tokens.output_tokens),
        j_per_total_token=_per(total["gross_energy_j"], tokens.total_tokens),
        j_per_request=_per(total["gross_energy_j"], tokens.num_requests),
        method=total["method"],
    )


def request_start(w: WindowRecord) -> str:
    """What a request's start is: the instant its TTFT and E2E count from."""
    if w.schedule is None:
        return "submission of the request's batch to the engine"
    if w.schedule.open_loop:
        return "the request's planned arrival (serving load)"
    return "submission of the request, when a slot freed (closed loop)"


def latency_section(
    w: WindowRecord, experiment_id: str, cycle: int, output: str | None
) -> tuple[dict, tuple[str, dict] | None]:
    """TTFT, E2E, ITL and TPOT distributions (ms) from observed token arrivals, and each request's own values; and
    the token times sidecar to write beside the raw result (path and data, when there is an ``output``). ITL comes
    from the whole-microsecond arrivals the sidecar keeps, so the sidecar gives it back exactly
    (:mod:`llenergymeasure.record.token_times`)."""
    reqs = w.requests
    ms = 1000.0
    tpot = [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) * ms for r in reqs if r.output_tokens > 1]
    start = request_start(w)
    path = token_times_of(output) if output else None
    section = {
        "method": w.runs[0].latency_method,
        "request_start": start,
        "ttft_ms": distribution([r.ttft_s * ms for r in reqs]),
        "e2e_ms": distribution([r.e2e_s * ms for r in reqs]),
        "itl_ms": distribution(token_times.itl_ms([token_times.arrivals_us(r) for r in reqs])),
        "tpot_ms": distribution(tpot),
        "per_request": {
            "ttft_ms": [round(r.ttft_s * ms, 4) for r in reqs],
            "e2e_ms": [round(r.e2e_s * ms, 4) for r in reqs],
            "input_tokens": [r.input_tokens for r in reqs],
            "output_tokens": [r.output_tokens for r in reqs],
        },
        "token_times_file": path and os.path.basename(path),
        "warmup_excluded": True,
    }
    if not path:
        return section, None
    data = token_times.sidecar(reqs, w.w0, experiment_id, cycle, w.window_start, start)
    return section, (path, {"schema_version": SCHEMA_VERSION, **data})


def memory_section(w: WindowRecord, timeline: dict, peaks: dict) -> dict:
    return {
        "peak_rss_bytes": _peak_rss_bytes(),
        "window_peak_rss_bytes": timeline["summary"]["rss_bytes_max"] if timeline["summary"] else None,
        "model_size_bytes": w.load_info["model_size_bytes"],
        **peaks,
    }


def findings(
    w: WindowRecord,
    config: dict,
    tokens: Tokens,
    energy: dict,
    timeline: dict,
    steady: dict,
    flops: dict,
    backend_flags,
    load: dict | None = None,
) -> list:
    """Every validity rule's verdict on this window (see :mod:`llenergymeasure.validity`), in the order the raw
    result lists them."""
    return [
        *validity.energy_readings(w.components, w.baselines, energy["components"]),
        *validity.unmeasured_components(energy["unavailable"]),
        *validity.short_window(w.duration_s, config["energy"]["min_window_s"]),
        *validity.warmup_not_converged(w.warmup, w.duration_s),
        *backend_flags,
        *validity.load_not_sustained(load),
        *validity.no_output_tokens(tokens.output_tokens),
        *validity.output_length_not_reached(
            config["min_output_tokens"],
            config["max_output_tokens"],
            tokens.requests_at_max_output_tokens,
            tokens.num_requests,
        ),
        *validity.power_below_idle(energy["total"]["mean_power_w"], [r["idle_power_w"] for r in energy["components"]]),
        *validity.power_above_limit(w.meters.meters, energy["total"]["mean_power_w"]),
        *validity.throttling(timeline["summary"]),
        *validity.host_bound(timeline["summary"]),
        *validity.cold_start_in_window(steady),
        *validity.energy_cross_check_mismatch(energy["cross_check"]),
        *validity.flops_confidence(flops),
    ]


class Progress:
    """Logs prompts done/total, elapsed time and ETA to the ``llenergymeasure.progress`` logger, at most every
    ``every_s`` seconds (and at the end), and hands the count to the job's heartbeat (between two lines, a long
    batch still shows how far the window got): cheap enough to run inside the window."""

    def __init__(self, label: str, every_s: float = 10.0) -> None:
        self.label, self.every_s = label, every_s
        self.log = logging.getLogger("llenergymeasure.progress")
        self.t0 = time.perf_counter()
        self.last = self.t0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        heartbeat.detail(f"{done}/{total} prompts")
        if done < total and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / done * (total - done) if done else float("nan")
        self.log.info("%s: %d/%d prompts, %.1f s elapsed, ETA %.1f s", self.label, done, total, elapsed, eta)


def _per(numerator: float | None, denominator: float) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def run_experiment(
    config: dict,
    experiment_id: str,
    cycle: int,
    model_path: str,
    output: str | None = None,
    context: JobContext | None = None,
    before_publish: Callable[[dict], None] | None = None,
) -> dict:
    """Measure one cycle of one experiment; write the raw result to ``output`` (atomically) and return it.

    ``context`` carries campaign-level facts that are not part of the experiment (:class:`JobContext`: names,
    the host's gap and lock state, the gaps, the image); without one, the measurement belongs to no campaign and
    waits no gap. ``before_publish(result)`` runs after the engine is closed and before the raw result is written
    (a workflow job's notification and summary line): publishing is the last thing done, so that a job killed
    after it finds its result kept.
    """
    ctx = context or JobContext()
    t_job = time.perf_counter()
    parent = os.getppid()
    backend = create_backend(config, model_path)
    try:
        window = run_window(backend, config, experiment_id, cycle, ctx)
        heartbeat.phase("window closed: computing the result")
        result, sidecars = build_result(window, backend, config, experiment_id, cycle, model_path, output, ctx)
        result["phases_s"]["job_total_s"] = time.perf_counter() - t_job
    finally:
        heartbeat.phase("closing the engine")
        backend.close()  # engines and data-parallel processes end with the job, also when it fails
    if output:
        if os.getppid() != parent:
            raise MeasurementError("the workflow that started this measurement is gone; nothing written")
        if before_publish is not None:
            heartbeat.phase("reporting the result")
            before_publish(result)
        heartbeat.phase("writing the result")
        for path, data, compact in sidecars:  # each sidecar lands before the raw result that names it
            write_json_atomic(path, data, durable=True, compact=compact)
        write_json_atomic(output, result, RAW_SCHEMA)
    return result


def run_window(backend, config: dict, experiment_id: str, cycle: int, ctx: JobContext) -> WindowRecord:
    """Lock, idle baseline, load, thermal gap, warm-up and the window itself (see the module docstring)."""
    job_start = utc_now_iso()
    device = backend.resolve_device()
    meters = select_meters(config["energy"], gpu_count=backend.gpu_count() if device == "cuda" else 0)
    phases: dict[str, float] = {}
    state_dir = ctx.state_dir
    label = f"{experiment_id} cycle {cycle}"

    heartbeat.phase("waiting for another measurement on this host to finish")
    with host_lock(state_dir) as lock_wait_s:
        phases["lock_wait_s"] = lock_wait_s or 0.0
        if phases["lock_wait_s"] > 1.0:
            say.info("%s: waited %.1f s for another measurement on this host to finish", label, phases["lock_wait_s"])
        heartbeat.phase("idle baseline")
        t = time.perf_counter()
        baselines = idle_baselines(meters.meters, config["baseline"])
        phases["baseline_s"] = time.perf_counter() - t
        if config["baseline"]["enabled"] and config["baseline"]["required"]:
            missing = [
                m.device
                for m in meters.meters
                if m.method != "codecarbon" and not baselines.get(m.device_key, {}).get("power_w")
            ]
            if missing:
                raise MeasurementError(f"baseline.required = true, but no idle baseline for {', '.join(missing)}")

        t = time.perf_counter()
        say.info("%s: loading prompts and model %s", label, config["model_name"])
        heartbeat.phase(f"loading prompts and model {config['model_name']}")
        prompts = load_prompts(config["dataset"], config["num_input_prompts"], config["random_seed"])
        prompts, schedule = make_schedule(config["load"], prompts)
        load_info = backend.load()
        batches = backend.plan(prompts)
        phases["load_s"] = time.perf_counter() - t
        say.info(
            "%s: model loaded in %.1f s; %d prompts in %d batch(es)",
            label,
            phases["load_s"],
            len(prompts),
            len(batches),
        )

        gap = wait_gap(state_dir, cycle, ctx.config_gap_s, ctx.cycle_gap_s, sleep=_announced_sleep(label))
        phases["gap_s"] = gap["gap_waited_s"]

        heartbeat.phase("warm-up")
        t = time.perf_counter()
        serve = {} if schedule is None else {"schedule": schedule}
        warmup = backend.warmup(prompts, batches, config["warmup"], **serve)
        phases["warmup_s"] = time.perf_counter() - t

        temp_start = temperatures(meters.meters)
        backend.reset_peak_memory()
        tl_cfg = config["timeline"]
        sampler = TimelineSampler(meters.meters, tl_cfg["interval_ms"] / 1000.0) if tl_cfg["enabled"] else None
        if sampler:
            sampler.start()
        say.info("%s: measuring (window open)", label)
        heartbeat.phase("measuring (window open)")
        meters.start()
        window_start = utc_now_iso()
        e0 = time.time()
        w0 = time.perf_counter()
        progress = Progress(label, ctx.progress_every_s)
        runs = [backend.run(prompts, batches, config["random_seed"], progress, **serve)]
        while config["energy"]["repeat_to_min_window"] and time.perf_counter() - w0 < config["energy"]["min_window_s"]:
            runs.append(backend.run(prompts, batches, config["random_seed"], progress))
        w1 = time.perf_counter()
        e1 = time.time()
        window_end = utc_now_iso()
        components = meters.stop()
        samples = sampler.stop() if sampler else []
        temp_end = temperatures(meters.meters)
        phases["window_s"] = w1 - w0
        record_window(
            state_dir,
            {
                "experiment_id": experiment_id,
                "cycle": cycle,
                "window_end": window_end,
                "window_end_epoch_s": time.time(),
            },
        )
    return WindowRecord(
        job_start=job_start,
        phases=phases,
        meters=meters,
        baselines=baselines,
        prompts=prompts,
        load_info=load_info,
        gap=gap,
        warmup=warmup,
        temperature_start=temp_start,
        temperature_end=temp_end,
        runs=runs,
        schedule=schedule,
        components=components,
        samples=samples,
        power_buffer=sampler.power_buffer if sampler else {},
        window_start=window_start,
        window_end=window_end,
        w0=w0,
        w1=w1,
        e0=e0,
        e1=e1,
    )


def build_result(
    w: WindowRecord,
    backend,
    config: dict,
    experiment_id: str,
    cycle: int,
    model_path: str,
    output: str | None,
    ctx: JobContext,
) -> tuple[dict, list[tuple[str, dict, bool]]]:
    """The raw result of a window, and the sidecars to write before it: ``(path, data, compact)`` for its token times
    and its timeline (when ``timeline.save``), none without an ``output``."""
    energy = energy_section(w.components, w.baselines, w.duration_s, w.meters.unavailable)
    total = energy["total"]
    energy["emissions"] = emissions_section(
        total["gross_energy_j"], config["energy"]["country_iso_code"], total["method"]
    )
    timeline, timeline_file = timeline_section(w, config["timeline"], output)
    latency, tokens_file = latency_section(w, experiment_id, cycle, output)
    energy["phases"] = timeline.pop("phases")
    energy["cross_check"] = cross_check_section(w)
    steady = steady_state(w.scheduling, w.batches, w.steps, (w.w0, w.w1))
    tokens = tokens_section(w, config, backend.token_counting)
    flops = flops_section(
        model_dims(backend.model_config()),
        [(r.input_tokens, r.output_tokens) for r in w.requests],
        w.duration_s,
        tokens.output_tokens,
    )
    load = (
        None
        if w.schedule is None
        else window_section(
            config["load"], w.schedule, w.requests, (w.w0, w.w1), total["gross_energy_j"], total["method"]
        )
    )
    flags: list[dict] = []
    known = backend_flags(config["backend"])
    for code, message in findings(
        w, config, tokens, energy, timeline, steady, flops, backend.validity_flags(w.batches), load
    ):
        validity.add(flags, code, message, known)
    gpus = [m.gpu for m in w.meters.meters if m.gpu is not None]
    from .energy.nvml import driver_info

    result = {
        "schema_version": SCHEMA_VERSION,
        "experiment_id": experiment_id,
        "cycle": cycle,
        "campaign_name": ctx.campaign_name,
        "campaign_id": ctx.campaign_id,
        "run_id": ctx.run_id,
        "backend": config["backend"],
        "backend_version": backend.version(),
        "model_name": config["model_name"],
        "num_processes": max(1, len(w.runs[0].processes)),
        "processes": [p.to_result(w.w0) for p in w.runs[0].processes],
        "timestamps": Timestamps(w.job_start, w.window_start, w.window_end, w.duration_s, utc_now_iso()).to_dict(),
        "phases_s": dict(w.phases),
        "thermal": {**w.gap, "temperature_start_c": w.temperature_start, "temperature_end_c": w.temperature_end},
        "tokens": tokens.to_dict(),
        "energy": energy,
        "throughput": throughput_section(w, tokens).to_dict(),
        "efficiency": efficiency_section(total, tokens).to_dict(),
        "latency": latency,
        "load": load,
        "flops": flops,
        "warmup": w.warmup,
        "steady_state": steady,
        "memory": memory_section(w, timeline, backend.peak_memory()),
        "model": {
            **{k: w.load_info[k] for k in ("device", "dtype", "parameters", "architecture", "weights")},
            "details": {k: v for k, v in w.load_info.items() if k not in _MODEL_KEYS},
        },
        "batches": [b.to_result(w.w0) for b in w.batches],
        "timeline": timeline,
        "flags": flags,
        "environment": collect(backend.version(), gpus, driver_info() if gpus else {}, ctx.container_uri),
        "provenance": Provenance(
            **provenance(),
            config_sha256=hashlib.sha256(canonical_json(identity_form(config)).encode()).hexdigest(),
            prompts_sha256=prompts_sha256(w.prompts),
            model_path=model_path,
        ).to_dict(),
        "config": config,
    }
    # (path, data, compact): the token times (long number series, compact) and the timeline
    sidecars = [(*tokens_file, True)] if tokens_file else []
    sidecars += [(*timeline_file, False)] if timeline_file else []
    return result, sidecars


def _announced_sleep(label: str):
    def sleep(seconds: float) -> None:
        say.info("%s: thermal gap: waiting %.1f s before the window", label, seconds)
        heartbeat.phase("thermal gap", total_s=seconds)
        time.sleep(seconds)

    return sleep


_MODEL_KEYS = ("load_s", "device", "dtype", "parameters", "model_size_bytes", "architecture", "weights")


def _peak_rss_bytes() -> int | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    except (ImportError, OSError):
        return None
