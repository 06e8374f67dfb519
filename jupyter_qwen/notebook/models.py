"""Which models to offer and whether a text names one: the models served lately
(``recent.json`` in ``$JUPYTER_QWEN_CACHE``, else in ``jupyter_data_dir()/jupyter_qwen``), the
Qwen3 checkpoints in the local Hugging Face cache, and ``demo``, the tiny demo model."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("jupyter_qwen.notebook")
DEMO_CHOICE = "demo"
RECENT_LIMIT = 8
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def recent_path() -> Path:
    """Where the recently served models are kept."""
    from jupyter_core.paths import jupyter_data_dir

    from jupyter_qwen.demo.cache import cache_dir

    return cache_dir(default=Path(jupyter_data_dir()) / "jupyter_qwen") / "recent.json"


def recent_models(path: Path | None = None) -> list[str]:
    """The models served lately, newest first (folders that are gone are left out)."""
    try:
        entries = json.loads((path or recent_path()).read_text())
    except (OSError, ValueError):
        return []
    models = [e["model"] for e in entries if isinstance(e, dict)
              and isinstance(e.get("model"), str)] if isinstance(entries, list) else []
    return [m for m in models if not _looks_like_path(m) or Path(m).is_dir()][:RECENT_LIMIT]


def remember_model(model: str, path: Path | None = None) -> None:
    """Put ``model`` first in the recent list (written atomically; failures only logged)."""
    path = path or recent_path()
    models = [model, *(m for m in recent_models(path) if m != model)][:RECENT_LIMIT]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_text(json.dumps([{"model": m} for m in models], indent=1))
        os.replace(temporary, path)
    except OSError as error:
        log.warning("could not write %s: %s", path, error)


def remember_when_served(server: Any, model: str) -> None:
    """Remember ``model`` once ``server`` has loaded it (a short-lived daemon thread)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        model = str(folder.resolve())

    def wait() -> None:
        while server.state == "loading":
            time.sleep(0.2)
        if server.state == "ok":
            remember_model(model)

    threading.Thread(target=wait, name="jupyter-qwen-recent", daemon=True).start()


def cached_qwen3_models(cache_dir: str | Path | None = None) -> list[str]:
    """Hub ids of the Qwen3 checkpoints (config and weights) in the local Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache_dir)
    except Exception as error:  # no cache yet, a corrupted one, an old huggingface_hub
        log.debug("no Hugging Face cache to offer: %s", error)
        return []
    repos = sorted(info.repos, key=lambda repo: repo.last_accessed, reverse=True)
    return [repo.repo_id for repo in repos if repo.repo_type == "model"
            and any(_is_qwen3_checkpoint(rev.snapshot_path) for rev in repo.revisions)]


def _is_qwen3_checkpoint(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("model_type") == "qwen3"
            and any(folder.glob("*.safetensors")))


def model_choices(hf_cache_dir: str | Path | None = None) -> list[str]:
    """What the model box offers: recent models, cached Qwen3 checkpoints, then ``demo``."""
    choices = [*recent_models(), *cached_qwen3_models(hf_cache_dir), DEMO_CHOICE]
    return list(dict.fromkeys(choices))


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or os.sep in text.replace("/", "") or \
        text.count("/") > 1


def demo_folder() -> Path:
    """Where the demo model is built, without building it."""
    from jupyter_qwen.demo.cache import demo_folder

    return demo_folder()


def check_model(text: str) -> str | None:
    """What is wrong with the model box's text, or None: a folder must exist and hold a
    config.json; anything else must look like a Hugging Face id (``org/name``)."""
    if not text:
        return "give a Hugging Face id like Qwen/Qwen3-0.6B, a checkpoint folder, or demo"
    if text == DEMO_CHOICE:
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else \
            f"{path} holds no config.json, so it is not a checkpoint folder"
    if path.exists():
        return f"{path} is a file; give the checkpoint folder that holds it"
    if _looks_like_path(text):
        return f"there is no folder {path}"
    if HUB_ID.fullmatch(text):
        return None
    return f"{text!r} is not a folder here, nor a Hugging Face id like Qwen/Qwen3-0.6B"
