"""GpuMonitor: no-GPU mode on this machine, history, watched servers, the thread's life."""

from __future__ import annotations

import threading
import time

import pytest
from test_nvml import fake_pynvml

import jupyter_qwen
from jupyter_qwen import nvml
from jupyter_qwen.notebook.gpu import GpuMonitor, Sample, server_key
from jupyter_qwen.nvml import GpuProcess


@pytest.fixture(autouse=True)
def fresh_nvml():
    nvml._reset()
    yield
    nvml._reset()


@pytest.fixture
def monitor():
    monitor = GpuMonitor(interval=0.05, window=1.0)
    yield monitor
    monitor.close()


def wait_for(condition, timeout: float = 30.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def test_no_gpu_mode_samples_rss(monitor):
    sample = monitor.sample()
    assert isinstance(sample, Sample)
    if sample.has_gpu:
        pytest.skip("this machine has a GPU")
    assert sample.gpus == [] and sample.gpu_reason
    assert (sample.torch_allocated, sample.torch_reserved) == (None, None)
    assert sample.rss > 10 * 2**20
    assert monitor.has_gpu is False and monitor.gpu_reason == sample.gpu_reason


def test_history_grows_and_is_bounded(monitor):
    seen: list[Sample] = []
    monitor.subscribe(seen.append)
    wait_for(lambda: len(seen) >= 5)
    assert monitor.running
    first = monitor.history()
    assert len(first) >= 5 and first[-1] is monitor.latest()
    assert [s.time for s in first] == sorted(s.time for s in first)
    wait_for(lambda: len(seen) >= 40)
    history = monitor.history()
    assert len(history) <= monitor.window / monitor.interval + 1
    assert history[-1].time - history[0].time <= monitor.window
    assert monitor.history(since=history[-1].time) == [history[-1]]
    monitor.unsubscribe(seen.append)
    wait_for(lambda: not monitor.running)


def test_thread_stops_when_nobody_listens(monitor):
    listener = [].append
    monitor.subscribe(listener)
    monitor.subscribe(listener)
    assert monitor.running
    monitor.unsubscribe(listener)
    time.sleep(0.2)
    assert monitor.running
    monitor.unsubscribe(listener)
    wait_for(lambda: not monitor.running)
    count = len(monitor.history())
    time.sleep(0.2)
    assert len(monitor.history()) == count
    monitor.subscribe(listener)
    wait_for(lambda: len(monitor.history()) > count)
    monitor.close()
    assert not monitor.running


def test_listener_errors_do_not_stop_the_thread(monitor):
    seen = []

    def broken(sample):
        raise RuntimeError("listener bug")

    monitor.subscribe(broken)
    monitor.subscribe(seen.append)
    wait_for(lambda: len(seen) >= 3)
    assert monitor.running


def test_watched_server_figures_and_unwatch_on_stop(monitor, tiny_model_path):
    server = jupyter_qwen.serve(str(tiny_model_path), max_model_len=256, progress=False)
    try:
        monitor.watch(server)
        assert monitor.running and monitor.watched() == [server]
        key = server_key(server)
        assert key == server.record.id
        wait_for(lambda: key in (monitor.latest() or Sample(0, 0, False)).servers)
        figures = monitor.latest().servers[key]
        assert figures.state == "ok" and figures.model == server.served_model_name
        assert figures.kv_cache_bytes > 0 and figures.kv_cache_usage == 0.0
        client = server.openai_client()
        client.chat.completions.create(model=server.served_model_name, max_tokens=8,
                                       messages=[{"role": "user", "content": "hi"}])
        wait_for(lambda: monitor.latest().servers[key].generation_tokens_total >= 1)
        assert monitor.latest().servers[key].generation_tokens_per_s > 0
        server.stop()
        wait_for(lambda: monitor.latest().servers.get(key, figures).state == "stopped")
        wait_for(lambda: not monitor.running)
        assert monitor.watched() == []
    finally:
        server.stop()


def test_unwatch_stops_the_thread(monitor):
    class Server:
        record = None

        def stats(self):
            return {"model": "m", "state": "ok", "requests_running": 2}

    server = Server()
    monitor.watch(server)
    key = server_key(server)
    wait_for(lambda: monitor.latest() is not None and key in monitor.latest().servers)
    assert monitor.latest().servers[key].requests_running == 2
    monitor.unwatch(server)
    wait_for(lambda: not monitor.running)


def test_a_failing_server_is_logged_not_raised(monitor, caplog):
    class Broken:
        record = None

        def stats(self):
            raise RuntimeError("engine gone")

    broken = Broken()
    monitor.watch(broken)
    wait_for(lambda: len(monitor.history()) >= 3)
    assert monitor.running and monitor.latest().servers == {}
    assert "engine gone" in caplog.text
    monitor.unwatch(broken)


def test_nvml_figures_map_into_samples(monitor, monkeypatch):
    monkeypatch.setattr(nvml, "_import_pynvml", fake_pynvml)
    sample = monitor.sample()
    assert sample.has_gpu and sample.gpu_reason == ""
    first, second = sample.gpus
    assert (first.index, first.name) == (0, "NVIDIA H200")
    assert (first.memory_used, first.memory_total, first.utilization) == (
        40 * 2**30, 141 * 2**30, 87)
    assert first.processes == [GpuProcess(1234, 30 * 2**30), GpuProcess(5678, None)]
    assert (second.memory_used, second.utilization, second.processes) == (0, None, [])
    assert sample.gpu_used == 40 * 2**30 and sample.gpu_total == 282 * 2**30
    assert monitor.has_gpu is True


def test_shared_is_one_per_process():
    assert GpuMonitor.shared() is GpuMonitor.shared()
    results = []
    threads = [threading.Thread(target=lambda: results.append(GpuMonitor.shared()))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {id(m) for m in results} == {id(GpuMonitor.shared())}
