"""The meter interface: every energy source is read only at the two edges of a window.

A meter measures one device (one GPU, one RAPL domain, the CPU as a whole for an estimate). ``start()`` takes the
opening reading, ``stop()`` the closing one and returns a :class:`ComponentEnergy` with the method that produced
the value. An unavailable or untrustworthy value is ``None`` plus a flag, never a zero.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ComponentEnergy:
    """Energy of one device over one window."""

    component: str  # "gpu" | "cpu" | "ram"
    device: str  # e.g. "gpu0", "package-0", "cpu"
    device_key: str  # stable identity of the device on this host (baseline cache key)
    method: str  # "nvml_counter" | "rapl" | "estimate_tdp" | "codecarbon" (CPU: "..._process_share" when attributed)
    energy_j: float | None
    duration_s: float
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: standard uncertainty of the value from where its two edge readings fall on the counter's steps (None:
    #: not known for this source)
    edge_uncertainty_j: float | None = None

    @property
    def mean_power_w(self) -> float | None:
        if self.energy_j is None or self.duration_s <= 0:
            return None
        return self.energy_j / self.duration_s


class Meter:
    """What every meter offers. ``start``/``stop`` bracket a window; the optional readings below return None where
    the device has no such sensor, so callers never need to ask a meter what it is.

    ``edge_resolution_s`` is how far a counter reading may lag the moment it is taken (an NVML energy counter
    changes every 100 ms); :meth:`synchronised_read_j` waits for the counter to tick, which removes that lag where
    it matters (the idle baseline)."""

    component = "cpu"
    device = "cpu"
    device_key = "cpu"
    method = "counter"
    gpu: dict | None = None  # the NVML device of a GPU meter
    edge_resolution_s = 0.0
    wrap_j: float | None = None
    clock = staticmethod(time.perf_counter)

    def start(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self):  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {"component": self.component, "device": self.device, "method": self.method}

    def power_w(self) -> float | None:
        """Current power from a cheap sensor (never the energy counter), or None."""
        return None

    def read_uncertainty_j(self, power_w: float, edge_resolution_s: float) -> float:
        """Standard uncertainty of one edge reading, in joules, at ``power_w`` when the reading is known to lag by
        at most ``edge_resolution_s`` (a uniform lag: resolution / sqrt(12) would be the standard deviation; the
        whole resolution is kept, to err on the side of a wider interval)."""
        return power_w * edge_resolution_s

    def plain_read_sd_j(self, power_w: float) -> float:
        """Standard deviation of the error of one plain (unsynchronised) read at ``power_w``: its lag, or its
        rounding to the counter's unit, is uniform within :meth:`read_uncertainty_j` at the counter's step, so
        that bound / sqrt(12). The edges of a window are such reads."""
        return self.read_uncertainty_j(power_w, self.edge_resolution_s) / math.sqrt(12)

    def utilization_pct(self) -> float | None:
        """How busy the device is now (GPU SM utilisation), or None."""
        return None

    def temperature_c(self) -> float | None:
        return None

    def power_limit_w(self) -> float | None:
        return None


class CounterMeter(Meter):
    """A meter over a cumulative counter in joules. Subclasses implement :meth:`read_j`.

    ``wrap_j`` is the counter's range when it wraps (RAPL); a negative difference without a known range is a
    counter reset and makes the value unavailable.
    """

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None

    def read_j(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def synchronised_read_j(self, timeout_s: float = 0.3, sleep=time.sleep) -> tuple[float, float, float]:
        """(joules, time, resolution in s): for a counter that updates in steps (``edge_resolution_s`` > 0), poll
        until its value changes and take the time of the change; otherwise one plain read (resolution 0)."""
        first = self.read_j()
        if not self.edge_resolution_s:
            return first, self.clock(), 0.0
        t_prev = self.clock()
        deadline = t_prev + timeout_s
        while True:
            sleep(0.002)
            value, now = self.read_j(), self.clock()
            if value != first:
                return value, now, now - t_prev  # the tick happened between the last two reads
            if now > deadline:
                return value, now, self.edge_resolution_s  # an idle counter may not tick: unsynchronised
            t_prev = now

    def details(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {**super().describe(), **self.details()}

    def start(self) -> None:
        self._start = (self.read_j(), self.clock())

    def stop(self) -> ComponentEnergy:
        if self._start is None:
            raise RuntimeError("stop() without start()")
        end_j, end_t = self.read_j(), self.clock()
        start_j, start_t = self._start
        self._start = None
        flags: list[str] = []
        delta = end_j - start_j
        if delta < 0:
            if self.wrap_j:
                delta += self.wrap_j
                flags.append("counter_wrapped")
            else:
                flags.append("counter_reset")
                delta = None
        duration = end_t - start_t
        edge_u = None
        if delta is not None:  # two plain reads, each lagging its moment by up to the counter's step
            edge_u = math.sqrt(2) * self.plain_read_sd_j(delta / duration if duration > 0 else 0.0)
        return ComponentEnergy(
            self.component, self.device, self.device_key, self.method, delta, duration, flags, self.details(), edge_u
        )


class MeterSet:
    """All meters of one measurement, started and stopped together (GPU counters first: they matter most).

    ``cpu_attribution`` (:class:`llenergymeasure.energy.cpu.CpuAttribution`) reads, over the same edges, how much of
    the machine's busy CPU time was the measuring process tree's, and says whose energy each CPU value is."""

    def __init__(self, meters: list, cpu_attribution=None) -> None:
        self.meters = list(meters)
        self.cpu_attribution = cpu_attribution
        self.unavailable: list[dict] = []  # sources that were asked for or expected but could not be read

    def start(self) -> None:
        for m in self.meters:
            m.start()
        if self.cpu_attribution is not None:
            self.cpu_attribution.start()

    def stop(self) -> list[ComponentEnergy]:
        out: list[ComponentEnergy] = []
        for m in self.meters:
            r = m.stop()  # a meter covering several components (CodeCarbon) returns a list
            out.extend(r if isinstance(r, list) else [r])
        if self.cpu_attribution is not None:
            out = self.cpu_attribution.apply(out)
        methods: dict[str, set[str]] = {}
        for c in out:
            methods.setdefault(c.component, set()).add(c.method)
        doubled = {k: sorted(v) for k, v in methods.items() if len(v) > 1}
        if doubled:  # two sources for one component would be summed into the total: count it once or not at all
            raise RuntimeError(f"more than one energy source per component: {doubled}")
        return out

    def describe(self) -> list[dict]:
        attribution = [] if self.cpu_attribution is None else [self.cpu_attribution.describe()]
        return [m.describe() for m in self.meters] + attribution
