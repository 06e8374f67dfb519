"""The layout's promises that a user feels: importing the package, loading the extension and
the Jupyter server extension stay light (no torch, transformers or triton), and the import
contracts in pyproject.toml hold and can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "triton", "tokenizers", "safetensors")
LIGHT_PATHS = {
    "import jupyter_qwen": "import jupyter_qwen",
    "%load_ext jupyter_qwen": "import jupyter_qwen\n"
                              "from jupyter_qwen.notebook.magics import QwenMagics",
    "the Jupyter server extension": "import jupyter_qwen.labserver.handlers",
    "the command line's parser": "from jupyter_qwen.__main__ import build_parser\n"
                                 "build_parser()",
    "the server's errors and options": "import jupyter_qwen.server.errors, "
                                       "jupyter_qwen.server.options",
    "connect(), the /metrics reader and child-process servers":
        "from jupyter_qwen.server.remote import connect\n"
        "import jupyter_qwen.server.process",
}


@pytest.mark.parametrize("what", list(LIGHT_PATHS))
def test_light_paths_import_no_torch(what):
    code = f"import sys\n{LIGHT_PATHS[what]}\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", f"{what} imports {result.stdout.strip()}"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip("import-linter is not installed")
    return subprocess.run([command, "--no-cache"], capture_output=True, text=True,
                          timeout=300, cwd=root, env={"PYTHONPATH": str(root),
                                                      "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold_and_catch_an_upward_import(tmp_path):
    """lint-imports passes on the package, and fails on a copy of it in which the engine
    reaches up into the server layer."""
    kept = lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout[-3000:]
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "jupyter_qwen", copy / "jupyter_qwen",
                    ignore=shutil.ignore_patterns("labextension", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    scheduler = copy / "jupyter_qwen" / "engine" / "scheduler.py"
    scheduler.write_text(scheduler.read_text() + "\nfrom jupyter_qwen.server import app\n")
    broken = lint_imports(copy)
    assert broken.returncode != 0
    assert "jupyter_qwen.engine is not allowed to import jupyter_qwen.server" in broken.stdout
