"""A Qwen3 checkpoint's shape, read from its config.json (torch-free: the demo writer and the
memory reports use it without loading a model)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(slots=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    torch_dtype: str = "bfloat16"

    @classmethod
    def from_dict(cls, raw: dict) -> Qwen3Config:
        raw = dict(raw)
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"unsupported RoPE scaling {rope!r}: only plain RoPE is implemented")
        raw.setdefault("rope_theta", rope.get("rope_theta", 1_000_000.0))
        raw.setdefault("head_dim", raw["hidden_size"] // raw["num_attention_heads"])
        raw["torch_dtype"] = raw.get("dtype") or raw.get("torch_dtype") or "bfloat16"
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def from_folder(cls, folder: Path) -> Qwen3Config:
        raw = json.loads((Path(folder) / "config.json").read_text())
        architectures = raw.get("architectures") or ["Qwen3ForCausalLM"]
        if raw.get("model_type") != "qwen3" and "Qwen3ForCausalLM" not in architectures:
            raise ValueError(f"{folder} holds a {raw.get('model_type')!r} model; "
                             "jupyter_qwen serves Qwen3 (model_type 'qwen3') models")
        return cls.from_dict(raw)

    @property
    def dtype(self) -> str:
        """The weights' dtype as config.json names it (transformers 5 calls it `dtype`)."""
        return self.torch_dtype

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim

    def layer_parameters(self) -> int:
        """Weights of one decoder layer: attention, MLP and the four norms."""
        attention_width = self.num_attention_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        attention = 2 * self.hidden_size * attention_width + 2 * self.hidden_size * kv_width
        mlp = 3 * self.hidden_size * self.intermediate_size
        norms = 2 * self.hidden_size + 2 * self.head_dim
        return attention + mlp + norms

    def parameter_count(self) -> int:
        """Weights of the whole model (the LM head counted once when tied)."""
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embeddings
        layers = self.num_hidden_layers * self.layer_parameters()
        return embeddings + head + self.hidden_size + layers
