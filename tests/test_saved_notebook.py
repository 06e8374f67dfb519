"""What a notebook saved after running the magics holds, read with nbformat as GitHub or
nbviewer would: one output per streamed answer, and text and HTML views with figures (not a
widget's bare repr, not a frozen "starting: 0%")."""

from __future__ import annotations

import re

import nbformat
from nbclient import NotebookClient

WIDGET = "application/vnd.jupyter.widget-view+json"
CELLS = ["%load_ext jupyter_qwen",
         "%qwen_serve --demo",
         "qwen_server.wait_ready()",
         "%%qwen\nHello!",
         "%%qwen --max-tokens 4\nHello!",
         "%qwen_status",
         "%qwen_stop"]


def run_saved(tmp_path) -> list:
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    NotebookClient(book, timeout=300, kernel_name="python3").execute()
    path = tmp_path / "saved.ipynb"
    nbformat.write(book, path)
    return nbformat.read(path, as_version=4).cells


def displays(cell) -> list[dict]:
    return [o.data for o in cell.outputs if o.output_type in ("display_data", "execute_result")]


def test_a_saved_notebook_reads_without_the_widgets(demo_model, tmp_path):
    cells = run_saved(tmp_path)
    everything = nbformat.writes(nbformat.v4.new_notebook(cells=cells))
    assert "object at 0x" not in everything

    [panel] = displays(cells[1])
    assert WIDGET in panel
    text = panel["text/plain"]
    assert text.startswith("server") and "qwen3-demo (stopped)" in text
    assert "chat         hybrid" in text and "KV cache" in text and "blocks" in text
    assert "<table>" in panel["text/html"] and "qwen3-demo (stopped)" in panel["text/html"]
    assert re.search(r"stop +stopped", text), "the stop report reaches the saved view"

    [progress] = [d for d in displays(cells[2]) if "text/html" in d]
    assert re.fullmatch(r"ready in [\d.]+ m?s", progress["text/plain"])
    assert "0%" not in progress["text/plain"]

    [answer] = cells[3].outputs
    assert answer.output_type == "display_data", "one output for a streamed answer"
    assert "Hello! I am the jupyter_qwen demo model." in answer.data["text/markdown"]
    assert re.search(r"\d+ tokens · first token [\d.,]+ m?s · [\d.,]+ tok/s",
                     answer.data["text/plain"])
    [cut] = cells[4].outputs
    assert "no answer: the token limit (4) was reached while reasoning" in cut.data[
        "text/markdown"]

    [status] = displays(cells[5])
    assert "qwen3-demo" in status["text/plain"] and "hybrid" in status["text/plain"]
    stop_text = "".join(o.get("text", "") for o in cells[6].outputs)
    [report] = displays(cells[6])
    assert "stopped qwen3-demo" in stop_text and "process RSS" in report["text/html"]
    stop_line = report["text/plain"].splitlines()[0].split(None, 1)[1]
    assert stop_line in text, "the widget and %qwen_stop report the same stop"
