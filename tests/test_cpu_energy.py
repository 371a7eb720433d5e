"""CPU energy: the TDP share of the physical part's hardware threads.

The estimate reads files the kernel writes (``/proc/cpuinfo``, ``/proc/stat``); each test writes them as the kernel
would for the machine it describes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llenergymeasure import validity
from llenergymeasure.energy.accounting import energy_section
from llenergymeasure.energy.base import ComponentEnergy
from llenergymeasure.energy.cpu import (
    CpuEstimateMeter,
    fallback_watts_per_thread,
    find_part,
    read_cpuinfo,
)

HZ = os.sysconf("SC_CLK_TCK")


def write_cpuinfo(path: Path, model: str, sockets: int, threads_per_socket: int, hypervisor: bool) -> Path:
    """``/proc/cpuinfo`` of a machine showing ``sockets`` x ``threads_per_socket`` logical CPUs."""
    blocks = []
    for n in range(sockets * threads_per_socket):
        blocks.append(
            f"processor\t: {n}\nvendor_id\t: AuthenticAMD\nmodel name\t: {model}\n"
            f"physical id\t: {n // threads_per_socket}\nsiblings\t: {threads_per_socket}\n"
            f"core id\t\t: {(n % threads_per_socket) // 2}\ncpu cores\t: {max(1, threads_per_socket // 2)}\n"
            f"flags\t\t: fpu vme de pse tsc msr{' hypervisor' if hypervisor else ''} sse sse2\n"
        )
    path.write_text("\n".join(blocks))
    return path


def write_stat(path: Path, n_cpus: int, busy_ticks: int, idle_ticks: int = 100_000) -> Path:
    """``/proc/stat`` with ``n_cpus`` per-CPU lines; the first line's busy time is user + system."""
    user, system = busy_ticks * 3 // 4, busy_ticks - busy_ticks * 3 // 4
    lines = [f"cpu  {user} 0 {system} {idle_ticks} 0 0 0 0 0 0"]
    lines += [f"cpu{i} {user // n_cpus} 0 {system // n_cpus} {idle_ticks // n_cpus} 0 0 0 0 0 0" for i in range(n_cpus)]
    lines += ["intr 0", "ctxt 0", "btime 0", "processes 1", "procs_running 1", "procs_blocked 0"]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_process(proc: Path, pid: int, ppid: int, utime: int, stime: int = 0, cutime: int = 0, cstime: int = 0):
    """``/proc/<pid>/stat``; the command name holds a space and parentheses, as a real one may."""
    (proc / str(pid)).mkdir(exist_ok=True)
    (proc / str(pid) / "stat").write_text(
        f"{pid} (py (worker) {pid}) S {ppid} {pid} {pid} 0 -1 4194304 120 0 0 0 "
        f"{utime} {stime} {cutime} {cstime} 20 0 3 0 500 1000000 900 18446744073709551615\n"
    )


def estimate(tmp_path, model, sockets, threads_per_socket, hypervisor, n_cpus, **settings) -> CpuEstimateMeter:
    info = write_cpuinfo(tmp_path / "cpuinfo", model, sockets, threads_per_socket, hypervisor)
    stat = write_stat(tmp_path / "stat", n_cpus, busy_ticks=1000)
    return CpuEstimateMeter(settings.get("tdp_w"), stat=stat, part_threads=settings.get("part_threads"), cpuinfo=info)


def window(meter: CpuEstimateMeter, busy_cpu_s: float) -> ComponentEnergy:
    stat = meter._stat
    meter.start()
    write_stat(stat, meter.n_cpus, busy_ticks=1000 + int(busy_cpu_s * HZ))
    return meter.stop()


# ------------------------------------------------------------------------------------------------- the TDP share


def test_a_two_vcpu_vm_of_a_64_core_part_is_charged_two_of_its_128_threads(tmp_path):
    m = estimate(tmp_path, "AMD EPYC 7763 64-Core Processor", 1, 2, hypervisor=True, n_cpus=2)
    r = window(m, busy_cpu_s=4.0)
    d = r.details
    assert d["part"] == "EPYC 7763" and d["tdp_w"] == 280.0 and d["tdp_source"] == "cpu_parts_table"
    # the VM shows 2 siblings per package: the part's 128 threads come from the table, never from the VM
    assert d["part_threads"] == 128 and d["part_threads_source"] == "cpu_parts_table"
    assert d["threads_usable"] == 2 and d["sockets"] == 1
    assert d["watts_per_thread"] == pytest.approx(280.0 / 128)
    assert d["full_load_power_w"] == pytest.approx(280.0 * 2 / 128)  # 4.4 W, not the part's 280 W
    assert r.energy_j == pytest.approx(4.0 * 280.0 / 128)
    assert r.method == "estimate_tdp" and "cpu_tdp_unknown" not in r.flags
    # dividing the TDP by the VM's 2 logical CPUs would have charged 64 times as much
    assert (4.0 * 280.0 / 2) / r.energy_j == pytest.approx(64.0)


def test_a_two_socket_host_is_charged_both_packages(tmp_path):
    m = estimate(tmp_path, "AMD EPYC 7763 64-Core Processor", 2, 128, hypervisor=False, n_cpus=256)
    r = window(m, busy_cpu_s=256.0)  # every thread busy for one second
    d = r.details
    assert d["sockets"] == 2 and d["threads_usable"] == 256
    assert d["part_threads"] == 128 and d["part_threads_source"] == "cpuinfo_siblings"  # bare metal: the package as run
    assert d["full_load_power_w"] == pytest.approx(2 * 280.0)
    assert r.energy_j == pytest.approx(2 * 280.0)


def test_bare_metal_without_smt_spreads_the_tdp_over_the_threads_it_runs(tmp_path):
    m = estimate(tmp_path, "AMD EPYC 7763 64-Core Processor", 2, 64, hypervisor=False, n_cpus=128)
    d = window(m, busy_cpu_s=1.0).details
    assert d["part_threads"] == 64 and d["full_load_power_w"] == pytest.approx(2 * 280.0)


def test_an_unknown_part_is_flagged_and_charged_the_tables_median(tmp_path):
    m = estimate(tmp_path, "AMD EPYC", 1, 2, hypervisor=True, n_cpus=2)  # a VM that hides the model
    r = window(m, busy_cpu_s=2.0)
    d = r.details
    assert d["part"] is None and d["tdp_w"] is None and d["part_threads"] is None
    assert d["tdp_source"] == "unknown" and d["part_threads_source"] == "unknown"
    assert d["watts_per_thread_source"] == "median_of_cpu_parts_table"
    assert d["watts_per_thread"] == pytest.approx(fallback_watts_per_thread())
    assert r.energy_j == pytest.approx(2.0 * fallback_watts_per_thread())
    assert "cpu_tdp_unknown" in r.flags and "estimated_not_measured" in r.flags
    found = dict(validity.energy_readings([r], {}, energy_section([r], {}, 2.0, [])["components"]))
    assert "energy.cpu_tdp_w and energy.cpu_part_threads" in found["cpu_tdp_unknown"]
    assert "'AMD EPYC'" in found["cpu_tdp_unknown"] and "energy_estimated" in found


def test_an_unknown_part_is_known_once_both_settings_say_what_it_is(tmp_path):
    only_tdp = window(estimate(tmp_path, "AMD EPYC", 1, 2, True, 2, tdp_w=200.0), 1.0)
    assert "cpu_tdp_unknown" in only_tdp.flags and only_tdp.details["tdp_source"] == "config"
    found = dict(validity.energy_readings([only_tdp], {}, energy_section([only_tdp], {}, 1.0, [])["components"]))
    assert "hardware threads of the CPU part" in found["cpu_tdp_unknown"]
    assert "set energy.cpu_part_threads for this part" in found["cpu_tdp_unknown"]
    both = window(estimate(tmp_path, "AMD EPYC", 1, 2, True, 2, tdp_w=200.0, part_threads=100), 1.0)
    assert "cpu_tdp_unknown" not in both.flags and both.details["part_threads_source"] == "config"
    assert both.energy_j == pytest.approx(1.0 * 200.0 / 100)


def test_part_names_match_whole_model_numbers():
    assert find_part("Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz")["part"] == "Xeon Gold 6248R"
    assert find_part("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz")["part"] == "Xeon Gold 6248"
    assert find_part("Intel(R) Xeon(R) Platinum 8480+")["part"] == "Xeon Platinum 8480+"
    assert find_part("AMD EPYC 7773X 64-Core Processor")["part"] == "EPYC 7773X"
    assert find_part("AMD EPYC 7H12 64-Core Processor")["threads"] == 128
    assert find_part("AMD EPYC 77631 Processor") is None
    assert find_part("QEMU Virtual CPU version 2.5+") is None


def test_cpuinfo_reading(tmp_path):
    info = read_cpuinfo(write_cpuinfo(tmp_path / "cpuinfo", "AMD EPYC 9654 96-Core Processor", 2, 4, True))
    assert (info.model, info.sockets, info.siblings, info.hypervisor) == ("AMD EPYC 9654 96-Core Processor", 2, 4, True)
    (tmp_path / "empty").write_text("")
    assert read_cpuinfo(tmp_path / "empty").sockets is None
