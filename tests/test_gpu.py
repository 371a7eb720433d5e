"""Real NVML and CUDA, where present (skipped on machines without an NVIDIA GPU)."""

from __future__ import annotations

import pytest

from conftest import tiny_experiment

pytestmark = pytest.mark.gpu


def _gpus():
    try:
        from llenergymeasure.energy.nvml import visible_gpus

        return visible_gpus()
    except Exception:  # noqa: BLE001 - no NVML here, whatever the error: no GPU to test
        return []


needs_gpu = pytest.mark.skipif(not _gpus(), reason="no NVIDIA GPU visible through NVML")


@needs_gpu
def test_nvml_counter_meter_reads_energy():
    import time

    from llenergymeasure.energy.nvml import NvmlGpuMeter

    m = NvmlGpuMeter(_gpus()[0])
    m.start()
    time.sleep(1.5)
    r = m.stop()
    assert r.method == "nvml_counter" and r.energy_j is not None and r.energy_j > 0
    assert 0 < r.mean_power_w < 2000


@needs_gpu
def test_measurement_on_cuda(tiny_model):
    from llenergymeasure.measure import run_experiment
    from llenergymeasure.results import validate_result

    r = run_experiment(tiny_experiment(device="cuda", fp_precision="bfloat16"), "gpu-test", 1, tiny_model, None)
    validate_result(r, "raw_result")
    gpu = [c for c in r["energy"]["components"] if c["component"] == "gpu"]
    assert len(gpu) == 1 and gpu[0]["method"] == "nvml_counter" and gpu[0]["gross_energy_j"] > 0
    assert r["memory"]["cuda_peak_allocated_bytes"] > 0
    assert r["environment"]["gpus"][0]["uuid"].startswith(("GPU-", "MIG-"))
