"""The demo model: a tiny Qwen3 built offline and taught a few scripted conversations.

One module per concern:

- `shapes`: the Qwen3 sizes the writer builds (tiny, and the published 0.6B / 1.7B / 4B);
- `checkpoint`: `make_tiny_qwen3`, writing config, generation config, tokenizer and weights;
- `weights`: tensor names, seeded random init and safetensors shards;
- `tokenizer`: the byte-level BPE and its generated training corpus;
- `chat_template`: the ChatML template with Qwen3's think and tool-call tags;
- `script`: the scripted turns (`DEMO_PROMPTS`, `DEMO_SCRIPT`, `DEMO_TOOLS`, `get_weather`);
- `teach`: `teach()`, fine-tuning a checkpoint until greedy decoding replays the script;
- `cache`: `cache_dir()`, and the demo checkpoint built once into it (`demo_model_path()`);
- `cli`: the `make-tiny-model` command.

Importing this package is light: the names below load their module on first use, and
torch, transformers and tokenizers load only when a checkpoint is written or taught.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SHAPES": "shapes",
    "Shape": "shapes",
    "parameter_count": "shapes",
    "make_tiny_qwen3": "checkpoint",
    "GENERATOR_VERSION": "checkpoint",
    "CHAT_TEMPLATE": "chat_template",
    "ADDED_TOKENS": "tokenizer",
    "added_token_ids": "tokenizer",
    "DEMO_PROMPTS": "script",
    "DEMO_SCRIPT": "script",
    "DEMO_TOOLS": "script",
    "ScriptedTurn": "script",
    "get_weather": "script",
    "cache_dir": "cache",
    "demo_model_name": "cache",
    "demo_model_path": "cache",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
