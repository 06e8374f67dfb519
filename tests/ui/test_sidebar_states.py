"""The "Qwen" sidebar with servers in every state, in a real JupyterLab and headless Chromium.

One lab lists six servers: a loading one, a failed one (both the stand-in peer answering
/health as the shared contract says), the real demo server (ready, figures as this version
of the engine reports them), a stand-in ready one with every figure (memory, latency, two
running requests) whose notebook is a session of the lab, a remote one, and one whose figures
have the wrong shape (its card says it cannot be drawn; the others stay). The sidebar must
show every card and the GPU section; screenshots in light and dark at 1400 and 900 px land in
``out/`` and no text spills out of its card; no console errors. The Abort button of a running
request goes through the server extension to the stand-in's ``/admin/abort`` (the real
server's abort route is tested where it is built) and the row leaves the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import lab
from lab import api, needs_browser, out_dir, run_script
from model_servers import start_demo_server, start_model_server

start_lab = lab.start_lab
pytestmark = needs_browser
NOTEBOOK = "work/serving.ipynb"
FAKE_NVML = Path(__file__).with_name("fake_nvml")  # a GPU whose processes are lab's kernels


def _session(the_lab) -> str:
    with api(the_lab, "api/sessions", {"path": NOTEBOOK, "name": "serving.ipynb",
                                       "type": "notebook", "kernel": {"name": "python3"}}) as r:
        return json.loads(r.read())["kernel"]["id"]


def test_every_state_has_its_card(start_lab, tmp_path, capsys, demo_model):
    the_lab = start_lab(pythonpath=[FAKE_NVML], refresh_ms=500)
    (the_lab.root_dir / "work").mkdir()
    (the_lab.root_dir / NOTEBOOK).write_text(json.dumps(
        {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    kernel_id = _session(the_lab)
    servers = [
        start_model_server(the_lab, "stand-in/Qwen3-Loading", state="loading"),
        start_model_server(the_lab, "stand-in/Qwen3-Missing", state="failed"),
        start_model_server(the_lab, "stand-in/Qwen3-Busy", kernel_id=kernel_id, device="cuda:0"),
        start_model_server(the_lab, "stand-in/Qwen3-Far", origin="remote"),
        start_model_server(the_lab, "stand-in/Qwen3-Garbled", state="malformed"),
    ]
    try:
        servers.append(start_demo_server(the_lab, demo_model.parent))
        loading, failed, busy, far, garbled, demo = servers
        cards = {"loading": loading.name, "failed": failed.name, "ok": demo.name,
                 "busy": busy.name, "remote": far.name}
        result = run_script(
            "sidebar_states.mjs", out_dir(tmp_path), LAB_URL=the_lab.lab_url,
            CARDS=json.dumps(cards), ABORT_MODEL=busy.name,
            ABORT_REQUEST="chatcmpl-standin-1", NOTEBOOK=NOTEBOOK, BROKEN=garbled.name,
        )
        with capsys.disabled():
            print("\nsidebar screenshots:", *result["screenshots"], sep="\n  ")
        assert result["ok"], (f"{result.get('error')}\nsteps: {result['steps']}\n"
                              f"page errors: {result['pageErrors']}\n{the_lab.log_tail(800)}")
        _check_cards(result, loading, failed, busy, far, demo, garbled.name)
        _check_views(result)
        # Abort: through the server extension to the server's /admin/abort; the row leaves
        assert "Aborted request chatcmpl-standin-1 of Qwen3-Busy" in result["abortToast"]
        assert result["rowsAfterAbort"] == 1
        assert result["openedNotebook"] == NOTEBOOK and result["statusBarOpens"]
    finally:
        for server in servers:
            server.close()


def _check_cards(result, loading, failed, busy, far, demo, garbled_name) -> None:
    assert result["statuses"] == {loading.name: "loading", failed.name: "failed",
                                  demo.name: "ok", busy.name: "ok", far.name: "ok"}
    assert result["gpuSection"] == 1 and result["gpuCards"] == 1
    # the GPU's memory by owner: the kernel (its notebook), the server NVML did not list
    # (its own NVML figure), then what no process accounts for and what is free
    assert NOTEBOOK in result["gpuOwners"][0] and "3.0 GiB" in result["gpuOwners"][0]
    assert "Qwen3-Busy" in result["gpuOwners"][1] and "2.0 GiB" in result["gpuOwners"][1]
    assert result["gpuRest"][-1].startswith("free")
    # the card with figures of the wrong shape says so; every other card is drawn
    assert result["brokenCards"] == [f"Cannot show server {garbled_name}: "]
    assert "loading weights (40 %)" in result["loading"]["text"]
    assert result["loading"]["value"] == "40"
    assert "not in the local Hugging Face cache" in result["failed"]["error"]
    assert "huggingface-cli download" in result["failed"]["hint"]
    assert result["failed"]["detailOpen"] is False and "Traceback" in result["failed"]["detail"]
    assert result["failed"]["actions"] == ["Stop", "Clean"]
    cards = result["cards"]
    full = cards[busy.name]
    assert "cuda:0" in full["facts"] and "up 13 min" in full["facts"]
    assert "chat thinking-2507" in full["facts"]
    assert "2 running" in full["stats"] and "KV 25 %" in full["stats"]
    assert "1.2 GiB" in full["memory"] and "128 / 512 blocks (25 %)" in full["memory"]
    assert "CUDA graphs64 MiB" in full["memory"] and "process on GPU2.0 GiB" in full["memory"]
    assert "128 MiB of 512 MiB" in full["memory"] and "96 MiB" in full["memory"]
    assert "p50 82 ms · p95 412 ms" in full["latency"]
    assert "p50 12 ms · p95 –" in full["latency"]
    assert full["running"] == 2 and full["abortButtons"] == 2
    assert full["actions"] == ["Stop", "Clean"]
    # the snippet holds the URL once, as the card shows it
    assert full["snippet"].count(full["url"]) == 1 and full["url"].startswith("http://127.0.0.1:")
    # the remote one: a badge, no Stop / Clean / Abort
    assert cards[far.name]["badges"] == "remote"
    assert cards[far.name]["actions"] == [] and cards[far.name]["abortButtons"] == 0
    # the real demo server: its own memory figures (an idle KV cache is a real 0 blocks used);
    # what a CPU server does not have reads "not reported" / "none on CPU", never 0
    real = cards[demo.name]
    assert real["actions"] == ["Stop", "Clean"]
    assert real["snippet"].startswith('ChatOpenAI(base_url="http://127.0.0.1:')
    assert "weights" in real["memory"] and "blocks" in real["memory"]
    assert "activationsnot reported" in real["memory"] and "none on CPU" in real["memory"]
    assert real["latency"] and " 0 " not in f" {real['latency']} "


def _check_views(result) -> None:
    assert result["statusBar"].startswith("Qwen: 6 servers")
    for view, spilled in result["overflow"].items():
        assert spilled == [], f"text overflows its card in {view}: {spilled}"
    for width, px in result["panelWidths"].items():
        assert 280 <= px <= 320, f"the sidebar is {px} px wide at {width} px"
    # React reports the error the broken card's boundary caught; nothing else
    unexpected = [e for e in result["consoleErrors"] if "is not a function" not in e]
    assert unexpected == [], result["consoleErrors"]
    assert result["pageErrors"] == []
    assert result["failedRequests"] == []
    names = {Path(p).name for p in result["screenshots"]}
    for theme in ("light", "dark"):
        for width in (1400, 900):
            assert f"states-{theme}-{width}.png" in names
            assert f"states-panel-{theme}-{width}.png" in names
