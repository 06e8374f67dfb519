"""The "Qwen" sidebar in a real JupyterLab and a real headless Chromium.

Starts ``jupyter lab`` behind a base URL (``/user/test/``, as JupyterHub does), starts a
model server for it to list (``start_model_server``: for now the stand-in test peer in
its own process), then runs labextension/ui-tests/sidebar.mjs (Playwright driving
Debian's Chromium): the panel opens, shows the GPU section, lists the server with its
model name, Clean reports, Stop makes the server leave the list and "Qwen: Stop all
servers" stops the rest. Screenshots land in
``$JUPYTER_QWEN_UI_OUT`` (default: a temporary ``out`` folder); their paths are printed.

A second test gives the server a test double of ``pynvml`` (tests/ui/fake_nvml) so
the GPU cards, sparkline and "which notebook holds memory" render on machines
without a GPU too.

Skipped, with the reason, when node, Chromium or the labextension's node_modules
(playwright-core) are missing; .ci/run installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LABEXT = REPO / "labextension"
SCRIPT = LABEXT / "ui-tests" / "sidebar.mjs"
STAND_IN = Path(__file__).with_name("stand_in_server.py")
FAKE_NVML = Path(__file__).with_name("fake_nvml")
BASE_URL = "/user/test/"
TOKEN = "qwen-ui-test-token"


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser"
    )


def _missing() -> str | None:
    if not shutil.which("node"):
        return "node is not installed"
    if not _chromium():
        return "chromium is not installed (apt-get install -y chromium)"
    if not (LABEXT / "node_modules" / "playwright-core").is_dir():
        return "labextension/node_modules/playwright-core is missing (run jlpm in labextension/)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str  # server root with the base URL, e.g. http://127.0.0.1:8888/user/test/
    env: dict[str, str]  # the environment the server runs in (runtime dir, config dirs)
    root_dir: Path
    proc: subprocess.Popen
    log: Path

    @property
    def lab_url(self) -> str:
        return f"{self.url}lab?token={TOKEN}"


@pytest.fixture
def start_lab(tmp_path):
    """Start JupyterLab at BASE_URL in a temporary home, news and update checks off.

    ``fake_gpu=True`` puts the pynvml test double first on the server's PYTHONPATH.
    """
    labs: list[Lab] = []

    def start(*, fake_gpu: bool = False, refresh_ms: int = 1000) -> Lab:
        if not _labextension_installed():
            pytest.fail("the jupyter-qwen labextension is not installed: pip install -e .")
        home = tmp_path / "home"
        root_dir = tmp_path / "notebooks"
        app_settings = tmp_path / "app-settings"
        for d in (home, root_dir, app_settings):
            d.mkdir()
        (app_settings / "overrides.json").write_text(json.dumps({
            "@jupyterlab/apputils-extension:notification": {
                "checkForUpdates": False, "fetchNews": "false"},
            "jupyter-qwen:plugin": {"refreshInterval": refresh_ms},
        }))
        env = dict(
            os.environ,
            HOME=str(home),
            JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
            JUPYTER_DATA_DIR=str(tmp_path / "data"),
            JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
        )
        if fake_gpu:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(FAKE_NVML), os.environ.get("PYTHONPATH")) if p
            )
        port = _free_port()
        log = tmp_path / "jupyterlab.log"
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--allow-root", "--no-browser",
            f"--port={port}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.base_url={BASE_URL}",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root_dir}",
            f"--LabApp.app_settings_dir={app_settings}",
            f"--LabApp.user_settings_dir={tmp_path / 'user-settings'}",
            f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
            "--LabApp.expose_app_in_browser=True",
        ]
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root_dir
            )
        lab = Lab(url=f"http://127.0.0.1:{port}{BASE_URL}", env=env, root_dir=root_dir,
                  proc=proc, log=log)
        labs.append(lab)
        _wait_ready(lab)
        return lab

    yield start
    for lab in labs:
        lab.proc.terminate()
        try:
            lab.proc.wait(20)
        except subprocess.TimeoutExpired:
            lab.proc.kill()


def _wait_ready(lab: Lab, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.proc.poll() is not None:
            pytest.fail(f"jupyter lab exited:\n{lab.log.read_text()[-3000:]}")
        try:
            with _api(lab, "api/status", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.3)
    else:
        pytest.fail(f"jupyter lab did not answer in {timeout}s:\n{lab.log.read_text()[-3000:]}")
    try:
        _api(lab, "jupyter-qwen/servers", timeout=10).close()
    except OSError as err:
        pytest.fail(f"jupyter_qwen.labserver does not answer ({err}): is the package installed "
                    f"(pip install -e .)?\n{lab.log.read_text()[-3000:]}")


def _labextension_installed() -> bool:
    from jupyter_core.paths import jupyter_path

    return any(
        (Path(d) / "jupyter-qwen" / "package.json").is_file() for d in jupyter_path("labextensions")
    )


def _api(lab: Lab, path: str, body: dict | None = None, timeout: float = 30):
    """A request to the lab server's REST API (POST with a JSON body when given one)."""
    req = urllib.request.Request(
        f"{lab.url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
    )
    return urllib.request.urlopen(req, timeout=timeout)


@dataclass
class ModelServer:
    name: str  # served model name, as the sidebar shows it
    id: str
    proc: subprocess.Popen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_model_server(lab: Lab, model: str) -> ModelServer:
    """Start a model server that ``lab`` should list.

    For now the stand-in test peer, in its own process, registered in lab's runtime
    dir. (To be replaced by a notebook in ``lab.root_dir`` that runs ``%qwen_serve``.)
    """
    proc = subprocess.Popen(
        [sys.executable, str(STAND_IN), "--model", model],
        env=lab.env, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    record = json.loads(proc.stdout.readline())
    return ModelServer(name=record["served_model_name"], id=record["id"], proc=proc)


def run_browser(lab: Lab, out_dir: Path, **options: str) -> dict:
    """Run sidebar.mjs against ``lab``; options: MODEL_NAME, EXPECT_NOTEBOOK, SHOT_PREFIX."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ, LAB_URL=lab.lab_url, OUT_DIR=str(out_dir), CHROMIUM=str(_chromium()),
        **options,
    )
    done = subprocess.run(
        ["node", str(SCRIPT)], cwd=LABEXT, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        pytest.fail(f"browser script printed no result:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])


def _out_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("JUPYTER_QWEN_UI_OUT") or tmp_path / "out")


def _report(result: dict, lab: Lab, capsys) -> None:
    with capsys.disabled():
        print("\nsidebar screenshots:", *result["screenshots"], sep="\n  ")
    assert result["ok"], f"{result.get('error')}\nsteps: {result['steps']}\n" + (
        lab.log.read_text()[-3000:]
    )


def test_sidebar_lists_and_stops_a_server(start_lab, tmp_path, capsys):
    lab = start_lab()
    server = start_model_server(lab, "stand-in/Qwen3-UI")
    other = start_model_server(lab, "stand-in/Qwen3-Other")
    try:
        result = run_browser(lab, _out_dir(tmp_path), MODEL_NAME=server.name, STOP_ALL="1")
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
    lab = start_lab(fake_gpu=True, refresh_ms=300)
    with _api(lab, "api/sessions", {
        "path": "work/gpu-demo.ipynb", "name": "gpu-demo.ipynb", "type": "notebook",
        "kernel": {"name": "python3"},
    }) as reply:
        assert reply.status == 201
    result = run_browser(
        lab, _out_dir(tmp_path), EXPECT_NOTEBOOK="work/gpu-demo.ipynb", SHOT_PREFIX="gpu"
    )
    _report(result, lab, capsys)
    assert result["gpuCards"] == 1 and result["gpuReason"] == ""
    assert "Fake H200 (test double)" in result["gpuTitle"]
    assert "/ 141.0 GiB" in result["gpuMemoryLine"]
    assert result["gpuOwners"] == ["work/gpu-demo.ipynb"]
    assert result["failedRequests"] == []
