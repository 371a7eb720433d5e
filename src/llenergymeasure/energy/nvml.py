"""NVIDIA GPUs through NVML: the cumulative energy counter (mJ), read only at window edges.

``nvmlDeviceGetTotalEnergyConsumption`` takes a driver lock (about 3.5 ms on an H200) and changes every 100 ms;
it is therefore read twice per window and never polled. Power (cheap, smoothed) is used only to decide when the
idle power has settled and for instantaneous context. Everything here degrades to "no GPU" when NVML is absent.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from .base import CounterMeter


def _nvml():
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound / DriverNotLoaded etc.
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_gpus() -> list[dict]:
    """The GPUs this process can use, in CUDA order, as NVML sees them.

    ``CUDA_VISIBLE_DEVICES`` may hold physical indices, GPU UUIDs or MIG UUIDs; each entry is mapped to its NVML
    handle through its UUID, so CUDA device 0 is paired with the right physical board. For a MIG instance the
    handle returned is the parent GPU's (the energy counter exists only there), and ``mig`` says so.
    """
    nv = _nvml()
    if nv is None:
        return []
    count = nv.nvmlDeviceGetCount()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in env.split(",") if e.strip()] if env is not None else [str(i) for i in range(count)]
    gpus = []
    for entry in entries:
        mig = False
        try:
            if entry.isdigit():
                handle = nv.nvmlDeviceGetHandleByIndex(int(entry))
            else:
                handle = nv.nvmlDeviceGetHandleByUUID(entry)
                if entry.startswith("MIG-"):
                    mig = True
                    handle = nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
        except Exception:  # noqa: BLE001 - any NVML error ends the list, as CUDA's own enumeration does
            break  # CUDA stops enumerating at the first invalid entry too
        if not mig:
            try:
                current, _pending = nv.nvmlDeviceGetMigMode(handle)
                mig = bool(current)
            except Exception:  # noqa: BLE001 - a board without MIG support answers with an error
                pass
        gpus.append(
            {
                "cuda_index": len(gpus),
                "nvml_index": nv.nvmlDeviceGetIndex(handle),
                "uuid": _text(nv.nvmlDeviceGetUUID(handle)),
                "name": _text(nv.nvmlDeviceGetName(handle)),
                "mig": mig,
                "handle": handle,
            }
        )
    return gpus


class NvmlGpuMeter(CounterMeter):
    component = "gpu"
    method = "nvml_counter"
    edge_resolution_s = 0.1  # the energy counter changes every 100 ms (measured on an H200)

    def __init__(self, gpu: dict) -> None:
        super().__init__()
        import pynvml

        self._nv = pynvml
        self.gpu = gpu
        self.device = f"gpu{gpu['cuda_index']}"
        self.device_key = f"gpu-{gpu['uuid']}"

    def read_j(self) -> float:
        return self._nv.nvmlDeviceGetTotalEnergyConsumption(self.gpu["handle"]) / 1000.0

    def power_w(self) -> float | None:
        try:
            return self._nv.nvmlDeviceGetPowerUsage(self.gpu["handle"]) / 1000.0
        except Exception:  # noqa: BLE001 - a reading NVML cannot give is missing, never a failed measurement
            return None

    def utilization_pct(self) -> float | None:
        try:
            return float(self._nv.nvmlDeviceGetUtilizationRates(self.gpu["handle"]).gpu)
        except Exception:  # noqa: BLE001 - a reading NVML cannot give is missing, never a failed measurement
            return None

    def temperature_c(self) -> float | None:
        try:
            return float(self._nv.nvmlDeviceGetTemperature(self.gpu["handle"], self._nv.NVML_TEMPERATURE_GPU))
        except Exception:  # noqa: BLE001 - a reading NVML cannot give is missing, never a failed measurement
            return None

    def power_limit_w(self) -> float | None:
        try:
            return self._nv.nvmlDeviceGetEnforcedPowerLimit(self.gpu["handle"]) / 1000.0
        except Exception:  # noqa: BLE001 - a reading NVML cannot give is missing, never a failed measurement
            return None

    def details(self) -> dict:
        d = {"uuid": self.gpu["uuid"], "name": self.gpu["name"], "nvml_index": self.gpu["nvml_index"]}
        if self.gpu["mig"]:
            d["mig"] = True
        return d

    def stop(self):
        result = super().stop()
        if self.gpu["mig"]:
            result.flags.append("mig_parent_gpu_energy")
        return result


def memory_used_bytes(gpu_count: int) -> int | None:
    """NVML's used memory summed over the first ``gpu_count`` CUDA devices (whole devices: every process's
    allocations, an engine's preallocated KV cache included), or None without NVML or GPUs."""
    nv = _nvml()
    gpus = visible_gpus()[:gpu_count] if nv is not None else []
    if not gpus:
        return None
    try:
        return int(sum(nv.nvmlDeviceGetMemoryInfo(g["handle"]).used for g in gpus))
    except Exception:  # noqa: BLE001 - memory is context, never a reason to lose a measurement
        return None


def driver_info() -> dict:
    nv = _nvml()
    if nv is None:
        return {}
    info = {}
    for key, fn in (("driver_version", "nvmlSystemGetDriverVersion"), ("nvml_version", "nvmlSystemGetNVMLVersion")):
        with contextlib.suppress(Exception):
            info[key] = _text(getattr(nv, fn)())
    try:
        v = nv.nvmlSystemGetCudaDriverVersion()
        info["cuda_driver_version"] = f"{v // 1000}.{(v % 1000) // 10}"
    except Exception:  # noqa: BLE001 - an older driver without the query: the version stays unknown
        pass
    return info
