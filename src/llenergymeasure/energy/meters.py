"""Choosing meters for an experiment, CodeCarbon's tracker as a meter, and CO2 arithmetic."""

from __future__ import annotations

import time

from .base import ComponentEnergy, Meter, MeterSet
from .cpu import CpuAttribution, CpuEstimateMeter, RaplMeter, rapl_domains
from .nvml import NvmlGpuMeter, counter_problem, visible_gpus


class CodeCarbonMeter(Meter):
    """CodeCarbon's offline tracker over the window (machine mode): CPU and RAM energy, method ``codecarbon``.

    CodeCarbon samples power on its own thread every ``measure_power_secs`` and falls back to its own TDP and
    fixed-RAM estimates where it has no sensor; its values are reported as CodeCarbon's, never as ours. Its GPU
    figure is never used: it covers every GPU of the machine, and the experiment's own GPUs are read from their
    NVML energy counters (one source per component; ``gpu_energy_source`` says which).
    """

    method = "codecarbon"
    component = "machine"
    device = "codecarbon"
    device_key = "codecarbon"

    def __init__(
        self, country_iso_code: str | None, gpu_energy_source: str = "none: the experiment uses no GPU"
    ) -> None:
        from codecarbon import OfflineEmissionsTracker

        self.gpu_energy_source = gpu_energy_source
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code or "USA",
            output_methods=[],  # nothing written to disk or sent anywhere: the values come back in memory
            log_level="error",
            measure_power_secs=1,
            tracking_mode="machine",
        )
        self._t0 = None

    def start(self) -> None:
        self._tracker.start()
        self._t0 = time.perf_counter()

    def stop(self) -> list[ComponentEnergy]:
        self._tracker.stop()
        duration = time.perf_counter() - self._t0
        data = self._tracker.final_emissions_data
        details = {
            "cpu_model": getattr(data, "cpu_model", None),
            "tracking_mode": "machine",
            "gpu_energy_source": self.gpu_energy_source,
        }
        out = []
        for component, attr in (("cpu", "cpu_energy"), ("ram", "ram_energy")):
            kwh = getattr(data, attr, None)
            energy = None if kwh is None else kwh * 3.6e6
            out.append(
                ComponentEnergy(
                    component, component, f"codecarbon-{component}", self.method, energy, duration, [], details
                )
            )
        return out

    def describe(self) -> dict:
        return {
            "component": "cpu+ram",
            "device": "codecarbon",
            "method": self.method,
            "gpu_energy_source": self.gpu_energy_source,
        }


def select_meters(energy_cfg: dict, gpu_count: int) -> MeterSet:
    """Meters for one experiment from its ``energy`` section.

    ``gpu_count``: CUDA devices the experiment occupies (0 on CPU); each physical GPU gets one meter, whatever
    the number of processes or MIG instances on it.
    auto: NVML for the experiment's GPU(s) when it runs on CUDA; RAPL for CPU/DRAM when readable, else the TDP
    estimate. ``nvml``/``rapl``/``codecarbon`` insist on that source and fail loudly when it is missing, so a
    campaign never silently falls back to a weaker method than it asked for. The CPU value (RAPL packages or the
    estimate) is the machine's, with the measuring process tree's share of its busy CPU time beside it;
    ``cpu_attribution: process`` books that share of it instead.
    """
    from ..errors import MeasurementError

    backend = energy_cfg.get("backend", "auto")
    attribution = energy_cfg.get("cpu_attribution", "machine")
    if backend == "codecarbon" and attribution != "machine":
        raise MeasurementError(
            f"energy.cpu_attribution = {attribution} scales the CPU energy of RAPL or the TDP estimate; "
            "energy.backend = codecarbon reports CodeCarbon's own machine-wide figure"
        )
    meters: list = []
    unavailable: list[dict] = []
    use_gpu = gpu_count > 0
    gpus = []
    for g in visible_gpus()[:gpu_count] if use_gpu else []:  # the first gpu_count CUDA devices are the experiment's
        if all(g["uuid"] != seen["uuid"] for seen in gpus):  # MIG instances of one board: its counter is read once
            gpus.append(g)
    no_counter = {g["uuid"]: why for g in gpus if (why := counter_problem(g))}  # no meter: energy unavailable
    if backend == "nvml" and no_counter:
        raise MeasurementError(f"energy.backend = nvml, but {next(iter(no_counter.values()))}")
    gpus = [g for g in gpus if g["uuid"] not in no_counter]
    unavailable.extend({"component": "gpu", "reason": f"{why}: GPU energy not measured"} for why in no_counter.values())
    if backend == "nvml" and not gpus:
        raise MeasurementError("energy.backend = nvml, but no NVIDIA GPU is visible through NVML")
    if backend in ("auto", "nvml", "rapl", "estimate"):
        meters.extend(NvmlGpuMeter(g) for g in gpus)
        if use_gpu and not gpus and not no_counter:
            unavailable.append({"component": "gpu", "reason": "NVML not available: GPU energy not measured"})
    if backend == "codecarbon":
        meters.extend(NvmlGpuMeter(g) for g in gpus)
        if use_gpu and not gpus and not no_counter:
            unavailable.append({"component": "gpu", "reason": "NVML not available: GPU energy not measured"})
        source = "nvml_counter" if gpus else ("unavailable: no NVML" if use_gpu else "none: the experiment uses no GPU")
        meters.append(CodeCarbonMeter(energy_cfg.get("country_iso_code"), source))
        ms = MeterSet(meters)
        ms.unavailable = unavailable
        return ms
    domains = rapl_domains() if backend in ("auto", "rapl") else []
    if backend == "rapl" and not domains:
        raise MeasurementError("energy.backend = rapl, but no readable RAPL domain under /sys/class/powercap")
    if domains:
        meters.extend(RaplMeter(d) for d in domains)
        if not any(d["name"].startswith("dram") for d in domains):
            unavailable.append({"component": "ram", "reason": "no readable RAPL dram domain"})
    elif backend in ("auto", "estimate", "nvml"):
        meters.append(CpuEstimateMeter(energy_cfg.get("cpu_tdp_w"), part_threads=energy_cfg.get("cpu_part_threads")))
        unavailable.append({"component": "ram", "reason": "no RAPL dram domain; RAM energy not measured"})
    on_cpu = any(m.component == "cpu" for m in meters)
    ms = MeterSet(meters, CpuAttribution(attribution) if on_cpu else None)
    ms.unavailable = unavailable
    return ms


def carbon_intensity_g_per_kwh(country_iso_code: str) -> tuple[float, str] | None:
    """Grid carbon intensity of a country from CodeCarbon's energy-mix data, with the data year."""
    try:
        from codecarbon.input import DataSource
    except ImportError:
        return None
    mix = DataSource().get_global_energy_mix_data().get(country_iso_code)
    if not mix or mix.get("carbon_intensity") is None:
        return None
    return float(mix["carbon_intensity"]), f"codecarbon global_energy_mix {mix.get('year', '')}".strip()
