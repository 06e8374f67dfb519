"""connect(): attaching to running OpenAI-compatible servers. A stand-in peer plays vLLM /
SGLang (tests/openai_peer.py, with the fixture /metrics pages or none); our own server runs
as a separate process (`python -m jupyter_qwen serve --demo --port P`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from openai_peer import OpenAIPeer
from shells import ipython_shell

from jupyter_qwen.server import registry
from jupyter_qwen.server.handles import attached_servers, kernel_servers
from jupyter_qwen.server.health import read_health
from jupyter_qwen.server.remote import RemoteServerError, connect

FIXTURES = Path(__file__).with_name("fixtures") / "metrics"


@pytest.fixture
def peer():
    started: list[OpenAIPeer] = []

    def start(**kwargs) -> OpenAIPeer:
        started.append(OpenAIPeer(**kwargs).start())
        return started[-1]

    yield start
    for server in attached_servers():
        server.disconnect()
    for one in started:
        one.close()


@pytest.fixture(scope="module")
def shell():
    return ipython_shell()


def rich(captured, mime: str) -> str:
    return "\n".join(out.data.get(mime, "") for out in captured.outputs)


def test_connect_to_a_vllm_like_server_reads_its_metrics(peer):
    vllm = peer(metrics=(FIXTURES / "vllm.txt").read_text())
    server = connect(vllm.root_url)  # without /v1: added
    assert server.url == vllm.url and server.served_model_name == "Qwen/Qwen3-32B"
    stats = server.stats()
    assert stats["origin"] == "remote" and stats["state"] == "ok"
    assert (stats["requests_running"], stats["requests_waiting"]) == (5, 1)
    # percentiles count requests since the first reading (at connect): none finished since
    assert stats["latency"]["requests"] == 0 and stats["latency"]["ttft_p50_s"] is None
    record = registry.get_record(server.record.id)
    assert record.origin == "remote" and record.pid == os.getpid() and record.url == vllm.url
    assert server in kernel_servers()
    server.disconnect()
    assert registry.get_record(server.record.id) is None and server not in kernel_servers()


def test_a_server_without_metrics_still_chats_with_figures_not_reported(peer):
    bare = peer(models=("some-model",))
    server = connect(bare.url)
    stats = server.stats()
    assert stats["state"] == "ok" and "404" in stats["metrics_error"]
    for key in ("requests_running", "kv_cache_usage", "generation_tokens_per_s", "latency"):
        assert key not in stats
    reply = server.chat_model().invoke("hello there")
    assert reply.content == "echo: hello there"
    assert reply.additional_kwargs["reasoning_content"] == "thinking it over"
    chunks = list(server.chat_model().stream("streamed words"))
    assert "".join(c.content for c in chunks) == "echo: streamed words "
    assert "thinking" in "".join(c.additional_kwargs.get("reasoning_content", "")
                                 for c in chunks)


def test_connect_says_why_it_cannot_attach(peer):
    keyed = peer(api_key="sesame", models=("a", "b"))
    with pytest.raises(RemoteServerError, match="wants an API key"):
        connect(keyed.url)
    with pytest.raises(RemoteServerError, match="serves a, b, not 'c'"):
        connect(keyed.url, api_key="sesame", model="c")
    server = connect(keyed.url, api_key="sesame", model="b", name="second")
    assert (server.served_model_name, server.name) == ("b", "second")
    assert server.openai_client().models.list().data[0].id == "a"
    with pytest.raises(RemoteServerError, match="not ours to stop"):
        server.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RemoteServerError, match="cannot reach"):
        connect(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(RemoteServerError, match="not a server URL"):
        connect("localhost:8000")


def test_magics_connect_status_chat_and_refuse_to_stop(shell, peer):
    sglang = peer(models=("Qwen/Qwen3-8B",), metrics=(FIXTURES / "sglang.txt").read_text())
    with capture_output() as attached:
        shell.run_line_magic("qwen_connect", f"{sglang.url} --name big")
    assert "attached big" in attached.stdout
    with capture_output() as status:
        shell.run_line_magic("qwen_status", "")
    table = rich(status, "text/html")
    row = next(line for line in table.split("<tr>") if f"<td>{sglang.url}</td>" in line)
    assert "<td>remote</td>" in row and "<td>7 running · 2 waiting</td>" in row
    assert "<td>42 % in use</td>" in row  # the KV cache share, all /metrics tells of it
    with capture_output() as reply:
        shell.run_cell_magic("qwen", "--server big --no-think", "Hi remote")
    assert "echo: Hi remote" in rich(reply, "text/markdown")
    assert sglang.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}
    with pytest.raises(UsageError, match="not ours to stop"):
        shell.run_line_magic("qwen_stop", "big")
    with pytest.raises(UsageError, match="no server called 'nope'"):
        shell.run_cell_magic("qwen", "--server nope", "Hi")
    with pytest.raises(UsageError, match="cannot reach"):
        shell.run_line_magic("qwen_connect", "http://127.0.0.1:9")


# ---- our own server, as a separate process -----------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def own_server(demo_model):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_qwen", "serve", "--demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while read_health(url[: -len("/v1")]).status != "ok":
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start: {process.stdout.read()}")
        time.sleep(0.5)
    yield url
    if process.poll() is None:
        process.kill()
        process.wait(30)


def test_connect_to_our_server_in_another_process(own_server, shell, peer):
    server = connect(own_server)
    assert server.served_model_name == "qwen3-demo"
    first = server.stats()
    assert first["metric_names"] == "vllm" and first["requests_running"] == 0
    chat = server.chat_model(max_tokens=200, temperature=0)
    whole = chat.invoke("Hello!")
    assert whole.content and whole.additional_kwargs["reasoning_content"]  # reasoning kept
    chunks = list(chat.stream("Hello!"))
    assert "".join(chunk.content for chunk in chunks) == whole.content
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == (
        whole.additional_kwargs["reasoning_content"])
    time.sleep(0.6)  # rates are measured between readings at least 0.5 s apart
    with capture_output() as reply:
        shell.run_cell_magic("qwen", f"--server {own_server} --max-tokens 6", "Hello!")
    assert rich(reply, "text/markdown").strip()
    with capture_output() as status:
        shell.run_line_magic("qwen_status", "")
    row = next(line for line in rich(status, "text/html").split("<tr>")
               if f"<td>{own_server}</td>" in line)
    assert "<td>remote</td>" in row and "<td>ok</td>" in row
    later = server.stats()
    assert later["generation_tokens_total"] > first.get("generation_tokens_total", 0)
    assert later["generation_tokens_per_s"] > 0
    assert later["latency"]["requests"] >= 3 and later["latency"]["ttft_p50_s"] is not None
    # its own record (origin "process") and ours (remote) are both in the registry
    origins = {r.origin for r in registry.list_records() if r.url == own_server}
    assert origins == {"process", "remote"}


def test_sigterm_stops_our_server_cleanly(own_server):  # last: it ends the server
    (record,) = [r for r in registry.list_records()
                 if r.url == own_server and r.origin == "process"]
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while registry.registry_dir().joinpath(f"server-{record.id}.json").exists():
        assert time.monotonic() < deadline, "the record stayed after SIGTERM"
        time.sleep(0.1)

