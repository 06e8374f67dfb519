"""`connect()`: attach to a running OpenAI-compatible server (vLLM, SGLang, or a jupyter_qwen
server of another process or host), torch-free.

The server joins this kernel's servers (``%qwen_status``, ``%%qwen --server``) and the
registry, with origin "remote" and this process's pid, so the sidebar lists it while the
kernel lives. Its live figures come from its Prometheus ``/metrics`` (`server/scrape.py`);
a server without one still chats, with its figures "not reported". It is not ours to stop.
"""

from __future__ import annotations

import atexit
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from jupyter_qwen.server.handles import ServerHandle, attach, detach
from jupyter_qwen.server.health import UNREACHABLE, Health
from jupyter_qwen.server.scrape import MetricsReader

CONNECT_TIMEOUT_S = 10.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RemoteServerError(RuntimeError):
    """A remote server could not be attached, or was asked for what only its owner does."""


def api_url(url: str) -> str:
    """The OpenAI base URL (ending in /v1) of `url` given with or without /v1."""
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteServerError(f"not a server URL: {url!r} (give e.g. http://host:8000/v1)")
    return url if url.endswith("/v1") else f"{url}/v1"


def _get_json(url: str, api_key: str | None, timeout: float) -> Any:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(url, headers=headers)
    with _NO_PROXY.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def list_models(url: str, api_key: str | None, timeout: float = CONNECT_TIMEOUT_S) -> list[str]:
    """The model ids `GET {url}/models` lists; RemoteServerError saying why when it fails."""
    try:
        data = _get_json(f"{url}/models", api_key, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise RemoteServerError(
                f"{url} wants an API key: connect({url!r}, api_key=...)"
                + (" (the one given was refused)" if api_key else "")) from None
        raise RemoteServerError(f"{url}/models answered HTTP {error.code}: no OpenAI-compatible "
                                "server there?") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise RemoteServerError(f"cannot reach {url}: {reason}") from None
    models = [item.get("id") for item in (data or {}).get("data", []) if isinstance(item, dict)]
    return [str(model) for model in models if model]


class RemoteServer(ServerHandle):
    """A server this kernel talks to but does not own (see `connect`)."""

    origin = "remote"

    def __init__(self, url: str, api_key: str | None, served_model_name: str,
                 name: str | None = None, models: tuple[str, ...] = ()):
        super().__init__(url, api_key, served_model_name, name)
        self.models = models
        self.reader = MetricsReader(self.root_url)
        self._state = "ok"

    @property
    def state(self) -> str:
        return self._state

    def health(self, timeout: float = 2.0) -> Health:
        """Status and engine figures, from /metrics (or only whether it answers)."""
        health = probe(self.reader, self.api_key, timeout)
        if self._state != "disconnected":
            self._state = health.status
        return health

    def stats(self) -> dict[str, Any]:
        health = self.health()
        return {"model": self.served_model_name, "url": self.url, "state": self.state,
                "origin": self.origin, "name": self.name, "metrics_error": health.error,
                **(health.engine or {})}

    def stop(self) -> None:
        raise RemoteServerError(
            f"{self.name} at {self.url} is a remote server: not ours to stop. Stop it where it "
            "runs; disconnect() only forgets it here")

    def disconnect(self) -> None:
        """Forget this server here: out of %qwen_status, the registry and the sidebar."""
        from jupyter_qwen.server import registry

        detach(self)
        if self.record is not None:
            registry.unregister(self.record.id)
        self._state = "disconnected"

    def _register(self) -> None:
        from jupyter_qwen.server import registry

        parts = urllib.parse.urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.record = registry.new_record(
            host=parts.hostname or "", port=port, url=self.url, model=self.served_model_name,
            served_model_name=self.served_model_name, admin_token="",
            api_key_required=self.api_key is not None, api_key=self.api_key, version="",
            origin="remote", started_at=self.started_at)  # the key: for the Jupyter proxy
        try:
            registry.register(self.record)
        except OSError:
            self.record = None


def probe(reader: MetricsReader, api_key: str | None = None, timeout: float = 2.0) -> Health:
    """A remote server's health as /health would say it: figures from /metrics when it has
    them; without them "ok" if it answers HTTP at all, else "unreachable"."""
    figures = reader.read(timeout)
    if figures is not None:
        return Health("ok", engine=figures, code=200)
    try:
        list_models(f"{reader.root_url}/v1", api_key, timeout)
    except RemoteServerError as error:
        if "cannot reach" in str(error):
            return Health(UNREACHABLE, error=str(error))
    return Health("ok", engine={}, error=reader.error)


def connect(url: str, api_key: str | None = None, model: str | None = None,
            name: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> RemoteServer:
    """Attach to a running OpenAI-compatible server and return its handle.

    `url`: the server's address, with or without ``/v1`` (``http://host:8000``).
    `api_key`: what its ``--api-key`` asks for. `model`: which of the models it lists to
    talk to (default: the first). `name`: what ``%%qwen --server`` and ``%qwen_status`` call
    it (default: the model). RemoteServerError when nothing OpenAI-like answers there.
    """
    url = api_url(url)
    models = list_models(url, api_key, timeout)
    if model is not None and models and model not in models:
        raise RemoteServerError(f"{url} serves {', '.join(models)}, not {model!r}")
    served = model or (models[0] if models else None)
    if served is None:
        raise RemoteServerError(f"{url}/models lists no model: pass model=...")
    server = RemoteServer(url, api_key, served, name, tuple(models))
    server.health(timeout)  # the first scrape: rates count from here
    server._register()
    attach(server)
    return server


@atexit.register
def _forget_all_at_exit() -> None:
    from jupyter_qwen.server.handles import attached_servers

    for server in attached_servers():
        if isinstance(server, RemoteServer):
            server.disconnect()

