"""What /health tells about one server beyond its status: where its memory goes, recent
latency percentiles, the requests in flight (and /admin/abort), and one-line errors with a
hint. Driven through a real demo server and real requests."""

from __future__ import annotations

import json
import math
import os
import threading
import time

import httpx
import pytest
from safetensors import safe_open

from jupyter_qwen.model.loader import weight_files
from jupyter_qwen.server.metrics import RecentLatencies
from jupyter_qwen.server.server import QwenServer, serve

NUM_KV_BLOCKS = 300
BLOCK_SIZE = 16
MEMORY_KEYS = {"device", "weights_bytes", "kv_cache_bytes", "kv_blocks_used", "kv_blocks_total",
               "kv_block_bytes", "activations_bytes", "cuda_graph_bytes",
               "torch_reserved_bytes", "torch_allocated_bytes", "process_gpu_bytes",
               "rss_bytes"}
RUNNING_KEYS = {"request_id", "state", "age_s", "prompt_tokens", "cached_tokens",
                "generated_tokens", "session"}


@pytest.fixture(scope="module")
def server(demo_model):
    instance = serve(demo_model, max_model_len=2048, num_kv_blocks=NUM_KV_BLOCKS,
                     block_size=BLOCK_SIZE, progress=False)
    yield instance
    instance.stop()


def health(server) -> dict:
    reply = httpx.get(f"{server.root_url}/health", timeout=30)
    assert reply.status_code == 200
    return reply.json()


def admin(server, route: str, body: dict, token: str | None = None) -> httpx.Response:
    headers = {} if token is None else {"X-Admin-Token": token}
    return httpx.post(f"{server.root_url}/admin/{route}", json=body, headers=headers,
                      timeout=30)


def test_health_names_the_process_device_and_origin(server):
    report = health(server)
    assert (report["pid"], report["device"], report["origin"]) == (os.getpid(), "cpu", "kernel")
    assert "error" not in report


def test_memory_figures_add_up_on_cpu(server, demo_model):
    memory = health(server)["engine"]["memory"]
    assert set(memory) == MEMORY_KEYS and memory["device"] == "cpu"
    config = json.loads((demo_model / "config.json").read_text())
    element = 4  # the CPU runs float32
    checkpoint_elements = 0
    for file in weight_files(demo_model):
        with safe_open(file, framework="pt") as reader:
            checkpoint_elements += sum(math.prod(reader.get_slice(name).get_shape())
                                       for name in reader.keys())  # noqa: SIM118
    rotary_tables = 2 * config["max_position_embeddings"] * config["head_dim"] * 4
    assert memory["weights_bytes"] == checkpoint_elements * element + rotary_tables
    kv_block_bytes = (2 * config["num_hidden_layers"] * config["num_key_value_heads"]
                      * config["head_dim"] * BLOCK_SIZE * element)
    assert memory["kv_block_bytes"] == kv_block_bytes
    assert memory["kv_blocks_total"] == NUM_KV_BLOCKS
    assert memory["kv_cache_bytes"] == NUM_KV_BLOCKS * kv_block_bytes
    assert 0 <= memory["kv_blocks_used"] <= NUM_KV_BLOCKS
    assert memory["rss_bytes"] > memory["weights_bytes"] + memory["kv_cache_bytes"]
    for name in ("activations_bytes", "cuda_graph_bytes", "torch_reserved_bytes",
                 "torch_allocated_bytes"):
        assert memory[name] is None, name  # no CUDA allocator to ask on the CPU


def _streamed_text(chunk) -> str:
    """A chunk's answer or reasoning text (the demo model thinks first on some prompts)."""
    delta = chunk.choices[0].delta
    return (delta.content or "") + (getattr(delta, "reasoning_content", None) or "")


def test_latency_percentiles_of_real_requests(server):
    client = server.openai_client()
    before = health(server)["engine"]["latency"]["requests"]
    for words in ("Hello", "Tell me a story about a cat", "What is two plus two?"):
        stream = client.chat.completions.create(
            model=server.served_model_name, messages=[{"role": "user", "content": words}],
            max_tokens=12, temperature=0, stream=True, extra_body={"ignore_eos": True})
        assert sum(1 for chunk in stream if chunk.choices and _streamed_text(chunk)) > 1
    latency = health(server)["engine"]["latency"]
    assert latency["window_s"] == 300 and latency["requests"] == before + 3
    for name in ("ttft", "itl"):
        p50, p95 = latency[f"{name}_p50_s"], latency[f"{name}_p95_s"]
        assert 0 < p50 <= p95 < 60, latency


def test_the_window_forgets_requests_older_than_it():
    now = [1000.0]
    recent = RecentLatencies(window_s=300, clock=lambda: now[0])
    assert recent.summary() == {"window_s": 300, "requests": 0, "ttft_p50_s": None,
                                "ttft_p95_s": None, "itl_p50_s": None, "itl_p95_s": None}
    recent.add(0.5, [0.01] * 10)
    now[0] += 200
    recent.add(0.1, [0.02] * 9 + [0.2])
    recent.add(None, [])  # aborted before its first token: counted, no TTFT
    summary = recent.summary()
    assert summary["requests"] == 3
    assert (summary["ttft_p50_s"], summary["ttft_p95_s"]) == (0.1, 0.5)
    assert (summary["itl_p50_s"], summary["itl_p95_s"]) == (0.01, 0.02)
    now[0] += 101  # the first request is 301 s old
    summary = recent.summary()
    assert summary["requests"] == 2
    assert (summary["ttft_p50_s"], summary["ttft_p95_s"]) == (0.1, 0.1)
    assert (summary["itl_p50_s"], summary["itl_p95_s"]) == (0.02, 0.2)
    now[0] += 300
    assert recent.summary()["requests"] == 0 and recent.summary()["itl_p95_s"] is None


class LongStream(threading.Thread):
    """A streamed chat that would run for a long time, read in a thread of its own."""

    def __init__(self, server, session: str | None = None):
        super().__init__(daemon=True)
        self.server, self.session = server, session
        self.finish_reason: str | None = None
        self.chunks = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        extra = {"ignore_eos": True} | ({"session_id": self.session} if self.session else {})
        try:
            stream = self.server.openai_client().chat.completions.create(
                model=self.server.served_model_name,
                messages=[{"role": "user", "content": "Count to a thousand"}],
                max_tokens=1500, temperature=0, stream=True, extra_body=extra)
            for chunk in stream:
                self.chunks += 1
                if chunk.choices and chunk.choices[0].finish_reason:
                    self.finish_reason = chunk.choices[0].finish_reason
        except BaseException as error:
            self.error = error


def wait_running(server, generated: int = 2, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = health(server)["engine"]["running"]
        if running and running[0]["generated_tokens"] >= generated:
            return running[0]
        time.sleep(0.05)
    raise AssertionError(f"no request ran: {health(server)['engine']}")


def wait_free_blocks(server, count: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engine = health(server)["engine"]
        if engine["num_free_blocks"] == count and not engine["running"]:
            return engine
        time.sleep(0.05)
    raise AssertionError(f"blocks not back: {health(server)['engine']}")


def test_a_running_request_is_listed_and_aborted_through_the_admin_route(server):
    start = health(server)["engine"]
    assert start["running"] == []
    stream = LongStream(server, session="notebook-7")
    stream.start()
    row = wait_running(server)
    assert set(row) == RUNNING_KEYS
    assert row["state"] == "running" and row["session"] == "notebook-7"
    assert row["prompt_tokens"] > 0 and 0 <= row["cached_tokens"] <= row["prompt_tokens"]
    assert row["age_s"] >= 0 and row["generated_tokens"] >= 2
    assert health(server)["engine"]["memory"]["kv_blocks_used"] > 0

    body = {"request_id": row["request_id"]}
    assert admin(server, "abort", body).status_code == 401
    assert admin(server, "abort", body, token="wrong").status_code == 401
    unknown = admin(server, "abort", {"request_id": "req-none"}, token=server.admin_token)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "request_id"
    aborted = admin(server, "abort", body, token=server.admin_token)
    assert (aborted.status_code, aborted.json()) == (200, {"aborted": row["request_id"]})
    stream.join(30)
    assert not stream.is_alive() and stream.error is None
    assert stream.finish_reason == "abort"
    engine = wait_free_blocks(server, start["num_free_blocks"])
    assert engine["memory"]["kv_blocks_used"] == start["memory"]["kv_blocks_used"]
    assert engine["latency"]["requests"] >= 1


def test_the_server_handle_aborts_too(server):
    start = health(server)["engine"]["num_free_blocks"]
    stream = LongStream(server)
    stream.start()
    row = wait_running(server)
    assert [r["request_id"] for r in server.running_requests()] == [row["request_id"]]
    assert server.abort("req-none") is False
    assert server.abort(row["request_id"]) is True
    stream.join(30)
    assert stream.finish_reason == "abort" and stream.error is None
    wait_free_blocks(server, start)
    assert server.running_requests() == []


def test_a_model_missing_offline_fails_in_one_line_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "nobody-here/made-up-model-7f3a"
    server = QwenServer(repo).start(wait=False)
    try:
        deadline = time.monotonic() + 60
        while server.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        reply = httpx.get(f"{server.root_url}/health", timeout=30)
        report = reply.json()
        assert reply.status_code == 503 and report["status"] == "failed"
        assert report["error"] == (f"{repo} is not in the local Hugging Face cache and the "
                                   "hub is unreachable")
        assert report["hint"] == (f"download it (huggingface-cli download {repo}) or give a "
                                  "local folder")
        assert "LocalEntryNotFoundError" in report["error_detail"]
        assert server.ctx.error == report["error"] and "\n" not in server.ctx.error
        assert "local_files_only" not in report["error"] + report["hint"]
    finally:
        server.stop()
