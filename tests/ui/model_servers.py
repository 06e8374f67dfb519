"""Model servers for the browser tests to list: the stand-in test peer (stand_in_server.py,
any /health state) and the real demo server (``python -m jupyter_qwen serve --demo``), each in
its own process, registered in the lab's runtime dir."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lab import Lab

STAND_IN = Path(__file__).with_name("stand_in_server.py")


@dataclass
class ModelServer:
    name: str  # served model name, as the sidebar shows it
    id: str
    proc: subprocess.Popen
    url: str | None = None  # OpenAI base URL (".../v1"), where the test talks to it directly

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_model_server(lab: Lab, model: str, state: str = "ok", origin: str = "kernel",
                       kernel_id: str | None = None, device: str = "cpu") -> ModelServer:
    """Start a stand-in model server that ``lab`` should list, answering /health for
    ``state`` ("ok", "loading", "failed", "dead")."""
    proc = subprocess.Popen(
        [sys.executable, str(STAND_IN), "--model", model, "--state", state, "--origin", origin,
         "--device", device,
         *(["--kernel-id", kernel_id] if kernel_id else [])],
        env=lab.env, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    record = json.loads(proc.stdout.readline())
    return ModelServer(name=record["served_model_name"], id=record["id"], proc=proc)


def start_demo_server(lab: Lab, demo_cache: Path) -> ModelServer:
    """The real demo model server, on CPU, in its own process; returns once it serves."""
    env = dict(lab.env, JUPYTER_QWEN_CACHE=str(demo_cache), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_qwen", "serve", "--demo"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    printed = []
    for line in proc.stdout:  # "serving qwen3-demo at http://... on cpu (Ctrl-C stops)"
        printed.append(line)
        if line.startswith("serving "):
            break
    else:
        raise AssertionError(f"the demo server did not start:\n{''.join(printed)}")
    runtime = Path(lab.env["JUPYTER_RUNTIME_DIR"]) / "jupyter_qwen"
    records = [json.loads(f.read_text()) for f in runtime.glob("server-*.json")]
    (record,) = [r for r in records if r["pid"] == proc.pid]
    return ModelServer(name=record["served_model_name"], id=record["id"], proc=proc,
                       url=record["url"])
