"""One set of formatting rules in three languages: tests/format_cases.json holds inputs and
what jupyter_qwen writes for them; the Python module, the notebook widget's JavaScript and the
sidebar's TypeScript must all agree with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_qwen import format as fmt

REPO = Path(__file__).resolve().parents[1]
CASES_FILE = REPO / "tests" / "format_cases.json"
CASES = json.loads(CASES_FILE.read_text())
PYTHON = {"number": fmt.format_number, "percent": fmt.format_percent,
          "bytes": fmt.format_bytes, "duration": fmt.format_duration,
          "latency": fmt.format_latency, "snippet": fmt.chat_snippet}
SCRIPTS = {
    "widget": (REPO / "jupyter_qwen" / "notebook" / "static" / "panel.js",
               ["number", "percent", "bytes", "duration", "latency"]),
    "sidebar": (REPO / "labextension" / "src" / "format.ts",
                ["number", "percent", "bytes", "duration", "latency", "snippet"]),
}


def _missing_node() -> str | None:
    if not shutil.which("node"):
        return "node is not installed"
    if not (REPO / "labextension" / "node_modules" / "typescript").is_dir():
        return "labextension/node_modules/typescript is missing (run jlpm in labextension/)"
    return None


MISSING = _missing_node()
if MISSING and os.environ.get("JUPYTER_QWEN_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"the JavaScript formatters must be checked here: {MISSING}")


@pytest.mark.parametrize("kind", list(PYTHON))
def test_python_formatters_follow_the_cases(kind):
    failures = [(case["args"], case["expected"], PYTHON[kind](*case["args"]))
                for case in CASES[kind]]
    assert [f for f in failures if f[1] != f[2]] == []


@pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_javascript_formatters_follow_the_cases(name):
    module, kinds = SCRIPTS[name]
    done = subprocess.run(["node", str(REPO / "tests" / "format_check.mjs"), str(CASES_FILE),
                           str(module)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["checked"] == kinds
    assert result["failures"] == []


def test_the_cases_cover_the_unit_switches():
    durations = {case["expected"] for case in CASES["duration"]}
    assert {"119 s", "2 min", "120 min", "2 h"} <= durations
    snippets = [case["expected"] for case in CASES["snippet"]]
    assert any('api_key="EMPTY"' in s for s in snippets)
    assert any("api_key=qwen_server.api_key" in s for s in snippets)


def test_a_snippet_never_holds_the_key():
    snippet = fmt.chat_snippet("http://127.0.0.1:1/v1", "m", api_key_required=True)
    assert snippet == 'ChatOpenAI(base_url="http://127.0.0.1:1/v1", api_key=qwen_server.api_key, ' \
                      'model="m")'


def test_the_format_module_is_light():
    code = ("import sys, jupyter_qwen.format; "
            "print(sorted(m for m in ('torch', 'numpy', 'IPython') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.strip() == "[]"
