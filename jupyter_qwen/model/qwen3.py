"""The Qwen3 decoder, written for a flat batch of tokens over a paged KV cache."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from jupyter_qwen.model.attention import AttentionBackend, AttentionMetadata
from jupyter_qwen.model.config import Qwen3Config
from jupyter_qwen.model.ops import LayerKernels, ModelOps
from jupyter_qwen.model.quant.fp8 import ROW_GROUP, Fp8Rows
from jupyter_qwen.model.quant.linear import QuantLinear


class RMSNorm(nn.Module):
    """RMS normalisation; given a residual, adds it first and returns the sum as well."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.fused: LayerKernels | None = None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, *,
                fp8: bool = False):
        """`fp8` (fused kernels only): the normalised rows come quantized for an FP8
        product (`Fp8Rows`)."""
        if self.fused is not None:
            if residual is None:
                return self.fused.rms_norm(x, self.weight, self.eps, fp8=fp8)
            return self.fused.add_rms_norm(x, residual, self.weight, self.eps, fp8=fp8)
        if fp8:
            raise ValueError("only the fused RMS norm quantizes its rows (fp8=True)")
        if residual is not None:
            x = x + residual
            return self._normalise(x), x
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        self.head_dim, self.max_positions, self.theta = head_dim, max_positions, theta
        self.register_buffer("cos_cache", torch.empty(0), persistent=False)
        self.register_buffer("sin_cache", torch.empty(0), persistent=False)
        self.build(torch.get_default_device())

    def build(self, device: torch.device) -> None:
        """Angles as transformers computes them: frequencies on the CPU, the rest on `device`."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float()
        inv_freq = (1.0 / self.theta ** (exponents / self.head_dim)).to(device)
        positions = torch.arange(self.max_positions, dtype=torch.float32, device=device)
        angles = (positions[:, None] * inv_freq[None, :]).repeat(1, 2)
        self.cos_cache, self.sin_cache = angles.cos(), angles.sin()

    def forward(self, positions, q, k) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cos_cache[positions].to(q.dtype).unsqueeze(1)
        sin = self.sin_cache[positions].to(q.dtype).unsqueeze(1)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen3Attention(nn.Module):
    def __init__(self, config: Qwen3Config, rotary: RotaryEmbedding):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size,
                                  bias=config.attention_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary = rotary
        self.backend: AttentionBackend | None = None
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.fused: LayerKernels | None = None

    def forward(self, positions, hidden, meta: AttentionMetadata) -> torch.Tensor:
        if self.fused is not None:
            fp8 = self.head_dim == ROW_GROUP and takes_fp8_rows(self.o_proj, hidden.shape[0])
            return self.o_proj(self.attend_projected(positions, self.qkv_proj(hidden), meta,
                                                     fp8=fp8))
        q = self._store_and_rotate(positions, hidden, meta)
        out = self.backend.attend(q, self.k_cache, self.v_cache, meta, self.scale)
        return self.o_proj(out.reshape(-1, self.q_size))

    def attend_projected(self, positions, qkv, meta: AttentionMetadata, fp8: bool = False,
                         ) -> torch.Tensor | Fp8Rows:
        """Attention from a qkv projection, up to (not including) the output projection.
        `fp8`: its rows quantized for the FP8 o projection (`Fp8Rows`), except on the
        one-launch decode step (a few sequences: o's product quantizes nothing there)."""
        if self.backend.fuses_decode_step(meta, self.head_dim):
            out = self.backend.attend_decode_step(
                qkv, positions, meta, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps,
                self.rotary.cos_cache, self.rotary.sin_cache, self.k_cache, self.v_cache,
                self.scale)
            return out.reshape(-1, self.q_size)
        q = self.fused.qk_norm_rope_store(
            qkv, positions, meta.slot_mapping, self.q_norm.weight, self.k_norm.weight,
            self.q_norm.eps, self.rotary.cos_cache, self.rotary.sin_cache, self.k_cache,
            self.v_cache)
        out = self.backend.attend(q, self.k_cache, self.v_cache, meta, self.scale, fp8=fp8)
        return out if fp8 else out.reshape(-1, self.q_size)

    def _store_and_rotate(self, positions, hidden, meta: AttentionMetadata) -> torch.Tensor:
        """The reference path: q, k and v projected one by one, exactly as transformers does."""
        q, k, v = split_linear(hidden, self.qkv_proj, [self.q_size, self.kv_size, self.kv_size])
        q = self.q_norm(q.view(-1, self.num_heads, self.head_dim))
        k = self.k_norm(k.view(-1, self.num_kv_heads, self.head_dim))
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        self.backend.store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        return q


class Qwen3MLP(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.fused: LayerKernels | None = None

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        if self.fused is not None:
            gate_up = self.gate_up_proj(x)
            fp8 = takes_fp8_rows(self.down_proj, gate_up.shape[0])
            return self.down_proj(self.fused.silu_and_mul(gate_up, fp8=fp8))
        gate, up = split_linear(x, self.gate_up_proj, [self.intermediate_size] * 2)
        return self.down_proj(F.silu(gate) * up)


def split_linear(x: torch.Tensor, packed: nn.Module, sizes: list[int]) -> list[torch.Tensor]:
    """A packed projection computed part by part: the same matrix products as unpacked layers
    (a quantized projection's weight dequantized first)."""
    weight = packed.dequantize(x.dtype) if isinstance(packed, QuantLinear) else packed.weight
    weights = weight.split(sizes)
    biases = packed.bias.split(sizes) if packed.bias is not None else [None] * len(sizes)
    return [F.linear(x, weight, bias) for weight, bias in zip(weights, biases, strict=True)]


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = Qwen3Attention(config, rotary)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gemv: LayerKernels | None = None

    def forward(self, positions, hidden, residual, meta) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gemv is not None and self.gemv.use_small_m(hidden.shape[0], *self._qkv_shape):
            return self._forward_few_tokens(positions, hidden, residual, meta)
        rows = hidden.shape[0]
        fp8 = takes_fp8_rows(self.self_attn.qkv_proj, rows)  # only with the fused kernels
        if residual is None:
            hidden, residual = self.input_layernorm(hidden, fp8=fp8), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual, fp8=fp8)
        hidden = self.self_attn(positions, hidden, meta)
        fp8 = takes_fp8_rows(self.mlp.gate_up_proj, rows)
        hidden, residual = self.post_attention_layernorm(hidden, residual, fp8=fp8)
        return self.mlp(hidden), residual

    @property
    def _qkv_shape(self) -> tuple[int, int]:
        qkv = self.self_attn.qkv_proj
        return qkv.out_features, qkv.in_features

    def projections(self) -> list[nn.Module]:
        """q/k/v, o, gate/up and down, in the order a step runs them."""
        attn, mlp = self.self_attn, self.mlp
        return [attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj]

    def _forward_few_tokens(self, positions, hidden, residual, meta):
        """Decode steps of a few sequences: each norm rides in the product that follows it."""
        gemv, attn, mlp = self.gemv, self.self_attn, self.mlp
        eps = self.input_layernorm.eps
        qkv, residual = gemv.rms_norm_linear(hidden, self.input_layernorm.weight, eps,
                                             product(attn.qkv_proj), residual)
        hidden = gemv.linear_small_m(attn.attend_projected(positions, qkv, meta),
                                     product(attn.o_proj))
        gate_up, residual = gemv.rms_norm_linear(hidden, self.post_attention_layernorm.weight,
                                                 eps, product(mlp.gate_up_proj), residual)
        return gemv.silu_mul_linear(gate_up, product(mlp.down_proj)), residual


def takes_fp8_rows(projection: nn.Module, rows: int) -> bool:
    """Whether the kernel making a projection's input rows should hand them over quantized
    (`Fp8Rows`): an FP8 projection whose product at this many rows would quantize them in a
    launch of its own (`QuantLinear.takes_fp8_rows`)."""
    return isinstance(projection, QuantLinear) and projection.takes_fp8_rows(rows)


def product(projection: nn.Module) -> torch.Tensor | QuantLinear:
    """What the small-batch products take for a projection: its weight, or the quantized
    projection itself (its kernels read the packed buffers)."""
    return projection if isinstance(projection, QuantLinear) else projection.weight


class Qwen3ForCausalLM(nn.Module):
    packed_modules: ClassVar[dict[str, tuple[str, int]]] = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings,
                                 config.rope_theta)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, rotary)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = rotary
        self.gemv: LayerKernels | None = None
        self.quantization = None
        """The `QuantConfig` its projections were quantized with (None: none are)."""

    def forward(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        return self.norm(hidden, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.lm_head.weight
        if self.gemv is not None and self.gemv.use_small_m(hidden.shape[0], *weight.shape):
            return self.gemv.linear_small_m(hidden, weight).float()
        return self.lm_head(hidden).float()

    def attention_layers(self) -> list[Qwen3Attention]:
        return [layer.self_attn for layer in self.layers]

    def use_ops(self, ops: ModelOps | None) -> None:
        """Run on `ops` (`model/ops.py`): its attention backend in every layer, and where it
        has them, its fused layer kernels and small-batch products (not with biased q/k/v
        projections; for quantized projections where the ops take their format, else those
        layers run unfused), and its quantized products for quantized projections (outside
        the small-batch path), which may repack their weights for those kernels (`prepare`).
        None detaches them (the model then runs no more steps)."""
        layers = ops.layers if ops is not None else None
        self.gemv = layers
        for module in self.modules():
            if isinstance(module, QuantLinear):
                module.kernels = ops.quant if ops is not None else None
                if module.kernels is not None:
                    module.kernels.prepare(module)
            if isinstance(module, RMSNorm | Qwen3MLP):
                module.fused = layers
            if isinstance(module, Qwen3Attention):
                module.fused = layers
                module.backend = ops.attention if ops is not None else None
            if isinstance(module, Qwen3DecoderLayer) and not self.config.attention_bias:
                takes = layers is not None and all(layers.takes(p) for p in module.projections()
                                                   if isinstance(p, QuantLinear))
                module.gemv = layers if takes else None
