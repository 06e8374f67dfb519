"""Where running model servers announce themselves (torch-free).

Each running jupyter_qwen model server writes one JSON record
``<jupyter_runtime_dir()>/jupyter_qwen/server-<id>.json`` and removes it when it
stops. The JupyterLab sidebar (``jupyter_qwen.labserver``) lists these records to
show what is running, to reach each server's ``/health`` and ``/admin`` routes, and
to proxy its OpenAI routes under Jupyter's URL (``proxy_path``).

The record holds the admin token (and the API key, when the server requires one, so
that the Jupyter proxy can pass it on), so files are written atomically with mode 0600
in a 0700 directory; ``to_dict(public=True)`` leaves both secrets out. Readers skip
files they cannot parse and records whose process is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir

__all__ = [
    "ORIGINS",
    "ServerRecord",
    "current_kernel_id",
    "get_record",
    "list_records",
    "new_record",
    "pid_alive",
    "proxy_path",
    "register",
    "registry_dir",
    "unregister",
]

ORIGINS = ("kernel", "process", "remote")
KERNEL_ID_ENV = "JUPYTER_QWEN_KERNEL_ID"  # a child-process server's parent kernel
_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_KERNEL_FILE_RE = re.compile(r"^kernel-(?P<id>.+)\.json$")
SECRET_FIELDS = ("admin_token", "api_key")  # never in a public view of a record


@dataclass(slots=True)
class ServerRecord:
    """What one running model server tells the world about itself."""

    id: str
    pid: int
    host: str
    port: int
    url: str  # OpenAI base URL, e.g. "http://127.0.0.1:8123/v1"
    model: str  # what the user asked for (hub id or local path)
    served_model_name: str
    started_at: float  # epoch seconds
    kernel_id: str | None
    admin_token: str
    api_key_required: bool
    version: str
    origin: str = "kernel"  # "kernel" (in a kernel's process), "process" (a server process
    # of its own), "remote" (a server attached by connect(); pid is the attaching process)
    api_key: str | None = None  # the key the server requires, for the Jupyter proxy

    @property
    def root_url(self) -> str:
        """The server's root (where ``/health`` and ``/admin`` live): url minus ``/v1``."""
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def to_dict(self, *, public: bool = False) -> dict[str, Any]:
        """All fields as a plain dict; ``public=True`` leaves out the admin token and API key."""
        data = dataclasses.asdict(self)
        if public:
            for name in SECRET_FIELDS:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerRecord:
        """Build a record from parsed JSON; unknown keys are ignored, bad ones raise."""
        rec = cls(
            id=str(data["id"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
            port=int(data["port"]),
            url=str(data["url"]),
            model=str(data["model"]),
            served_model_name=str(data.get("served_model_name") or data["model"]),
            started_at=float(data["started_at"]),
            kernel_id=None if data.get("kernel_id") is None else str(data["kernel_id"]),
            admin_token=str(data["admin_token"]),
            api_key_required=bool(data.get("api_key_required", False)),
            version=str(data.get("version", "")),
            origin=str(data.get("origin") or "kernel"),
            api_key=None if data.get("api_key") is None else str(data["api_key"]),
        )
        if not _ID_RE.match(rec.id):
            raise ValueError(f"bad server id {rec.id!r}")
        if rec.origin not in ORIGINS:
            raise ValueError(f"bad server origin {rec.origin!r}")
        return rec


def registry_dir() -> Path:
    """``<jupyter_runtime_dir()>/jupyter_qwen`` (honours ``JUPYTER_RUNTIME_DIR``)."""
    return Path(jupyter_runtime_dir()) / "jupyter_qwen"


def _record_path(server_id: str) -> Path:
    if not _ID_RE.match(server_id):
        raise ValueError(f"bad server id {server_id!r}")
    return registry_dir() / f"server-{server_id}.json"


def current_kernel_id() -> str | None:
    """The id of the Jupyter kernel this process runs, or None outside a kernel.

    Read from the running ipykernel's connection file name (``kernel-<id>.json``).
    ipykernel is never imported here: if it is not loaded, this is no kernel.
    """
    kernelapp = sys.modules.get("ipykernel.kernelapp")
    if kernelapp is None:
        return None
    app_cls = getattr(kernelapp, "IPKernelApp", None)
    if app_cls is None or not app_cls.initialized():
        return None
    connection_file = getattr(app_cls.instance(), "connection_file", "") or ""
    match = _KERNEL_FILE_RE.match(Path(connection_file).name)
    return match.group("id") if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def new_record(**fields: Any) -> ServerRecord:
    """A record for this process: id, admin token, start time, pid and kernel id filled in
    (a server process started by a kernel names that kernel, from $JUPYTER_QWEN_KERNEL_ID).

    Give at least ``host``, ``port`` and ``model``; ``url`` defaults to
    ``http://{host}:{port}/v1``, ``served_model_name`` to the model's last path part and
    ``origin`` to "kernel".
    Any field given explicitly wins.
    """
    from jupyter_qwen._version import __version__

    host = fields.get("host", "127.0.0.1")
    port = int(fields["port"])
    model = str(fields["model"])
    values: dict[str, Any] = {
        "id": secrets.token_hex(6),
        "pid": os.getpid(),
        "host": host,
        "port": port,
        "url": f"http://{host}:{port}/v1",
        "model": model,
        "served_model_name": model.rstrip("/").rsplit("/", 1)[-1],
        "started_at": time.time(),
        "kernel_id": current_kernel_id() or os.environ.get(KERNEL_ID_ENV) or None,
        "admin_token": secrets.token_urlsafe(32),
        "api_key_required": False,
        "version": __version__,
        "origin": "kernel",
        "api_key": None,
    }
    unknown = set(fields) - set(values)
    if unknown:
        raise TypeError(f"unknown ServerRecord fields: {sorted(unknown)}")
    values.update(fields)
    return ServerRecord(**values)


def proxy_path(server_id: str) -> str:
    """Where the Jupyter server extension proxies this server's OpenAI routes, relative
    to Jupyter's base URL: ``jupyter-qwen/servers/<id>/v1``."""
    return f"jupyter-qwen/servers/{server_id}/v1"


def register(record: ServerRecord) -> Path:
    """Write the record atomically (temp file + ``os.replace``), mode 0600; return its path."""
    path = _record_path(record.id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".server-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)  # mkstemp already makes 0600; be explicit, it holds a token
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record.to_dict(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def unregister(server_id: str) -> None:
    """Remove a record; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        _record_path(server_id).unlink()


def _read(path: Path) -> ServerRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerRecord.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_records(*, prune: bool = False) -> list[ServerRecord]:
    """Records of live servers, oldest first.

    Unreadable or corrupt files are skipped. Records whose pid is gone are left out,
    and deleted too when ``prune`` is true.
    """
    directory = registry_dir()
    try:
        paths = sorted(directory.glob("server-*.json"))
    except OSError:
        return []
    records = []
    for path in paths:
        rec = _read(path)
        if rec is None:
            continue
        if not pid_alive(rec.pid):
            if prune:
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        records.append(rec)
    records.sort(key=lambda r: (r.started_at, r.id))
    return records


def get_record(server_id: str) -> ServerRecord | None:
    """The live record with this id, or None."""
    if not _ID_RE.match(server_id):
        return None
    rec = _read(_record_path(server_id))
    if rec is None or rec.id != server_id or not pid_alive(rec.pid):
        return None
    return rec
