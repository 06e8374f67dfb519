"""The model-server registry: records in <runtime dir>/jupyter_qwen/server-<id>.json."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import types

import pytest

from jupyter_qwen.server import registry
from jupyter_qwen.server.registry import ServerRecord


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    path = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(path))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_new_record_fills_identity_fields():
    before = time.time()
    rec = registry.new_record(host="127.0.0.1", port=8123, model="Qwen/Qwen3-0.6B")
    assert len(rec.id) == 12 and int(rec.id, 16) >= 0
    assert rec.pid == os.getpid()
    assert rec.url == "http://127.0.0.1:8123/v1"
    assert rec.root_url == "http://127.0.0.1:8123"
    assert rec.served_model_name == "Qwen3-0.6B"
    assert before <= rec.started_at <= time.time()
    assert rec.kernel_id is None  # pytest is no kernel
    assert len(rec.admin_token) >= 32
    assert rec.api_key_required is False
    assert rec.version
    other = registry.new_record(host="127.0.0.1", port=8123, model="m")
    assert other.id != rec.id and other.admin_token != rec.admin_token


def test_new_record_explicit_fields_win_and_unknown_fields_fail():
    rec = registry.new_record(
        host="0.0.0.0", port=9000, model="/models/qwen", served_model_name="qwen",
        url="http://10.0.0.5:9000/v1", kernel_id="abc", api_key_required=True,
    )
    assert (rec.url, rec.served_model_name, rec.kernel_id, rec.api_key_required) == (
        "http://10.0.0.5:9000/v1", "qwen", "abc", True,
    )
    with pytest.raises(TypeError, match="colour"):
        registry.new_record(host="h", port=1, model="m", colour="red")


def test_register_list_unregister(runtime_dir):
    rec = registry.new_record(host="127.0.0.1", port=8123, model="m")
    path = registry.register(rec)
    assert path == runtime_dir / "jupyter_qwen" / f"server-{rec.id}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == rec.to_dict()
    assert registry.list_records() == [rec]
    assert registry.get_record(rec.id) == rec
    # no temporary files left behind
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    registry.unregister(rec.id)
    assert not path.exists()
    assert registry.list_records() == []
    assert registry.get_record(rec.id) is None
    registry.unregister(rec.id)  # a second time is fine


def test_register_replaces_atomically():
    rec = registry.new_record(host="127.0.0.1", port=8123, model="m")
    registry.register(rec)
    rec.port = 8124
    registry.register(rec)
    assert [r.port for r in registry.list_records()] == [8124]


def test_records_sorted_oldest_first():
    recs = [registry.new_record(host="h", port=p, model="m", started_at=1000.0 - p)
            for p in (1, 2, 3)]
    for rec in recs:
        registry.register(rec)
    assert [r.port for r in registry.list_records()] == [3, 2, 1]


def test_corrupt_and_foreign_files_are_skipped(runtime_dir):
    good = registry.new_record(host="127.0.0.1", port=8123, model="m")
    registry.register(good)
    d = runtime_dir / "jupyter_qwen"
    (d / "server-aaaaaaaaaaaa.json").write_text("{not json")
    (d / "server-bbbbbbbbbbbb.json").write_text(json.dumps({"id": "bbbbbbbbbbbb", "pid": 1}))
    (d / "server-cccccccccccc.json").write_text("[1, 2]")
    bad_id = good.to_dict() | {"id": "../../etc"}
    (d / "server-dddddddddddd.json").write_text(json.dumps(bad_id))
    (d / "notes.txt").write_text("hello")
    assert registry.list_records() == [good]


def test_from_dict_ignores_unknown_keys():
    rec = registry.new_record(host="127.0.0.1", port=8123, model="m")
    assert ServerRecord.from_dict(rec.to_dict() | {"future_field": 1}) == rec
    assert "admin_token" not in rec.to_dict(public=True)


def test_origin_is_read_from_older_records_as_kernel():
    rec = registry.new_record(host="127.0.0.1", port=8123, model="m")
    assert rec.origin == "kernel" and rec.to_dict(public=True)["origin"] == "kernel"
    older = rec.to_dict()
    del older["origin"]  # written before records had an origin
    assert ServerRecord.from_dict(older).origin == "kernel"
    remote = registry.new_record(host="gpu-node", port=8000, model="m", origin="remote")
    assert ServerRecord.from_dict(remote.to_dict()).origin == "remote"
    with pytest.raises(ValueError, match="origin"):
        ServerRecord.from_dict(rec.to_dict() | {"origin": "elsewhere"})


def test_a_child_server_names_the_kernel_that_started_it(monkeypatch):
    monkeypatch.setenv(registry.KERNEL_ID_ENV, "kernel-abc")
    assert registry.new_record(host="127.0.0.1", port=1, model="m").kernel_id == "kernel-abc"


def test_the_api_key_is_kept_for_the_proxy_but_never_public():
    plain = registry.new_record(host="127.0.0.1", port=8123, model="m")
    assert plain.api_key is None
    keyed = registry.new_record(host="127.0.0.1", port=8124, model="m", api_key="sekret-key",
                                api_key_required=True)
    path = registry.register(keyed)
    assert registry.get_record(keyed.id).api_key == "sekret-key"
    assert "sekret-key" in path.read_text() and path.stat().st_mode & 0o777 == 0o600
    public = keyed.to_dict(public=True)
    assert "api_key" not in public and "admin_token" not in public
    assert public["api_key_required"] is True
    # records written before the key was kept still read
    old = {k: v for k, v in keyed.to_dict().items() if k != "api_key"}
    assert ServerRecord.from_dict(old).api_key is None
    assert registry.proxy_path(keyed.id) == f"jupyter-qwen/servers/{keyed.id}/v1"


def test_dead_pid_records_are_ignored_and_optionally_pruned():
    rec = registry.new_record(host="127.0.0.1", port=8123, model="m", pid=_dead_pid())
    path = registry.register(rec)
    assert not registry.pid_alive(rec.pid)
    assert registry.list_records() == []
    assert registry.get_record(rec.id) is None
    assert path.exists()
    assert registry.list_records(prune=True) == []
    assert not path.exists()


def test_pid_alive():
    assert registry.pid_alive(os.getpid())
    assert not registry.pid_alive(0)
    assert not registry.pid_alive(_dead_pid())


def test_missing_runtime_dir_lists_nothing(runtime_dir):
    assert not runtime_dir.exists()
    assert registry.list_records() == []


def test_bad_ids_are_refused():
    with pytest.raises(ValueError):
        registry.unregister("../../x")
    assert registry.get_record("../../x") is None


def test_current_kernel_id_from_connection_file(monkeypatch):
    assert registry.current_kernel_id() is None

    class FakeApp:
        connection_file = "/run/jupyter/kernel-6f1c1e6a-1234-4d4b-9a43-0123456789ab.json"

        @classmethod
        def initialized(cls):
            return True

        @classmethod
        def instance(cls):
            return cls()

    fake = types.ModuleType("ipykernel.kernelapp")
    fake.IPKernelApp = FakeApp
    monkeypatch.setitem(sys.modules, "ipykernel.kernelapp", fake)
    assert registry.current_kernel_id() == "6f1c1e6a-1234-4d4b-9a43-0123456789ab"
    rec = registry.new_record(host="h", port=1, model="m")
    assert rec.kernel_id == "6f1c1e6a-1234-4d4b-9a43-0123456789ab"

    FakeApp.initialized = classmethod(lambda cls: False)
    assert registry.current_kernel_id() is None


def test_current_kernel_id_in_a_real_kernel(tmp_path):
    """Inside a real ipykernel whose connection file is named like Jupyter server's."""
    import uuid

    from jupyter_client.manager import KernelManager

    kernel_id = str(uuid.uuid4())
    connection_file = tmp_path / f"kernel-{kernel_id}.json"
    km = KernelManager(kernel_name="python3", connection_file=str(connection_file))
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        code = "from jupyter_qwen.server import registry; print(registry.current_kernel_id())"
        out: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        kc.execute_interactive(code, timeout=60, output_hook=hook)
        assert "".join(out).strip() == kernel_id
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_registry_module_is_torch_free():
    code = (
        "import sys; import jupyter_qwen.server.registry, jupyter_qwen.nvml; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
