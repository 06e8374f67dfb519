"""TEST DOUBLE of the ``pynvml`` module for the browser test on machines without a GPU.

Put this folder first on PYTHONPATH of a Jupyter server: the sidebar then shows one
"GPU" whose memory moves with time and whose processes are the server's kernels (its
child processes running ipykernel), each holding 3 GiB. Only the calls that
jupyter_qwen.nvml makes exist here.
"""

import math
import time
from types import SimpleNamespace

import psutil

NVML_TEMPERATURE_GPU = 0
GIB = 1024**3


class NVMLError(Exception):
    pass


def nvmlInit():
    pass


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return 1


def nvmlDeviceGetHandleByIndex(index):
    return index


def nvmlDeviceGetName(handle):
    return "Fake H200 (test double)"


def nvmlDeviceGetUUID(handle):
    return "GPU-00000000-fake"


def _kernels():
    return [
        p for p in psutil.Process().children(recursive=True)
        if "ipykernel" in " ".join(p.cmdline())
    ]


def nvmlDeviceGetMemoryInfo(handle):
    wave = 20 * GIB * (1 + math.sin(time.time() / 3))
    used = int(10 * GIB + wave + 3 * GIB * len(_kernels()))
    return SimpleNamespace(used=used, total=141 * GIB, free=141 * GIB - used)


def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=int(50 + 45 * math.sin(time.time())), memory=10)


def nvmlDeviceGetTemperature(handle, sensor):
    return 41


def nvmlDeviceGetComputeRunningProcesses(handle):
    return [SimpleNamespace(pid=p.pid, usedGpuMemory=3 * GIB) for p in _kernels()]


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    return []
