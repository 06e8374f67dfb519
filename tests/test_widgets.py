"""ServerPanel and GpuDashboard without a browser: their traits, throttling and fallbacks."""

from __future__ import annotations

import itertools
import re
import threading
import time

import pytest
from test_nvml import fake_pynvml

from jupyter_qwen import nvml
from jupyter_qwen.notebook.gpu import GpuMonitor
from jupyter_qwen.notebook.widgets import DEMO_LABEL, STATIC, GpuDashboard, ServerPanel
from jupyter_qwen.server.server import QwenServer


@pytest.fixture(autouse=True)
def fresh_nvml():
    nvml._reset()
    yield
    nvml._reset()


@pytest.fixture
def monitor():
    monitor = GpuMonitor(interval=0.05, window=60.0)
    yield monitor
    monitor.close()


@pytest.fixture
def start_server(tiny_model_path):
    servers: list[QwenServer] = []

    def start(model: str = str(tiny_model_path), wait: bool = True) -> QwenServer:
        server = QwenServer(model, max_model_len=256).start(wait=False, progress=False)
        servers.append(server)
        if wait:
            server.wait_ready(timeout=120, progress=False)
        return server

    yield start
    for server in servers:
        server.stop()


def wait_for(condition, timeout: float = 60.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def known(values: list) -> list:
    return [v for v in values if v is not None]


def chat(server: QwenServer, max_tokens: int = 16) -> None:
    server.openai_client().chat.completions.create(
        model=server.served_model_name, max_tokens=max_tokens,
        messages=[{"role": "user", "content": "Tell me about GPUs"}])


def test_loading_view_turns_into_the_dashboard(start_server, monitor):
    server = start_server(wait=False)
    panel = ServerPanel(server, monitor=monitor, demo=True)
    assert panel.state == "loading" and panel.current.get("kv_cache_usage") is None
    phases = {panel.loading_phase}
    panel.observe(lambda change: phases.add(change["new"]), names=["loading_phase"])
    wait_for(lambda: panel.state == "ok")
    assert len(phases) >= 2 and all(phases)
    wait_for(lambda: "kv_cache_usage" in panel.current)
    assert panel.current["kv_cache_usage"] == 0.0 and panel.current["kv_cache_bytes"] > 0
    assert panel.error == "" and panel.model_name == server.served_model_name
    assert panel.server_id == server.record.id and panel.url == server.url
    assert panel.demo and panel.demo_label == DEMO_LABEL
    columns = set(panel.history)
    assert {"t", "memory", "kv_cache_bytes", "generation_tokens_per_s", "prompt_tokens_per_s",
            "requests_running", "requests_waiting"} <= columns
    assert len({len(values) for values in panel.history.values()}) == 1


def test_numbers_move_while_requests_run_throttled(start_server, monitor, capsys):
    server = start_server()
    panel = ServerPanel(server, monitor=monitor)
    updates: list[float] = []
    panel.observe(lambda change: updates.append(time.monotonic()), names=["updated_at"])
    totals = [panel.current.get("generation_tokens_total", 0)]
    stop = threading.Event()

    def requests():
        while not stop.is_set():
            chat(server)

    workers = [threading.Thread(target=requests) for _ in range(2)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: panel.current.get("generation_tokens_total", 0) >= 32)
        time.sleep(2.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    elapsed = time.monotonic() - started
    totals.append(panel.current["generation_tokens_total"])
    assert totals[-1] > totals[0]
    assert max(known(panel.history["generation_tokens_per_s"])) > 0
    assert max(known(panel.history["requests_running"])) >= 1
    assert len(panel.history["t"]) >= 10 and panel.history["t"][-1] == 0
    assert len(updates) <= 2.2 * elapsed + 1, (len(updates), elapsed)
    assert len(updates) >= elapsed / 1.5, (len(updates), elapsed)
    gaps = [b - a for a, b in itertools.pairwise(updates)]
    assert min(gaps) >= 0.4
    assert capsys.readouterr().out == ""


def test_fallback_messages_clean_and_stop(start_server, monitor, monkeypatch):
    server = start_server()
    panel = ServerPanel(server, monitor=monitor)
    replies: list[dict] = []
    monkeypatch.setattr(panel, "send", replies.append)

    panel._handle_custom_msg({"action": "clean", "id": "c1"}, [])
    wait_for(lambda: replies)
    reply = replies.pop()
    assert reply["ok"]
    assert (reply["kind"], reply["action"], reply["id"]) == ("action", "clean", "c1")
    report = reply["result"]
    assert set(report) >= {"before", "after", "has_gpu", "gpu_reason"}
    assert report["before"]["rss"] > 0 and report["after"]["rss"] > 0
    assert server.state == "ok"

    panel._handle_custom_msg({"action": "stop", "id": "s1"}, [])
    wait_for(lambda: replies)
    assert replies.pop() == {"kind": "action", "action": "stop", "id": "s1", "ok": True,
                             "result": {"stopped": True}}
    assert server.state == "stopped"
    wait_for(lambda: panel.finished)
    assert panel.state == "stopped" and re.fullmatch(r"stopped(; [\d.]+ [MG]iB back)?",
                                                     panel.stop_report)
    updated = panel.updated_at
    time.sleep(0.3)
    assert panel.updated_at == updated
    panel._handle_custom_msg({"action": "reboot", "id": "x"}, [])
    time.sleep(0.1)
    assert replies == []


def test_snippet_and_a_failed_server(start_server, monitor, tmp_path):
    server = start_server(str(tmp_path / "no-such-model"), wait=False)
    wait_for(lambda: server.state != "loading")
    panel = ServerPanel(server, monitor=monitor)
    assert panel.state == "failed" and panel.finished
    assert "no-such-model" in panel.error and "not a checkpoint" in panel.error
    assert panel.snippet == (f'ChatOpenAI(base_url="{server.url}", api_key="EMPTY", '
                             f'model="{server.served_model_name}")')
    assert server.url in panel.snippet and not panel.demo


def test_snippet_of_a_server_with_a_key_refers_to_it(monitor, tmp_path):
    server = QwenServer(str(tmp_path / "no-such-model"), api_key="sekrit")
    server.start(wait=False, progress=False)
    try:
        wait_for(lambda: server.state != "loading")
        panel = ServerPanel(server, monitor=monitor)
        assert panel.snippet == (f'ChatOpenAI(base_url="{server.url}", '
                                 f'api_key=qwen_server.api_key, model="no-such-model")')
    finally:
        server.stop()


def test_gpu_dashboard_without_a_gpu(monitor):
    dashboard = GpuDashboard(monitor=monitor)
    try:
        if dashboard.has_gpu:
            pytest.skip("this machine has a GPU")
        assert dashboard.kind == "gpu" and dashboard.gpu_reason and dashboard.gpus == []
        assert dashboard.current["rss"] > 0
        assert dashboard.current["memory"] == dashboard.current["rss"]
        wait_for(lambda: len(dashboard.history["t"]) >= 3)
        assert dashboard.history["utilization"][-1] is None
    finally:
        dashboard.close()
    wait_for(lambda: not monitor.running)


def test_gpu_dashboard_with_fake_nvml(monitor, monkeypatch):
    monkeypatch.setattr(nvml, "_import_pynvml", fake_pynvml)
    dashboard = GpuDashboard(monitor=monitor)
    try:
        assert dashboard.has_gpu and dashboard.gpu_reason == ""
        assert dashboard.gpus[0] == {"index": 0, "name": "NVIDIA H200", "used": 40 * 2**30,
                                     "total": 141 * 2**30, "utilization": 87}
        assert dashboard.current["memory"] == 40 * 2**30
        assert dashboard.current["memory_total"] == 282 * 2**30
        assert dashboard.current["utilization"] == 87
    finally:
        dashboard.close()


def test_front_end_is_shipped_and_offline():
    js = (STATIC / "panel.js").read_text()
    css = (STATIC / "panel.css").read_text()
    assert str(ServerPanel._esm) == js and str(GpuDashboard._css) == css
    assert "export default" in js and not re.search(r"^\s*import\s", js, re.M)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", js + css)
    assert "--jp-layout-color1" in css and "jupyter-qwen/servers/" in js
