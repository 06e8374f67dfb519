"""Jupyter server extension behind the JupyterLab "Qwen" sidebar.

REST routes under ``{base_url}jupyter-qwen/``: ``gpus``, ``servers`` and
``servers/{id}/stop|clean``, and ``servers/{id}/v1/...``, each model server's OpenAI
routes proxied under Jupyter's URL and auth (proxy.py). It runs in the Jupyter server
process, so it must never import torch: it reads the model-server registry and NVML only.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyter_qwen.labserver"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .handlers import setup_handlers

    setup_handlers(serverapp.web_app)
    serverapp.log.info("jupyter_qwen.labserver: REST routes at %sjupyter-qwen/", serverapp.base_url)
