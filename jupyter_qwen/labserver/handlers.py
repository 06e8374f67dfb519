"""REST handlers for the sidebar: GPUs, model servers, and stop/clean/abort forwarding;
the OpenAI proxy of each server is in proxy.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psutil
import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from jupyter_qwen.nvml import gpu_snapshot
from jupyter_qwen.server.health import Health, read_health
from jupyter_qwen.server.registry import ServerRecord, get_record, list_records, proxy_path
from jupyter_qwen.server.remote import probe
from jupyter_qwen.server.scrape import MetricsReader

from .proxy import ProxyHandler, proxy_route

HEALTH_TIMEOUT_S = 2.0  # each /health probe; probes run concurrently
ADMIN_TIMEOUT_S = 120.0  # stop/clean may free a lot of GPU memory first
STOP_WAIT_S = 3.0  # after a stop, how long to wait for the record to go away


class _Base(APIHandler):
    async def kernel_notebooks(self) -> dict[str, str | None]:
        """Kernel id -> notebook (session) path for every kernel of this server."""
        paths: dict[str, str | None] = dict.fromkeys(self.kernel_manager.list_kernel_ids())
        for session in await self.session_manager.list_sessions():
            kernel = session.get("kernel") or {}
            if kernel.get("id"):
                paths[kernel["id"]] = session.get("path")
        return paths

    def kernel_pids(self) -> dict[int, str]:
        """Process id -> kernel id for the local kernels of this server."""
        pids = {}
        for kid in self.kernel_manager.list_kernel_ids():
            try:
                kernel = self.kernel_manager.get_kernel(kid)
            except KeyError:
                continue
            provisioner = getattr(kernel, "provisioner", None)
            process = getattr(provisioner, "process", None)
            pid = getattr(process, "pid", None) or getattr(provisioner, "pid", None)
            if isinstance(pid, int):
                pids[pid] = kid
        return pids


def _owning_kernel(pid: int, kernel_pids: dict[int, str]) -> str | None:
    """The kernel that is this process or one of its ancestors (a kernel's subprocess)."""
    if pid in kernel_pids:
        return kernel_pids[pid]
    try:
        for parent in psutil.Process(pid).parents():
            if parent.pid in kernel_pids:
                return kernel_pids[parent.pid]
    except (psutil.Error, OSError):
        pass
    return None


class GpusHandler(_Base):
    @tornado.web.authenticated
    async def get(self) -> None:
        snapshot = await asyncio.get_running_loop().run_in_executor(None, gpu_snapshot)
        kernel_pids = self.kernel_pids()
        notebooks = await self.kernel_notebooks()
        gpus = []
        for gpu in snapshot.gpus:
            data = gpu.to_dict()
            del data["uuid"]
            for proc in data["processes"]:
                kid = _owning_kernel(proc["pid"], kernel_pids)
                proc["kernel_id"] = kid
                proc["notebook_path"] = notebooks.get(kid) if kid else None
            gpus.append(data)
        self.finish(
            json.dumps({"available": snapshot.available, "reason": snapshot.reason, "gpus": gpus})
        )


async def _fetch(url: str, **kwargs: Any) -> HTTPResponse | Exception:
    """The reply, whatever its status; or the exception when there is none (refused, timeout)."""
    try:
        return await AsyncHTTPClient().fetch(url, raise_error=False, **kwargs)
    except Exception as err:
        return err


# /health's own top-level figures that the sidebar shows, passed on under the same names
HEALTH_FIELDS = ("device", "origin", "uptime", "loading", "error", "error_detail", "hint")


def _health_view(health: Health) -> dict[str, Any]:
    """status / engine / health_error, and the HEALTH_FIELDS the reply has, as the sidebar
    reads them (a field the server does not report stays out: the sidebar says "–")."""
    view = {"status": health.status, "engine": health.engine, "health_error": health.error}
    report = health.report or {}
    view |= {key: report[key] for key in HEALTH_FIELDS if report.get(key) is not None}
    return view


_metrics_readers: dict[str, MetricsReader] = {}  # remote servers' /metrics, by record id


def _read_server(rec: ServerRecord) -> Health:
    """Our servers say it on /health; remote ones (vLLM, SGLang, ...) on /metrics."""
    if rec.origin != "remote":
        return read_health(rec.root_url, HEALTH_TIMEOUT_S)
    reader = _metrics_readers.setdefault(rec.id, MetricsReader(rec.root_url))
    return probe(reader, timeout=HEALTH_TIMEOUT_S)


class ServersHandler(_Base):
    @tornado.web.authenticated
    async def get(self) -> None:
        records = list_records(prune=True)
        loop = asyncio.get_running_loop()
        replies = await asyncio.gather(
            *(loop.run_in_executor(None, _read_server, rec) for rec in records)
        )
        notebooks = await self.kernel_notebooks()
        servers = []
        for rec, reply in zip(records, replies, strict=True):
            item = rec.to_dict(public=True)  # admin token and API key never leave the server
            item["root_url"] = rec.root_url
            item["proxy_path"] = proxy_path(rec.id)  # relative to Jupyter's base URL
            item["notebook_path"] = notebooks.get(rec.kernel_id) if rec.kernel_id else None
            for key, value in _health_view(reply).items():
                item.setdefault(key, value)  # the record's own fields win
            servers.append(item)
        self.finish(json.dumps({"servers": servers}))


class AdminHandler(_Base):
    """``POST servers/{id}/stop|clean``: forwarded to the model server with its admin token."""

    @tornado.web.authenticated
    async def post(self, server_id: str, action: str) -> None:
        rec = _own_record(server_id, action)
        result = await _forward(rec, action, {})
        if action == "stop":
            await _wait_unregistered(rec.id)
        self.finish(json.dumps(result))


class AbortHandler(_Base):
    """``POST servers/{id}/abort`` with ``{"request_id": ...}``: ends one running request of
    that model server (its ``/admin/abort``; an id it does not know is its 404)."""

    @tornado.web.authenticated
    async def post(self, server_id: str) -> None:
        request_id = _request_id(self.request.body)
        rec = _own_record(server_id, "abort requests of")
        self.finish(json.dumps(await _forward(rec, "abort", {"request_id": request_id})))


def _request_id(body: bytes) -> str:
    """The non-empty ``request_id`` of an abort body; 400 otherwise."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        data = None
    request_id = data.get("request_id") if isinstance(data, dict) else None
    if not isinstance(request_id, str) or not request_id:
        raise tornado.web.HTTPError(400, 'abort needs a JSON body {"request_id": "<id>"}')
    return request_id


def _own_record(server_id: str, action: str) -> ServerRecord:
    """The record of a server this machine runs: 404 when there is none, 409 when it is a
    remote one (attached with ``connect``: not ours to stop, clean or abort in)."""
    rec = get_record(server_id)
    if rec is None:
        raise tornado.web.HTTPError(404, f"no running jupyter_qwen server with id {server_id!r}")
    if rec.origin == "remote":
        msg = f"{rec.served_model_name} at {rec.url} is remote: not ours to {action}"
        raise tornado.web.HTTPError(409, msg)
    return rec


async def _forward(rec: ServerRecord, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST {root}/admin/{action}`` with the admin token; the model server's JSON answer."""
    reply = _check_upstream(
        rec,
        action,
        await _fetch(
            f"{rec.root_url}/admin/{action}",
            method="POST",
            body=json.dumps(body).encode(),
            headers={"X-Admin-Token": rec.admin_token, "Content-Type": "application/json"},
            connect_timeout=HEALTH_TIMEOUT_S,
            request_timeout=ADMIN_TIMEOUT_S,
        ),
    )
    try:
        result = json.loads(reply.body or b"{}")
    except ValueError:
        result = {"reply": reply.body.decode(errors="replace")}
    return result


def _check_upstream(
    rec: ServerRecord, action: str, reply: HTTPResponse | Exception
) -> HTTPResponse:
    """The reply when it succeeded; else an HTTPError that says what the model server did."""
    where = f"model server {rec.served_model_name} ({rec.id}) at {rec.root_url}"
    if isinstance(reply, Exception) or reply.code == 599:
        error = reply if isinstance(reply, Exception) else reply.error
        timed_out = "timeout" in f"{type(error).__name__} {error}".lower()
        raise tornado.web.HTTPError(
            504 if timed_out else 502, f"{where} did not answer {action}: {error}"
        )
    if reply.code >= 400:
        detail = (reply.body or b"").decode(errors="replace")[:300]
        raise tornado.web.HTTPError(
            reply.code, f"{where} refused {action} (HTTP {reply.code}): {detail}"
        )
    return reply


async def _wait_unregistered(server_id: str) -> None:
    """A stopped server removes its record; give it a moment so a refresh no longer lists it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_WAIT_S
    while get_record(server_id) is not None and loop.time() < deadline:
        await asyncio.sleep(0.05)


def setup_handlers(web_app: tornado.web.Application) -> None:
    base = url_path_join(web_app.settings["base_url"], "jupyter-qwen")
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "gpus"), GpusHandler),
            (url_path_join(base, "servers"), ServersHandler),
            (url_path_join(base, "servers", "([^/]+)", "(stop|clean)"), AdminHandler),
            (url_path_join(base, "servers", "([^/]+)", "abort"), AbortHandler),
            (proxy_route(web_app.settings["base_url"]), ProxyHandler),
        ],
    )
