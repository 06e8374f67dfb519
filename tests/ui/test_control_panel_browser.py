"""The control panel (%qwen_panel) in a real JupyterLab and a real headless Chromium.

A notebook's first cell shows the panel; labextension/ui-tests/control_panel.mjs types the
demo model's folder into the model box and 0 into max-num-seqs, presses Start and sees the
message next to that field, fixes it, presses Start again, waits for the live dashboard,
runs the second cell (requests to ``qwen_server``) and watches the numbers move, then
presses the dashboard's Stop and sees the form come back. Screenshots (form, error, light,
dark, stopped) land in ``$JUPYTER_QWEN_UI_OUT`` (default: ``out/`` of the checkout).
"""

from __future__ import annotations

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
from test_panel import request_cell_source, write_notebook

start_lab = lab.start_lab
pytestmark = needs_browser
NOTEBOOK = "control_panel.ipynb"


def panel_cell_source() -> str:
    return "\n".join([
        "import sys",
        'print("kernel python:", sys.executable)',
        "%load_ext jupyter_qwen",
        "%qwen_panel --max-model-len 256",
    ])


def test_control_panel_starts_a_server_shows_it_and_stops(start_lab, tmp_path, demo_model,
                                                         capsys):
    if not labextension_installed("@jupyter-widgets/jupyterlab-manager"):
        pytest.fail("ipywidgets' labextension is not installed: pip install ipywidgets")
    lab = start_lab()
    write_notebook(lab.root_dir / NOTEBOOK, panel_cell_source(),
                   "server = qwen_server\n" + request_cell_source(seconds=120))
    result = run_script("control_panel.mjs", out_dir(tmp_path),
                        NOTEBOOK_URL=lab.tree_url(NOTEBOOK), MODEL_PATH=str(demo_model))
    with capsys.disabled():
        print("\ncontrol panel steps:", *result["steps"], sep="\n  ")
        print("control panel screenshots:", *result["screenshots"], sep="\n  ")
    assert result["ok"], f"{result.get('error')}\nsteps: {result['steps']}\n{lab.log_tail()}"
    check_theme_and_width_shots(result, result["formOverflow"], prefix="error-")
    check_theme_and_width_shots(result, result["overflow"])
    assert result["consoleErrors"] == []

    assert result["kernelPython"] == sys.executable
    assert result["modelChoices"][-1] == "demo"
    assert "no GPU" in result["memoryNote"] or "GiB of" in result["memoryNote"]
    assert result["prefilledSeqs"] == "256"

    assert "max-num-seqs must be an integer in [1, 4096], got 0" in result["fieldError"]
    assert "Nothing started: check max-num-seqs" in result["statusAfterError"]
    assert result["dashboardsAfterError"] == 0

    assert result["firstState"] in ("loading", "ok")
    assert result["formVisibleWhileServing"] is False
    assert result["demoLabel"].startswith("demo model")
    assert re.fullmatch(r'ChatOpenAI\(base_url="http://127\.0\.0\.1:\d+/v1", api_key="EMPTY", '
                        r'model="qwen3-demo"\)', result["snippet"])
    totals = result["totals"]
    assert totals == sorted(set(totals)) and len(totals) == 4
    assert float(result["tokensPerS"]) > 0 and result["requestCellBusy"]

    assert result["statusAfterStop"].startswith("Stopped.")
    assert re.match(r"requests done: [1-9]\d*; server stopp(ing|ed)",
                    result["requestCellOutput"][-1])
    assert not [e for e in result["pageErrors"] if "jqc" in e or "widget" in e.lower()]
    runtime = Path(lab.env["JUPYTER_RUNTIME_DIR"]) / "jupyter_qwen"
    assert not list(runtime.glob("server-*.json"))
    for shot in result["screenshots"]:
        assert Path(shot).stat().st_size > 5_000
