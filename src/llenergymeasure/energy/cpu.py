"""CPU and DRAM energy: RAPL counters when the OS lets us read them, otherwise a labelled TDP estimate.

RAPL (``/sys/class/powercap/intel-rapl*``, also used by AMD since Linux 5.8) exposes cumulative microjoule
counters per package and DRAM domain that wrap at ``max_energy_range_uj``. Where they are absent or unreadable
(most VMs, containers without privileges) the CPU energy is *estimated*: the CPUs' busy time from
``/proc/stat`` times the TDP share of one logical CPU. That is an estimate of the whole machine's CPU energy,
labelled ``estimate_tdp``, and is never presented as a measurement.
"""

from __future__ import annotations

import csv
import os
import socket
import time
from pathlib import Path

from .base import CounterMeter

POWERCAP = Path("/sys/class/powercap")
PROC_STAT = Path("/proc/stat")
DEFAULT_TDP_PER_CPU_W = 10.0


# ---------------------------------------------------------------------------------------------------------- RAPL


def rapl_domains(root: Path = POWERCAP) -> list[dict]:
    """Readable RAPL package and dram domains under ``root``."""
    if not root.is_dir():
        return []
    domains = []
    for path in sorted(root.glob("intel-rapl:*")):
        try:
            name = (path / "name").read_text().strip()
            int((path / "energy_uj").read_text())
            wrap = int((path / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        if name.startswith("package") or name == "dram":
            parent = path.name.split(":")[1]
            label = name if name.startswith("package") else f"dram-{parent}"
            domains.append({"path": str(path), "name": label, "wrap_uj": wrap})
    return domains


class RaplMeter(CounterMeter):
    method = "rapl"
    edge_resolution_s = 0.001  # RAPL counters update about every millisecond

    def __init__(self, domain: dict) -> None:
        super().__init__()
        self.domain = domain
        self.component = "ram" if domain["name"].startswith("dram") else "cpu"
        self.device = domain["name"]
        self.device_key = f"rapl-{socket.gethostname()}-{domain['name']}"
        self.wrap_j = domain["wrap_uj"] / 1e6
        self._file = Path(domain["path"]) / "energy_uj"

    def read_j(self) -> float:
        return int(self._file.read_text()) / 1e6

    def details(self) -> dict:
        return {"domain": self.domain["name"], "path": self.domain["path"]}


# ---------------------------------------------------------------------------------------------------------- estimate


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _codecarbon_tdp(model: str) -> float | None:
    """Exact model-name match in CodeCarbon's CPU table, when CodeCarbon is installed."""
    try:
        import codecarbon
    except ImportError:
        return None
    table = Path(codecarbon.__file__).parent / "data" / "hardware" / "cpu_power.csv"
    try:
        with open(table, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("Name", "").strip().lower() == model.strip().lower():
                    return float(row["TDP"])
    except (OSError, ValueError, KeyError):
        return None
    return None


def resolve_tdp(configured: float | None, n_cpus: int) -> tuple[float, str]:
    """(TDP in W of the CPUs this machine shows, where the figure came from)."""
    if configured:
        return float(configured), "config"
    found = _codecarbon_tdp(cpu_model_name())
    if found:
        return found, "codecarbon_cpu_table"
    return DEFAULT_TDP_PER_CPU_W * n_cpus, f"default_{DEFAULT_TDP_PER_CPU_W:g}w_per_logical_cpu"


def cpu_times(stat: Path = PROC_STAT) -> tuple[float, float] | None:
    """Machine-wide (busy, total) CPU time in CPU-seconds from ``/proc/stat``'s first line, or None if unreadable.
    Busy = user + nice + system + irq + softirq; total adds idle and iowait."""
    try:
        with open(stat) as fh:
            first = fh.readline().split()
        values = [int(v) for v in first[1:8]]
    except (OSError, ValueError):
        return None
    if not first or first[0] != "cpu" or len(values) < 7:
        return None
    busy = values[0] + values[1] + values[2] + values[5] + values[6]
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, (busy + values[3] + values[4]) / tick


def busy_cpu_seconds(stat: Path = PROC_STAT) -> float | None:
    """Machine-wide busy CPU time, in CPU-seconds, or None if unreadable."""
    times = cpu_times(stat)
    return None if times is None else times[0]


class CpuEstimateMeter(CounterMeter):
    """CPU energy estimate: busy CPU-seconds x (TDP / logical CPUs). Labelled ``estimate_tdp``."""

    method = "estimate_tdp"
    component = "cpu"
    device = "cpu"

    def __init__(self, tdp_w: float | None = None, stat: Path = PROC_STAT) -> None:
        super().__init__()
        self.n_cpus = os.cpu_count() or 1
        self.tdp_w, self.tdp_source = resolve_tdp(tdp_w, self.n_cpus)
        self._stat = stat
        self.scope = "machine" if busy_cpu_seconds(stat) is not None else "process"
        self.device_key = f"cpu-estimate-{socket.gethostname()}-{self.tdp_w:g}w"

    def read_j(self) -> float:
        if self.scope == "machine":
            busy = busy_cpu_seconds(self._stat)
        else:
            busy = time.process_time()
        return busy * self.tdp_w / self.n_cpus

    def read_uncertainty_j(self, power_w: float, edge_resolution_s: float) -> float:
        """Busy time is counted in clock ticks per CPU: one tick of each CPU, added in quadrature."""
        tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        return tick_s * self.n_cpus**0.5 * self.tdp_w / self.n_cpus

    def details(self) -> dict:
        return {
            "cpu_model": cpu_model_name(),
            "logical_cpus": self.n_cpus,
            "tdp_w": self.tdp_w,
            "tdp_source": self.tdp_source,
            "scope": self.scope,
            "model": "busy CPU-seconds x TDP / logical CPUs",
        }

    def stop(self):
        result = super().stop()
        result.flags.append("estimated_not_measured")
        return result
