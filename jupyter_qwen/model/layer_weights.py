"""What a whole decoder layer's kernel reads of the layer (`kernels/decode_layer.py`): its
weights and its shape, gathered once from the model's modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerWeights:
    """What one decoder layer's decode step reads besides its inputs and the cache: the norm
    weights and eps, and each product's weight (a bf16 tensor [N, K]) or FP8 projection
    (`Fp8Linear`: words read by `fp8_words`); the four products take one format."""

    input_norm: torch.Tensor
    post_attention_norm: torch.Tensor
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    eps: float
    qkv: object
    o: object
    gate_up: object
    down: object

    @property
    def fp8(self) -> bool:
        return not isinstance(self.qkv, torch.Tensor)

    def products(self) -> tuple:
        return self.qkv, self.o, self.gate_up, self.down


@dataclass(frozen=True)
class LayerShape:
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @property
    def qkv_width(self) -> int:
        return (self.q_heads + 2 * self.kv_heads) * self.head_dim
