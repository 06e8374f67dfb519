"""`python -m jupyter_qwen serve` as a terminal user meets it: one-line errors with exit code
2 (the traceback only with --debug), --demo, and a start-up line that names the device."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from jupyter_qwen.__main__ import main
from jupyter_qwen.options import ConfigError


@pytest.mark.parametrize(("argv", "says"), [
    (["serve", "MODEL", "--port", "99999"], "a port is a number from 1 to 65535, got 99999"),
    (["serve", "MODEL", "--max-num-seqs", "0"], "max_num_seqs must be an integer in [1, 4096]"),
    (["serve", "/no/such/folder"], "is not a checkpoint folder nor a Hugging Face id"),
    (["serve"], "give a MODEL (a Hugging Face id or a checkpoint folder) or --demo"),
    (["serve", "MODEL", "--demo"], "or --demo"),
])
def test_a_user_error_is_one_line_and_exit_code_2(argv, says, capsys, tiny_model_path):
    assert main([str(tiny_model_path) if word == "MODEL" else word for word in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m jupyter_qwen serve: error: ") and says in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_model_neither_here_nor_in_the_cache_is_one_line_with_a_hint(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["serve", "nobody-here/made-up-model-7f3a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m jupyter_qwen serve: error: nobody-here/made-up-model-7f3a is not "
                   "in the local Hugging Face cache and the hub is unreachable: download it "
                   "(huggingface-cli download nobody-here/made-up-model-7f3a) or give a local "
                   "folder"]


def test_debug_shows_the_error_itself(tiny_model_path):
    with pytest.raises(ConfigError) as caught:
        main(["serve", str(tiny_model_path), "--port", "99999", "--debug"])
    assert caught.value.field == "port"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_demo_names_the_device_and_answers(demo_model):
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_qwen", "serve", "--demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "serving" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
        assert line.startswith("serving qwen3-demo at http://127.0.0.1:") and " on cpu " in line
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
        assert models["data"][0]["id"] == "qwen3-demo"
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
        assert (health["origin"], health["pid"], health["device"]) == (
            "process", process.pid, "cpu")
    finally:
        process.terminate()
        process.wait(timeout=60)
