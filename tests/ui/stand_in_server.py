"""TEST PEER: a stand-in for a jupyter_qwen model server. It is not the thing under test.

It registers a record in the jupyter_qwen registry (like the real server does) and
answers the routes the sidebar's server extension relies on:

- ``GET /health`` -> ``{"status", "model", "engine": {...}, "gpu": []}`` (503 when "dead")
- ``POST /admin/stop`` and ``POST /admin/clean`` with ``X-Admin-Token`` (401 without,
  403 with a wrong one). After a stop it unregisters itself and shuts down.

Use it in-process (``StandInServer(...).start()``, serving from a thread) or as a
separate process: ``python stand_in_server.py --model NAME [--kernel-id ID]`` prints
its record as one JSON line, then serves until stopped (``/admin/stop`` or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jupyter_qwen.server.registry import ServerRecord, new_record, register, unregister

GIB = 1024**3
# what the real server's /admin/clean answers (jupyter_qwen.memory.CleanReport.to_dict())
CLEAN_REPORT = {
    "before": {"rss": 3 * GIB, "torch_allocated": 2 * GIB, "torch_reserved": 4 * GIB,
               "gpu_used": [], "gpu_total": []},
    "after": {"rss": 3 * GIB, "torch_allocated": 2 * GIB, "torch_reserved": 1 * GIB,
              "gpu_used": [], "gpu_total": []},
    "has_gpu": False,
    "gpu_reason": "stand-in",
    "notes": [],
}


class StandInServer:
    def __init__(self, model: str = "stand-in/Qwen3-Tiny", kernel_id: str | None = None):
        self.model = model
        self.kernel_id = kernel_id
        self.status = "ok"  # what /health reports; "dead" answers 503
        self.calls: list[tuple[str, str | None]] = []  # (path, X-Admin-Token) of admin calls
        self.stopped = threading.Event()
        self.record: ServerRecord | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.record is not None
        return self.record.url

    def health(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "model": self.record.served_model_name if self.record else self.model,
            "engine": {
                "requests_running": 2,
                "requests_waiting": 1,
                "kv_cache_usage": 0.25,
                "prefix_cache_hit_rate": 0.5,
                "generation_tokens_per_s": 123.4,
                "prompt_tokens_per_s": 456.7,
            },
            "gpu": [],
        }

    def start(self) -> StandInServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        fields: dict[str, Any] = {"host": "127.0.0.1", "port": port, "model": self.model}
        if self.kernel_id is not None:
            fields["kernel_id"] = self.kernel_id
        self.record = new_record(**fields)
        register(self.record)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Unregister and stop serving (what the real server does on /admin/stop)."""
        if self.record is not None:
            unregister(self.record.id)
        if self._httpd is not None:
            httpd, self._httpd = self._httpd, None
            # shutdown() waits for serve_forever, which may be serving the caller
            threading.Thread(target=lambda: (httpd.shutdown(), httpd.server_close())).start()
        self.stopped.set()


def _make_handler(peer: StandInServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(503 if peer.status == "dead" else 200, peer.health())
            elif self.path == "/v1/models":
                name = peer.record.served_model_name if peer.record else peer.model
                self._reply(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self._reply(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            token = self.headers.get("X-Admin-Token")
            if self.path not in ("/admin/stop", "/admin/clean"):
                self._reply(404, {"error": {"message": "not found"}})
                return
            peer.calls.append((self.path, token))
            if not token:
                self._reply(401, {"error": {"message": "admin token required"}})
            elif peer.record is None or token != peer.record.admin_token:
                self._reply(403, {"error": {"message": "wrong admin token"}})
            elif self.path == "/admin/clean":
                self._reply(200, CLEAN_REPORT)
            else:
                self._reply(200, {"stopped": True})
                peer.close()

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stand-in/Qwen3-Tiny")
    parser.add_argument("--kernel-id", default=None)
    args = parser.parse_args()
    peer = StandInServer(args.model, args.kernel_id).start()
    signal.signal(signal.SIGTERM, lambda *_: peer.close())
    assert peer.record is not None
    print(json.dumps(peer.record.to_dict(public=True)), flush=True)
    try:
        peer.stopped.wait()
    except KeyboardInterrupt:
        peer.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
