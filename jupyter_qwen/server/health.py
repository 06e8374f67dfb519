"""Reading a model server's ``GET /health`` from outside it (torch-free, standard library only).

One reader for everyone who asks: ``QwenServer.wait_ready``, ``%qwen_status`` for servers of
other processes, and the Jupyter server extension behind the sidebar (``jupyter_qwen.labserver``,
which calls it in a thread). Servers listen on this machine, so no HTTP proxy is used.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

UNREACHABLE = "unreachable"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Health:
    """What ``/health`` said, or why nothing usable came back."""

    status: str  # the server's own word ("ok", "loading", "dead", ...) or "unreachable"
    engine: dict[str, Any] | None = None  # the engine's figures, when the reply has them
    error: str | None = None  # why the reply could not be read; None when it could
    code: int | None = None  # the HTTP status, when there was a reply
    body: str = ""
    report: dict[str, Any] | None = None  # the whole parsed reply, when it was a JSON object

    @property
    def ok(self) -> bool:
        return self.code == 200


def read_health(root_url: str, timeout: float = 2.0) -> Health:
    """``GET {root_url}/health``: any HTTP status is a reply; no answer is "unreachable"."""
    try:
        with _NO_PROXY.open(f"{root_url}/health", timeout=timeout) as response:
            code, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        code, body = error.code, error.read()
    except (OSError, ValueError) as error:  # refused, timed out, a bad URL
        return Health(UNREACHABLE, error=str(error) or type(error).__name__)
    return parse_health(code, body)


def parse_health(code: int, body: bytes) -> Health:
    """The status, engine figures and error of one ``/health`` reply."""
    text = body.decode(errors="replace")
    if not text:
        return Health(UNREACHABLE, error=f"/health answered HTTP {code} with nothing",
                      code=code)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return Health(UNREACHABLE, error="bad /health reply", code=code, body=text)
    status = data.get("status") or ("ok" if code == 200 else "dead")
    return Health(str(status), engine=data.get("engine"), code=code, body=text, report=data)
