"""The server card (ServerPanel) and the dashboard (%qwen_gpu) show every server of this kernel:
a remote one (a stand-in OpenAI server with a /metrics page) with its figures and no Stop,
and a child-process one that the card's Stop ends."""

from __future__ import annotations

import re
import time
from pathlib import Path

import psutil
import pytest
from IPython.utils.capture import capture_output
from openai_peer import OpenAIPeer
from shells import ipython_shell

from jupyter_qwen.notebook.gpu import GpuMonitor
from jupyter_qwen.notebook.widgets import GpuDashboard, panels_of
from jupyter_qwen.server.handles import attached_servers, kernel_servers
from jupyter_qwen.server.process import port_is_free

FIXTURES = Path(__file__).with_name("fixtures") / "metrics"
NOT_REPORTED = "– (not reported)"


@pytest.fixture(scope="module")
def shell():
    return ipython_shell()


@pytest.fixture
def peer():
    started: list[OpenAIPeer] = []

    def start(**kwargs) -> OpenAIPeer:
        started.append(OpenAIPeer(**kwargs).start())
        return started[-1]

    yield start
    for server in attached_servers():
        for panel in panels_of(server):
            panel.close()
        if server.origin == "remote":
            server.disconnect()
    for one in started:
        one.close()


@pytest.fixture
def monitor():
    monitor = GpuMonitor(interval=0.05, window=60.0)
    yield monitor
    monitor.close()


def plain(captured) -> str:
    return "\n".join(out.data.get("text/plain", "") for out in captured.outputs)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_remote_server_shows_on_its_card_with_its_figures_and_no_stop(shell, peer):
    vllm = peer(metrics=(FIXTURES / "vllm.txt").read_text())
    with capture_output() as attached:
        shell.run_line_magic("qwen_connect", f"{vllm.url} --name big")
    server = shell.user_ns["qwen_remote"]
    (panel,) = panels_of(server)
    assert panel.origin == "remote" and panel.state == "ok" and panel.actions == []
    assert not panel.can_abort
    # the /metrics figures: 3 + 2 running, 1 + 0 waiting on its two engines
    assert panel.view["requests"] == "5 running · 1 waiting"
    assert panel.current["requests_running"] == 5
    # what /metrics does not tell reads "not reported", never 0
    assert panel.view["memory_total"] == NOT_REPORTED
    assert panel.view["device"] == NOT_REPORTED  # not this machine's "no GPU"
    assert panel.current["memory"] is None and panel.current["rss"] is None
    text = plain(attached)
    assert "big" in text and "remote" in text and "5 running · 1 waiting" in text
    assert "none: a remote server is stopped where it runs" in text and "Stop" not in text
    with pytest.raises(ValueError, match="does not apply to a remote server"):
        panel.run_action("stop")
    with pytest.raises(ValueError, match="does not apply"):
        panel.run_action("clean")
    assert server.state == "ok" and server in kernel_servers()


def test_the_dashboard_lists_remote_servers_with_or_without_metrics(shell, peer, monitor):
    vllm = peer(metrics=(FIXTURES / "vllm.txt").read_text())
    bare = peer(models=("some-model",))
    with capture_output():
        shell.run_line_magic("qwen_connect", f"{vllm.url} --name metered")
        shell.run_line_magic("qwen_connect", f"{bare.url} --name bare")
    dashboard = GpuDashboard(monitor=monitor)
    try:
        rows = {row["name"]: row for row in dashboard.servers}
        assert rows["metered"]["origin"] == rows["bare"]["origin"] == "remote"
        assert rows["metered"]["actions"] == rows["bare"]["actions"] == []
        assert rows["metered"]["view"]["requests"] == "5 running · 1 waiting"
        assert rows["metered"]["view"]["prefix_hits"] == "25 %"  # 400 of 1600 tokens
        for figure in ("requests", "tokens_per_s", "kv", "ttft", "generated"):
            assert rows["bare"]["view"][figure] == NOT_REPORTED
        with capture_output() as shown:
            shell.run_line_magic("qwen_gpu", "")
        text = plain(shown)
        line = next(line for line in text.splitlines() if line.startswith("bare "))
        assert "(remote, ok)" in line and f"requests {NOT_REPORTED}" in line
        assert "actions: none: a remote server is stopped where it runs" in line
        with pytest.raises(ValueError, match="does not apply to a remote server"):
            dashboard.run_action(rows["bare"]["id"], "stop")
    finally:
        dashboard.close()


def test_a_process_server_on_the_card_and_dashboard_is_stopped_by_the_card(
        shell, demo_model, monitor):
    with capture_output() as served:
        shell.run_line_magic("qwen_serve", "--demo --process")
    server = shell.user_ns["qwen_server"]
    pid, port = server.pid, server.port
    try:
        (panel,) = panels_of(server)
        assert panel.origin == "process" and panel.actions == ["stop"]
        wait_for(lambda: panel.state == "ok" and panel.view.get("device", "").startswith("cpu"))
        assert "(ok, process)" in plain(served)
        assert re.search(r"^actions +Stop$", plain(served), re.M)
        dashboard = GpuDashboard(monitor=monitor)
        try:
            (row,) = [r for r in dashboard.servers if r["url"] == server.url]
            assert row["origin"] == "process" and row["actions"] == ["stop"]
            assert row["view"]["requests"] == "0 running · 0 waiting"
        finally:
            dashboard.close()
        assert panel.run_action("stop") == {"stopped": True}
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert port_is_free("127.0.0.1", port) and server not in kernel_servers()
        wait_for(lambda: panel.finished, timeout=10)
        assert panel.state == "stopped" and panel.stop_report.startswith("stopped")
    finally:
        if server.stop_report is None:
            server.stop()
