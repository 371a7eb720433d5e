"""CPU and DRAM energy: RAPL counters when the OS lets us read them, otherwise a labelled TDP estimate, and the
share of either that belongs to the measuring process tree.

RAPL (``/sys/class/powercap/intel-rapl*``, also used by AMD since Linux 5.8) exposes cumulative microjoule
counters per package and DRAM domain that wrap at ``max_energy_range_uj``. Where they are absent or unreadable
(most VMs, containers without privileges) the CPU energy is *estimated*: the machine's busy CPU-seconds from
``/proc/stat`` times the TDP of one hardware thread of the physical part: the package's TDP over the package's
hardware threads, from the settings, a table of known parts (:data:`PARTS_TABLE`) or, for the threads on bare
metal, what the OS shows per package (:func:`resolve_thread_power`). A VM that shows 2 of a 64-core part's 128
threads is charged 2/128 of its TDP at full load, not the whole TDP. The estimate is labelled
``estimate_tdp`` and is never presented as a measurement; a part the table does not know is flagged
``cpu_tdp_unknown`` and charged the table's median watts per thread.

Both figures are the machine's: every process's CPU work is in them. :class:`CpuAttribution` reads how much of the
window's busy CPU time the measuring process and its descendants used (``/proc/stat`` against
``/proc/<pid>/stat``), records it beside every CPU value, flags ``cpu_shared`` when other processes used more than
10 % of it, and with ``energy.cpu_attribution: process`` scales the CPU energy by that share (method
``<method>_process_share``, an estimate).
"""

from __future__ import annotations

import csv
import os
import re
import socket
import statistics
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from .base import CounterMeter

POWERCAP = Path("/sys/class/powercap")
PROC = Path("/proc")
PROC_STAT = PROC / "stat"
CPUINFO = PROC / "cpuinfo"
#: known CPU parts: cores, hardware threads and TDP of one package (vendor specifications)
PARTS_TABLE = Path(__file__).resolve().parent.parent / "data" / "cpu_parts.csv"
#: other processes' share of the window's busy CPU time above which the window is flagged ``cpu_shared``
SHARED_MAX = 0.10


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


# ---------------------------------------------------------------------------------------------------------- the part


@dataclass(frozen=True)
class CpuInfo:
    """What ``/proc/cpuinfo`` shows of this machine's CPUs (an lscpu-like reading)."""

    model: str
    sockets: int | None  # distinct "physical id" values; None where the file shows none
    siblings: int | None  # logical CPUs per package as shown (a VM's are the hypervisor's choice)
    hypervisor: bool  # the "hypervisor" CPU flag: a virtual machine, whose topology is not the part's


def read_cpuinfo(path: Path = CPUINFO) -> CpuInfo:
    model, packages, siblings, hypervisor = None, set(), None, False
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "physical id":
            packages.add(value)
        elif key == "siblings" and siblings is None and value.isdigit():
            siblings = int(value)
        elif key == "flags" and "hypervisor" in value.split():
            hypervisor = True
    if model is None:
        import platform

        model = platform.processor() or "unknown"
    return CpuInfo(model, len(packages) or None, siblings, hypervisor)


def cpu_model_name(path: Path = CPUINFO) -> str:
    return read_cpuinfo(path).model


def _normalised(name: str) -> str:
    """A CPU name in lower case without trademarks, clock, core count or filler words:
    ``Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz`` -> ``intel xeon gold 6248r``."""
    s = re.sub(r"\((r|tm)\)|[®™]", " ", name.lower())
    s = re.sub(r"@\s*[\d.]+\s*[gm]hz", " ", s)
    s = re.sub(r"\b\d+-core\b|\bprocessor\b|\bcpu\b", " ", s)
    return " ".join(s.split())


@lru_cache(maxsize=4)
def known_parts(table: Path = PARTS_TABLE) -> tuple[dict, ...]:
    """The rows of the parts table: part name, cores, hardware threads and TDP of one package."""
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    return tuple(
        {"part": r["part"], "cores": int(r["cores"]), "threads": int(r["threads"]), "tdp_w": float(r["tdp_w"])}
        for r in rows
    )


def find_part(model: str, table: Path = PARTS_TABLE) -> dict | None:
    """The table's row for a CPU model name: the part's name as a whole word of it (``EPYC 7763`` in ``AMD EPYC 7763
    64-Core Processor``; ``Xeon Gold 6248`` does not match ``Xeon Gold 6248R``), or None."""
    name = _normalised(model)
    for part in known_parts(table):
        if re.search(rf"(?<![a-z0-9]){re.escape(_normalised(part['part']))}(?![a-z0-9+])", name):
            return part
    return None


def fallback_watts_per_thread(table: Path = PARTS_TABLE) -> float:
    """Watts per hardware thread charged for a part whose TDP or thread count is unknown: the median of the table's
    parts (TDP / threads), flagged ``cpu_tdp_unknown`` wherever it is used."""
    return statistics.median(p["tdp_w"] / p["threads"] for p in known_parts(table))


def _codecarbon_tdp(model: str) -> float | None:
    """Exact model-name match in CodeCarbon's CPU table, when CodeCarbon is installed (a TDP, no thread count)."""
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


@dataclass(frozen=True)
class ThreadPower:
    """The TDP share of one hardware thread of the physical part, with every input it came from."""

    cpu_model: str
    part: str | None  # the parts table's name for it, None when the table does not know it
    sockets: int | None
    tdp_w: float | None  # of one package
    tdp_source: str
    part_threads: int | None  # hardware threads of one package
    part_threads_source: str
    threads_usable: int  # logical CPUs this machine may use (what /proc/stat counts)
    watts_per_thread: float
    watts_per_thread_source: str

    @property
    def known(self) -> bool:
        return self.tdp_w is not None and self.part_threads is not None

    @property
    def full_load_power_w(self) -> float:
        """The estimate's power with every usable thread busy."""
        return self.watts_per_thread * self.threads_usable

    def to_dict(self) -> dict:
        return {
            "cpu_model": self.cpu_model,
            "part": self.part,
            "sockets": self.sockets,
            "tdp_w": self.tdp_w,
            "tdp_source": self.tdp_source,
            "part_threads": self.part_threads,
            "part_threads_source": self.part_threads_source,
            "threads_usable": self.threads_usable,
            "watts_per_thread": self.watts_per_thread,
            "watts_per_thread_source": self.watts_per_thread_source,
            "full_load_power_w": self.full_load_power_w,
        }


def resolve_thread_power(
    tdp_w: float | None,
    part_threads: int | None,
    info: CpuInfo,
    threads_usable: int,
    table: Path = PARTS_TABLE,
) -> ThreadPower:
    """Watts per hardware thread: one package's TDP over one package's hardware threads.

    TDP: ``energy.cpu_tdp_w``, else the parts table, else CodeCarbon's table (exact name). Threads of the package:
    ``energy.cpu_part_threads``, else what the OS shows per package where no hypervisor stands between it and the part
    (``siblings``: the package as it runs, simultaneous multithreading on or off), else the parts table. A VM's
    topology is never taken for the part's. Without both, the table's median watts per thread, said so."""
    part = find_part(info.model, table)
    if tdp_w:
        tdp, tdp_source = float(tdp_w), "config"
    elif part:
        tdp, tdp_source = part["tdp_w"], "cpu_parts_table"
    elif found := _codecarbon_tdp(info.model):
        tdp, tdp_source = found, "codecarbon_cpu_table"
    else:
        tdp, tdp_source = None, "unknown"
    if part_threads:
        threads, threads_source = int(part_threads), "config"
    elif info.siblings and not info.hypervisor:
        threads, threads_source = info.siblings, "cpuinfo_siblings"
    elif part:
        threads, threads_source = part["threads"], "cpu_parts_table"
    else:
        threads, threads_source = None, "unknown"
    if tdp is not None and threads:
        per_thread, per_thread_source = tdp / threads, "tdp_w / part_threads"
    else:
        per_thread, per_thread_source = fallback_watts_per_thread(table), "median_of_cpu_parts_table"
    return ThreadPower(
        cpu_model=info.model,
        part=part["part"] if part else None,
        sockets=info.sockets,
        tdp_w=tdp,
        tdp_source=tdp_source,
        part_threads=threads,
        part_threads_source=threads_source,
        threads_usable=threads_usable,
        watts_per_thread=per_thread,
        watts_per_thread_source=per_thread_source,
    )


# ---------------------------------------------------------------------------------------------------------- busy time


def _stat_ticks(stat: Path = PROC_STAT) -> tuple[int, int] | None:
    """Machine-wide (busy, total) CPU time in clock ticks from ``/proc/stat``'s first line, or None if unreadable.
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
    return busy, busy + values[3] + values[4]


def cpu_times(stat: Path = PROC_STAT) -> tuple[float, float] | None:
    """Machine-wide (busy, total) CPU time in CPU-seconds (see :func:`_stat_ticks`), or None if unreadable."""
    ticks = _stat_ticks(stat)
    if ticks is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return ticks[0] / tick, ticks[1] / tick


def busy_cpu_seconds(stat: Path = PROC_STAT) -> float | None:
    """Machine-wide busy CPU time, in CPU-seconds, or None if unreadable."""
    times = cpu_times(stat)
    return None if times is None else times[0]


def machine_threads(stat: Path = PROC_STAT) -> int:
    """Logical CPUs this machine may use: the per-CPU lines of ``/proc/stat``, whose first line sums them."""
    try:
        with open(stat) as fh:
            n = sum(1 for line in fh if re.match(r"cpu\d+\s", line))
    except OSError:
        n = 0
    return n or os.cpu_count() or 1


def process_tree_ticks(pid: int, proc: Path = PROC) -> int | None:
    """CPU time in clock ticks of process ``pid`` and all its live descendants (user + system of every thread, plus
    the children's time each has waited for), or None when ``pid`` is not readable under ``proc``.

    A descendant that ends is waited for by its parent, whose children's time then holds the descendant's: the sum
    does not drop when one ends inside the window. One re-parented outside the tree (a daemon) leaves it."""
    parent_of: dict[int, int] = {}
    ticks: dict[int, int] = {}
    try:
        entries = [e for e in Path(proc).iterdir() if e.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            text = (entry / "stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
            parent_of[int(entry.name)] = int(fields[1])
            ticks[int(entry.name)] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            continue
    if pid not in ticks:
        return None
    children: dict[int, list[int]] = {}
    for child, parent in parent_of.items():
        children.setdefault(parent, []).append(child)
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += ticks[p]
        todo.extend(children.get(p, []))
    return total


# ---------------------------------------------------------------------------------------------------------- estimate


class CpuEstimateMeter(CounterMeter):
    """CPU energy estimate: busy CPU-seconds of the machine x the TDP of one hardware thread of the physical part
    (:func:`resolve_thread_power`). Labelled ``estimate_tdp``; an unknown part is flagged ``cpu_tdp_unknown``."""

    method = "estimate_tdp"
    component = "cpu"
    device = "cpu"

    def __init__(
        self,
        tdp_w: float | None = None,
        stat: Path = PROC_STAT,
        part_threads: int | None = None,
        cpuinfo: Path = CPUINFO,
        table: Path = PARTS_TABLE,
    ) -> None:
        super().__init__()
        self._stat = stat
        self.power = resolve_thread_power(tdp_w, part_threads, read_cpuinfo(cpuinfo), machine_threads(stat), table)
        self.n_cpus = self.power.threads_usable
        self.scope = "machine" if busy_cpu_seconds(stat) is not None else "process"
        self.device_key = f"cpu-estimate-{socket.gethostname()}-{self.power.watts_per_thread:.4g}w-per-thread"

    def read_j(self) -> float:
        busy = busy_cpu_seconds(self._stat) if self.scope == "machine" else time.process_time()
        return busy * self.power.watts_per_thread

    def read_uncertainty_j(self, power_w: float, edge_resolution_s: float) -> float:
        """Busy time is counted in clock ticks per CPU: one tick of each CPU, added in quadrature."""
        tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        return tick_s * self.n_cpus**0.5 * self.power.watts_per_thread

    def details(self) -> dict:
        return {
            **self.power.to_dict(),
            "scope": self.scope,
            "model": "busy CPU-seconds x TDP / hardware threads of the part",
        }

    def stop(self):
        result = super().stop()
        result.flags.append("estimated_not_measured")
        if not self.power.known:
            result.flags.append("cpu_tdp_unknown")
        return result


# ---------------------------------------------------------------------------------------------------------- whose energy

ATTRIBUTIONS = ("machine", "process")
#: the CPU methods whose value is the machine's, and so can be attributed
MACHINE_CPU_METHODS = ("rapl", "estimate_tdp")


class CpuAttribution:
    """Whose CPU energy a window's value is. Reads, at the window's edges, the machine's busy CPU time
    (``<proc>/stat``) and that of the measuring process and its descendants (``<proc>/<pid>/stat``); their ratio is
    the process tree's share of the window's busy CPU time, recorded beside every CPU value (``attribution`` in its
    details), with the flag ``cpu_shared`` when other processes used more than :data:`SHARED_MAX` of it.

    ``mode``: ``machine`` leaves the value the machine's; ``process`` multiplies it by the share (method
    ``<method>_process_share``: an estimate, since busy time is not energy) and keeps the machine's value beside it.
    """

    def __init__(self, mode: str = "machine", pid: int | None = None, proc: Path = PROC) -> None:
        if mode not in ATTRIBUTIONS:
            raise ValueError(f"energy.cpu_attribution = {mode!r}: allowed values are {', '.join(ATTRIBUTIONS)}")
        self.mode = mode
        self.pid = pid or os.getpid()
        self._proc = Path(proc)
        self._start: tuple[int, int] | None = None

    def _read(self) -> tuple[int, int] | None:
        machine = _stat_ticks(self._proc / "stat")
        tree = process_tree_ticks(self.pid, self._proc)
        return None if machine is None or tree is None else (machine[0], tree)

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict | None:
        """The window's busy CPU time, the process tree's and its share; None when either edge was unreadable."""
        start, end = self._start, self._read()
        self._start = None
        if start is None or end is None:
            return None
        machine = max(0, end[0] - start[0])
        tree = max(0, end[1] - start[1])  # a descendant re-parented away takes its time with it
        share = min(1.0, tree / machine) if machine else (1.0 if tree else 0.0)
        tick = os.sysconf("SC_CLK_TCK")
        return {
            "machine_busy_cpu_s": machine / tick,
            "process_tree_cpu_s": tree / tick,
            "process_tree_share": share,
            "other_processes_share": 1.0 - share,
        }

    def describe(self) -> dict:
        return {"component": "cpu", "attribution": self.mode}

    def apply(self, components: list) -> list:
        """The window's components with each machine-wide CPU value attributed (the others as they are)."""
        measured = self.stop()
        return [
            self._attributed(c, measured) if c.component == "cpu" and c.method in MACHINE_CPU_METHODS else c
            for c in components
        ]

    def _attributed(self, c, measured: dict | None):
        flags = list(c.flags)
        own = c.details.get("scope") == "process"  # an estimate that could count only this process's own time
        record: dict = {"mode": self.mode, "pid": self.pid, **(measured or {"process_tree_share": None})}
        if measured is None:
            record["reason"] = f"{self._proc}/stat or {self._proc}/{self.pid}/stat unreadable"
        elif measured["other_processes_share"] > SHARED_MAX and not own:
            flags.append("cpu_shared")
        if own:
            record["energy_is"] = "this process's own CPU time only: the machine's busy time was unreadable"
        if self.mode == "machine":
            record["applied_share"] = None
            record.setdefault("energy_is", "the machine's: the CPU work of every process on it")
            return replace(c, flags=flags, details={**c.details, "attribution": record})
        share = 1.0 if own else (measured or {}).get("process_tree_share")
        record["applied_share"] = share
        record["machine_energy_j"] = None if own else c.energy_j
        record.setdefault("energy_is", "the measuring process tree's share of the machine's, by busy CPU time")
        edge_u = None
        if share is None:
            flags.append("process_share_unavailable")
            energy = None
        else:
            energy = None if c.energy_j is None else c.energy_j * share
            edge_u = None if c.edge_uncertainty_j is None else c.edge_uncertainty_j * share
        return replace(
            c,
            method=f"{c.method}_process_share",
            energy_j=energy,
            edge_uncertainty_j=edge_u,
            flags=flags,
            details={**c.details, "attribution": record},
        )
