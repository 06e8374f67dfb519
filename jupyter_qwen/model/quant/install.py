"""Swap a Qwen3 model's projections (q/k/v, o, gate/up, down) for quantized ones, on the meta
device before the model is allocated; the embeddings, norms and LM head stay in the model's
dtype."""

from __future__ import annotations

from torch import nn

from jupyter_qwen.model.config import Qwen3Config
from jupyter_qwen.model.errors import QuantizationError
from jupyter_qwen.model.quant.config import QuantConfig
from jupyter_qwen.model.quant.linear import AwqLinear, Fp8Linear, QuantLinear

# packed projection -> the Hugging Face projections it holds, in order
PACKED_SOURCES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"),
                  "gate_up_proj": ("gate_proj", "up_proj")}


def shard_sizes(config: Qwen3Config, packed: str) -> list[int]:
    """Output rows of each shard of a packed projection (one shard for the others)."""
    if packed == "gate_up_proj":
        return [config.intermediate_size] * 2
    if packed == "qkv_proj":
        kv = config.num_key_value_heads * config.head_dim
        return [config.num_attention_heads * config.head_dim, kv, kv]
    return [config.hidden_size]


def _quantized(quant: QuantConfig, in_features: int, sizes: list[int]) -> QuantLinear:
    if quant.method == "fp8":
        return Fp8Linear(in_features, sizes, online=quant.online)
    return AwqLinear(in_features, sizes)


def install_quantized_linears(model: nn.Module, quant: QuantConfig) -> int:
    """Replace every projection `quant` converts; returns how many were replaced."""
    config: Qwen3Config = model.config
    if config.attention_bias:
        raise QuantizationError("quantized projections with attention_bias are not supported "
                                "(Qwen3 checkpoints have no projection biases)")
    replaced = 0
    for index, layer in enumerate(model.layers):
        for parent_name, parent in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
            for name, linear in list(parent.named_children()):
                if not isinstance(linear, nn.Linear):
                    continue
                sources = PACKED_SOURCES.get(name, (name,))
                prefix = f"model.layers.{index}.{parent_name}."
                converts = {quant.converts(prefix + source) for source in sources}
                if converts == {False}:
                    continue
                if len(converts) > 1:
                    raise QuantizationError(
                        f"quantization_config.modules_to_not_convert names some of "
                        f"{', '.join(prefix + s for s in sources)} but not all; jupyter_qwen "
                        "runs them as one projection, so all or none must be converted")
                setattr(parent, name, _quantized(quant, linear.in_features,
                                                 shard_sizes(config, name)))
                replaced += 1
    return replaced
