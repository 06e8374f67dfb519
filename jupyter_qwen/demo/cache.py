"""Where jupyter_qwen keeps what it builds: the demo checkpoint, built once and cached.

`cache_dir()` is the one place that reads $JUPYTER_QWEN_CACHE. The demo model's folder is
named by the generator's version and a digest of the script it was taught, so a changed
script or writer builds a new folder instead of reusing a stale one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jupyter_qwen.demo.checkpoint import GENERATOR_VERSION, make_tiny_qwen3

if TYPE_CHECKING:
    from jupyter_qwen.demo.script import ScriptedTurn

CACHE_ENV = "JUPYTER_QWEN_CACHE"
SERVED_NAME = "qwen3-demo"
"""The model name a server of the demo model answers to."""
_DEMO_LOCK = threading.Lock()


def cache_dir(default: Path | None = None) -> Path:
    """$JUPYTER_QWEN_CACHE when set, else `default`, else ~/.cache/jupyter_qwen."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return default if default is not None else Path.home() / ".cache" / "jupyter_qwen"


def demo_model_name() -> str:
    """The cache folder's name: generator version and a digest of the script it was taught
    (which holds the tool schema, so a LangChain that renders tools anew gets a new model)."""
    from jupyter_qwen.demo import script

    return f"demo-tiny-v{GENERATOR_VERSION}-{script.script_digest(script.DEMO_SCRIPT)[:12]}"


def demo_folder() -> Path:
    """Where `demo_model_path()` builds the demo model, without building it."""
    return cache_dir() / demo_model_name()


def demo_model_path() -> Path:
    """The tiny demo checkpoint, taught DEMO_SCRIPT, built once (per process at a time) and
    cached under `cache_dir()`."""
    from jupyter_qwen.demo import script

    folder = demo_folder()
    with _DEMO_LOCK:
        if not folder.is_dir():
            _build_into(folder, script.DEMO_SCRIPT)
    return folder


def _build_into(folder: Path, script: Sequence[ScriptedTurn]) -> None:
    """Build in a temporary sibling and rename, so that racing processes never see half."""
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    try:
        make_tiny_qwen3(building, script=script)
        building.chmod(0o755)
        os.rename(building, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
