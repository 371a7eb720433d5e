"""NVIDIA GPUs through NVML: the cumulative energy counter (mJ), read only at window edges.

``nvmlDeviceGetTotalEnergyConsumption`` takes a driver lock (about 3.5 ms on an H200) and changes every 100 ms;
it is therefore read twice per window and never polled. Power (cheap, smoothed) is used only to decide when the
idle power has settled and for instantaneous context. Everything here degrades to "no GPU" when NVML is absent.

NVML is initialised once per process (:func:`_nvml`); where that fails, the reason is kept (:func:`init_error`)
and every later call answers "no NVML" without trying again. An NVML error is turned into one clear message per
return code (:data:`ERROR_MESSAGES`, :func:`describe_error`); a failed energy reading raises :class:`NvmlError`,
a MeasurementError naming the GPU and what NVML said. Whether a GPU has the total-energy counter is probed once
per device (:func:`counter_problem`), as Zeus does (``zeus/device/gpu/nvidia.py``,
``supports_get_total_energy_consumption``): NVML documents the counter for Volta or newer boards, so the
architecture decides; a driver that cannot name the architecture is asked for the counter itself. A GPU without
it gets no energy meter: its energy is reported unavailable, as without NVML.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from ..errors import MeasurementError
from .base import CounterMeter

#: NVML return codes (pynvml's ``NVML_ERROR_*`` names) -> what each means for a measurement, one message each.
ERROR_MESSAGES = {
    "NVML_ERROR_UNINITIALIZED": "NVML is not initialised in this process",
    "NVML_ERROR_INVALID_ARGUMENT": "NVML was given an invalid argument (a stale or wrong device handle)",
    "NVML_ERROR_NOT_SUPPORTED": "not supported by this GPU or its driver",
    "NVML_ERROR_NO_PERMISSION": "no permission: this user may not make the query (it needs more privileges)",
    "NVML_ERROR_NOT_FOUND": "the device or the value asked for was not found",
    "NVML_ERROR_INSUFFICIENT_POWER": "a power cable of the GPU is not connected properly",
    "NVML_ERROR_DRIVER_NOT_LOADED": "the NVIDIA kernel driver is not loaded",
    "NVML_ERROR_TIMEOUT": "the driver did not answer in time",
    "NVML_ERROR_IRQ_ISSUE": "the kernel reported an interrupt problem with the GPU",
    "NVML_ERROR_LIBRARY_NOT_FOUND": (
        "libnvidia-ml.so was not found (no NVIDIA driver on this host, or not mounted into the container: "
        "apptainer --nv)"
    ),
    "NVML_ERROR_FUNCTION_NOT_FOUND": "the driver's NVML library lacks this function (the driver is too old)",
    "NVML_ERROR_CORRUPTED_INFOROM": "the GPU's infoROM is corrupted",
    "NVML_ERROR_GPU_IS_LOST": "the GPU is lost (it fell off the bus or stopped answering); the host needs attention",
    "NVML_ERROR_RESET_REQUIRED": "the GPU needs a reset before it can be used again",
    "NVML_ERROR_OPERATING_SYSTEM": "the operating system blocked the call",
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": (
        "the NVML library and the kernel driver differ in version (the driver was updated without a reboot)"
    ),
    "NVML_ERROR_MEMORY": "the driver ran out of memory",
    "NVML_ERROR_UNKNOWN": "NVML reported an unknown error",
}
#: Codes that mean "this board or driver has no such counter" (the counter is then absent, not failing).
COUNTER_ABSENT = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND")


def _code_name(nv, code) -> str | None:
    """The ``NVML_ERROR_*`` name of a return code, or None for a code this map does not know."""
    for name in ERROR_MESSAGES:
        if getattr(nv, name, object()) == code:
            return name
    return None


def describe_error(exc: BaseException, nv=None) -> str:
    """One line for an NVML failure: the meaning of its return code (:data:`ERROR_MESSAGES`), else what it said."""
    if nv is None:
        try:
            import pynvml as nv
        except ImportError:
            return f"{type(exc).__name__}: {exc}"
    code = getattr(exc, "value", None)
    if isinstance(exc, getattr(nv, "NVMLError", ())) and code is not None:
        name = _code_name(nv, code)
        return f"{ERROR_MESSAGES[name]} ({name})" if name else f"NVML error {code}: {exc}"
    return f"{type(exc).__name__}: {exc}"


class NvmlError(MeasurementError):
    """An NVML call the measurement depends on failed; the message names the call, the device and the meaning of
    NVML's return code (``code``, None for a failure that is not an NVML error)."""

    def __init__(self, what: str, exc: BaseException, nv=None) -> None:
        self.code = getattr(exc, "value", None)
        super().__init__(f"{what}: {describe_error(exc, nv)}")


# One NVML session per process: pid -> (pynvml or None, why it is None), filled on first use.
_INIT: dict[int, tuple[Any, str | None]] = {}
_LOCK = threading.Lock()
# Per process and device UUID: why the total-energy counter cannot be read (None: it can).
_COUNTER: dict[tuple[int, str], str | None] = {}


def _nvml():
    """pynvml, initialised once per process, or None where NVML cannot be used (:func:`init_error` says why)."""
    pid = os.getpid()
    found = _INIT.get(pid)
    if found is None:
        with _LOCK:
            found = _INIT.get(pid)
            if found is None:
                found = _initialise()
                _INIT[pid] = found
    return found[0]


def _initialise() -> tuple[Any, str | None]:
    try:
        import pynvml
    except ImportError:
        return None, "pynvml (nvidia-ml-py) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound / DriverNotLoaded etc.: no NVML here
        return None, f"NVML could not be initialised: {describe_error(exc, pynvml)}"
    return pynvml, None


def init_error() -> str | None:
    """Why NVML is unusable in this process (None when it initialised)."""
    _nvml()
    return _INIT[os.getpid()][1]


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


def counter_problem(gpu: dict) -> str | None:
    """Why ``gpu`` (a :func:`visible_gpus` entry) has no readable total-energy counter, or None when it has one.
    Probed once per process and device: the architecture (NVML's reference documents the counter "for Volta or
    newer fully supported devices", nvmlDeviceGetTotalEnergyConsumption); where the driver cannot name the
    architecture, one read of the counter, whose "not supported" or "no such function" answer means no counter. Any
    other answer leaves the counter to the meter, whose readings report their own errors."""
    key = (os.getpid(), gpu["uuid"])
    if key not in _COUNTER:
        _COUNTER[key] = _probe_counter(gpu)
    return _COUNTER[key]


def _probe_counter(gpu: dict) -> str | None:
    import pynvml as nv

    handle = gpu["handle"]
    try:
        arch = nv.nvmlDeviceGetArchitecture(handle)
    except nv.NVMLError as exc:
        if _code_name(nv, exc.value) not in COUNTER_ABSENT:
            return None  # the architecture is unknown for another reason: the counter's own reads will tell
    except Exception:  # noqa: BLE001 - not a device NVML can describe: the counter's own reads will tell
        return None
    else:
        volta = getattr(nv, "NVML_DEVICE_ARCH_VOLTA", 5)
        if isinstance(arch, int) and arch < volta:
            return (
                f"{gpu['name']} predates Volta (NVML architecture {arch}): "
                "nvmlDeviceGetTotalEnergyConsumption is not supported"
            )
        return None
    try:
        nv.nvmlDeviceGetTotalEnergyConsumption(handle)
    except nv.NVMLError as exc:
        if _code_name(nv, exc.value) in COUNTER_ABSENT:
            return f"{gpu['name']}: nvmlDeviceGetTotalEnergyConsumption: {describe_error(exc, nv)}"
    except Exception:  # noqa: BLE001 - left to the meter's reads, which name the failure
        pass
    return None


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
        try:
            return self._nv.nvmlDeviceGetTotalEnergyConsumption(self.gpu["handle"]) / 1000.0
        except self._nv.NVMLError as exc:
            raise NvmlError(
                f"{self.device} ({self.gpu['name']}, {self.gpu['uuid']}): nvmlDeviceGetTotalEnergyConsumption",
                exc,
                self._nv,
            ) from exc

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
