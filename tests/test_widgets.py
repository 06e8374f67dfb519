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

STOP_REPORT = r"stopped(; [\d.,]+ [KMG]iB back: .+| \(this server did not report its memory\))"
"""What a stop reports: the server's own memory given back, or that it did not say."""


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
    assert panel.state == "stopped" and re.fullmatch(STOP_REPORT,
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


# ---- views of the /health contract's figures, from a stand-in server ----

MIB = 2**20
MEMORY = {"device": "cuda:0", "weights_bytes": 1200 * MIB, "kv_cache_bytes": 512 * MIB,
          "kv_blocks_used": 32, "kv_blocks_total": 256, "kv_block_bytes": 2 * MIB,
          "activations_bytes": 96 * MIB, "cuda_graph_bytes": None,
          "torch_reserved_bytes": 1900 * MIB, "torch_allocated_bytes": 1800 * MIB,
          "process_gpu_bytes": 2100 * MIB, "rss_bytes": 900 * MIB}
LATENCY = {"window_s": 300, "requests": 12, "ttft_p50_s": 0.045, "ttft_p95_s": 0.1204,
           "itl_p50_s": 0.008, "itl_p95_s": None}
RUNNING = [{"request_id": "chatcmpl-7", "state": "running", "age_s": 3.2, "prompt_tokens": 1234,
            "cached_tokens": 1024, "generated_tokens": 57, "session": "notes"},
           {"request_id": "chatcmpl-8", "state": "waiting", "age_s": 0.4, "prompt_tokens": 9,
            "cached_tokens": 0, "generated_tokens": 0, "session": None}]


def saved_bundle(widget) -> dict:
    """What IPython's display formatter puts into the notebook for ``widget``."""
    from IPython.core.formatters import DisplayFormatter

    data, _metadata = DisplayFormatter().format(widget)
    return data


class StandInServer:
    """Serves contract-shaped figures (what QwenServer.stats() holds) and records aborts."""

    served_model_name = "qwen3-test"
    model = "/models/qwen3-test"
    url = "http://127.0.0.1:9/v1"
    api_key = None
    record = None
    load_error = None

    def __init__(self, state: str = "ok", figures: dict | None = None, stop_reply=None):
        self.state = state
        self.loading = ("reading weights", 0.4)
        self.figures = figures if figures is not None else {
            "model": self.served_model_name, "state": state, "uptime": 4000.0,
            "chat_variant": "thinking-2507", "memory": MEMORY, "latency": LATENCY,
            "running": RUNNING, "requests_running": 1, "requests_waiting": 1,
            "kv_cache_usage": 0.125, "kv_cache_bytes": 512 * MIB,
            "prefix_cache_hit_rate": 0.5, "generation_tokens_per_s": 87.5,
            "generation_tokens_total": 4321}
        self.stop_reply = stop_reply
        self.aborted: list[str] = []

    def stats(self) -> dict:
        return self.figures | {"state": self.state}

    def stop(self):
        self.state = "stopped"
        return self.stop_reply

    def abort(self, request_id: str) -> dict:
        self.aborted.append(request_id)
        return {"aborted": request_id}


def test_the_card_shows_device_variant_memory_split_latency_and_requests(monitor):
    panel = ServerPanel(StandInServer(), monitor=monitor)
    try:
        view = panel.view
        assert (view["device"], view["chat_variant"], view["uptime"]) == (
            "cuda:0", "thinking-2507", "67 min")
        assert view["memory_total"] == "1.8 GiB"
        parts = {p["label"]: p["text"] for p in view["memory_parts"]}
        assert parts == {"weights": "1.2 GiB", "activations": "96 MiB",
                         "KV cache": "64 MiB of 512 MiB (12.5 %), 32 of 256 blocks",
                         "CUDA graphs": "– (not reported)"}
        assert view["kv"] == parts["KV cache"]
        assert view["ttft"] == "p50 45 ms · p95 120 ms" and view["itl"] == "p50 8 ms · p95 –"
        assert [row["cells"] for row in view["running"]] == [
            ["chatcmpl-7", "running", "3 s", "1,234", "1,024", "57", "notes"],
            ["chatcmpl-8", "waiting", "0 s", "9", "0", "0", "–"]]
        assert panel.can_abort and panel.actions == ["stop", "clean", "abort"]
    finally:
        panel.close()


def test_abort_from_the_card_reaches_the_server(monitor, monkeypatch):
    server = StandInServer()
    panel = ServerPanel(server, monitor=monitor)
    replies: list[dict] = []
    monkeypatch.setattr(panel, "send", replies.append)
    panel._handle_custom_msg({"action": "abort", "id": "a1", "request_id": "chatcmpl-7"}, [])
    wait_for(lambda: replies)
    assert replies == [{"kind": "action", "action": "abort", "id": "a1", "ok": True,
                        "result": {"aborted": "chatcmpl-7"}}]
    assert server.aborted == ["chatcmpl-7"]
    panel.close()


def test_missing_figures_say_why_instead_of_blank_or_zero(monitor):
    loading = ServerPanel(StandInServer("loading", figures={}), monitor=monitor)
    assert loading.view["device"] == "– (loading)"
    assert loading.view["memory_total"] == "– (loading)"
    assert loading.view["ttft"] == "– (loading)" and loading.view["running"] == []
    assert "reading weights (40 %)" in loading.static_text()
    loading.close()
    bare = {"model": "x", "state": "ok", "chat_variant": "hybrid"}
    panel = ServerPanel(StandInServer("ok", figures=bare), monitor=monitor)
    if not panel.has_gpu:
        assert panel.view["device"] == "– (no GPU)"
    assert panel.view["memory_total"] == "– (not reported)"
    assert panel.view["kv"] == "– (not reported)"
    assert all(p["text"].startswith("– (") for p in panel.view["memory_parts"])
    idle = dict(bare, latency={"window_s": 300, "requests": 0, "ttft_p50_s": None})
    panel.close()
    panel = ServerPanel(StandInServer("ok", figures=idle), monitor=monitor)
    assert panel.view["ttft"] == "– (no request finished in the last 5 min)"
    panel.close()


@pytest.mark.parametrize(("reply", "expected"), [
    ({"stopped": True, "memory": MEMORY | {"weights_bytes": 600 * MIB}},
     "stopped; 1.2 GiB back: weights 600 MiB, KV cache 512 MiB, activations 96 MiB"),
    (None, "stopped; 1.8 GiB back: weights 1.2 GiB, KV cache 512 MiB, activations 96 MiB"),
])
def test_the_stop_report_counts_the_servers_own_memory(monitor, reply, expected):
    server = StandInServer(stop_reply=reply)
    panel = ServerPanel(server, monitor=monitor)
    panel.run_action("stop")
    wait_for(lambda: panel.finished, timeout=10)
    assert panel.stop_report == expected
    assert re.fullmatch(STOP_REPORT, panel.stop_report)
    assert expected in panel.static_text()


def test_a_failed_server_keeps_its_error_when_the_monitor_thread_samples_it_first(
        monitor, monkeypatch):
    # The monitor thread may sample a finished server between the panel's watch() and the
    # panel's own sample, and unwatch it; the panel must still read the server's figures.
    server = StandInServer("failed", figures={"error": "weights missing", "hint": "look"})
    watch = monitor.watch

    def watch_then_thread_samples(watched):
        watch(watched)
        monitor.sample()

    monkeypatch.setattr(monitor, "watch", watch_then_thread_samples)
    panel = ServerPanel(server, monitor=monitor)
    assert server not in monitor.watched()
    assert (panel.error, panel.hint) == ("weights missing", "look")
    panel.close()


def test_a_failed_server_shows_one_line_a_hint_and_the_full_text(monitor):
    server = StandInServer("failed", figures={
        "error": "Qwen/Qwen3-0.6B is not in the local Hugging Face cache",
        "hint": "download it, or give a folder",
        "error_detail": "Traceback (most recent call last):\n  ...\nOSError: offline"})
    panel = ServerPanel(server, monitor=monitor)
    assert panel.state == "failed" and panel.finished
    assert panel.error == "Qwen/Qwen3-0.6B is not in the local Hugging Face cache"
    assert panel.hint == "download it, or give a folder"
    assert "OSError: offline" in panel.error_detail
    bundle = saved_bundle(panel)
    assert "<details><summary>full error</summary>" in bundle["text/html"]
    assert "download it, or give a folder" in bundle["text/plain"]


def test_a_saved_card_reads_without_its_javascript(monitor):
    panel = ServerPanel(StandInServer(), monitor=monitor)
    bundle = saved_bundle(panel)
    assert "application/vnd.jupyter.widget-view+json" in bundle
    text, page = bundle["text/plain"], bundle["text/html"]
    assert "object at 0x" not in text
    for figure in ("qwen3-test (ok)", "cuda:0", "thinking-2507", "1.8 GiB",
                   "64 MiB of 512 MiB (12.5 %)", "p50 45 ms", "87.5"):
        assert figure in text and figure in page
    panel.close()
    dashboard = GpuDashboard(monitor=monitor)
    assert saved_bundle(dashboard)["text/plain"].startswith("GPU monitor")
    dashboard.close()
