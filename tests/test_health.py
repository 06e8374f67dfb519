"""The one /health reader (jupyter_qwen.server.health) against a small stand-in HTTP server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jupyter_qwen.server.health import UNREACHABLE, parse_health, read_health


class _Reply:
    code = 200
    body = b""


@pytest.fixture
def stand_in() -> Iterator[tuple[str, type[_Reply]]]:
    reply = type("Reply", (_Reply,), {})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            assert self.path == "/health"
            self.send_response(reply.code)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", reply
    server.shutdown()
    server.server_close()


def test_a_healthy_server(stand_in, monkeypatch):
    url, reply = stand_in
    reply.body = b'{"status": "ok", "engine": {"requests_running": 2}}'
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # never used for these servers
    health = read_health(url)
    assert (health.status, health.engine, health.error, health.ok) == (
        "ok", {"requests_running": 2}, None, True)


def test_a_loading_or_dead_server_is_a_reply_not_an_error(stand_in):
    url, reply = stand_in
    reply.code, reply.body = 503, b'{"status": "loading"}'
    health = read_health(url)
    assert (health.status, health.code, health.error, health.ok) == ("loading", 503, None, False)
    reply.body = b"{}"
    assert read_health(url).status == "dead"


@pytest.mark.parametrize(("code", "body", "error"), [
    (200, b"<html>", "bad /health reply"),
    (502, b"", "/health answered HTTP 502 with nothing"),
])
def test_replies_that_say_nothing_usable(stand_in, code, body, error):
    url, reply = stand_in
    reply.code, reply.body = code, body
    health = read_health(url)
    assert (health.status, health.engine, health.error) == (UNREACHABLE, None, error)


def test_nobody_listening():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    health = read_health(f"http://127.0.0.1:{port}", timeout=1)
    assert health.status == UNREACHABLE and health.error and health.code is None


def test_parse_health_without_a_status():
    assert parse_health(200, b'{"engine": null}').status == "ok"
