"""The Triton attention backend: paged store, varlen prefill and flash-decoding."""

from __future__ import annotations

import torch
import triton  # noqa: F401  (ImportError here lets attention_backend="auto" fall back)

from jupyter_qwen.model.attention import AttentionMetadata
from jupyter_qwen.model.kernels.decode_attention import decode_attention
from jupyter_qwen.model.kernels.prefill_attention import prefill_attention
from jupyter_qwen.model.kernels.store_kv import store_kv


class TritonAttention:
    """Decode steps run flash-decoding; other steps run the varlen kernel, and in a batch of
    several sequences the one-token ones go to flash-decoding too (no long single-row tiles)."""

    name = "triton"

    def store_kv(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        store_kv(key, value, k_cache, v_cache, slot_mapping)

    def attend(self, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if meta.is_decode:
            return decode_attention(query, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                    scale)
        mixed = meta.num_seqs > 1
        out = prefill_attention(query, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                meta.query_start_loc, scale, skip_single=mixed)
        if mixed:
            decode_attention(query, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale,
                             out=out, query_start_loc=meta.query_start_loc)
        return out
