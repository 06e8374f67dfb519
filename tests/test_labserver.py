"""The Jupyter server extension's REST routes, against a real Jupyter server (pytest-jupyter).

Model servers are played by the stand-in test peer in tests/ui/stand_in_server.py
(threads in this process); JUPYTER_RUNTIME_DIR is a temporary folder (jp_environ).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tornado.httpclient import HTTPClientError

from jupyter_qwen.labserver import handlers
from jupyter_qwen.nvml import GpuInfo, GpuProcess, GpuSnapshot
from jupyter_qwen.server import registry

sys.path.insert(0, str(Path(__file__).with_name("ui")))
from stand_in_server import CLEAN_REPORT, FAILED_ERROR, FAILED_HINT, StandInServer

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"jupyter_qwen.labserver": True}}}


@pytest.fixture
def peers(jp_environ):
    """Start stand-in model servers in this process; all closed at the end."""
    started: list[StandInServer] = []

    def start(**kwargs) -> StandInServer:
        peer = StandInServer(**kwargs).start()
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


async def get_json(jp_fetch, *parts, **kwargs):
    response = await jp_fetch("jupyter-qwen", *parts, **kwargs)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def post_json(jp_fetch, *parts):
    return await get_json(jp_fetch, *parts, method="POST", body="{}")


async def start_notebook_session(jp_fetch, path="work/demo.ipynb") -> tuple[str, int]:
    """A notebook session on the echo kernel; returns (kernel id, kernel pid)."""
    body = {"path": path, "name": "demo.ipynb", "type": "notebook", "kernel": {"name": "echo"}}
    reply = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))
    kernel_id = json.loads(reply.body)["kernel"]["id"]
    kernels = [
        p for p in psutil.Process().children(recursive=True)
        if "pytest_jupyter.echo_kernel" in " ".join(p.cmdline())
    ]
    assert len(kernels) == 1
    return kernel_id, kernels[0].pid


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "gpus"), ("GET", "servers"), ("POST", "servers/aaaaaaaaaaaa/stop"),
     ("POST", "servers/aaaaaaaaaaaa/clean"), ("POST", "servers/aaaaaaaaaaaa/abort")],
)
async def test_unauthenticated_requests_are_refused(jp_fetch, method, path):
    kwargs = {"body": "{}"} if method == "POST" else {}
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("jupyter-qwen", *path.split("/"), method=method,
                       headers={"Authorization": ""}, **kwargs)
    assert err.value.code == 403


# ---- gpus --------------------------------------------------------------------------------


async def test_gpus_on_this_machine(jp_fetch):
    data = await get_json(jp_fetch, "gpus")
    assert set(data) == {"available", "reason", "gpus"}
    if not data["available"]:  # CPU machine
        assert data["gpus"] == [] and data["reason"]


async def test_gpu_processes_are_mapped_to_notebooks(jp_fetch, monkeypatch):
    kernel_id, kernel_pid = await start_notebook_session(jp_fetch)
    snapshot = GpuSnapshot(
        available=True,
        gpus=[GpuInfo(
            index=0, name="NVIDIA H200", uuid="GPU-x", memory_used=10 * 2**30,
            memory_total=141 * 2**30, utilization_gpu=50, temperature_c=40,
            processes=[GpuProcess(kernel_pid, 8 * 2**30), GpuProcess(dead_pid(), None)],
        )],
    )
    monkeypatch.setattr(handlers, "gpu_snapshot", lambda: snapshot)
    data = await get_json(jp_fetch, "gpus")
    assert data["available"] is True and data["reason"] == ""
    (gpu,) = data["gpus"]
    assert {k: gpu[k] for k in ("index", "name", "memory_used", "memory_total",
                                "utilization_gpu", "temperature_c")} == {
        "index": 0, "name": "NVIDIA H200", "memory_used": 10 * 2**30,
        "memory_total": 141 * 2**30, "utilization_gpu": 50, "temperature_c": 40,
    }
    kernel_proc, other = gpu["processes"]
    assert kernel_proc == {"pid": kernel_pid, "used_memory": 8 * 2**30,
                           "kernel_id": kernel_id, "notebook_path": "work/demo.ipynb"}
    assert other["kernel_id"] is None and other["notebook_path"] is None


def test_a_kernels_subprocess_belongs_to_the_kernel():
    assert handlers._owning_kernel(os.getpid(), {os.getppid(): "k1"}) == "k1"
    assert handlers._owning_kernel(os.getpid(), {os.getpid(): "k2"}) == "k2"
    assert handlers._owning_kernel(os.getpid(), {}) is None
    assert handlers._owning_kernel(dead_pid(), {1234567: "k"}) is None


# ---- servers -----------------------------------------------------------------------------


async def test_no_servers(jp_fetch):
    assert await get_json(jp_fetch, "servers") == {"servers": []}


async def test_servers_are_listed_with_health_and_notebook(jp_fetch, peers):
    kernel_id, _ = await start_notebook_session(jp_fetch)
    peer = peers(model="Qwen/Qwen3-0.6B", kernel_id=kernel_id)
    (item,) = (await get_json(jp_fetch, "servers"))["servers"]
    rec = peer.record
    assert "admin_token" not in item
    assert rec.admin_token not in json.dumps(item)
    assert item["id"] == rec.id and item["pid"] == os.getpid()
    assert item["url"] == rec.url and item["root_url"] == rec.root_url
    assert item["proxy_path"] == f"jupyter-qwen/servers/{rec.id}/v1"
    assert item["model"] == "Qwen/Qwen3-0.6B" and item["served_model_name"] == "Qwen3-0.6B"
    assert item["kernel_id"] == kernel_id and item["notebook_path"] == "work/demo.ipynb"
    assert item["status"] == "ok" and item["health_error"] is None
    assert item["engine"]["requests_running"] == 2
    assert item["engine"]["kv_cache_usage"] == 0.25
    assert item["engine"]["generation_tokens_per_s"] == pytest.approx(123.4)


async def test_dead_unreachable_and_stale_servers(jp_fetch, peers):
    dead = peers(model="dead-one")
    dead.status = "dead"  # /health answers 503
    # a record whose process lives (this one) but where nothing listens
    lost = registry.new_record(host="127.0.0.1", port=_free_port(), model="lost-one")
    registry.register(lost)
    # a record whose process is gone: dropped, and its file removed
    stale = registry.new_record(host="127.0.0.1", port=1, model="stale-one", pid=dead_pid())
    stale_path = registry.register(stale)

    servers = (await get_json(jp_fetch, "servers"))["servers"]
    by_model = {s["model"]: s for s in servers}
    assert set(by_model) == {"dead-one", "lost-one"}
    assert by_model["dead-one"]["status"] == "dead"
    assert by_model["lost-one"]["status"] == "unreachable"
    assert by_model["lost-one"]["engine"] is None and by_model["lost-one"]["health_error"]
    assert by_model["lost-one"]["notebook_path"] is None
    assert not stale_path.exists()


async def test_health_figures_of_every_state_are_passed_on(jp_fetch, peers):
    loading, failed, ready = (peers(model=m, state=m) for m in ("loading", "failed", "ok"))
    by_model = {s["model"]: s for s in (await get_json(jp_fetch, "servers"))["servers"]}
    assert by_model["loading"]["status"] == "loading"
    assert by_model["loading"]["loading"] == {"phase": "loading weights", "fraction": 0.4}
    assert by_model["loading"]["engine"] == {"engine_state": "loading"}
    assert "error" not in by_model["loading"] and "hint" not in by_model["loading"]
    assert by_model["failed"]["status"] == "failed"
    assert by_model["failed"]["error"] == FAILED_ERROR
    assert by_model["failed"]["hint"] == FAILED_HINT
    assert "Traceback" in by_model["failed"]["error_detail"]
    ok = by_model["ok"]
    assert (ok["device"], ok["origin"], ok["uptime"]) == ("cpu", "kernel", 754.2)
    assert ok["engine"]["memory"]["kv_blocks_total"] == 512
    assert [r["request_id"] for r in ok["engine"]["running"]] == [
        r["request_id"] for r in ready.running]
    assert by_model["failed"]["id"] == failed.record.id  # the record's fields stay its own
    assert by_model["loading"]["pid"] == loading.record.pid


async def test_remote_servers_are_listed_with_figures_from_their_metrics(jp_fetch, jp_environ):
    from openai_peer import OpenAIPeer

    from jupyter_qwen.server.remote import connect

    fixture = Path(__file__).with_name("fixtures") / "metrics" / "vllm.txt"
    vllm, bare = OpenAIPeer(metrics=fixture.read_text()).start(), OpenAIPeer().start()
    attached = [connect(vllm.url, name="big"), connect(bare.url)]
    try:
        servers = (await get_json(jp_fetch, "servers"))["servers"]
        by_url = {s["url"]: s for s in servers}
        item = by_url[vllm.url]
        assert item["origin"] == "remote" and item["status"] == "ok"
        assert item["pid"] == os.getpid() and item["served_model_name"] == "Qwen/Qwen3-32B"
        assert item["engine"]["requests_running"] == 5
        assert item["engine"]["kv_cache_usage"] == 0.3
        assert item["engine"]["metric_names"] == "vllm"
        # no /metrics: it answers, and its figures are not reported (no keys, no zeros)
        assert by_url[bare.url]["status"] == "ok" and by_url[bare.url]["engine"] == {}
        with pytest.raises(HTTPClientError) as refused:
            await post_json(jp_fetch, "servers", item["id"], "stop")
        assert refused.value.code == 409
    finally:
        for server in attached:
            server.disconnect()
        vllm.close()
        bare.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- stop / clean ------------------------------------------------------------------------


async def test_clean_is_forwarded_with_the_admin_token(jp_fetch, peers):
    peer = peers()
    report = await post_json(jp_fetch, "servers", peer.record.id, "clean")
    assert report == CLEAN_REPORT
    assert peer.calls == [("/admin/clean", peer.record.admin_token)]
    assert not peer.stopped.is_set()


async def test_stop_removes_the_server_from_the_list(jp_fetch, peers):
    keep, peer = peers(model="keep"), peers(model="stop-me")
    assert len((await get_json(jp_fetch, "servers"))["servers"]) == 2
    assert await post_json(jp_fetch, "servers", peer.record.id, "stop") == {"stopped": True}
    assert peer.stopped.wait(5)
    assert peer.calls == [("/admin/stop", peer.record.admin_token)]
    servers = (await get_json(jp_fetch, "servers"))["servers"]
    assert [s["id"] for s in servers] == [keep.record.id]


async def test_abort_is_forwarded_with_the_request_id_and_admin_token(jp_fetch, peers):
    peer = peers()
    reply = await get_json(jp_fetch, "servers", peer.record.id, "abort", method="POST",
                           body=json.dumps({"request_id": "chatcmpl-standin-1"}))
    assert reply == {"aborted": "chatcmpl-standin-1"}
    assert peer.aborted == ["chatcmpl-standin-1"]
    assert peer.calls == [("/admin/abort", peer.record.admin_token)]
    (item,) = (await get_json(jp_fetch, "servers"))["servers"]
    assert [r["request_id"] for r in item["engine"]["running"]] == ["chatcmpl-standin-2"]


async def test_abort_of_an_unknown_request_is_the_servers_404(jp_fetch, peers):
    peer = peers()
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("jupyter-qwen", "servers", peer.record.id, "abort", method="POST",
                       body=json.dumps({"request_id": "chatcmpl-gone"}))
    assert err.value.code == 404
    assert "no running request 'chatcmpl-gone'" in json.loads(err.value.response.body)["message"]
    assert peer.aborted == []


@pytest.mark.parametrize("body", ["{}", "not json", '{"request_id": 3}', '{"request_id": ""}'])
async def test_abort_without_a_request_id_is_400(jp_fetch, peers, body):
    peer = peers()
    with pytest.raises(HTTPClientError) as err:
        await jp_fetch("jupyter-qwen", "servers", peer.record.id, "abort", method="POST",
                       body=body)
    assert err.value.code == 400
    assert peer.calls == []


async def test_unknown_server_is_404(jp_fetch, peers):
    peers()
    for server_id in ("aaaaaaaaaaaa", "not-an-id"):
        with pytest.raises(HTTPClientError) as err:
            await post_json(jp_fetch, "servers", server_id, "stop")
        assert err.value.code == 404
        assert "no running jupyter_qwen server" in json.loads(err.value.response.body)["message"]


async def test_upstream_refusal_is_propagated(jp_fetch, peers):
    peer = peers()
    # a record that points at the peer but holds the wrong admin token
    wrong = registry.new_record(host="127.0.0.1", port=peer.record.port, model="impostor")
    registry.register(wrong)
    with pytest.raises(HTTPClientError) as err:
        await post_json(jp_fetch, "servers", wrong.id, "stop")
    assert err.value.code == 403
    message = json.loads(err.value.response.body)["message"]
    assert "refused stop (HTTP 403)" in message and "wrong admin token" in message
    assert not peer.stopped.is_set()


async def test_unreachable_upstream_is_502(jp_fetch, jp_environ):
    lost = registry.new_record(host="127.0.0.1", port=_free_port(), model="lost-one")
    registry.register(lost)
    with pytest.raises(HTTPClientError) as err:
        await post_json(jp_fetch, "servers", lost.id, "clean")
    assert err.value.code == 502
    assert "did not answer clean" in json.loads(err.value.response.body)["message"]


# ---- packaging ---------------------------------------------------------------------------


def test_extension_points_and_no_torch():
    import jupyter_qwen
    import jupyter_qwen.labserver as labserver

    assert jupyter_qwen._jupyter_server_extension_points() == [{"module": "jupyter_qwen.labserver"}]
    assert labserver._jupyter_server_extension_points() == [{"module": "jupyter_qwen.labserver"}]
    assert jupyter_qwen._jupyter_labextension_paths() == [
        {"src": "labextension", "dest": "jupyter-qwen"}
    ]
    code = "import sys, jupyter_qwen.labserver.handlers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_server_config_enables_the_extension():
    config = Path(__file__).parents[1] / "jupyter-config" / "server-config" / "jupyter_qwen.json"
    data = json.loads(config.read_text())
    assert data == {"ServerApp": {"jpserver_extensions": {"jupyter_qwen.labserver": True}}}
