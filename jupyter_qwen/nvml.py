"""GPU figures from NVML (torch-free, never raises).

``gpu_snapshot()`` reads every NVIDIA GPU's memory, utilisation, temperature and
the processes holding memory on it, through ``pynvml`` (the ``nvidia-ml-py``
package). Where NVML cannot be used (no driver, no library, no GPU) the
snapshot says so: ``available`` is False and ``reason`` tells why.

NVML is initialised once per process, under a lock; a failed initialisation is
remembered too, so a machine without GPUs pays for the attempt only once.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, NamedTuple

__all__ = ["GpuInfo", "GpuProcess", "GpuSnapshot", "gpu_snapshot"]


class GpuProcess(NamedTuple):
    """A process holding memory on a GPU; unpacks as ``(pid, used_memory)``."""

    pid: int
    used_memory: int | None  # bytes; None where the driver does not say


@dataclass(slots=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_used: int  # bytes
    memory_total: int  # bytes
    utilization_gpu: int | None  # percent; None where not supported
    temperature_c: int | None
    processes: list[GpuProcess] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["processes"] = [p._asdict() for p in self.processes]
        return data


@dataclass(slots=True)
class GpuSnapshot:
    available: bool
    reason: str = ""
    gpus: list[GpuInfo] = field(default_factory=list)

    def process_bytes(self, pid: int) -> int | None:
        """GPU memory that process `pid` holds on all GPUs together, as NVML reports it;
        None where NVML lists no figure for it (no GPU, another PID namespace, not
        supported by the driver)."""
        figures = [proc.used_memory for gpu in self.gpus for proc in gpu.processes
                   if proc.pid == pid and proc.used_memory is not None]
        return sum(figures) if figures else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "reason": self.reason,
            "gpus": [g.to_dict() for g in self.gpus],
        }


_lock = threading.Lock()
_nvml: ModuleType | None = None  # pynvml, once initialised
_init_error: str | None = None  # why initialisation failed, once tried


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


def _ensure_init() -> ModuleType | None:
    """Initialise NVML once; call with ``_lock`` held. None (and ``_init_error``) on failure."""
    global _nvml, _init_error
    if _nvml is not None or _init_error is not None:
        return _nvml
    try:
        nvml = _import_pynvml()
    except ImportError as err:
        _init_error = f"nvidia-ml-py (pynvml) is not installed: {err}"
        return None
    try:
        nvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        _init_error = f"NVML unavailable: {err or type(err).__name__}"
        return None
    _nvml = nvml
    return _nvml


def _reset() -> None:
    """Forget the initialisation (tests; or after a driver came up)."""
    global _nvml, _init_error
    with _lock:
        if _nvml is not None:
            with contextlib.suppress(Exception):
                _nvml.nvmlShutdown()
        _nvml, _init_error = None, None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _optional(fn: Any, *args: Any) -> Any:
    """Call an NVML query that a device may not support; None when it raises."""
    try:
        return fn(*args)
    except Exception:
        return None


def _processes(nvml: ModuleType, handle: Any) -> list[GpuProcess]:
    by_pid: dict[int, int | None] = {}
    for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        fn = getattr(nvml, query, None)
        for proc in (_optional(fn, handle) if fn else None) or []:
            used = getattr(proc, "usedGpuMemory", None)
            used = int(used) if used is not None else None
            pid = int(proc.pid)
            # a process can be listed by both queries: keep the larger figure
            old = by_pid.get(pid)
            by_pid[pid] = used if old is None else max(old, used or 0)
    return [GpuProcess(pid, used) for pid, used in sorted(by_pid.items())]


def _device(nvml: ModuleType, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    util = _optional(nvml.nvmlDeviceGetUtilizationRates, handle)
    temp = _optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
    return GpuInfo(
        index=index,
        name=_text(_optional(nvml.nvmlDeviceGetName, handle) or f"GPU {index}"),
        uuid=_text(_optional(nvml.nvmlDeviceGetUUID, handle) or ""),
        memory_used=int(memory.used),
        memory_total=int(memory.total),
        utilization_gpu=None if util is None else int(util.gpu),
        temperature_c=None if temp is None else int(temp),
        processes=_processes(nvml, handle),
    )


def gpu_snapshot() -> GpuSnapshot:
    """Every GPU's figures now; ``available=False`` with a reason where NVML cannot say."""
    with _lock:
        nvml = _ensure_init()
        if nvml is None:
            return GpuSnapshot(available=False, reason=_init_error or "NVML unavailable")
        try:
            count = int(nvml.nvmlDeviceGetCount())
            gpus = [_device(nvml, i) for i in range(count)]
        except Exception as err:
            return GpuSnapshot(available=False, reason=f"NVML query failed: {err}")
    if not gpus:
        return GpuSnapshot(available=False, reason="NVML found no GPU")
    return GpuSnapshot(available=True, gpus=gpus)
