"""Our own server in a child process: ``serve(..., process=True)`` and ``%qwen_serve --process``
(torch-free on the parent's side).

The child runs ``python -m jupyter_qwen serve`` with the same flags and registers itself
with origin "process". It dies with its parent: on Linux the kernel signals it when the
parent goes (``prctl(PR_SET_PDEATHSIG)``, set between fork and exec), and a watchdog thread
in the child (`watch_parent`) polls the parent's pid as a fallback. Stopping reads the
child's own memory figures first, so the report says what its exit gave back.
"""

from __future__ import annotations

import contextlib
import ctypes
import html
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_qwen.config import EngineConfig
from jupyter_qwen.format import format_bytes
from jupyter_qwen.options import command_line
from jupyter_qwen.server.errors import ServerStartError
from jupyter_qwen.server.handles import ServerHandle, attach, detach
from jupyter_qwen.server.health import read_health
from jupyter_qwen.server.registry import KERNEL_ID_ENV

PARENT_PID_ENV = "JUPYTER_QWEN_PARENT_PID"
PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.5
EXIT_GRACE_S = 15.0
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0


# ---- the child's side ----------------------------------------------------------------------

def watch_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """In the child: stop (SIGTERM, which `python -m jupyter_qwen serve` turns into a clean
    stop) once `parent_pid` is gone, and exit outright if that takes over EXIT_GRACE_S."""

    def watch() -> None:
        while os.getppid() == parent_pid and _pid_alive(parent_pid):
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(EXIT_GRACE_S)
        os._exit(1)

    thread = threading.Thread(target=watch, name="jupyter-qwen-parent-watch", daemon=True)
    thread.start()
    return thread


def parent_pid_from_env() -> int | None:
    value = os.environ.get(PARENT_PID_ENV, "")
    return int(value) if value.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _die_with_parent(parent_pid: int):
    """A preexec_fn: ask Linux to SIGTERM the child when its parent ends; if the parent is
    already gone, end at once. Linux signals when the *thread* that forked ends, so this is
    asked only from the main thread; elsewhere (and off Linux) the watchdog thread applies."""
    prctl = None
    on_main_thread = threading.current_thread() is threading.main_thread()
    if sys.platform.startswith("linux") and on_main_thread:
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


# ---- the parent's side ---------------------------------------------------------------------

@dataclass(slots=True)
class ProcessStopReport:
    """What stopping a child-process server gave back: its own figures just before."""

    name: str
    pid: int
    exit_code: int | None
    how: str  # "admin stop", "SIGTERM", "SIGKILL", "already gone" or "stopped elsewhere"
    rss_bytes: int | None
    gpu_bytes: int | None  # None: no GPU, or not reported

    def __str__(self) -> str:
        return (f"stopped {self.name} (pid {self.pid}, {self.how}, exit code {self.exit_code}): "
                f"gave back {format_bytes(self.rss_bytes)} of RAM and "
                f"{format_bytes(self.gpu_bytes)} of GPU memory")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(str(self))}</p>"

    __repr__ = __str__


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on `port` now (as ours binds: SO_REUSEADDR, so closed
    connections waiting out TIME_WAIT do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def exit_state(exit_code: int) -> str:
    """A child that exited 0 was stopped (its /admin/stop, e.g. the sidebar's or a card's Stop
    through Jupyter); any other exit is a death."""
    return "stopped" if exit_code == 0 else "dead"


class ProcessServer(ServerHandle):
    """A jupyter_qwen server in a child process of this one."""

    origin = "process"

    def __init__(self, model: str | None, options: dict[str, Any] | None = None, *,
                 demo: bool = False):
        from jupyter_qwen.server.options import ServerOptions, split_options
        from jupyter_qwen.server.security import api_key_for

        options = dict(options or {})
        server_options, _ = split_options(options)  # bad values fail here, not in the child
        host = server_options.host
        options["api_key"] = api_key = api_key_for(server_options.api_key)
        options["port"] = port = server_options.port or free_port(host)
        shown_host = f"[{host}]" if ":" in host else host
        names = server_options.served_model_name
        # until the child registers (then its record's name is taken), a name to show
        served = names[0] if names else "demo" if demo else str(model).rstrip("/").rsplit(
            "/", 1)[-1]
        super().__init__(f"http://{shown_host}:{port}/v1", api_key, served)
        self.host, self.port, self.demo = host, port, demo
        self.argv = [sys.executable, "-m", "jupyter_qwen", "serve",
                     *(["--demo"] if demo else [str(model)]),
                     *command_line(options, ServerOptions, EngineConfig)]
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.stop_report: ProcessStopReport | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def state(self) -> str:
        if self.stop_report is not None:
            return "stopped"
        if self.process is None:
            return "starting"
        if self.process.poll() is not None:
            return exit_state(self.process.returncode)
        return read_health(self.root_url, timeout=2).status

    def start(self, wait: bool = True, timeout: float | None = START_TIMEOUT_S,
              progress: bool = False) -> ProcessServer:
        from jupyter_qwen.server.registry import current_kernel_id

        env = dict(os.environ, **{PARENT_PID_ENV: str(os.getpid())})
        if kernel_id := current_kernel_id():
            env[KERNEL_ID_ENV] = kernel_id
        fd, log = tempfile.mkstemp(prefix="jupyter-qwen-serve-", suffix=".log")
        self.log_path = Path(log)
        with os.fdopen(fd, "wb") as log_file:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        attach(self)
        if wait:
            self.wait_ready(timeout, progress)
        return self

    def wait_ready(self, timeout: float | None = START_TIMEOUT_S,
                   progress: bool = False) -> ProcessServer:
        """Wait until the child answers /health "ok"; ServerStartError with its last output
        when it exits or fails first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                tail = self.output_tail()
                self._forget()
                raise ServerStartError(f"the server process exited with code "
                                       f"{self.process.returncode}: {tail}")
            health = read_health(self.root_url, timeout=2)
            if health.status == "ok":
                break
            if health.status in ("failed", "dead"):
                tail = self.output_tail()
                self.stop()
                raise ServerStartError(f"the server process is {health.status}: {tail}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the server process did not answer within {timeout} s")
            time.sleep(0.1)
        self.chat_variant = (health.engine or {}).get("chat_variant", "unknown")
        self.record = self._find_record()
        if self.record is not None:
            self.served_model_name = self.name = self.record.served_model_name
        return self

    def output_tail(self, lines: int = 20) -> str:
        """The child's last lines of output (its errors, when it failed)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def stats(self) -> dict[str, Any]:
        health = read_health(self.root_url, timeout=2)
        exited = self.process is not None and self.process.poll() is not None
        state = exit_state(self.process.returncode) if exited else health.status
        return {"model": self.served_model_name, "url": self.url, "state": state,
                "origin": self.origin, "pid": self.pid,
                "uptime": time.time() - self.started_at, **(health.engine or {})}

    def stop(self) -> ProcessStopReport:
        """End the child and report the memory it held just before. Safe to call twice."""
        if self.stop_report is not None:
            return self.stop_report
        process = self.process
        if process is None:
            raise RuntimeError("the server process was never started")
        rss, gpu = self._child_memory()
        how = "already gone" if process.poll() is not None else self._end(process)
        self.stop_report = ProcessStopReport(self.served_model_name, process.pid,
                                             process.returncode, how, rss, gpu)
        self._forget()
        return self.stop_report

    def reap(self) -> bool:
        """A child stopped elsewhere (its /admin/stop, e.g. the sidebar's Stop) and exited 0
        is forgotten, as `stop` would; one that died stays listed, "dead", with its output."""
        process = self.process
        if self.stop_report is not None or process is None or process.poll() != 0:
            return False
        self.stop_report = ProcessStopReport(self.served_model_name, process.pid, 0,
                                             "stopped elsewhere", None, None)
        self._forget()
        return True

    def _end(self, process: subprocess.Popen) -> str:
        if self.record is not None and self._admin_stop():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT_S)
                return "admin stop"
        for how, sig, wait in (("SIGTERM", signal.SIGTERM, EXIT_GRACE_S),
                               ("SIGKILL", signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait)
                return how
        return "SIGKILL"

    def _admin_stop(self) -> bool:
        import urllib.request

        request = urllib.request.Request(
            f"{self.root_url}/admin/stop", data=b"{}", method="POST",
            headers={"X-Admin-Token": self.record.admin_token,
                     "Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                return response.status == 200
        except OSError:
            return False

    def _child_memory(self) -> tuple[int | None, int | None]:
        """The child's RSS and GPU memory: its /health memory figures where it reports them,
        else psutil and NVML for its pid."""
        engine = read_health(self.root_url, timeout=2).engine or {}
        memory = engine.get("memory") or {}
        rss, gpu = memory.get("rss_bytes"), memory.get("process_gpu_bytes")
        if rss is None:
            import psutil

            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(self.pid).memory_info().rss
        if gpu is None:
            from jupyter_qwen.nvml import gpu_snapshot

            held = [p.used_memory for g in gpu_snapshot().gpus for p in g.processes
                    if p.pid == self.pid and p.used_memory is not None]
            gpu = sum(held) if held else None
        return rss, gpu

    def _find_record(self):
        from jupyter_qwen.server.registry import list_records

        return next((r for r in list_records() if r.pid == self.pid), None)

    def _forget(self) -> None:
        detach(self)
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


def serve_in_process(model: str | None, progress: bool = True, *, demo: bool = False,
                     **options: Any) -> ProcessServer:
    """Start `model` (or the demo model) in a child process; return once it answers."""
    return ProcessServer(model, options, demo=demo).start(wait=True, progress=progress)
