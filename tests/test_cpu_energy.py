"""CPU energy: the TDP share of the physical part's hardware threads, and whose CPU time the window's was.

The estimate and the attribution read files the kernel writes (``/proc/cpuinfo``, ``/proc/stat``,
``/proc/<pid>/stat``); each test writes them as the kernel would for the machine it describes. One test reads the
real ``/proc`` of this process and a child it starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from llenergymeasure import validity
from llenergymeasure.config import load_schema
from llenergymeasure.energy.accounting import energy_section
from llenergymeasure.energy.base import ComponentEnergy, MeterSet
from llenergymeasure.energy.cpu import (
    CpuAttribution,
    CpuEstimateMeter,
    fallback_watts_per_thread,
    find_part,
    process_tree_ticks,
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


# ------------------------------------------------------------------------------------------------- whose CPU time


def fake_proc(tmp_path) -> Path:
    """A machine whose measuring process (pid 100) has a child (101) with a child (102); 200 is someone else's."""
    proc = tmp_path / "proc"
    proc.mkdir(parents=True)
    write_stat(proc / "stat", 2, busy_ticks=5000)
    write_process(proc, 1, 0, utime=50)
    write_process(proc, 100, 1, utime=400, stime=40)
    write_process(proc, 101, 100, utime=300)
    write_process(proc, 102, 101, utime=10)
    write_process(proc, 200, 1, utime=900)
    (proc / "self").mkdir()  # not a process: skipped
    return proc


def test_process_tree_time_is_the_process_and_its_descendants(tmp_path):
    proc = fake_proc(tmp_path)
    assert process_tree_ticks(100, proc) == 400 + 40 + 300 + 10
    assert process_tree_ticks(101, proc) == 310
    assert process_tree_ticks(999, proc) is None
    # the grandchild ends and its parent waits for it: its time moves into the parent's children's time
    for p in (proc / "102").iterdir():
        p.unlink()
    (proc / "102").rmdir()
    write_process(proc, 101, 100, utime=300, cutime=10)
    assert process_tree_ticks(100, proc) == 750


def test_share_of_the_windows_busy_time_and_cpu_shared(tmp_path):
    proc = fake_proc(tmp_path)
    attribution = CpuAttribution("machine", pid=100, proc=proc)
    attribution.start()
    write_stat(proc / "stat", 2, busy_ticks=5000 + 1000)  # the machine: 10 busy CPU-seconds at 100 Hz
    write_process(proc, 100, 1, utime=400 + 300, stime=40 + 50)  # the tree: +600 ticks of the 1000
    write_process(proc, 101, 100, utime=300 + 200)
    write_process(proc, 102, 101, utime=10 + 50)
    write_process(proc, 200, 1, utime=900 + 400)  # another process: +400
    rapl = ComponentEnergy("cpu", "package-0", "k", "rapl", 100.0, 5.0, [], {"domain": "package-0"})
    gpu = ComponentEnergy("gpu", "gpu0", "g", "nvml_counter", 300.0, 5.0)
    cpu, same_gpu = attribution.apply([rapl, gpu])
    assert same_gpu is gpu
    a = cpu.details["attribution"]
    assert a["process_tree_share"] == pytest.approx(0.6) and a["other_processes_share"] == pytest.approx(0.4)
    assert a["machine_busy_cpu_s"] == pytest.approx(1000 / HZ) and a["process_tree_cpu_s"] == pytest.approx(600 / HZ)
    assert a["mode"] == "machine" and a["applied_share"] is None and a["pid"] == 100
    assert cpu.energy_j == 100.0 and cpu.method == "rapl"  # machine: the value stays the machine's
    assert "cpu_shared" in cpu.flags
    found = dict(validity.energy_readings([cpu], {}, energy_section([cpu], {}, 5.0, [])["components"]))
    assert "other processes used 40%" in found["cpu_shared"] and "includes their work" in found["cpu_shared"]
    assert "energy_estimated" not in found  # RAPL of the machine is still a measurement


def test_a_process_that_used_nearly_all_the_busy_time_is_not_flagged(tmp_path):
    proc = fake_proc(tmp_path)
    attribution = CpuAttribution("machine", pid=100, proc=proc)
    attribution.start()
    write_stat(proc / "stat", 2, busy_ticks=5000 + 1000)
    write_process(proc, 100, 1, utime=400 + 950, stime=40)
    (cpu,) = attribution.apply([ComponentEnergy("cpu", "cpu", "k", "estimate_tdp", 10.0, 5.0)])
    assert cpu.details["attribution"]["process_tree_share"] == pytest.approx(0.95) and "cpu_shared" not in cpu.flags


def idle_baseline(power_w: float) -> dict:
    return {
        "power_w": power_w,
        "uncertainty_w": 0.5,
        "method": "rapl",
        "from_cache": True,
        "cache_age_s": 5.0,
        "measured_at": "2026-01-01T00:00:00Z",
        "duration_s": 30.0,
        "settle": {"settled": True},
        "flags": [],
    }


def test_process_attribution_books_the_trees_share_and_says_it_is_an_estimate(tmp_path):
    proc = fake_proc(tmp_path)
    attribution = CpuAttribution("process", pid=100, proc=proc)
    attribution.start()
    write_stat(proc / "stat", 2, busy_ticks=5000 + 1000)
    write_process(proc, 100, 1, utime=400 + 600, stime=40)  # 60 % of the window's busy time
    rapl = ComponentEnergy("cpu", "package-0", "k", "rapl", 100.0, 5.0)
    (cpu,) = attribution.apply([rapl])
    assert cpu.method == "rapl_process_share" and cpu.energy_j == pytest.approx(60.0)
    a = cpu.details["attribution"]
    assert a["applied_share"] == pytest.approx(0.6) and a["machine_energy_j"] == 100.0 and a["mode"] == "process"
    section = energy_section([cpu], {"k": idle_baseline(10.0)}, 5.0, [])
    row = section["components"][0]
    # the same share of the machine's idle power: net is the share of the machine's net (100 - 10 W x 5 s)
    assert row["idle_power_w"] == pytest.approx(6.0) and row["idle_energy_j"] == pytest.approx(30.0)
    assert row["net_energy_j"] == pytest.approx(0.6 * (100.0 - 50.0))
    assert row["idle_power_uncertainty_w"] == pytest.approx(0.3)
    assert section["total"]["includes_estimate"] is True
    assert section["total"]["method"] == "cpu:rapl_process_share"
    found = dict(validity.energy_readings([cpu], {"k": idle_baseline(10.0)}, section["components"]))
    assert "rapl_process_share" in found["energy_estimated"]
    assert "the measuring process tree's share" in found["cpu_shared"]


def test_a_window_the_process_slept_through_books_no_cpu_energy_to_it(tmp_path):
    """Other processes kept the CPUs busy; machine-wide, the window carries their energy, flagged."""
    for mode, expected in (("machine", 99.9), ("process", 0.0)):
        proc = fake_proc(tmp_path / mode)
        attribution = CpuAttribution(mode, pid=100, proc=proc)
        attribution.start()
        write_stat(proc / "stat", 2, busy_ticks=5000 + 999)
        write_process(proc, 200, 1, utime=900 + 999)  # all of it another process's
        (cpu,) = attribution.apply([ComponentEnergy("cpu", "cpu", "k", "estimate_tdp", 99.9, 5.0)])
        assert cpu.energy_j == pytest.approx(expected) and "cpu_shared" in cpu.flags, mode
        assert cpu.details["attribution"]["process_tree_share"] == 0.0


def test_unreadable_process_time_withholds_a_process_attributed_value(tmp_path):
    proc = fake_proc(tmp_path)
    attribution = CpuAttribution("process", pid=4242, proc=proc)  # no such process here
    attribution.start()
    (cpu,) = attribution.apply([ComponentEnergy("cpu", "cpu", "k", "estimate_tdp", 20.0, 5.0)])
    assert cpu.energy_j is None and "process_share_unavailable" in cpu.flags
    assert cpu.method == "estimate_tdp_process_share" and "unreadable" in cpu.details["attribution"]["reason"]
    found = dict(validity.energy_readings([cpu], {}, energy_section([cpu], {}, 5.0, [])["components"]))
    assert "process_share_unavailable" in found["energy_unavailable"]


def test_a_meter_set_attributes_its_cpu_estimate_over_the_same_edges(tmp_path):
    """cpu_attribution changes what is recorded: the same window, machine or process."""
    proc = fake_proc(tmp_path)
    info = write_cpuinfo(tmp_path / "cpuinfo", "AMD EPYC 7763 64-Core Processor", 1, 2, True)
    recorded = {}
    for mode in ("machine", "process"):
        write_stat(proc / "stat", 2, busy_ticks=5000)
        write_process(proc, 100, 1, utime=400, stime=40)
        meters = MeterSet(
            [CpuEstimateMeter(stat=proc / "stat", cpuinfo=info)], CpuAttribution(mode, pid=100, proc=proc)
        )
        meters.start()
        write_stat(proc / "stat", 2, busy_ticks=5000 + 2 * HZ)  # 2 busy CPU-seconds
        write_process(proc, 100, 1, utime=400 + HZ // 2, stime=40)  # a quarter of them the measuring process's
        (recorded[mode],) = meters.stop()
        assert meters.describe()[-1] == {"component": "cpu", "attribution": mode}
    machine, process = recorded["machine"], recorded["process"]
    assert machine.energy_j == pytest.approx(2.0 * 280.0 / 128) and machine.method == "estimate_tdp"
    assert process.energy_j == pytest.approx(0.25 * machine.energy_j) and process.method == "estimate_tdp_process_share"
    assert process.details["attribution"]["machine_energy_j"] == pytest.approx(machine.energy_j)
    schema = load_schema("raw_result")
    validator = jsonschema.Draft202012Validator({"$ref": "#/$defs/component", "$defs": schema["$defs"]})
    for c in (machine, process):
        row = energy_section([c], {}, 2.0, [])["components"][0]
        assert list(validator.iter_errors(row)) == []


def test_the_real_process_tree_includes_a_child_before_and_after_it_ends():
    """This process and a child that burns 0.3 s of CPU time, read from the real /proc."""
    burn = "import sys,time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\nprint('done',flush=True)\nsys.stdin.read()"
    own = process_tree_ticks(os.getpid())
    assert own is not None
    attribution = CpuAttribution("process")
    attribution.start()
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "done\n"
        live = process_tree_ticks(os.getpid())
        assert live - own >= 0.15 * HZ  # the live child's time is in the tree
    finally:
        child.stdin.close()
        child.wait()
    after = process_tree_ticks(os.getpid())
    assert after >= live  # once waited for, its time is in this process's children's time
    measured = attribution.stop()
    assert measured["process_tree_cpu_s"] >= 0.15 and 0.0 <= measured["process_tree_share"] <= 1.0


def test_attribution_values_are_checked():
    with pytest.raises(ValueError, match=r"energy\.cpu_attribution = .everyone.: allowed values are machine, process"):
        CpuAttribution("everyone")


@pytest.mark.parametrize(
    "energy, expected",
    [
        (
            {"backend": "codecarbon", "cpu_attribution": "process"},
            "energy.cpu_attribution = process scales the CPU energy of RAPL or the TDP estimate, but "
            "energy.backend = codecarbon reports CodeCarbon's own machine-wide figure",
        ),
        (
            {"backend": "rapl", "cpu_part_threads": 96},
            "energy.cpu_part_threads sets the hardware threads per package of the CPU estimate, which "
            "energy.backend = rapl never uses",
        ),
        ({"backend": "estimate", "cpu_attribution": "process", "cpu_part_threads": 96}, None),
    ],
)
def test_cpu_settings_that_would_change_nothing_are_refused_before_any_job(energy, expected):
    from llenergymeasure.campaign import resolve_experiment, semantic_problem

    config = resolve_experiment({"model_name": "m", "device": "cpu", "fp_precision": "float32", "energy": energy})
    assert semantic_problem(config) == expected
