"""NVML helper: the real "no GPU" path here, and our mapping of NVML's answers.

The mapping tests feed a fake ``pynvml`` module: what is under test is how we turn
its answers into GpuSnapshot, not NVML itself.
"""

from __future__ import annotations

import threading
import types

import pytest

from jupyter_qwen import nvml
from jupyter_qwen.nvml import GpuProcess, gpu_snapshot


@pytest.fixture(autouse=True)
def fresh_nvml():
    nvml._reset()
    yield
    nvml._reset()


def test_real_machine_never_raises():
    snap = gpu_snapshot()
    if snap.available:  # a GPU machine
        assert snap.gpus and snap.reason == ""
        for gpu in snap.gpus:
            assert gpu.memory_total > 0 and 0 <= gpu.memory_used <= gpu.memory_total
            assert gpu.name
    else:  # this CPU machine: no NVML library
        assert snap.gpus == []
        assert snap.reason
    data = snap.to_dict()
    assert set(data) == {"available", "reason", "gpus"} and data["available"] == snap.available


class NVMLError(Exception):
    pass


class NotSupported(NVMLError):
    pass


def fake_pynvml(*, init_error: Exception | None = None, count_error: Exception | None = None):
    """A stand-in for the pynvml module with two GPUs."""
    calls = {"init": 0}
    m = types.SimpleNamespace()
    m.NVML_TEMPERATURE_GPU = 0
    m.calls = calls

    def init():
        calls["init"] += 1
        if init_error is not None:
            raise init_error

    def count():
        if count_error is not None:
            raise count_error
        return 2

    devices = [
        dict(
            name=b"NVIDIA H200", uuid="GPU-aaaa", used=40 * 2**30, total=141 * 2**30,
            util=87, temp=45,
            compute=[(1234, 30 * 2**30), (5678, None)], graphics=[(1234, 30 * 2**30)],
        ),
        dict(
            name="NVIDIA H200", uuid="GPU-bbbb", used=0, total=141 * 2**30,
            util=None, temp=None, compute=[], graphics=None,
        ),
    ]

    def query(key):
        def fn(handle, *_):
            value = devices[handle][key]
            if value is None:
                raise NotSupported("Not Supported")
            return value
        return fn

    def procs(key):
        def fn(handle):
            value = devices[handle][key]
            if value is None:
                raise NotSupported("Not Supported")
            return [types.SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in value]
        return fn

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = count
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = query("name")
    m.nvmlDeviceGetUUID = query("uuid")
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=devices[h]["used"], total=devices[h]["total"], free=0
    )
    m.nvmlDeviceGetUtilizationRates = lambda h: (
        types.SimpleNamespace(gpu=devices[h]["util"], memory=0)
        if devices[h]["util"] is not None else query("util")(h)
    )
    m.nvmlDeviceGetTemperature = query("temp")
    m.nvmlDeviceGetComputeRunningProcesses = procs("compute")
    m.nvmlDeviceGetGraphicsRunningProcesses = procs("graphics")
    return m


def test_mapping_of_nvml_answers(monkeypatch):
    fake = fake_pynvml()
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    snap = gpu_snapshot()
    assert snap.available and snap.reason == ""
    first, second = snap.gpus
    assert (first.index, first.name, first.uuid) == (0, "NVIDIA H200", "GPU-aaaa")
    assert (first.memory_used, first.memory_total) == (40 * 2**30, 141 * 2**30)
    assert (first.utilization_gpu, first.temperature_c) == (87, 45)
    # listed by both queries -> once; unknown usage stays None
    assert first.processes == [GpuProcess(1234, 30 * 2**30), GpuProcess(5678, None)]
    pid, used = first.processes[0]
    assert (pid, used) == (1234, 30 * 2**30)
    # queries a device does not support become None, not errors
    assert (second.utilization_gpu, second.temperature_c, second.processes) == (None, None, [])
    assert snap.to_dict()["gpus"][0] == {
        "index": 0, "name": "NVIDIA H200", "uuid": "GPU-aaaa",
        "memory_used": 40 * 2**30, "memory_total": 141 * 2**30,
        "utilization_gpu": 87, "temperature_c": 45,
        "processes": [{"pid": 1234, "used_memory": 30 * 2**30},
                      {"pid": 5678, "used_memory": None}],
    }


def test_init_failure_is_reported_once(monkeypatch):
    fake = fake_pynvml(init_error=NVMLError("NVML Shared Library Not Found"))
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    for _ in range(3):
        snap = gpu_snapshot()
        assert not snap.available
        assert snap.reason == "NVML unavailable: NVML Shared Library Not Found"
        assert snap.gpus == []
    assert fake.calls["init"] == 1


def test_missing_pynvml(monkeypatch):
    def no_module():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(nvml, "_import_pynvml", no_module)
    snap = gpu_snapshot()
    assert not snap.available and "nvidia-ml-py" in snap.reason


def test_query_failure_after_init(monkeypatch):
    fake = fake_pynvml(count_error=NVMLError("GPU is lost"))
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    snap = gpu_snapshot()
    assert not snap.available and "GPU is lost" in snap.reason


def test_init_once_across_threads(monkeypatch):
    fake = fake_pynvml()
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    results = []
    threads = [threading.Thread(target=lambda: results.append(gpu_snapshot())) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.calls["init"] == 1
    assert len(results) == 16 and all(len(r.gpus) == 2 for r in results)


def test_a_process_figure_sums_its_gpus_and_is_none_when_unlisted(monkeypatch):
    fake = fake_pynvml()
    fake_devices_second = [(1234, 2 * 2**30)]
    monkeypatch.setattr(fake, "nvmlDeviceGetComputeRunningProcesses", lambda h: [
        types.SimpleNamespace(pid=p, usedGpuMemory=u)
        for p, u in ([(1234, 30 * 2**30), (5678, None)] if h == 0 else fake_devices_second)])
    monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
    snap = gpu_snapshot()
    assert snap.process_bytes(1234) == 32 * 2**30
    assert snap.process_bytes(5678) is None  # listed without a figure
    assert snap.process_bytes(99) is None
    assert nvml.GpuSnapshot(available=False, reason="no GPU").process_bytes(1234) is None
