"""TEST PEER: a stand-in for a jupyter_qwen model server. It is not the thing under test.

It registers a record in the jupyter_qwen registry (like the real server does) and
answers the routes the sidebar's server extension relies on:

- ``GET /health`` -> the shared /health contract for its ``state``: "ok" (engine figures
  with memory, latency and two running requests), "loading" (phase and fraction), "failed"
  (one-line error, full detail, hint), "dead" (503) or "malformed" (figures of the wrong
  shape)
- ``POST /admin/stop``, ``/admin/clean`` and ``/admin/abort`` (``{"request_id"}``: 404 for an
  id not running) with ``X-Admin-Token`` (401 without, 403 with a wrong one). After a stop
  it unregisters itself and shuts down.

Use it in-process (``StandInServer(...).start()``, serving from a thread) or as a
separate process: ``python stand_in_server.py --model NAME [--kernel-id ID] [--state S]
[--origin O] [--device D]`` prints
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


MIB = 1024**2
# a remote server (origin "remote") is read from its Prometheus page, in vLLM's names
REMOTE_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="stand-in/Qwen3-Far"} 3
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="stand-in/Qwen3-Far"} 1
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="stand-in/Qwen3-Far"} 0.25
"""
FAILED_ERROR = "stand-in/Qwen3-Missing is not in the local Hugging Face cache and the hub is \
unreachable"
FAILED_HINT = "download it (huggingface-cli download stand-in/Qwen3-Missing), or give a folder"
FAILED_DETAIL = "Traceback (most recent call last):\n  ...\nOSError: We couldn't connect to \
'https://huggingface.co' to load the files, and couldn't find them in the cached files."


def running_request(request_id: str, state: str = "running") -> dict[str, Any]:
    return {"request_id": request_id, "state": state, "age_s": 12.5, "prompt_tokens": 1234,
            "cached_tokens": 1024, "generated_tokens": 87, "session": "notebook-1"}


class StandInServer:
    def __init__(self, model: str = "stand-in/Qwen3-Tiny", kernel_id: str | None = None,
                 state: str = "ok", origin: str = "kernel", device: str = "cpu"):
        self.model = model
        self.kernel_id = kernel_id
        self.status = state  # what /health reports; "dead" answers 503
        self.origin = origin
        self.device = device
        self.running = [running_request("chatcmpl-standin-1"),
                        running_request("chatcmpl-standin-2", "waiting")]
        self.calls: list[tuple[str, str | None]] = []  # (path, X-Admin-Token) of admin calls
        self.aborted: list[str] = []  # request ids /admin/abort ended
        self.stopped = threading.Event()
        self.record: ServerRecord | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.record is not None
        return self.record.url

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "status": self.status,
            "model": self.record.served_model_name if self.record else self.model,
            "pid": self.record.pid if self.record else 0,
            "device": self.device, "origin": self.origin, "uptime": 754.2,
            "engine": {"engine_state": self.status}, "gpu": [],
        }
        if self.status == "loading":
            report["loading"] = {"phase": "loading weights", "fraction": 0.4}
        elif self.status in ("failed", "dead"):
            report |= {"error": FAILED_ERROR, "error_detail": FAILED_DETAIL, "hint": FAILED_HINT}
        elif self.status == "malformed":  # figures of the wrong shape: a card that cannot draw
            report |= {"status": "ok", "engine": {"running": "not a list", "memory": 5}}
        else:
            report["engine"] = self.engine_figures()
        return report

    def engine_figures(self) -> dict[str, Any]:
        on_gpu = self.device.startswith("cuda")
        return {
            "engine_state": "running", "chat_variant": "thinking-2507",
            "requests_running": 2, "requests_waiting": 1, "kv_cache_usage": 0.25,
            "prefix_cache_hit_rate": 0.5, "generation_tokens_per_s": 123.4,
            "prompt_tokens_per_s": 456.7,
            "memory": {
                "device": self.device, "weights_bytes": 1200 * MIB, "kv_cache_bytes": 512 * MIB,
                "kv_blocks_used": 128, "kv_blocks_total": 512, "kv_block_bytes": MIB,
                "activations_bytes": 96 * MIB, "cuda_graph_bytes": 64 * MIB if on_gpu else None,
                "torch_reserved_bytes": None, "torch_allocated_bytes": None,
                "process_gpu_bytes": 2 * GIB if on_gpu else None, "rss_bytes": 3 * GIB,
            },
            "latency": {"window_s": 300, "requests": 42, "ttft_p50_s": 0.082,
                        "ttft_p95_s": 0.412, "itl_p50_s": 0.0123, "itl_p95_s": None},
            "running": list(self.running),
        }

    def start(self) -> StandInServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        fields: dict[str, Any] = {"host": "127.0.0.1", "port": port, "model": self.model,
                                  "origin": self.origin}
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
            self._send(code, json.dumps(body).encode(), "application/json")

        def _reply_text(self, code: int, text: str) -> None:
            self._send(code, text.encode(), "text/plain; version=0.0.4")

        def _send(self, code: int, data: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(503 if peer.status == "dead" else 200, peer.health())
            elif self.path == "/metrics" and peer.origin == "remote":
                self._reply_text(200, REMOTE_METRICS)  # what a remote server is read from
            elif self.path == "/v1/models":
                name = peer.record.served_model_name if peer.record else peer.model
                self._reply(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self._reply(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            token = self.headers.get("X-Admin-Token")
            if self.path not in ("/admin/stop", "/admin/clean", "/admin/abort"):
                self._reply(404, {"error": {"message": "not found"}})
                return
            peer.calls.append((self.path, token))
            if not token:
                self._reply(401, {"error": {"message": "admin token required"}})
            elif peer.record is None or token != peer.record.admin_token:
                self._reply(403, {"error": {"message": "wrong admin token"}})
            elif self.path == "/admin/clean":
                self._reply(200, CLEAN_REPORT)
            elif self.path == "/admin/abort":
                self._abort(json.loads(body or b"{}").get("request_id"))
            else:
                self._reply(200, {"stopped": True})
                peer.close()

        def _abort(self, request_id: Any) -> None:
            ids = [r["request_id"] for r in peer.running]
            if request_id not in ids:
                self._reply(404, {"error": {"message": f"no running request {request_id!r}"}})
                return
            peer.running = [r for r in peer.running if r["request_id"] != request_id]
            peer.aborted.append(request_id)
            self._reply(200, {"aborted": request_id})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stand-in/Qwen3-Tiny")
    parser.add_argument("--kernel-id", default=None)
    parser.add_argument("--state", default="ok",
                        choices=("ok", "loading", "failed", "dead", "malformed"))
    parser.add_argument("--origin", default="kernel", choices=("kernel", "process", "remote"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    peer = StandInServer(args.model, args.kernel_id, args.state, args.origin, args.device).start()
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
