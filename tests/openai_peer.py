"""TEST PEER: a minimal OpenAI-compatible server standing in for a vLLM or SGLang deployment
(or any other). It is not the thing under test.

Routes: ``GET /v1/models``; ``POST /v1/chat/completions`` (whole or streamed, answering
"echo: <last user message>" with a reasoning part); ``GET /metrics`` answering the page it was
given (404 without one, as a server with no Prometheus endpoint). With ``api_key`` the /v1
routes want ``Authorization: Bearer <key>``. Requests are kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OpenAIPeer:
    def __init__(self, models: tuple[str, ...] = ("Qwen/Qwen3-32B",), metrics: str | None = None,
                 api_key: str | None = None):
        self.models = models
        self.metrics = metrics
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self) -> OpenAIPeer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _answer(body: dict[str, Any]) -> str:
    user = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return "echo: " + (user[-1]["content"] if user else "")


def _handler(peer: OpenAIPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if peer.api_key is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {peer.api_key}":
                return True
            self._send(401, b'{"error": {"message": "bad key"}}')
            return False

        def do_GET(self) -> None:
            if self.path == "/metrics" and peer.metrics is not None:
                self._send(200, peer.metrics.encode(), "text/plain; version=0.0.4")
            elif self.path == "/v1/models":
                if self._authorized():
                    data = [{"id": m, "object": "model", "owned_by": "peer"} for m in peer.models]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
            else:
                self._send(404, b'{"detail": "Not Found"}')

        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"detail": "Not Found"}')
                return
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if not self._authorized():
                return
            peer.requests.append(body)
            if body.get("stream"):
                self._stream(body)
                return
            message = {"role": "assistant", "content": _answer(body),
                       "reasoning_content": "thinking it over"}
            reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                     "model": body.get("model"),
                     "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
            self._send(200, json.dumps(reply).encode())

        def _stream(self, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            deltas = [{"role": "assistant", "reasoning": "thinking"},
                      *({"content": word + " "} for word in _answer(body).split())]
            for delta in deltas:
                chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                         "model": body.get("model"),
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler
