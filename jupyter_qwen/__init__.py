"""jupyter_qwen: serve Qwen3 models from a Jupyter notebook.

Importing this package is light: torch, transformers and the server load only
when one of the names below is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from jupyter_qwen._version import __version__
from jupyter_qwen.labserver import _jupyter_server_extension_points

_LAZY = {
    "LLM": "jupyter_qwen.llm",
    "SamplingParams": "jupyter_qwen.sampling_params",
    "EngineConfig": "jupyter_qwen.config",
    "serve": "jupyter_qwen.server.server",
    "QwenServer": "jupyter_qwen.server.server",
    "connect": "jupyter_qwen.server.remote",
    "qwen3_inference": "jupyter_qwen.notebook.lifecycle",
    "clean": "jupyter_qwen.notebook.lifecycle",
    "panel": "jupyter_qwen.notebook.control_panel",
}

__all__ = [*_LAZY, "__version__"]
__all__ += ["_jupyter_server_extension_points"]  # the sidebar's server extension


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jupyter_qwen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def load_ipython_extension(ipython) -> None:
    """`%load_ext jupyter_qwen`: register the magics (torch is not imported yet)."""
    from jupyter_qwen.notebook.magics import QwenMagics

    ipython.register_magics(QwenMagics)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The prebuilt JupyterLab extension (the "Qwen" sidebar) shipped in the wheel."""
    return [{"src": "labextension", "dest": "jupyter-qwen"}]
