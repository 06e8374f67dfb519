"""Qwen3 sizes the checkpoint writer can build: the tiny demo size and the published ones.

A `Shape` is the model's own `Qwen3Config` (jupyter_qwen.model.config); the writer passes its
size fields and dtype to transformers' `Qwen3Config` and leaves everything else (norm
epsilon, activation, no attention bias, no sliding window) to that config's defaults.
Nothing here imports transformers or torch, so the command line lists the shapes without
loading them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from jupyter_qwen.model.config import Qwen3Config

Shape = Qwen3Config
"""A size the writer builds is the model's own config: `torch_dtype` is what its weights
are saved in."""
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim",
               "max_position_embeddings", "tie_word_embeddings")


def config_fields(shape: Shape) -> dict[str, Any]:
    """Keyword arguments for transformers' `Qwen3Config`: the size fields under their own
    names, and the weights' dtype; the rest is left to its defaults."""
    return {name: getattr(shape, name) for name in SIZE_FIELDS} | {"dtype": shape.torch_dtype}


def _published(hidden_size: int, intermediate_size: int, num_hidden_layers: int,
               num_attention_heads: int) -> Shape:
    """A released Qwen3 dense size: what its config.json says beyond these four numbers is
    the same for 0.6B, 1.7B and 4B."""
    return Shape(vocab_size=151936, hidden_size=hidden_size, intermediate_size=intermediate_size,
                 num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                 tie_word_embeddings=True, torch_dtype="bfloat16")


SHAPES: dict[str, Shape] = {
    "tiny": Shape(vocab_size=2048, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  max_position_embeddings=4096, tie_word_embeddings=True, torch_dtype="float32"),
    "qwen3-0.6b": _published(1024, 3072, 28, 16),
    "qwen3-1.7b": _published(2048, 6144, 28, 16),
    "qwen3-4b": _published(2560, 9728, 36, 32),
}


def get_shape(shape: str, num_hidden_layers: int | None = None) -> Shape:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")
    chosen = SHAPES[shape]
    if num_hidden_layers is None:
        return chosen
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be at least 1, not {num_hidden_layers}")
    return replace(chosen, num_hidden_layers=num_hidden_layers)


def parameter_count(shape: str = "tiny", num_hidden_layers: int | None = None) -> int:
    return get_shape(shape, num_hidden_layers).parameter_count()


def describe(shape: str, num_hidden_layers: int | None = None) -> str:
    chosen = get_shape(shape, num_hidden_layers)
    return (f"{shape}: {chosen.parameter_count():,} parameters, vocab {chosen.vocab_size:,}, "
            f"{chosen.num_hidden_layers} layers, {chosen.torch_dtype}")
