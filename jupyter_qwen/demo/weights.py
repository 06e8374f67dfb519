"""The checkpoint's tensors: Hugging Face names, shapes, seeded random init, safetensors shards.

Each tensor draws from its own generator, seeded by the checkpoint's seed and the tensor's
name, so a tensor's values do not depend on the others or on how they are sharded.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jupyter_qwen.demo.shapes import Shape

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
EMBEDDING_LOGIT_STD = 2.0
RESIDUAL_GAIN = 8.0
QK_NORM_SCALE = 2.0
FINAL_NORM_SCALE = 3.0
NORM_NOISE = 0.05


@dataclass(frozen=True)
class _WeightSpec:
    name: str
    shape: tuple[int, ...]
    std: float
    mean: float = 0.0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _linear(name: str, rows: int, columns: int, gain: float = 1.0) -> _WeightSpec:
    return _WeightSpec(name, (rows, columns), gain / math.sqrt(columns))


def _norm(name: str, size: int, scale: float = 1.0) -> _WeightSpec:
    return _WeightSpec(name, (size,), NORM_NOISE * scale, scale)


def weight_specs(shape: Shape) -> list[_WeightSpec]:
    """Names, shapes and init of every tensor, scaled so that greedy decoding stays lively:
    residual branches outweigh the token embedding (tied heads otherwise echo the input),
    q/k norms sharpen attention, and the final norm puts the logits' std near six."""
    hidden, head_dim, intermediate = shape.hidden_size, shape.head_dim, shape.intermediate_size
    attention_width = shape.num_attention_heads * head_dim
    kv_width = shape.num_key_value_heads * head_dim
    embedding_std = EMBEDDING_LOGIT_STD / math.sqrt(hidden)
    specs = [_WeightSpec("model.embed_tokens.weight", (shape.vocab_size, hidden), embedding_std)]
    for layer in range(shape.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        specs += [
            _norm(f"{prefix}.input_layernorm.weight", hidden),
            _linear(f"{prefix}.self_attn.q_proj.weight", attention_width, hidden),
            _linear(f"{prefix}.self_attn.k_proj.weight", kv_width, hidden),
            _linear(f"{prefix}.self_attn.v_proj.weight", kv_width, hidden),
            _norm(f"{prefix}.self_attn.q_norm.weight", head_dim, QK_NORM_SCALE),
            _norm(f"{prefix}.self_attn.k_norm.weight", head_dim, QK_NORM_SCALE),
            _linear(f"{prefix}.self_attn.o_proj.weight", hidden, attention_width, RESIDUAL_GAIN),
            _norm(f"{prefix}.post_attention_layernorm.weight", hidden),
            _linear(f"{prefix}.mlp.gate_proj.weight", intermediate, hidden),
            _linear(f"{prefix}.mlp.up_proj.weight", intermediate, hidden),
            _linear(f"{prefix}.mlp.down_proj.weight", hidden, intermediate, RESIDUAL_GAIN),
        ]
    specs.append(_norm("model.norm.weight", hidden, FINAL_NORM_SCALE))
    if not shape.tie_word_embeddings:
        specs.append(_WeightSpec("lm_head.weight", (shape.vocab_size, hidden), embedding_std))
    return specs


def _random_tensor(spec: _WeightSpec, seed: int, dtype: torch.dtype) -> torch.Tensor:
    import torch

    digest = hashlib.sha256(f"{seed}/{spec.name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    values = torch.randn(spec.shape, generator=generator, dtype=torch.float32)
    return values.mul_(spec.std).add_(spec.mean).to(dtype)


def _plan_shards(specs: list[_WeightSpec], item_size: int,
                 max_shard_bytes: int) -> list[list[_WeightSpec]]:
    shards: list[list[_WeightSpec]] = [[]]
    shard_bytes = 0
    for spec in specs:
        size = spec.numel * item_size
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(spec)
        shard_bytes += size
    return shards


def write_weights(folder: Path, shape: Shape, seed: int, max_shard_bytes: int,
                  weights: dict[str, torch.Tensor] | None = None,
                  quantization: str | None = None) -> None:
    """Random weights, or the given ones (by HF name) cast to the shape's dtype: one
    model.safetensors, or shards of at most `max_shard_bytes` and their index. With
    `quantization` ("fp8" or "awq") the decoder layers' projections are written in that
    format instead (see `quantized_checkpoint_tensors`)."""
    import torch

    _remove_weight_files(folder)
    dtype = getattr(torch, shape.torch_dtype)
    item_size = torch.empty((), dtype=dtype).element_size()
    specs = weight_specs(shape)
    shards = _plan_shards(specs, item_size, max_shard_bytes)
    names = shard_file_names(len(shards))
    weight_map: dict[str, str] = {}
    total_size = 0
    for file_name, shard in zip(names, shards, strict=True):
        tensors = {spec.name: _random_tensor(spec, seed, dtype) if weights is None
                   else weights[spec.name].to(dtype).contiguous() for spec in shard}
        if quantization is not None:
            tensors = quantized_checkpoint_tensors(tensors, quantization)
        weight_map |= dict.fromkeys(tensors, file_name)
        total_size += sum(t.numel() * t.element_size() for t in tensors.values())
        _write_safetensors(folder / file_name, tensors)
        del tensors
    if len(shards) > 1:
        _write_index(folder, weight_map, total_size)


def is_projection(name: str) -> bool:
    """A decoder layer's linear projection (what FP8 and AWQ checkpoints quantize)."""
    return ".layers." in name and name.endswith("_proj.weight")


def quantized_checkpoint_tensors(tensors: dict[str, torch.Tensor],
                                 quantization: str) -> dict[str, torch.Tensor]:
    """The projections as Qwen's quantized checkpoints name and store them: FP8 keeps
    `<proj>.weight` (float8_e4m3fn) and adds `<proj>.weight_scale_inv` (float32, per 128 x 128
    block); AWQ replaces the weight by `<proj>.qweight`, `.qzeros` (int32) and `.scales`
    (fp16). The embeddings, norms and LM head stay as they are (Qwen's FP8 checkpoints keep
    them in bf16)."""
    from jupyter_qwen.model.quant.linear import quantized_tensors

    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not is_projection(name):
            out[name] = tensor
            continue
        prefix = name.removesuffix(".weight")
        for suffix, value in quantized_tensors(quantization, tensor).items():
            out[f"{prefix}.{suffix}"] = value.contiguous()
    return out


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _remove_weight_files(folder: Path) -> None:
    """Drop the weights of an earlier build, so that a rewrite never leaves stale shards."""
    for stale in [*folder.glob("model*.safetensors"), folder / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)


def _write_index(folder: Path, weight_map: dict[str, str], total_size: int) -> None:
    """model.safetensors.index.json: the total size and which shard holds each tensor."""
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
