"""Helpers for tests of code that uses jupyter_qwen: random Qwen3 checkpoints, built offline.

`make_tiny_qwen3(path)` writes a Hugging Face checkpoint (config, safetensors weights,
tokenizer, chat template) of one of `SHAPES`, in seconds and without a download. They live
in `jupyter_qwen.demo`, where the demo model is built; this module only names them for test
suites. Runtime code never imports it.
"""

from __future__ import annotations

from jupyter_qwen.demo.checkpoint import make_tiny_qwen3
from jupyter_qwen.demo.shapes import SHAPES, parameter_count

__all__ = ["SHAPES", "make_tiny_qwen3", "parameter_count"]
