"""`serve(..., process=True)` / `%qwen_serve --process`: our server in a child process that
is managed like an in-kernel one and never outlives its parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from IPython.utils.capture import capture_output
from shells import ipython_shell

from jupyter_qwen.server import registry
from jupyter_qwen.server.handles import kernel_servers
from jupyter_qwen.server.process import ProcessServer, port_is_free


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def test_start_serve_fifty_requests_stop(demo_model):
    server = ProcessServer(None, {"max_num_seqs": 8}, demo=True).start(timeout=300)
    pid, port = server.pid, server.port
    try:
        assert server.origin == "process" and server.state == "ok"
        assert server in kernel_servers()
        record = registry.get_record(server.record.id)
        assert (record.origin, record.pid, record.port) == ("process", pid, port)
        client = server.openai_client()

        def ask(i: int) -> int:
            reply = client.chat.completions.create(
                model=server.served_model_name, max_tokens=8,
                messages=[{"role": "user", "content": f"Hello {i}!"}])
            return reply.usage.completion_tokens

        with ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(ask, range(50)))
        assert len(tokens) == 50 and all(count > 0 for count in tokens)
        assert server.stats()["generation_tokens_total"] >= sum(tokens)
    finally:
        report = server.stop()
    assert report.pid == pid and report.how == "admin stop" and report.exit_code == 0
    assert report.rss_bytes > 0  # what the child held just before it exited
    assert gone(pid, 5) and port_is_free("127.0.0.1", port)
    assert registry.get_record(server.record.id) is None
    assert server not in kernel_servers() and server.state == "stopped"
    assert server.stop() is report


def test_a_child_stopped_from_outside_leaves_the_list(demo_model):
    """The sidebar's Stop reaches the child's /admin/stop through Jupyter: once the child has
    exited, this kernel's list forgets it as if `stop` had run here."""
    import urllib.request

    server = ProcessServer(None, {"max_num_seqs": 2}, demo=True).start(timeout=300)
    try:
        request = urllib.request.Request(
            f"{server.root_url}/admin/stop", data=b"{}", method="POST",
            headers={"X-Admin-Token": server.record.admin_token,
                     "Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            assert response.status == 200
        server.process.wait(60)
        assert server.process.returncode == 0
        assert server not in kernel_servers()
        assert server.state == "stopped" and server.stop().how == "stopped elsewhere"
    finally:
        server.stop()


def test_a_stop_while_the_start_waits_is_not_a_failed_start(demo_model, monkeypatch):
    """/health says ok, the sidebar's Stop arrives at once, and the start-up's own /health
    read then finds the server stopping: `wait_ready` returns (the child exits 0, "stopped
    elsewhere") instead of raising ServerStartError (a child exit of 2)."""
    from jupyter_qwen.server import server as server_module
    from jupyter_qwen.server.health import UNREACHABLE, Health
    from jupyter_qwen.server.server import QwenServer

    qwen = QwenServer(str(demo_model), model_path=demo_model)
    qwen.ctx.state = "ok"

    def stopped_meanwhile(root_url: str, timeout: float = 2.0) -> Health:
        qwen.ctx.state = "stopping"  # what the /admin/stop handler's release sets
        return Health(UNREACHABLE, error="connection refused")

    monkeypatch.setattr(server_module, "read_health", stopped_meanwhile)
    assert qwen.wait_ready(progress=False) is qwen
    qwen.ctx.state, qwen.ctx.error = "failed", "the model did not load"  # a real failure
    with pytest.raises(server_module.ServerStartError, match="the server is failed"):
        qwen.wait_ready(progress=False)


def test_a_child_that_cannot_start_says_why():
    from jupyter_qwen.server.errors import ServerStartError

    with pytest.raises(ServerStartError, match="exited with code 2"):
        ProcessServer("/no/such/checkpoint", {}).start(timeout=120)


PARENT = textwrap.dedent("""
    import json, sys, time
    from jupyter_qwen.server.process import ProcessServer
    server = ProcessServer(None, {}, demo=True).start(timeout=300)
    print(json.dumps({"child": server.pid, "port": server.port}), flush=True)
    time.sleep(600)
""")


def test_killing_the_parent_kills_the_child(demo_model):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(parent.stdout.readline())
    finally:
        os.kill(parent.pid, signal.SIGKILL)  # no atexit, no clean-up: as a killed kernel
        parent.wait()
    assert gone(started["child"], 30), "the child server outlived its parent"
    deadline = time.monotonic() + 10
    while not port_is_free("127.0.0.1", started["port"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert port_is_free("127.0.0.1", started["port"])


def test_the_magics_serve_list_and_stop_a_process(demo_model):
    shell = ipython_shell()
    with capture_output() as served:
        shell.run_line_magic("qwen_serve", "--demo --process")
    server = shell.user_ns["qwen_server"]
    assert f"in process {server.pid}" in served.stdout
    with capture_output() as status:
        shell.run_line_magic("qwen_status", "")
    row = next(line for line in "\n".join(o.data.get("text/html", "") for o in status.outputs)
               .split("<tr>") if f"<td>{server.url}</td>" in line)
    assert "<td>process</td>" in row and "<td>ok</td>" in row
    with capture_output() as reply:
        shell.run_cell_magic("qwen", "--max-tokens 6", "Hello!")
    assert any(o.data.get("text/markdown", "").strip() for o in reply.outputs)
    with capture_output() as stopped:
        shell.run_line_magic("qwen_stop", "")
    text = "\n".join(o.data.get("text/plain", "") for o in stopped.outputs)
    assert f"stopped qwen3-demo (pid {server.pid}, admin stop" in text and "of RAM" in text
    assert gone(server.pid, 5)


def test_the_watchdog_alone_ends_a_child_whose_parent_is_gone():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    code = ("import time\nfrom jupyter_qwen.server.process import watch_parent\n"
            f"watch_parent({dead.pid}, 0.05)\ntime.sleep(30)\n")
    started = time.monotonic()
    child = subprocess.run([sys.executable, "-c", code], timeout=25)
    assert child.returncode == -signal.SIGTERM and time.monotonic() - started < 20
