"""Energy arithmetic with a deterministic fake meter, counter edge cases, idle baseline cache, thermal gaps."""

from __future__ import annotations

import os
import time

import pytest

from llenergymeasure.energy.base import ComponentEnergy, MeterSet
from llenergymeasure.energy.baseline import idle_baselines, read_cached
from llenergymeasure.energy.cpu import CpuEstimateMeter, RaplMeter, rapl_domains
from llenergymeasure.energy.meters import FakeMeter, select_meters
from llenergymeasure.measure import energy_section
from llenergymeasure.thermal import required_gap, wait_gap, record_window


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_fake_meter_window_energy():
    clock = Clock()
    m = FakeMeter(50.0, clock=clock)
    m.start()
    clock.sleep(4.0)
    r = m.stop()
    assert r.energy_j == pytest.approx(200.0) and r.mean_power_w == pytest.approx(50.0) and r.method == "fake"


def test_net_is_gross_minus_idle_power_times_window_not_run_time():
    """B1: the baseline is subtracted over the measurement window only."""
    gross = ComponentEnergy("gpu", "gpu0", "k0", "nvml_counter", 1000.0, 10.0)
    baselines = {
        "k0": {"power_w": 80.0, "method": "nvml_counter", "from_cache": True, "cache_age_s": 12.0,
               "measured_at": "2026-01-01T00:00:00Z", "duration_s": 30.0, "settle": {"settled": True}, "flags": []}
    }
    flags: list = []
    e = energy_section([gross], baselines, window_s=10.0, unavailable=[], flags=flags)
    row = e["components"][0]
    assert row["idle_energy_j"] == pytest.approx(800.0)
    assert row["net_energy_j"] == pytest.approx(200.0)
    assert e["total"]["gross_energy_j"] == 1000.0 and e["total"]["net_energy_j"] == pytest.approx(200.0)
    assert e["total"]["method"] == "gpu:nvml_counter" and e["total"]["includes_estimate"] is False
    assert row["baseline"]["from_cache"] is True  # B21: explicit, not inferred from age
    assert flags == []


def test_unavailable_component_is_null_and_flagged_never_zero():
    reset = ComponentEnergy("gpu", "gpu0", "k0", "nvml_counter", None, 5.0, ["counter_reset"])
    est = ComponentEnergy("cpu", "cpu", "k1", "estimate_tdp", 40.0, 5.0, ["estimated_not_measured"])
    flags: list = []
    e = energy_section([reset, est], {}, 5.0, [{"component": "ram", "reason": "no dram"}], flags)
    codes = {f["code"] for f in flags}
    assert {"energy_unavailable", "counter_reset", "energy_estimated", "no_idle_baseline", "ram_energy_unavailable"} <= codes
    assert e["total"]["gross_energy_j"] is None  # a partial sum would look like a real total
    assert e["total"]["net_energy_j"] is None
    assert e["total"]["includes_estimate"] is True


def test_counter_reset_without_wrap_range():
    clock = Clock()
    m = FakeMeter(10.0, clock=clock)
    m.start()
    clock.t = -100.0  # counter goes backwards
    r = m.stop()
    assert r.energy_j is None and "counter_reset" in r.flags


def fake_rapl(root, name="package-0", energy_uj=0, wrap_uj=1_000_000_000, idx="0"):
    d = root / f"intel-rapl:{idx}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{wrap_uj}\n")
    return d


def test_rapl_wraparound(tmp_path):
    d = fake_rapl(tmp_path, energy_uj=999_000_000)
    fake_rapl(tmp_path, name="dram", idx="0:0", energy_uj=5)
    domains = rapl_domains(tmp_path)
    assert [x["name"] for x in domains] == ["package-0", "dram-0"]
    m = RaplMeter(domains[0])
    m.start()
    (d / "energy_uj").write_text("1000000\n")  # wrapped past 1e9 uJ
    r = m.stop()
    assert r.energy_j == pytest.approx(2.0) and "counter_wrapped" in r.flags and r.method == "rapl"
    assert RaplMeter(domains[1]).component == "ram"


def test_unreadable_rapl_is_ignored(tmp_path):
    d = tmp_path / "intel-rapl:0"
    d.mkdir()
    (d / "name").write_text("package-0")
    assert rapl_domains(tmp_path) == []


def test_cpu_estimate_from_busy_time(tmp_path):
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")
    stat.write_text(f"cpu  {hz * 10} 0 {hz * 2} 500 0 0 0 0 0 0\n")
    m = CpuEstimateMeter(tdp_w=40.0, stat=stat)
    m.start()
    stat.write_text(f"cpu  {hz * 13} 0 {hz * 3} 900 0 0 0 0 0 0\n")  # 4 busy CPU-seconds
    r = m.stop()
    n = os.cpu_count()
    assert r.energy_j == pytest.approx(4 * 40.0 / n)
    assert r.method == "estimate_tdp" and "estimated_not_measured" in r.flags
    assert r.details["tdp_source"] == "config"


def test_select_meters_without_gpu_or_rapl_estimates_and_says_so():
    ms = select_meters({"backend": "auto", "cpu_tdp_w": None}, gpu_count=0)
    assert [m.method for m in ms.meters] in (["estimate_tdp"], ["rapl"], ["rapl", "rapl"])
    if ms.meters[0].method == "estimate_tdp":
        assert any(u["component"] == "ram" for u in ms.unavailable)


def test_select_meters_insists_on_requested_source():
    from llenergymeasure.errors import MeasurementError

    with pytest.raises(MeasurementError, match="no NVIDIA GPU"):
        select_meters({"backend": "nvml"}, gpu_count=1)


def test_idle_baseline_cached_with_ttl(isolated_cache):
    clock = Clock()
    m = FakeMeter(25.0, clock=clock, device="ttl-test")
    cfg = {"enabled": True, "duration_sec": 3, "cache_ttl_sec": 60}
    first = idle_baselines([m], cfg, sleep=clock.sleep)[m.device_key]
    assert first["power_w"] == pytest.approx(25.0) and first["from_cache"] is False
    second = idle_baselines([m], cfg, sleep=clock.sleep)[m.device_key]
    assert second["from_cache"] is True and second["power_w"] == pytest.approx(25.0)
    assert read_cached(m.device_key, "fake", ttl_s=60, now=time.time() + 61) is None  # stale after the TTL
    assert read_cached(m.device_key, "rapl", ttl_s=60) is None  # another method never reuses it


def test_baseline_disabled():
    assert idle_baselines([FakeMeter(1.0)], {"enabled": False}) == {}


def test_gap_rules(tmp_path):
    assert required_gap(None, 1, 60, 300) == (0.0, "first")
    assert required_gap({"cycle": 1}, 1, 60, 300) == (60.0, "config")
    assert required_gap({"cycle": 1}, 2, 60, 300) == (300.0, "cycle")
    record_window(tmp_path, {"experiment_id": "a", "cycle": 1, "window_end": "x", "window_end_epoch_s": 1000.0})
    slept = []
    info = wait_gap(tmp_path, 2, 10, 30, sleep=slept.append, now=lambda: 1012.0)
    assert slept == [18.0]  # 12 s already passed: only the rest of the 30 s cycle gap is waited
    assert info["gap_kind"] == "cycle" and info["gap_waited_s"] == 18.0 and info["since_previous_window_s"] == 30.0
    slept.clear()
    info = wait_gap(tmp_path, 1, 10, 30, sleep=slept.append, now=lambda: 1100.0)
    assert slept == [] and info["gap_waited_s"] == 0.0


def test_meterset_starts_and_stops_all():
    clock = Clock()
    ms = MeterSet([FakeMeter(10.0, "gpu", clock, "g"), FakeMeter(5.0, "cpu", clock, "c")])
    ms.start()
    clock.sleep(2)
    assert [r.energy_j for r in ms.stop()] == [20.0, 10.0]


def test_codecarbon_backend_labels_its_values():
    pytest.importorskip("codecarbon")
    ms = select_meters({"backend": "codecarbon", "country_iso_code": "FRA"}, gpu_count=0)
    ms.start()
    sum(range(2_000_000))
    rows = ms.stop()
    assert {r.component for r in rows} >= {"cpu", "ram"}
    for r in rows:
        assert r.method == "codecarbon" and r.energy_j is not None and r.energy_j >= 0


def test_nvml_meter_flags_mig_and_withholds_reset_values(monkeypatch):
    """B20: a MIG instance's value is flagged as the parent GPU's; a counter reset yields no value, never zero."""
    pynvml = pytest.importorskip("pynvml")
    from llenergymeasure.energy.nvml import NvmlGpuMeter

    readings = iter([5_000_000, 5_250_000, 9_000_000, 1_000])  # mJ
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", lambda handle: next(readings))
    gpu = {"cuda_index": 0, "nvml_index": 3, "uuid": "GPU-x", "name": "test board", "mig": True, "handle": object()}
    m = NvmlGpuMeter(gpu)
    m.start()
    r = m.stop()
    assert r.energy_j == pytest.approx(250.0) and "mig_parent_gpu_energy" in r.flags and r.method == "nvml_counter"
    m.start()
    r = m.stop()
    assert r.energy_j is None and "counter_reset" in r.flags
    flags: list = []
    energy_section([r], {}, 1.0, [], flags)
    assert {"counter_reset", "mig_parent_gpu_energy", "energy_unavailable"} <= {f["code"] for f in flags}


def test_codecarbon_on_a_gpu_host_counts_each_gpu_once(monkeypatch):
    """energy.backend = codecarbon with NVML present: the experiment's GPUs come from their energy counters, CPU
    and RAM from CodeCarbon, whose GPU figure (every GPU of the machine) is left out and said to be."""
    pytest.importorskip("codecarbon")
    pynvml = pytest.importorskip("pynvml")
    from types import SimpleNamespace

    from llenergymeasure.energy import meters as meters_module

    gpu = {"cuda_index": 0, "nvml_index": 0, "uuid": "GPU-a", "name": "test board", "mig": False, "handle": object()}
    monkeypatch.setattr(meters_module, "visible_gpus", lambda: [gpu])
    readings = iter([1_000_000, 1_300_000])  # mJ: 300 J in the window
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", lambda handle: next(readings))
    ms = select_meters({"backend": "codecarbon", "country_iso_code": "FRA"}, gpu_count=1)
    tracker = SimpleNamespace(start=lambda: None, stop=lambda: None,
                              final_emissions_data=SimpleNamespace(cpu_energy=1e-5, ram_energy=2e-5, gpu_energy=9e-5, cpu_model="x"))  # fmt: skip
    codecarbon = next(m for m in ms.meters if m.method == "codecarbon")
    codecarbon._tracker = tracker
    ms.start()
    rows = ms.stop()
    assert sorted((r.component, r.method) for r in rows) == [("cpu", "codecarbon"), ("gpu", "nvml_counter"), ("ram", "codecarbon")]
    gpu_row = next(r for r in rows if r.component == "gpu")
    assert gpu_row.energy_j == pytest.approx(300.0)
    assert codecarbon.describe()["gpu_energy_source"] == "nvml_counter"
    assert all(r.details["gpu_energy_source"] == "nvml_counter" for r in rows if r.method == "codecarbon")
    flags: list = []
    total = energy_section(rows, {}, 1.0, ms.unavailable, flags)["total"]
    assert total["gross_energy_j"] == pytest.approx(300.0 + 36.0 + 72.0)  # 9e-5 kWh of CodeCarbon's GPU is not in it


def test_two_sources_for_one_component_are_never_summed():
    clock = Clock()
    ms = MeterSet([FakeMeter(10.0, "gpu", clock, "g"), FakeMeter(5.0, "cpu", clock, "c")])
    ms.meters[1].component = "gpu"
    ms.meters[1].method = "other"
    ms.start()
    with pytest.raises(RuntimeError, match="more than one energy source per component"):
        ms.stop()
