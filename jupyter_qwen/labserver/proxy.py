"""Each model server's OpenAI routes under the Jupyter server's own URL and auth.

``{base_url}jupyter-qwen/servers/{id}/v1/{path}`` forwards any method to
``{record.url}/{path}`` (the record's OpenAI base URL), so that a client that reaches
Jupyter (a laptop through the pod's proxy URL, a teammate's notebook on the same hub) reaches
a model server that listens on 127.0.0.1 only. Auth is Jupyter's: ``Authorization: token
<jupyter token>``, or ``Bearer <jupyter token>`` as OpenAI clients send their API key, or the
browser's login cookie (with Jupyter's XSRF rules). The Jupyter credentials never travel
upstream; when the model server requires an API key, the proxy sends the one in the record.

Bodies stream both ways as they come: each upstream chunk (one SSE event, usually) is
written and flushed at once, ``X-Accel-Buffering: no`` asks nginx-style proxies in front of
Jupyter not to hold it back, and a client that goes away cancels the upstream request, so
the model server sees the disconnect and its engine frees the request's KV cache.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import tornado.web
from jupyter_server.base.handlers import APIHandler
from tornado.iostream import StreamClosedError

from jupyter_qwen.server.registry import ServerRecord, get_record

CONNECT_TIMEOUT_S = 5.0  # a model server on this machine answers at once, or not at all
WRITE_TIMEOUT_S = 60.0
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"})
# Jupyter's credentials stay here; Host and Content-Length are the upstream request's own.
REQUEST_DROPPED = HOP_BY_HOP | {"host", "authorization", "cookie", "x-xsrftoken",
                                "content-length", "accept-encoding"}
# Jupyter writes its own Server and Date; a model server must not set cookies on Jupyter's origin.
RESPONSE_DROPPED = HOP_BY_HOP | {"server", "date", "set-cookie"}


def proxy_route(base_url: str) -> str:
    """The route pattern: the server id, then everything after ``v1`` (maybe nothing)."""
    return f"{base_url.rstrip('/')}/jupyter-qwen/servers/([^/]+)/v1(/.*)?"


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> str:
    """A body in OpenAI's error shape, as the model server itself answers errors."""
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": code if code is not None else status}})


def bearer_as_token(headers: Any) -> None:
    """Rewrite ``Authorization: Bearer X`` as ``token X``, the form every Jupyter identity
    provider reads (older ones read only ``token``). Only this route's requests pass here."""
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        headers["Authorization"] = f"token {credentials.strip()}"


def dropped_names(headers: Any, always: frozenset[str]) -> set[str]:
    """Header names not to forward: ``always``, plus those that ``Connection`` names."""
    named = {part.strip().lower() for value in headers.get_list("Connection")
             for part in value.split(",")}
    return set(always) | {name for name in named if name}


def upstream_headers(request_headers: Any, rec: ServerRecord) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop and Jupyter's credentials, plus the model
    server's API key when it requires one."""
    dropped = dropped_names(request_headers, REQUEST_DROPPED)
    headers = [(name, value) for name, value in request_headers.get_all()
               if name.lower() not in dropped]
    headers.append(("Accept-Encoding", request_headers.get("Accept-Encoding") or "identity"))
    if rec.api_key:
        headers.append(("Authorization", f"Bearer {rec.api_key}"))
    return headers


def upstream_url(rec: ServerRecord, path: str, query: str) -> str:
    """``{rec.url}{path}`` with the query, less Jupyter's ``token`` argument."""
    if query and any(name == "token" for name, _ in parse_qsl(query, keep_blank_values=True)):
        query = urlencode([(name, value) for name, value in
                           parse_qsl(query, keep_blank_values=True) if name != "token"])
    return rec.url.rstrip("/") + path + (f"?{query}" if query else "")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for all upstream clients (building one is the slow part
    of an httpx client)."""
    return ssl.create_default_context()


def _upstream_client() -> httpx.AsyncClient:
    """A client for one proxied request: it never reads proxy settings from the environment
    (the model server is on this machine) and waits as long as generation takes."""
    timeout = httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=None, write=WRITE_TIMEOUT_S,
                            pool=None)
    return httpx.AsyncClient(timeout=timeout, trust_env=False, verify=_tls_context(),
                             follow_redirects=False)


class ProxyHandler(APIHandler):
    """``{base_url}jupyter-qwen/servers/{id}/v1/{path}``, any method, to the model server."""

    _relay: asyncio.Future | None = None
    _client_gone = False

    async def prepare(self) -> None:  # type: ignore[override]
        bearer_as_token(self.request.headers)
        await super().prepare()

    @tornado.web.authenticated
    async def get(self, server_id: str, path: str | None) -> None:
        await self.forward(server_id)

    @tornado.web.authenticated
    async def post(self, server_id: str, path: str | None) -> None:
        await self.forward(server_id)

    @tornado.web.authenticated
    async def put(self, server_id: str, path: str | None) -> None:
        await self.forward(server_id)

    @tornado.web.authenticated
    async def patch(self, server_id: str, path: str | None) -> None:
        await self.forward(server_id)

    @tornado.web.authenticated
    async def delete(self, server_id: str, path: str | None) -> None:
        await self.forward(server_id)

    async def forward(self, server_id: str) -> None:
        if self._client_gone:
            return
        rec = get_record(server_id)
        if rec is None:
            raise tornado.web.HTTPError(404, f"no running jupyter_qwen server with id "
                                             f"{server_id!r}")
        # the raw (still percent-encoded) path after ".../<id>/v1", as the client sent it
        path = self.request.path.split(f"/servers/{server_id}/v1", 1)[1]
        self._relay = asyncio.ensure_future(self.relay(rec, path))
        try:
            await self._relay
        except asyncio.CancelledError:
            if not self._client_gone:
                raise

    async def relay(self, rec: ServerRecord, path: str) -> None:
        """Send the request upstream and copy the answer back chunk by chunk."""
        url = upstream_url(rec, path, self.request.query)
        where = f"model server {rec.served_model_name} ({rec.id}) at {rec.root_url}"
        async with _upstream_client() as client:
            request = client.build_request(
                self.request.method or "GET", url, content=self.request.body or None,
                headers=upstream_headers(self.request.headers, rec))
            try:
                upstream = await client.send(request, stream=True)
            except httpx.TimeoutException as error:
                raise tornado.web.HTTPError(504, f"{where} did not answer: {error!r}") from None
            except httpx.HTTPError as error:
                raise tornado.web.HTTPError(502, f"{where} did not answer: {error!r}") from None
            try:
                await self.copy_back(upstream)
            finally:
                await upstream.aclose()

    async def copy_back(self, upstream: httpx.Response) -> None:
        self.set_status(upstream.status_code, upstream.reason_phrase or None)
        dropped = dropped_names(upstream.headers, RESPONSE_DROPPED)
        passed = [(name, value) for name, value in upstream.headers.multi_items()
                  if name.lower() not in dropped]
        for name in {name for name, _ in passed}:
            self.clear_header(name)  # the upstream's Content-Type replaces Jupyter's default
        for name, value in passed:
            self.add_header(name, value)
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self.flush()  # the status and headers go out before the first token
            async for chunk in upstream.aiter_raw():
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            self._client_gone = True  # leaving closes the upstream connection
            return
        except httpx.HTTPError as error:  # the model server went away mid-answer
            self.log.warning("jupyter_qwen proxy: %s broke off: %r", upstream.url, error)
            self.request.connection.close()
            return
        self.finish()

    def on_connection_close(self) -> None:
        """The client went away: cancel the upstream request (the model server then aborts
        it in the engine)."""
        self._client_gone = True
        if self._relay is not None and not self._relay.done():
            self._relay.cancel()
        super().on_connection_close()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors in OpenAI's shape, which OpenAI clients read."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(error, "log_message", None) or self._reason
        kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
        kind = kinds.get(status_code, "api_error")
        self.set_header("Content-Type", "application/json")
        self.finish(openai_error(status_code, message, kind))
