"""QwenServer: the engine and an OpenAI-compatible HTTP server, both in this process.

The HTTP server (uvicorn) runs in a daemon thread with its own event loop, so it
works inside a Jupyter kernel whose loop is already running; the engine runs in
a thread of its own. The model loads in the background while /health answers
"loading".
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import secrets
import socket
import sys
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_qwen.config import EngineConfig
from jupyter_qwen.server.app import create_app
from jupyter_qwen.server.clients import OpenAIClients
from jupyter_qwen.server.context import ServerContext, engine_figures
from jupyter_qwen.server.errors import ServerStartError
from jupyter_qwen.server.health import read_health
from jupyter_qwen.server.names import model_names
from jupyter_qwen.server.options import (
    OPTIONS_DOC,
    ServerOptions,
    signature_with_options,
    split_options,
)
from jupyter_qwen.server.progress import ProgressBar as _ProgressBar
from jupyter_qwen.server.security import api_key_for, host_policy, other_logged_in_users

if TYPE_CHECKING:
    from jupyter_qwen.memory import CleanReport

log = logging.getLogger("jupyter_qwen.server")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_live_servers: weakref.WeakSet[QwenServer] = weakref.WeakSet()


class QwenServer(OpenAIClients):
    """A running (or starting) model server; see `jupyter_qwen.serve()` for the options."""

    def __init__(self, model: str, *, model_path: Path | None = None, origin: str = "kernel",
                 **options: Any):
        """`model_path`: the folder `find_model(model)` already gave, if it was called;
        `origin`: "kernel", or "process" when this process is the server's own."""
        server_options, engine_options = split_options(options)
        self.options: ServerOptions = server_options
        self.config = EngineConfig.from_kwargs(model, **engine_options)
        self.host = host = server_options.host
        self.hosts = host_policy(host, server_options.allowed_hosts)
        self.api_key = api_key = api_key_for(server_options.api_key)
        self.max_waiting_requests = server_options.max_waiting_requests
        names = model_names(model, server_options.served_model_name, model_path)
        self.ctx = ServerContext(model=str(model), served_model_name=names.primary,
                                 api_key=api_key, admin_token=secrets.token_urlsafe(32),
                                 default_enable_thinking=server_options.enable_thinking,
                                 default_thinking_token_budget=(
                                     server_options.thinking_token_budget),
                                 effort_budgets=server_options.effort_budgets(),
                                 names=names, origin=origin)
        self.ctx.on_release = lambda: self._release().to_dict()
        self.ctx.on_stop = lambda: threading.Thread(target=self.stop, daemon=True).start()
        self.ctx.on_clean = self._clean
        self.model_path = model_path
        self.origin = origin
        self._socket = _bind(host, server_options.port)
        self.port = self._socket.getsockname()[1]
        self.record = None
        self._uvicorn = None
        self._http_thread: threading.Thread | None = None
        self._load_thread: threading.Thread | None = None
        self.load_error: BaseException | None = None
        self.stop_report: CleanReport | None = None  # this process's memory around the stop
        self._stop_lock = threading.Lock()
        if host not in LOOPBACK_HOSTS and api_key is None:
            log.warning("serving on %s without an api_key: anyone who can reach this address "
                        "can use the model", host)
        elif api_key is None and (others := other_logged_in_users()):
            log.warning("serving without an api_key while other users are logged in here "
                        "(%s): they can use this server too; api_key='auto' keeps them out",
                        ", ".join(others))

    @property
    def url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def root_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> str:
        return self.ctx.status

    @property
    def loading(self) -> tuple[str, float | None]:
        """The loading phase and its progress (0 to 1, or None when unknown)."""
        return self.ctx.loading_phase, self.ctx.loading_fraction

    @property
    def served_model_name(self) -> str:
        return self.ctx.served_model_name

    @property
    def model(self) -> str:
        return self.ctx.model

    @property
    def chat_variant(self) -> str:
        """How the model's chat template thinks: "hybrid", "instruct-2507", "thinking-2507"
        or "unknown" (see `jupyter_qwen.server.variants`); "unknown" until it loads."""
        return self.ctx.chat_variant

    @property
    def admin_token(self) -> str:
        return self.ctx.admin_token

    def start(self, wait: bool = True, timeout: float | None = None,
              progress: bool = True) -> QwenServer:
        self._start_http()
        self._register()
        _live_servers.add(self)
        self._load_thread = threading.Thread(target=self._load, name="jupyter-qwen-loader",
                                             daemon=True)
        self._load_thread.start()
        if wait:
            self.wait_ready(timeout, progress)
        return self

    def wait_ready(self, timeout: float | None = None, progress: bool = True) -> QwenServer:
        deadline = None if timeout is None else time.monotonic() + timeout
        with _ProgressBar(progress) as bar:
            while self.ctx.state == "loading":
                bar.update(self.ctx.loading_phase, self.ctx.loading_fraction)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"the model did not load within {timeout} s")
                time.sleep(0.05)
            bar.update("ready" if self.ctx.state == "ok" else self.ctx.state, 1.0)
        if self.load_error is not None:
            raise self.load_error
        if self._stopped_while_starting():
            return self
        if self.ctx.state != "ok":
            raise ServerStartError(f"the server is {self.ctx.state}: {self.ctx.error}")
        health = read_health(self.root_url, timeout=10)
        if not health.ok and not self._stopped_while_starting():
            raise ServerStartError(f"/health answered {health.code or health.error}: "
                                   f"{health.body}")
        return self

    def _stopped_while_starting(self) -> bool:
        """A stop came in while `wait_ready` waited (its /admin/stop as soon as /health said
        ok, say): the start did not fail, the server is just no longer serving."""
        return self.ctx.state in ("stopping", "stopped") and self.ctx.error is None

    def stop(self) -> CleanReport | None:
        """Stop serving and release the engine's memory. Safe to call more than once;
        returns this process's memory before and after the first stop (RSS, torch's
        reserved and allocated bytes, NVML's figure for this process)."""
        try:
            self._release()
        finally:
            with self._stop_lock:
                if self.ctx.state != "stopped":
                    self._stop_http()
                    self._unregister()
                    self.ctx.state = "stopped"
        return self.stop_report

    def _release(self) -> CleanReport:
        """Stop the engine and give its memory back (once); `/health` says "stopping"
        meanwhile and the HTTP side keeps answering until `stop()` ends it."""
        from jupyter_qwen.memory import collect, snapshot

        with self._stop_lock:
            if self.stop_report is not None:
                return self.stop_report
            before = snapshot()
            if self.ctx.state != "stopped":
                self.ctx.state = "stopping"
            if self._load_thread is not None:
                self._load_thread.join()
            engine, self.ctx.engine = self.ctx.engine, None
            try:
                if engine is not None:
                    engine.stop()
            finally:
                del engine
                self.stop_report = collect()
                self.stop_report.before = before
            return self.stop_report

    def abort(self, request_id: str) -> bool:
        """End a running or waiting request (its client's stream ends with finish_reason
        "abort", its KV blocks go back); False when no such request is in flight."""
        engine = self.ctx.engine
        if engine is None or engine.state != "running":
            return False
        return engine.abort_request(request_id)

    def running_requests(self) -> list[dict]:
        """The requests in flight, as `/health` lists them in `engine["running"]`."""
        engine = self.ctx.engine
        return (engine.running_requests() if engine is not None else None) or []

    def stats(self) -> dict[str, Any]:
        figures = engine_figures(self.ctx)
        return {"model": self.served_model_name, "url": self.url, "state": self.state,
                "uptime": time.time() - self.ctx.started_at, "gpu_memory": _torch_reserved(),
                **figures}

    def proxy_url(self, jupyter_url: str) -> str:
        """This server's OpenAI base URL through the Jupyter server at `jupyter_url` (its
        address with the base URL, e.g. "https://hub.example/user/me/"): reachable wherever
        Jupyter is, with the Jupyter token as API key. The Jupyter server must run
        jupyter_qwen's server extension on the machine this server runs on."""
        if self.record is None:
            raise RuntimeError("the server has no registry record yet (call start() first), "
                               "so Jupyter cannot proxy it")
        from jupyter_qwen.server.registry import proxy_path

        return f"{jupyter_url.rstrip('/')}/{proxy_path(self.record.id)}"

    def __repr__(self) -> str:
        return f"QwenServer({self.served_model_name!r}, url={self.url!r}, state={self.state!r})"

    def _start_http(self) -> None:
        import uvicorn

        config = uvicorn.Config(create_app(self.ctx, self.hosts), log_level="warning",
                                access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2,
                                timeout_keep_alive=30)
        self._uvicorn = uvicorn.Server(config)
        self._http_thread = threading.Thread(
            target=lambda: _run_loop(self._uvicorn.serve(sockets=[self._socket])),
            name=f"jupyter-qwen-http-{self.port}", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise ServerStartError(f"the HTTP server did not start on {self.root_url}")
            time.sleep(0.01)

    def _stop_http(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(timeout=10)
        self._socket.close()

    def _load(self) -> None:
        from jupyter_qwen.engine.async_engine import AsyncEngine
        from jupyter_qwen.engine.llm_engine import LLMEngine
        from jupyter_qwen.engine.memory_figures import device_name
        from jupyter_qwen.engine.model_runner import resolve_device

        try:
            self.ctx.device = device_name(resolve_device(self.config.device))
            self.model_path = self.model_path or find_model(self.config.model)
            self.ctx.names = model_names(self.model, self.options.served_model_name,
                                         self.model_path)
            config = replace(self.config, model=str(self.model_path))
            engine = LLMEngine(config, progress=self._on_progress)
        except BaseException as error:
            self.load_error = error
            self.ctx.fail(error)
            return
        self.ctx.default_sampling = default_sampling(engine.model_path)
        self.ctx.chat_variant = chat_variant_of(engine.tokenizer, self.options.enable_thinking)
        if self.ctx.state == "stopping":
            engine.close()
            return
        self.ctx.engine = AsyncEngine(engine, self.max_waiting_requests)
        self.ctx.state = "ok"

    def _on_progress(self, phase: str, fraction: float | None) -> None:
        self.ctx.loading_phase, self.ctx.loading_fraction = phase, fraction

    def _clean(self) -> dict:
        from jupyter_qwen.memory import collect

        return collect().to_dict()

    def _register(self) -> None:
        from jupyter_qwen.server import registry

        self.record = registry.new_record(
            host=self.host, port=self.port, url=self.url, model=self.model,
            served_model_name=self.served_model_name, admin_token=self.admin_token,
            api_key_required=self.api_key is not None, origin=self.origin,
            api_key=self.api_key)
        try:
            registry.register(self.record)
        except OSError as error:
            log.warning("could not write the server registry record: %s", error)

    def _unregister(self) -> None:
        from jupyter_qwen.server import registry

        if self.record is not None:
            registry.unregister(self.record.id)


def _torch_reserved() -> int | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.memory_reserved()


def find_model(model: str) -> Path:
    """The checkpoint folder of `model` (a folder, or a Hugging Face id found in the cache or
    on the hub); ModelNotFoundError when there is none."""
    from jupyter_qwen.model.loader import resolve_model_path

    return resolve_model_path(model)


def running_servers() -> list[QwenServer]:
    """Servers of this process that are loading or serving, oldest first."""
    alive = [s for s in _live_servers if s.state not in ("stopping", "stopped")]
    return sorted(alive, key=lambda server: server.ctx.started_at)


def serve(model: str, progress: bool = True, process: bool = False, **options: Any):
    """Start a server for `model` and return once it answers /health.

    `model` is a Hugging Face id or a checkpoint folder; `progress` shows the loading
    phases. `process=True` runs it in a child process (`python -m jupyter_qwen serve` with
    the same options) that ends with this one, and returns a `ProcessServer` handle.
    Options (ValueError naming the option for a bad value):

    {options}
    """
    if process:
        from jupyter_qwen.server.process import serve_in_process

        find_model(str(model))  # a model that is nowhere fails here, not in the child
        return serve_in_process(str(model), progress, **options)
    return start_serving(QwenServer(model, model_path=find_model(str(model)), **options),
                         progress)


def start_serving(server: QwenServer, progress: bool = True) -> QwenServer:
    """Start `server` and return once it answers /health; stop it again when it fails."""
    try:
        return server.start(wait=True, progress=progress)
    except BaseException:
        server.stop()
        raise


serve.__doc__ = serve.__doc__.format(options=OPTIONS_DOC.strip())
QwenServer.__init__.__signature__ = signature_with_options(QwenServer.__init__)
serve.__signature__ = signature_with_options(serve)


def default_sampling(model_path) -> dict:
    """Sampling defaults from the checkpoint's generation_config.json."""
    path = model_path / "generation_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    if not config.get("do_sample", False):
        return {"temperature": 0.0}
    names = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
    return {name: config[name] for name in names if config.get(name) is not None}


def _run_loop(coroutine) -> None:
    """Run the HTTP server's loop in this thread: uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def _bind(host: str, port: int | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port or 0))
    except OSError as error:
        sock.close()
        raise ServerStartError(f"cannot listen on {host}:{port}: {error.strerror or error}",
                               field="port") from None
    return sock


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_live_servers):
        try:
            server.stop()
        except Exception:
            log.exception("stopping %r at exit failed", server)


def chat_variant_of(tokenizer, default_enable_thinking: bool) -> str:
    """The chat template's variant (see `jupyter_qwen.server.variants`), logged, with a
    warning when the server's default thinking setting cannot apply to it."""
    from jupyter_qwen.server.variants import detect_chat_variant, thinking_warning

    variant = detect_chat_variant(tokenizer)
    log.info("chat template variant: %s", variant)
    thinking_warning(variant, default_enable_thinking if variant == "thinking-2507" else None)
    return variant
