"""A real JupyterLab for browser tests, and the node scripts (Playwright + Chromium) that drive it.

``start_lab`` starts ``jupyter lab`` behind a base URL (``/user/test/``, as JupyterHub
does) in a temporary home, with news and update checks off and a ``python3`` kernel
spec that runs this interpreter. ``run_script`` runs a labextension/ui-tests script
against it and returns the JSON line it prints. ``MISSING`` says why browser tests
cannot run here (no node, Chromium or playwright-core), or is None.
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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LABEXT = REPO / "labextension"
UI_TESTS = LABEXT / "ui-tests"
BASE_URL = "/user/test/"
TOKEN = "qwen-ui-test-token"


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser"
    )


def _missing() -> str | None:
    if not shutil.which("node"):
        return "node is not installed"
    if not chromium():
        return "chromium is not installed (apt-get install -y chromium)"
    if not (LABEXT / "node_modules" / "playwright-core").is_dir():
        return "labextension/node_modules/playwright-core is missing (run jlpm in labextension/)"
    return None


MISSING = _missing()
if MISSING and os.environ.get("JUPYTER_QWEN_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"the browser tests must run here (JUPYTER_QWEN_REQUIRE_BROWSER=1): "
                       f"{MISSING}")
needs_browser = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def free_port() -> int:
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

    def tree_url(self, path: str) -> str:
        return f"{self.url}lab/tree/{path}?token={TOKEN}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:]


@pytest.fixture
def start_lab(tmp_path):
    """Start JupyterLab at BASE_URL; ``pythonpath`` goes first on the server's PYTHONPATH."""
    labs: list[Lab] = []

    def start(*, pythonpath: Iterable[Path] = (), refresh_ms: int = 1000) -> Lab:
        if not labextension_installed():
            pytest.fail("the jupyter-qwen labextension is not installed: pip install -e .")
        home, root_dir, app_settings = (tmp_path / d for d in ("home", "notebooks",
                                                               "app-settings"))
        for d in (home, root_dir, app_settings):
            d.mkdir()
        (app_settings / "overrides.json").write_text(json.dumps({
            "@jupyterlab/apputils-extension:notification": {
                "checkForUpdates": False, "fetchNews": "false"},
            "jupyter-qwen:plugin": {"refreshInterval": refresh_ms},
        }))
        write_kernel_spec(tmp_path / "data")
        env = dict(
            os.environ,
            HOME=str(home),
            JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
            JUPYTER_DATA_DIR=str(tmp_path / "data"),
            JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
        )
        if use_this_checkouts_build(tmp_path / "checkout"):
            env["JUPYTER_PATH"] = os.pathsep.join(
                p for p in (str(tmp_path / "checkout"), os.environ.get("JUPYTER_PATH")) if p)
        paths = [str(p) for p in pythonpath]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (*paths, os.environ.get("PYTHONPATH")) if p
            )
        port = free_port()
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


def write_kernel_spec(data_dir: Path) -> Path:
    """A ``python3`` kernel spec in ``data_dir`` that runs this interpreter (the venv's)."""
    spec = data_dir / "kernels" / "python3" / "kernel.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python",
        "metadata": {"debugger": True},
    }))
    return spec


def use_this_checkouts_build(data_dir: Path) -> bool:
    """Link this checkout's built labextension (jupyter_qwen/labextension, from ``jlpm
    build``) into ``data_dir``; put that first on JUPYTER_PATH so the lab serves it ahead of
    an installed copy. False when the checkout has no build."""
    built = REPO / "jupyter_qwen" / "labextension"
    if not (built / "package.json").is_file():
        return False
    link = data_dir / "labextensions" / "jupyter-qwen"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(built, target_is_directory=True)
    return True


def _wait_ready(lab: Lab, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.proc.poll() is not None:
            pytest.fail(f"jupyter lab exited:\n{lab.log_tail()}")
        try:
            with api(lab, "api/status", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.3)
    else:
        pytest.fail(f"jupyter lab did not answer in {timeout}s:\n{lab.log_tail()}")
    try:
        api(lab, "jupyter-qwen/servers", timeout=10).close()
    except OSError as err:
        pytest.fail(f"jupyter_qwen.labserver does not answer ({err}): is the package installed "
                    f"(pip install -e .)?\n{lab.log_tail()}")


def labextension_installed(name: str = "jupyter-qwen") -> bool:
    from jupyter_core.paths import jupyter_path

    return any(
        (Path(d) / name / "package.json").is_file() for d in jupyter_path("labextensions")
    )


def api(lab: Lab, path: str, body: dict | None = None, timeout: float = 30):
    """A request to the lab server's REST API (POST with a JSON body when given one)."""
    req = urllib.request.Request(
        f"{lab.url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
    )
    return urllib.request.urlopen(req, timeout=timeout)


def run_script(script: str, out_dir: Path, timeout: float = 300, **env: str) -> dict:
    """Run ui-tests/``script`` with node; ``env`` adds to its environment (LAB_URL, ...)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OUT_DIR=str(out_dir), CHROMIUM=str(chromium()), **env)
    try:
        done = subprocess.run(
            ["node", str(UI_TESTS / script)], cwd=LABEXT, env=env, capture_output=True,
            text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{script} ran past {timeout}s:\n{_text(err.stdout)}\n{_text(err.stderr)}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        pytest.fail(f"{script} printed no result:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def check_theme_and_width_shots(result: dict, overflow: dict, prefix: str = "") -> None:
    """What harness.mjs ``themeAndWidthShots`` saw: a screenshot in light and dark at 1400
    and 900 px, and no text wider than its box in any of them."""
    names = {Path(p).name for p in result["screenshots"]}
    for theme in ("light", "dark"):
        for width in (1400, 900):
            view = f"{prefix}{theme}-{width}"
            assert any(name.endswith(f"-{view}.png") for name in names), (view, names)
            assert overflow[view] == [], f"text overflows in {view}: {overflow[view]}"


def out_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``$JUPYTER_QWEN_UI_OUT``, else the checkout's ``out/`` folder
    (git ignores it; CI keeps it as an artefact)."""
    return Path(os.environ.get("JUPYTER_QWEN_UI_OUT") or REPO / "out")
