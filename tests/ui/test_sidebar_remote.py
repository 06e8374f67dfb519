"""A server attached with ``connect()`` in the sidebar, in a real JupyterLab and Chromium.

Our own server runs as a separate process (``python -m jupyter_qwen serve --demo``) and this
test process attaches to it, as a notebook on another machine would attach to vLLM: the
registry then holds a record with origin "remote", and the server extension reads its figures
from ``/metrics``. Its card must say "remote", offer no Stop or Clean, and show live figures
(requests and a token rate, not "–") while requests run.
"""

from __future__ import annotations

import threading

import lab
from lab import needs_browser, out_dir, run_script
from model_servers import start_demo_server

start_lab = lab.start_lab
pytestmark = needs_browser


def test_a_connected_server_is_remote_with_live_figures(start_lab, tmp_path, demo_model,
                                                          monkeypatch):
    from jupyter_qwen.server.remote import connect

    the_lab = start_lab(refresh_ms=500)
    demo = start_demo_server(the_lab, demo_model.parent)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", the_lab.env["JUPYTER_RUNTIME_DIR"])
    attached = connect(demo.url, name="far-demo")
    done = threading.Event()

    def keep_busy() -> None:  # tokens flow while the sidebar reads /metrics twice
        client = attached.openai_client()
        while not done.is_set():
            client.chat.completions.create(
                model=attached.served_model_name, max_tokens=64,
                messages=[{"role": "user", "content": "What is the capital of France?"}])

    worker = threading.Thread(target=keep_busy, daemon=True)
    worker.start()
    try:
        result = run_script("sidebar_remote.mjs", out_dir(tmp_path), LAB_URL=the_lab.lab_url,
                            REMOTE_ID=attached.record.id)
        assert result["ok"], (f"{result.get('error')}\nsteps: {result['steps']}\n"
                              f"{the_lab.log_tail(800)}")
        assert "remote" in result["badges"].split()
        assert not {"Stop", "Clean"} & {b.strip() for b in result["buttons"]}
        assert "running" in result["stats"] and "–" not in result["stats"]
        assert result["model"].strip() == attached.served_model_name
    finally:
        done.set()
        worker.join(timeout=30)
        attached.disconnect()
        demo.close()
