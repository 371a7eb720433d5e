"""The meter interface: every energy source is read only at the two edges of a window.

A meter measures one device (one GPU, one RAPL domain, the CPU as a whole for an estimate). ``start()`` takes the
opening reading, ``stop()`` the closing one and returns a :class:`ComponentEnergy` with the method that produced
the value. An unavailable or untrustworthy value is ``None`` plus a flag, never a zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ComponentEnergy:
    """Energy of one device over one window."""

    component: str  # "gpu" | "cpu" | "ram"
    device: str  # e.g. "gpu0", "package-0", "cpu"
    device_key: str  # stable identity of the device on this host (baseline cache key)
    method: str  # "nvml_counter" | "rapl" | "estimate_tdp" | "codecarbon" | "fake"
    energy_j: float | None
    duration_s: float
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_power_w(self) -> float | None:
        if self.energy_j is None or self.duration_s <= 0:
            return None
        return self.energy_j / self.duration_s



class Meter(Protocol):
    component: str
    device: str
    device_key: str
    method: str

    def start(self) -> None: ...

    def stop(self) -> ComponentEnergy: ...

    def describe(self) -> dict: ...


class CounterMeter:
    """A meter over a cumulative counter in joules. Subclasses implement :meth:`read_j`.

    ``wrap_j`` is the counter's range when it wraps (RAPL); a negative difference without a known range is a
    counter reset and makes the value unavailable.
    """

    component = "cpu"
    device = "cpu"
    device_key = "cpu"
    method = "counter"
    wrap_j: float | None = None
    clock = staticmethod(time.perf_counter)

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None

    def read_j(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def details(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"component": self.component, "device": self.device, "method": self.method, **self.details()}

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
        return ComponentEnergy(
            self.component, self.device, self.device_key, self.method, delta, end_t - start_t, flags, self.details()
        )


class MeterSet:
    """All meters of one measurement, started and stopped together (GPU counters first: they matter most)."""

    def __init__(self, meters: list) -> None:
        self.meters = list(meters)
        self.unavailable: list[dict] = []  # sources that were asked for or expected but could not be read

    def start(self) -> None:
        for m in self.meters:
            m.start()

    def stop(self) -> list[ComponentEnergy]:
        out: list[ComponentEnergy] = []
        for m in self.meters:
            r = m.stop()  # a meter covering several components (CodeCarbon) returns a list
            out.extend(r if isinstance(r, list) else [r])
        methods: dict[str, set[str]] = {}
        for c in out:
            methods.setdefault(c.component, set()).add(c.method)
        doubled = {k: sorted(v) for k, v in methods.items() if len(v) > 1}
        if doubled:  # two sources for one component would be summed into the total: count it once or not at all
            raise RuntimeError(f"more than one energy source per component: {doubled}")
        return out

    def describe(self) -> list[dict]:
        return [m.describe() for m in self.meters]
