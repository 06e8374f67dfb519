"""The "Qwen" sidebar in a real JupyterLab and a real headless Chromium.

Starts ``jupyter lab`` behind a base URL (``/user/test/``, as JupyterHub does), starts a
model server for it to list (``start_model_server``: for now the stand-in test peer in
its own process), then runs labextension/ui-tests/sidebar.mjs (Playwright driving
Debian's Chromium): the panel opens, shows the GPU section, lists the server with its
model name, Clean reports, Stop makes the server leave the list and "Qwen: Stop all
servers" stops the rest. Screenshots land in
``$JUPYTER_QWEN_UI_OUT`` (default: ``out/`` of the checkout); their paths are printed.

A second test gives the server a test double of ``pynvml`` (tests/ui/fake_nvml) so
the GPU cards, sparkline and "which notebook holds memory" render on machines
without a GPU too.

Skipped, with the reason, when node, Chromium or the labextension's node_modules
(playwright-core) are missing; .ci/run installs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import lab
from lab import Lab, api, needs_browser, out_dir, run_script
from model_servers import start_model_server

start_lab = lab.start_lab
FAKE_NVML = Path(__file__).with_name("fake_nvml")
pytestmark = needs_browser


def run_browser(lab: Lab, out: Path, **options: str) -> dict:
    """Run sidebar.mjs against ``lab``; options: MODEL_NAME, EXPECT_NOTEBOOK, SHOT_PREFIX."""
    return run_script("sidebar.mjs", out, LAB_URL=lab.lab_url, **options)


def _report(result: dict, lab: Lab, capsys) -> None:
    with capsys.disabled():
        print("\nsidebar screenshots:", *result["screenshots"], sep="\n  ")
    assert result["ok"], f"{result.get('error')}\nsteps: {result['steps']}\n" + (
        lab.log_tail()
    )


def test_sidebar_lists_and_stops_a_server(start_lab, tmp_path, capsys):
    lab = start_lab()
    server = start_model_server(lab, "stand-in/Qwen3-UI")
    other = start_model_server(lab, "stand-in/Qwen3-Other")
    try:
        result = run_browser(lab, out_dir(tmp_path), MODEL_NAME=server.name, STOP_ALL="1")
        _report(result, lab, capsys)
        assert result["tabHasIcon"]
        assert dict(result["commands"]) == {
            "jupyter-qwen:open-panel": "Qwen: Open GPU panel",
            "jupyter-qwen:stop-all": "Qwen: Stop all servers",
        }
        from jupyter_qwen.nvml import gpu_snapshot

        if gpu_snapshot().available:
            assert result["gpuCards"] >= 1
        else:
            assert result["gpuCards"] == 0 and "No GPU information" in result["gpuReason"]
        assert result["serverId"] == server.id
        assert result["serverUrl"].startswith("http://127.0.0.1:")
        assert result["snippet"] == (
            f'ChatOpenAI(base_url="{result["serverUrl"]}", api_key="EMPTY", model="{server.name}")'
        )
        assert "2 running" in result["stats"] and "KV 25 %" in result["stats"]
        assert result["status"] == "ok"
        assert "Cleaned Qwen3-UI" in result["cleanToast"]
        assert "torch reserved 4.0 GiB → 1.0 GiB" in result["cleanToast"]
        assert result["serversAfterStop"] == 1  # the other one
        assert result["serversAfterStopAll"] == 0 and result["noServersNote"] == 1
        assert result["failedRequests"] == []
        assert not [e for e in result["pageErrors"] if "qwen" in e.lower()]
        # the stand-ins stopped for real: their processes ended and their records are gone
        assert server.proc.wait(10) == 0 and other.proc.wait(10) == 0
        runtime = Path(lab.env["JUPYTER_RUNTIME_DIR"]) / "jupyter_qwen"
        assert not list(runtime.glob("server-*.json"))
        for shot in result["screenshots"]:
            assert Path(shot).stat().st_size > 10_000
    finally:
        server.close()
        other.close()


def test_sidebar_gpu_cards_with_a_fake_nvml(start_lab, tmp_path, capsys):
    lab = start_lab(pythonpath=[FAKE_NVML], refresh_ms=300)
    with api(lab, "api/sessions", {
        "path": "work/gpu-demo.ipynb", "name": "gpu-demo.ipynb", "type": "notebook",
        "kernel": {"name": "python3"},
    }) as reply:
        assert reply.status == 201
    result = run_browser(
        lab, out_dir(tmp_path), EXPECT_NOTEBOOK="work/gpu-demo.ipynb", SHOT_PREFIX="gpu"
    )
    _report(result, lab, capsys)
    assert result["gpuCards"] == 1 and result["gpuReason"] == ""
    assert "Fake H200 (test double)" in result["gpuTitle"]
    assert "/ 141.0 GiB" in result["gpuMemoryLine"]
    assert result["gpuOwners"] == ["work/gpu-demo.ipynb"]
    assert result["failedRequests"] == []


def test_sidebar_lists_the_server_a_notebook_started(start_lab, tmp_path, capsys, demo_model):
    """A notebook of this lab runs `%qwen_serve --demo`; the sidebar shows that server with
    the notebook's path, and its Stop button really stops the server in that kernel."""
    from jupyter_client import BlockingKernelClient

    lab = start_lab()
    with api(lab, "api/sessions", {"path": "serving.ipynb", "name": "serving.ipynb",
                                   "type": "notebook", "kernel": {"name": "python3"}}) as reply:
        kernel_id = json.loads(reply.read())["kernel"]["id"]
    client = BlockingKernelClient(
        connection_file=str(Path(lab.env["JUPYTER_RUNTIME_DIR"]) / f"kernel-{kernel_id}.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        code = ("import os\nos.environ['JUPYTER_QWEN_CACHE'] = "
                f"{str(demo_model.parent)!r}\n%load_ext jupyter_qwen\n%qwen_serve --demo\n"
                "qwen_server.wait_ready(progress=False)")
        reply = client.execute_interactive(code, timeout=180)
        assert reply["content"]["status"] == "ok", reply["content"]
        result = run_browser(lab, out_dir(tmp_path), MODEL_NAME="qwen3-demo",
                             SHOT_PREFIX="notebook")
        _report(result, lab, capsys)
        assert result["serverNotebook"].strip() == "serving.ipynb"
        assert result["status"] == "ok" and "Cleaned qwen3-demo" in result["cleanToast"]
        assert result["serversAfterStop"] == 0
        printed = _Capture()
        state = client.execute_interactive("print(qwen_server.state)", timeout=30,
                                           output_hook=printed)
        assert state["content"]["status"] == "ok" and printed.text.strip() == "stopped"
    finally:
        client.stop_channels()


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def __call__(self, message: dict) -> None:
        if message["msg_type"] == "stream":
            self.text += message["content"]["text"]
