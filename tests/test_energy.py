"""Energy arithmetic with a deterministic fake meter, counter edge cases, idle baseline cache, thermal gaps."""

from __future__ import annotations

import re
import time

import pytest

from conftest import FakeMeter
from llenergymeasure import validity
from llenergymeasure.energy.accounting import energy_section
from llenergymeasure.energy.base import ComponentEnergy, MeterSet
from llenergymeasure.energy.baseline import idle_baselines, measure_idle, read_cached
from llenergymeasure.energy.cpu import RaplMeter, rapl_domains
from llenergymeasure.energy.meters import select_meters
from llenergymeasure.thermal import record_window, required_gap, wait_gap


def judged_energy(components, baselines, window_s, unavailable, flags):
    """The energy section of a window, and the flags the measurement's rules raise on it (appended to ``flags``)."""
    section = energy_section(components, baselines, window_s, unavailable)
    for code, message in (
        *validity.energy_readings(components, baselines, section["components"]),
        *validity.unmeasured_components(unavailable),
    ):
        validity.add(flags, code, message)
    return section


def fresh_gpu_baseline(**values) -> dict:
    """A GPU idle baseline as measure_idle records it, measured now (not cached), with ``values`` added."""
    return {
        "method": "nvml_counter",
        "from_cache": False,
        "cache_age_s": 0.0,
        "measured_at": "x",
        "duration_s": 30.0,
        "settle": {"settled": True},
        "flags": [],
        **values,
    }


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
        "k0": {
            "power_w": 80.0,
            "method": "nvml_counter",
            "from_cache": True,
            "cache_age_s": 12.0,
            "measured_at": "2026-01-01T00:00:00Z",
            "duration_s": 30.0,
            "settle": {"settled": True},
            "flags": [],
        }
    }
    flags: list = []
    e = judged_energy([gross], baselines, 10.0, [], flags)
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
    e = judged_energy([reset, est], {}, 5.0, [{"component": "ram", "reason": "no dram"}], flags)
    codes = {f["code"] for f in flags}
    assert {
        "energy_unavailable",
        "counter_reset",
        "energy_estimated",
        "no_idle_baseline",
        "ram_energy_unavailable",
    } <= codes
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
    cfg = {"enabled": True, "duration_s": 3, "cache_ttl_s": 60}
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
    judged_energy([r], {}, 1.0, [], flags)
    assert {"counter_reset", "mig_parent_gpu_energy", "energy_unavailable"} <= {f["code"] for f in flags}


class SteppedCounter(FakeMeter):
    """A counter that, like NVML's, changes only every ``period`` seconds; power optionally ramps with time."""

    def __init__(self, power_w, clock, period=0.1, ramp_w_per_s=0.0, component="gpu", device="stepped"):
        super().__init__(power_w, component=component, clock=clock, device=device)
        self.period, self.ramp = period, ramp_w_per_s
        self.edge_resolution_s = period

    def _energy(self, t):
        t -= self._origin
        return self.power_w_value * t + 0.5 * self.ramp * t * t

    def read_j(self):
        t = self.clock()
        return self._energy(self.period * int(t / self.period + 1e-9))  # the value of the last tick

    def power_w(self):
        return self.power_w_value + self.ramp * (self.clock() - self._origin)


def test_counter_edges_are_synchronised_to_its_ticks():
    """A plain read of a 100 ms counter lags by up to 100 ms; a synchronised read returns at a tick, so the
    idle power from two synchronised edges is exact even over a short baseline."""
    clock = Clock()
    m = SteppedCounter(80.0, clock)
    clock.t = 0.05  # between two ticks
    value, t, resolution = m.synchronised_read_j(sleep=clock.sleep)
    assert t == pytest.approx(0.1, abs=0.003) and value == pytest.approx(8.0) and resolution <= 0.003
    rec = measure_idle([m], 2.0, sleep=clock.sleep)[m.device_key]
    assert rec["power_w"] == pytest.approx(80.0, rel=1e-3)
    assert rec["checks"]["edge_resolution_s"] <= 0.003
    assert rec["uncertainty_w"] < 0.005 * 80.0 and rec["flags"] == []


def test_baseline_uncertainty_reflects_drift_and_is_carried_into_net_energy():
    clock = Clock()
    m = SteppedCounter(80.0, clock, ramp_w_per_s=1.0)  # warming up: +1 W/s
    rec = measure_idle([m], 10.0, sleep=clock.sleep)[m.device_key]
    assert "idle_power_drifting" in rec["flags"] and rec["checks"]["drift_w"] == pytest.approx(5.0, rel=0.1)
    assert rec["uncertainty_w"] >= 2.4  # at least half the drift between the halves
    gross = ComponentEnergy("gpu", "gpu0", m.device_key, "nvml_counter", 2000.0, 10.0)
    flags: list = []
    e = judged_energy([gross], {m.device_key: rec}, 10.0, [], flags)
    row = e["components"][0]
    assert row["net_energy_uncertainty_j"] == pytest.approx(rec["uncertainty_w"] * 10.0)
    assert e["total"]["net_energy_uncertainty_j"] == pytest.approx(row["net_energy_uncertainty_j"])
    assert "idle_power_drifting" in {f["code"] for f in flags}


def test_window_edges_carry_their_error_into_gross_and_net_uncertainty():
    """The window's edges are plain reads of a counter that moves every 100 ms: each lags its moment by a uniform
    0-100 ms, so window energy errs by P x (lag at the start - lag at the end), standard deviation
    P x 0.1 s x sqrt(2 / 12). That is the gross value's uncertainty, and it joins the baseline's in net energy."""
    import random

    rng = random.Random(3)
    errors, reported = [], set()
    for _ in range(2000):
        clock = Clock()
        m = SteppedCounter(100.0, clock)
        clock.t = rng.uniform(0.0, 1.0)
        m.start()
        clock.sleep(rng.uniform(5.0, 6.0))
        r = m.stop()
        errors.append(r.energy_j - 100.0 * r.duration_s)
        reported.add(r.edge_uncertainty_j)
    expected = 100.0 * 0.1 * (2 / 12) ** 0.5  # 4.08 J
    assert all(u == pytest.approx(expected, rel=0.03) for u in reported)  # at the window's measured power
    sd = (sum(e * e for e in errors) / len(errors)) ** 0.5
    assert sd == pytest.approx(expected, rel=0.08)  # the stated uncertainty is the error's real spread
    base = fresh_gpu_baseline(power_w=80.0, uncertainty_w=0.3)
    row = energy_section([r], {r.device_key: base}, 10.0, [])["components"][0]
    assert row["gross_energy_uncertainty_j"] == r.edge_uncertainty_j == pytest.approx(expected, rel=0.03)
    assert row["net_energy_uncertainty_j"] == pytest.approx((3.0**2 + r.edge_uncertainty_j**2) ** 0.5)


def test_counter_difference_samples_of_a_baseline_are_each_independent():
    """A CPU counter has no smoothed power sensor: its baseline samples are counter differences over disjoint
    100 ms intervals, so the standard error of their mean counts every sample. Idle power fluctuating as white
    noise (sd 10 W per 100 ms) over a 10 s baseline: the sample term must be close to the real spread of the
    baseline's mean across repetitions (about 1 W), not sqrt(10) times more."""
    import random

    class NoisyCounter(SteppedCounter):
        def __init__(self, clock, rng):
            super().__init__(50.0, clock, period=0.1, component="cpu", device="noisy")
            self.edge_resolution_s, self.rng, self.steps = 0.0, rng, [0.0]

        def read_j(self):
            k = int(self.clock() / self.period + 1e-9)
            while len(self.steps) <= k:
                self.steps.append(self.steps[-1] + self.period * self.rng.gauss(50.0, 10.0))
            return self.steps[k]

        def power_w(self):
            return None

    rng = random.Random(5)
    means, terms = [], []
    for _ in range(60):
        clock = Clock()
        m = NoisyCounter(clock, rng)
        rec = measure_idle([m], 10.0, sleep=clock.sleep)[m.device_key]
        means.append(rec["power_w"])
        terms.append(rec["checks"]["uncertainty_parts_w"]["samples"])
    real = (sum((x - sum(means) / len(means)) ** 2 for x in means) / (len(means) - 1)) ** 0.5
    stated = sum(terms) / len(terms)
    assert 0.6 < stated / real < 1.6, (stated, real)


def test_net_uncertainty_of_several_devices_adds_in_quadrature():
    base = fresh_gpu_baseline()
    rows = [ComponentEnergy("gpu", f"gpu{i}", f"k{i}", "nvml_counter", 1000.0, 10.0) for i in range(2)]
    baselines = {
        "k0": {**base, "power_w": 80.0, "uncertainty_w": 0.3},
        "k1": {**base, "power_w": 80.0, "uncertainty_w": 0.4},
    }
    e = energy_section(rows, baselines, 10.0, [])
    assert e["total"]["net_energy_uncertainty_j"] == pytest.approx(5.0)  # sqrt(3^2 + 4^2)


def test_busy_machine_baseline_is_flagged_and_never_cached(isolated_cache, monkeypatch):
    """A CPU baseline taken while other processes keep the CPUs busy is used once, flagged, and not cached: the
    next experiment measures again instead of inheriting an inflated idle power."""
    import os

    from llenergymeasure.energy import baseline as bl

    clock = Clock()
    busy = iter([100.0, 100.0 + 0.9 * 3.0 * (os.cpu_count() or 1)])  # 90 % of every CPU over the 3 s baseline
    monkeypatch.setattr(bl, "_machine_busy_s", lambda: next(busy))
    m = FakeMeter(12.0, component="cpu", clock=clock, device="busy-cpu")
    rec = idle_baselines([m], {"enabled": True, "duration_s": 3, "cache_ttl_s": 600}, sleep=clock.sleep)[m.device_key]
    assert "baseline_not_idle" in rec["flags"] and rec["checks"]["machine_cpu_busy_fraction"] == pytest.approx(
        0.9, rel=0.05
    )
    assert read_cached(m.device_key, "fake", ttl_s=600) is None
    flags: list = []
    judged_energy(
        [ComponentEnergy("cpu", "cpu", m.device_key, "fake", 100.0, 5.0)], {m.device_key: rec}, 5.0, [], flags
    )
    assert "baseline_not_idle" in {f["code"] for f in flags}


def test_baseline_cache_names_host_and_device_and_is_not_reused_when_shorter(isolated_cache, monkeypatch):
    from llenergymeasure.energy import baseline as bl

    clock = Clock()
    m = FakeMeter(30.0, clock=clock, device="cache-key")
    short = {"enabled": True, "duration_s": 2, "cache_ttl_s": 600}
    idle_baselines([m], short, sleep=clock.sleep)
    path = bl._cache_file(m.device_key)
    assert path.exists() and bl._host() in path.name and m.device_key in path.name
    assert idle_baselines([m], short, sleep=clock.sleep)[m.device_key]["from_cache"] is True
    longer = idle_baselines([m], {**short, "duration_s": 10}, sleep=clock.sleep)[m.device_key]
    assert longer["from_cache"] is False and longer["duration_s"] == pytest.approx(10.0)  # a 2 s baseline is not enough
    monkeypatch.setattr(bl, "_host", lambda: "another-host")
    assert read_cached(m.device_key, "fake", ttl_s=600) is None  # another host's file is another host's


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
    tracker = SimpleNamespace(
        start=lambda: None,
        stop=lambda: None,
        final_emissions_data=SimpleNamespace(cpu_energy=1e-5, ram_energy=2e-5, gpu_energy=9e-5, cpu_model="x"),
    )
    codecarbon = next(m for m in ms.meters if m.method == "codecarbon")
    codecarbon._tracker = tracker
    ms.start()
    rows = ms.stop()
    assert sorted((r.component, r.method) for r in rows) == [
        ("cpu", "codecarbon"),
        ("gpu", "nvml_counter"),
        ("ram", "codecarbon"),
    ]
    gpu_row = next(r for r in rows if r.component == "gpu")
    assert gpu_row.energy_j == pytest.approx(300.0)
    assert codecarbon.describe()["gpu_energy_source"] == "nvml_counter"
    assert all(r.details["gpu_energy_source"] == "nvml_counter" for r in rows if r.method == "codecarbon")
    total = energy_section(rows, {}, 1.0, ms.unavailable)["total"]
    assert total["gross_energy_j"] == pytest.approx(300.0 + 36.0 + 72.0)  # 9e-5 kWh of CodeCarbon's GPU is not in it


def test_two_sources_for_one_component_are_never_summed():
    clock = Clock()
    ms = MeterSet([FakeMeter(10.0, "gpu", clock, "g"), FakeMeter(5.0, "cpu", clock, "c")])
    ms.meters[1].component = "gpu"
    ms.meters[1].method = "other"
    ms.start()
    with pytest.raises(RuntimeError, match="more than one energy source per component"):
        ms.stop()


def test_the_cache_folder_variable_and_its_earlier_name(monkeypatch, tmp_path):
    from llenergymeasure.paths import cache_dir

    monkeypatch.delenv("LLM_ENERGY_CACHE_DIR")
    monkeypatch.setenv("LEM_CACHE_DIR", str(tmp_path / "old"))
    assert cache_dir() == tmp_path / "old"  # the earlier name is still honoured
    monkeypatch.setenv("LLM_ENERGY_CACHE_DIR", str(tmp_path / "new"))
    assert cache_dir() == tmp_path / "new"  # the current one wins


# ---------------------------------------------------------------------------------------------------- NVML session
@pytest.fixture
def fake_nvml(monkeypatch):
    """pynvml with its calls replaced by a host of GPUs that exist only here, and a fresh per-process NVML state.
    ``host.calls`` counts the calls made; ``host.gpus`` holds each board's architecture and counter (mJ)."""
    from types import SimpleNamespace

    pynvml = pytest.importorskip("pynvml")
    from llenergymeasure.energy import nvml

    monkeypatch.setattr(nvml, "_INIT", {})
    monkeypatch.setattr(nvml, "_COUNTER", {})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    host = SimpleNamespace(
        calls={},
        init_error=None,
        gpus=[
            SimpleNamespace(index=i, arch=pynvml.NVML_DEVICE_ARCH_HOPPER, arch_error=None, mj=1_000_000, error=None)
            for i in range(2)
        ],
    )

    def counted(name, fn):
        def call(*args):
            host.calls[name] = host.calls.get(name, 0) + 1
            return fn(*args)

        monkeypatch.setattr(pynvml, name, call)

    def init():
        if host.init_error is not None:
            raise pynvml.NVMLError(host.init_error)

    def arch(h):
        if h.arch_error is not None:
            raise pynvml.NVMLError(h.arch_error)
        return h.arch

    def energy(h):
        if h.error is not None:
            raise pynvml.NVMLError(h.error)
        h.mj += 250_000
        return h.mj

    def no_mig(h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    counted("nvmlInit", init)
    counted("nvmlDeviceGetCount", lambda: len(host.gpus))
    counted("nvmlDeviceGetHandleByIndex", lambda i: host.gpus[i])
    counted("nvmlDeviceGetMigMode", no_mig)
    counted("nvmlDeviceGetIndex", lambda h: h.index)
    counted("nvmlDeviceGetUUID", lambda h: f"GPU-{h.index}")
    counted("nvmlDeviceGetName", lambda h: b"test board")
    counted("nvmlDeviceGetArchitecture", arch)
    counted("nvmlDeviceGetTotalEnergyConsumption", energy)
    counted("nvmlDeviceGetMemoryInfo", lambda h: SimpleNamespace(used=1000 + h.index))
    counted("nvmlDeviceGetPowerUsage", lambda h: 50_000)
    counted("nvmlSystemGetDriverVersion", lambda: "580.00")
    return host


def test_nvml_is_initialised_once_per_process(fake_nvml):
    from llenergymeasure.energy.nvml import driver_info, init_error, memory_used_bytes, visible_gpus

    for _ in range(2):
        ms = select_meters({"backend": "auto", "cpu_tdp_w": 100}, gpu_count=2)
        assert [m.device for m in ms.meters if m.method == "nvml_counter"] == ["gpu0", "gpu1"]
        ms.start()
        assert [r.energy_j for r in ms.stop() if r.component == "gpu"] == [250.0, 250.0]
    assert [g["uuid"] for g in visible_gpus()] == ["GPU-0", "GPU-1"]
    assert memory_used_bytes(2) == 2001
    assert driver_info()["driver_version"] == "580.00"
    assert init_error() is None
    assert fake_nvml.calls["nvmlInit"] == 1
    assert fake_nvml.calls["nvmlDeviceGetArchitecture"] == 2  # the counter is probed once per device


def test_nvml_that_cannot_start_is_tried_once_and_says_why(fake_nvml):
    import pynvml

    from llenergymeasure.energy.nvml import init_error, memory_used_bytes, visible_gpus

    fake_nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    assert visible_gpus() == [] and memory_used_bytes(1) is None
    ms = select_meters({"backend": "auto", "cpu_tdp_w": 100}, gpu_count=1)
    assert {"component": "gpu", "reason": "NVML not available: GPU energy not measured"} in ms.unavailable
    assert init_error() == (
        "NVML could not be initialised: the NVIDIA kernel driver is not loaded (NVML_ERROR_DRIVER_NOT_LOADED)"
    )
    assert fake_nvml.calls["nvmlInit"] == 1


def test_every_nvml_error_code_has_one_message():
    pynvml = pytest.importorskip("pynvml")
    from llenergymeasure.energy.nvml import ERROR_MESSAGES, describe_error

    assert len(set(ERROR_MESSAGES.values())) == len(ERROR_MESSAGES)
    for name, message in ERROR_MESSAGES.items():
        assert describe_error(pynvml.NVMLError(getattr(pynvml, name))) == f"{message} ({name})"
    unmapped = pynvml.NVML_ERROR_IN_USE  # a code the map does not name
    assert describe_error(pynvml.NVMLError(unmapped)) == f"NVML error {unmapped}: {pynvml.NVMLError(unmapped)}"
    assert describe_error(ValueError("bad")) == "ValueError: bad"
    assert "not supported" in describe_error(pynvml.NVMLError_NotSupported())
    assert "no permission" in describe_error(pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION))
    assert "GPU is lost" in describe_error(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST))


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        ("NVML_ERROR_GPU_IS_LOST", "the GPU is lost"),
        ("NVML_ERROR_NO_PERMISSION", "no permission"),
        ("NVML_ERROR_NOT_SUPPORTED", "not supported by this GPU or its driver"),
    ],
)
def test_a_failed_energy_reading_names_the_gpu_and_the_cause(fake_nvml, code, meaning):
    import pynvml

    from llenergymeasure.energy.nvml import NvmlError
    from llenergymeasure.errors import MeasurementError

    ms = select_meters({"backend": "nvml"}, gpu_count=1)
    ms.start()
    fake_nvml.gpus[0].error = getattr(pynvml, code)
    with pytest.raises(MeasurementError) as raised:
        ms.stop()
    assert isinstance(raised.value, NvmlError) and raised.value.code == getattr(pynvml, code)
    assert str(raised.value).startswith(
        f"gpu0 (test board, GPU-0): nvmlDeviceGetTotalEnergyConsumption: {meaning}"
    ) and str(raised.value).endswith(f"({code})")


def test_a_gpu_without_the_energy_counter_is_reported_as_without_nvml(fake_nvml):
    import pynvml

    from llenergymeasure.errors import MeasurementError

    fake_nvml.gpus[0].arch = pynvml.NVML_DEVICE_ARCH_PASCAL
    for _ in range(2):
        ms = select_meters({"backend": "auto", "cpu_tdp_w": 100}, gpu_count=1)
        assert not [m for m in ms.meters if m.method == "nvml_counter"]
    reason = "test board predates Volta (NVML architecture 4): nvmlDeviceGetTotalEnergyConsumption is not supported"
    assert ms.unavailable[0] == {"component": "gpu", "reason": f"{reason}: GPU energy not measured"}
    assert fake_nvml.calls["nvmlDeviceGetArchitecture"] == 1
    assert "nvmlDeviceGetTotalEnergyConsumption" not in fake_nvml.calls  # never read
    flags: list = []
    judged_energy([], {}, 1.0, ms.unavailable, flags)
    assert {"code": "gpu_energy_unavailable", "message": f"{reason}: GPU energy not measured"} in [
        {k: f[k] for k in ("code", "message")} for f in flags
    ]
    with pytest.raises(MeasurementError, match=re.escape(f"energy.backend = nvml, but {reason}")):
        select_meters({"backend": "nvml"}, gpu_count=1)
    # the other board has the counter: metered as before
    ms = select_meters({"backend": "auto", "cpu_tdp_w": 100}, gpu_count=2)
    assert [m.device for m in ms.meters if m.method == "nvml_counter"] == ["gpu1"]


def test_the_counter_is_asked_for_where_the_driver_cannot_name_the_architecture(fake_nvml):
    import pynvml

    from llenergymeasure.energy.nvml import counter_problem, visible_gpus

    for g in fake_nvml.gpus:
        g.arch_error = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    fake_nvml.gpus[0].error = pynvml.NVML_ERROR_NOT_SUPPORTED
    first, second = visible_gpus()
    assert counter_problem(first) == (
        "test board: nvmlDeviceGetTotalEnergyConsumption: not supported by this GPU or its driver "
        "(NVML_ERROR_NOT_SUPPORTED)"
    )
    assert counter_problem(second) is None
    fake_nvml.gpus[1].arch_error = pynvml.NVML_ERROR_UNKNOWN  # another failure: left to the meter's own reads
    assert counter_problem({**second, "uuid": "GPU-other"}) is None
    assert fake_nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2
