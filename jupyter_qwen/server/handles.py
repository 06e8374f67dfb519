"""Handles on servers this kernel did not start in its own process (torch-free).

`ServerHandle` is what `connect()` (a remote server) and `serve(..., process=True)` (our
server in a child process) return: the local server's surface where it makes sense
(``url``, ``served_model_name``, ``chat_model()``, ``openai_client()``, ``stats()``).
`kernel_servers()` lists this process's servers of every origin, oldest first, and
`find_server(name)` picks one for ``%%qwen --server NAME``.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from jupyter_qwen.server.clients import OpenAIClients


class ServerHandle(OpenAIClients):
    """The client side shared by remote and child-process servers."""

    origin = "remote"

    def __init__(self, url: str, api_key: str | None, served_model_name: str,
                 name: str | None = None):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.served_model_name = served_model_name
        self.name = name or served_model_name
        self.started_at = time.time()
        self.record = None
        self.chat_variant = "unknown"

    @property
    def root_url(self) -> str:
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url

    @property
    def model(self) -> str:
        return self.served_model_name

    def wait_ready(self, timeout: float | None = None, progress: bool = True) -> ServerHandle:
        return self

    def answers_to(self, name: str) -> bool:
        record_id = self.record.id if self.record is not None else None
        return name in (self.name, self.served_model_name, self.url, self.root_url, record_id)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.served_model_name!r}, url={self.url!r}, "
                f"state={self.state!r})")

    @property
    def state(self) -> str:
        raise NotImplementedError

    def reap(self) -> bool:
        """Forget this handle if what it points at ended on its own; True when it did."""
        return False


_attached: list[ServerHandle] = []
_lock = threading.Lock()


def attach(handle: ServerHandle) -> None:
    with _lock:
        _attached.append(handle)


def detach(handle: ServerHandle) -> None:
    with _lock:
        if handle in _attached:
            _attached.remove(handle)


def attached_servers() -> list[ServerHandle]:
    with _lock:
        return list(_attached)


def kernel_servers() -> list[Any]:
    """This process's servers, oldest first: in-kernel ones (when the server module is
    loaded; nothing is imported for this), child processes and remote attachments."""
    server_module = sys.modules.get("jupyter_qwen.server.server")
    local = server_module.running_servers() if server_module is not None else []
    handles = [handle for handle in attached_servers() if not handle.reap()]
    return sorted([*local, *handles], key=started_at)


def started_at(server: Any) -> float:
    ctx = getattr(server, "ctx", None)
    return ctx.started_at if ctx is not None else server.started_at


def origin_of(server: Any) -> str:
    return getattr(server, "origin", "kernel")


def find_server(name: str) -> Any | None:
    """The server of this process called `name`: its name, served model name, URL or
    registry id (the newest when several answer)."""
    for server in reversed(kernel_servers()):
        if isinstance(server, ServerHandle):
            if server.answers_to(name):
                return server
            continue
        record = getattr(server, "record", None)
        if name in (server.served_model_name, server.url, server.root_url,
                    record.id if record is not None else None):
            return server
    return None
