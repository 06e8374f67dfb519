"""The notebook's ServerPanel widget in a real JupyterLab and a real headless Chromium.

A notebook in the lab's root dir starts a server on the tiny model and shows its panel
(``panel_cell_source``), then sends chat requests for a while (``request_cell_source``),
keeping the kernel busy. labextension/ui-tests/panel.mjs runs both cells and checks that
the panel renders, that its numbers move, that Clean reports while the request cell is
still running (the browser asks the server extension, not the kernel), and that Stop
leaves it "stopped" and still. Screenshots (light, dark, loading, stopped) land in
``$JUPYTER_QWEN_UI_OUT`` (default: ``out/`` of the checkout); their paths are printed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import lab
import pytest
from lab import (
    check_theme_and_width_shots,
    labextension_installed,
    needs_browser,
    out_dir,
    run_script,
)

start_lab = lab.start_lab
pytestmark = needs_browser
NOTEBOOK = "panel.ipynb"
STOP_REPORT = r"stopped(; [\d.,]+ [KMG]iB back: .+| \(this server did not report its memory\))"
"""What a stop reports: the server's own memory given back, or that it did not say."""


def panel_cell_source(model_path: Path) -> str:
    """The cell that starts a server and shows its panel: `%qwen_serve`, as a user types it."""
    return "\n".join([
        "import sys",
        'print("kernel python:", sys.executable)',
        "%load_ext jupyter_qwen",
        f"%qwen_serve {model_path} --max-model-len 256",
        "server = qwen_server",
    ])


def request_cell_source(seconds: float = 150, workers: int = 2) -> str:
    """A cell that keeps the server (and the kernel) busy until it stops or time runs out."""
    return f"""\
import threading, time
server.wait_ready(timeout=300, progress=False)
client = server.openai_client(max_retries=0, timeout=30)
deadline = time.monotonic() + {seconds}
done = []

def send_requests():
    while server.state == "ok" and time.monotonic() < deadline:
        try:
            client.chat.completions.create(
                model=server.served_model_name, max_tokens=24,
                messages=[{{"role": "user", "content": "Tell me about GPUs"}}])
            done.append(1)
        except Exception:
            time.sleep(0.1)

threads = [threading.Thread(target=send_requests) for _ in range({workers})]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"requests done: {{len(done)}}; server {{server.state}}")
"""


def write_notebook(path: Path, *sources: str) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
              "source": source} for source in sources]
    path.write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                    "language": "python"}},
    }, indent=1))


def test_panel_updates_cleans_and_stops_while_a_cell_runs(start_lab, tmp_path, tiny_model_path,
                                                          capsys):
    if not labextension_installed("anywidget"):
        pytest.fail("anywidget's labextension is not installed: pip install anywidget")
    lab = start_lab()
    write_notebook(lab.root_dir / NOTEBOOK, panel_cell_source(tiny_model_path),
                   request_cell_source())
    result = run_script("panel.mjs", out_dir(tmp_path), NOTEBOOK_URL=lab.tree_url(NOTEBOOK))
    with capsys.disabled():
        print("\npanel steps:", *result["steps"], sep="\n  ")
        print("panel screenshots:", *result["screenshots"], sep="\n  ")
    assert result["ok"], f"{result.get('error')}\nsteps: {result['steps']}\n{lab.log_tail()}"
    check_theme_and_width_shots(result, result["overflow"])
    assert result["consoleErrorsBeforeFallback"] == []

    assert result["kernelPython"] == sys.executable
    assert result["firstState"] == "loading" and result["loadingText"].startswith("loading")
    totals = result["totals"]
    assert totals == sorted(set(totals)) and len(totals) == 4
    assert float(result["tokensPerS"]) > 0 and result["kvUsage"].endswith("%")
    assert result["chartTitles"] == ["memory (no GPU)", "tokens/s", "requests"] or (
        result["chartTitles"][0] == "GPU memory")
    assert max(result["chartPoints"]) >= 5

    assert result["busyBeforeClean"] and result["busyAfterClean"]
    assert re.match(r"cleaned: RSS [\d.]+ [KMG]i?B → [\d.]+ [KMG]i?B", result["cleanText"])

    assert result["busyBeforeStop"]
    assert result["stateAfterStop"] == "stopped" and result["stopDisabled"]
    assert re.fullmatch(STOP_REPORT, result["stopText"])
    assert result["updatesAfterStop"] is False
    assert re.match(r"requests done: [1-9]\d*; server stopp(ing|ed)",
                    result["requestCellOutput"][-1])

    assert (result["cleanRoute"], result["stopRoute"]) == ("server", "server")
    assert result["fallbackCleanRoute"] == "kernel"
    assert result["fallbackCleanText"].startswith("cleaned: RSS")
    server_id = result["adminRequests"][0].split("/")[-2]
    base = f"/user/test/jupyter-qwen/servers/{server_id}"
    assert result["adminRequests"] == [f"200 {base}/clean", f"200 {base}/stop",
                                       f"404 {base}/clean"]
    assert not [e for e in result["pageErrors"] if "jqw" in e or "anywidget" in e.lower()]
    runtime = Path(lab.env["JUPYTER_RUNTIME_DIR"]) / "jupyter_qwen"
    assert not list(runtime.glob("server-*.json"))
    for shot in result["screenshots"]:
        assert Path(shot).stat().st_size > 5_000
