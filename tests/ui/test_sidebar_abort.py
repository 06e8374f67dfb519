"""Abort in the "Qwen" sidebar against a real model server, in a real JupyterLab and headless
Chromium.

The real demo server (``python -m jupyter_qwen serve --demo``) gets a streamed chat that
would run for 4000 tokens (``ignore_eos``), sent through the openai client in a thread once
labextension/ui-tests/sidebar_abort.mjs has the sidebar open. The script waits for the
request's row in the server's card and presses its Abort (through the server extension to the
server's ``/admin/abort``). The stream must end with finish_reason "abort" well before 4000
tokens, and the server's free KV blocks must come back to their idle count.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import lab
from lab import needs_browser, out_dir, run_script
from model_servers import start_demo_server

start_lab = lab.start_lab
pytestmark = needs_browser
MAX_TOKENS = 4000


class LongStream(threading.Thread):
    """A streamed chat of MAX_TOKENS tokens, sent once `ready` exists, read in its own thread."""

    def __init__(self, base_url: str, model: str, ready: Path):
        super().__init__(daemon=True)
        self.base_url, self.model, self.ready = base_url, model, ready
        self.finish_reason: str | None = None
        self.chunks = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from openai import OpenAI

        try:
            deadline = time.monotonic() + 180
            while not self.ready.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            client = OpenAI(base_url=self.base_url, api_key="EMPTY", max_retries=0, timeout=120)
            stream = client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "Count to a thousand"}],
                max_tokens=MAX_TOKENS, temperature=0, stream=True,
                extra_body={"ignore_eos": True})
            for chunk in stream:
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta and (delta.content or getattr(delta, "reasoning_content", None)):
                    self.chunks += 1
                if chunk.choices and chunk.choices[0].finish_reason:
                    self.finish_reason = chunk.choices[0].finish_reason
        except BaseException as error:
            self.error = error


def engine_figures(base_url: str) -> dict:
    return httpx.get(base_url.removesuffix("/v1") + "/health", timeout=10).json()["engine"]


def wait_idle_blocks(base_url: str, count: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engine = engine_figures(base_url)
        if engine["num_free_blocks"] == count and not engine["running"]:
            return engine
        time.sleep(0.1)
    raise AssertionError(f"KV blocks not back to {count} free: {engine}")


def test_abort_from_the_sidebar_ends_a_real_stream(start_lab, tmp_path, capsys, demo_model):
    the_lab = start_lab(refresh_ms=500)
    demo = start_demo_server(the_lab, demo_model.parent)
    try:
        idle = engine_figures(demo.url)
        assert idle["running"] == [] and idle["memory"]["kv_blocks_used"] == 0
        ready = tmp_path / "card-shown"
        stream = LongStream(demo.url, demo.name, ready)
        stream.start()
        result = run_script("sidebar_abort.mjs", out_dir(tmp_path), LAB_URL=the_lab.lab_url,
                            MODEL=demo.name, READY_FILE=str(ready))
        stream.join(60)
        with capsys.disabled():
            print("\nabort steps:", *result["steps"], sep="\n  ")
            print(f"stream: {stream.chunks} chunks, finish_reason {stream.finish_reason}")
        assert result["ok"], (f"{result.get('error')}\nsteps: {result['steps']}\n"
                              f"page errors: {result['pageErrors']}\n{the_lab.log_tail(800)}")
        assert not stream.is_alive() and stream.error is None, stream.error
        assert stream.finish_reason == "abort"
        assert 0 < stream.chunks < MAX_TOKENS // 2
        assert result["abortToast"].startswith(f"Aborted request {result['requestId']}")
        assert result["rowsAfterAbort"] == 0
        assert result["failedRequests"] == [] and result["pageErrors"] == []
        assert result["consoleErrors"] == []
        engine = wait_idle_blocks(demo.url, idle["num_free_blocks"])
        assert engine["memory"]["kv_blocks_used"] == idle["memory"]["kv_blocks_used"]
    finally:
        demo.close()
