"""Qwen3 sizes the checkpoint writer can build: the tiny demo size and the published ones.

A `Shape` holds the `Qwen3Config` fields that set a model's size, under the config's own
names, plus the dtype its weights are saved in; everything else (norm epsilon, activation,
no attention bias, no sliding window) is left to `Qwen3Config`'s defaults. Nothing here
imports transformers, so the command line lists the shapes without loading it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Shape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    dtype: str

    def config_fields(self) -> dict[str, Any]:
        """Keyword arguments for `Qwen3Config`: every field keeps its name there."""
        return asdict(self)

    def layer_parameters(self) -> int:
        attention_width = self.num_attention_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        attention = 2 * self.hidden_size * attention_width + 2 * self.hidden_size * kv_width
        mlp = 3 * self.hidden_size * self.intermediate_size
        norms = 2 * self.hidden_size + 2 * self.head_dim
        return attention + mlp + norms

    def parameter_count(self) -> int:
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embeddings
        layers = self.num_hidden_layers * self.layer_parameters()
        return embeddings + head + self.hidden_size + layers


def _published(hidden_size: int, intermediate_size: int, num_hidden_layers: int,
               num_attention_heads: int) -> Shape:
    """A released Qwen3 dense size: what its config.json says beyond these four numbers is
    the same for 0.6B, 1.7B and 4B."""
    return Shape(vocab_size=151936, hidden_size=hidden_size, intermediate_size=intermediate_size,
                 num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                 tie_word_embeddings=True, dtype="bfloat16")


SHAPES: dict[str, Shape] = {
    "tiny": Shape(vocab_size=2048, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  max_position_embeddings=4096, tie_word_embeddings=True, dtype="float32"),
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
            f"{chosen.num_hidden_layers} layers, {chosen.dtype}")
