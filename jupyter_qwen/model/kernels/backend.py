"""The Triton attention backend: paged store, varlen prefill and flash-decoding."""

from __future__ import annotations

import torch
import triton  # noqa: F401  (ImportError here lets attention_backend="auto" fall back)

from jupyter_qwen.model.attention import AttentionMetadata
from jupyter_qwen.model.kernels.decode_attention import decode_attention
from jupyter_qwen.model.kernels.decode_step import (
    MIN_HEAD_DIM,
    DecodeStepWorkspace,
    decode_step_attention,
)
from jupyter_qwen.model.kernels.fused_ops import fp8_head_outputs
from jupyter_qwen.model.kernels.prefill_attention import prefill_attention
from jupyter_qwen.model.kernels.store_kv import store_kv
from jupyter_qwen.model.quant.fp8 import Fp8Rows


class TritonAttention:
    """Decode steps run flash-decoding; other steps run the varlen kernel, and in a batch of
    several sequences the one-token ones go to flash-decoding too (no long single-row tiles).

    Pure decode steps of at most `decode_step_max_batch` sequences (0: none), on the fused
    model path, run `decode_step_attention` (one launch: q/k norm, RoPE, KV store, split
    attention and merge) instead of three kernels; `pdl`: that launch is a programmatic
    dependent one (`pdl.py`; only where the device supports it).
    """

    def __init__(self, *, decode_step_max_batch: int = 0, pdl: bool = False,
                 min_chunk: int | None = None) -> None:
        self.decode_step_max_batch = decode_step_max_batch
        self.pdl = pdl
        self.min_chunk = min_chunk
        self.decode_workspace: DecodeStepWorkspace | None = None
        self.decode_workspace_captured = False

    def store_kv(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        store_kv(key, value, k_cache, v_cache, slot_mapping)

    def attend(self, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float, fp8: bool = False,
               ) -> torch.Tensor | Fp8Rows:
        """query [T, heads, head_dim] -> out like it; `fp8`: the output rows [T, heads *
        head_dim] quantized for an FP8 o projection as it would quantize them (`Fp8Rows`,
        one scale a head; head_dim 128)."""
        rows = out = scales = None
        if fp8:
            rows = fp8_head_outputs(*query.shape, query.dtype, query.device)
            out, scales = rows.values.view(query.shape), rows.scales
        if meta.is_decode:
            out = decode_attention(query, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                   scale, out=out, out_scales=scales)
            return out if rows is None else rows
        mixed = meta.num_seqs > 1
        out = prefill_attention(query, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                meta.query_start_loc, scale, out=out, skip_single=mixed,
                                out_scales=scales)
        if mixed:
            decode_attention(query, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale,
                             out=out, query_start_loc=meta.query_start_loc, out_scales=scales)
        return out if rows is None else rows

    def fuses_decode_step(self, meta: AttentionMetadata, head_dim: int) -> bool:
        return (meta.is_decode and meta.num_seqs <= self.decode_step_max_batch
                and head_dim >= MIN_HEAD_DIM)

    def attend_decode_step(self, qkv: torch.Tensor, positions: torch.Tensor,
                           meta: AttentionMetadata, q_weight: torch.Tensor,
                           k_weight: torch.Tensor, eps: float, cos_cache: torch.Tensor,
                           sin_cache: torch.Tensor, k_cache: torch.Tensor,
                           v_cache: torch.Tensor, scale: float) -> torch.Tensor:
        """A pure decode step from the qkv projection: stores k and v, returns [B, Hq, D]."""
        _, _, num_kv_heads, head_dim = k_cache.shape
        num_q_heads = qkv.shape[1] // head_dim - 2 * num_kv_heads
        workspace = self._decode_workspace(qkv.shape[0], num_q_heads, num_kv_heads, head_dim,
                                           qkv.device)
        return decode_step_attention(qkv, positions, meta.slot_mapping, q_weight, k_weight, eps,
                                     cos_cache, sin_cache, k_cache, v_cache, meta.block_tables,
                                     meta.seq_lens, scale, workspace=workspace,
                                     launch_pdl=self.pdl, min_chunk=self.min_chunk)

    def _decode_workspace(self, batch: int, num_q_heads: int, num_kv_heads: int,
                          head_dim: int, device: torch.device) -> DecodeStepWorkspace:
        """One workspace for every layer; grown only outside graph capture and before any
        captured graph holds its address (graphs capture their largest batch first)."""
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        workspace = self.decode_workspace
        if workspace is None or not workspace.covers(batch, num_q_heads, num_kv_heads,
                                                     head_dim, device):
            if capturing or self.decode_workspace_captured:
                raise RuntimeError("the decode-step workspace must be allocated for the "
                                   "largest batch before CUDA-graph capture")
            workspace = DecodeStepWorkspace.allocate(batch, num_q_heads, num_kv_heads,
                                                     head_dim, device)
            self.decode_workspace = workspace
        self.decode_workspace_captured |= capturing
        return workspace
