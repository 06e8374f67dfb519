"""Paged attention: the per-step metadata and the torch reference backend.

The KV cache of one layer is a pair of tensors shaped
`[num_blocks, block_size, num_kv_heads, head_dim]`. A step is one flat batch of
tokens from several sequences; sequence `i` owns query rows
`query_start_loc[i]:query_start_loc[i + 1]`, and after this step its context
holds `seq_lens[i]` tokens, the last of which are the new ones. Token `t` writes
its key and value to cache slot `slot_mapping[t]` (block * block_size + offset;
-1 for padding rows that must not be written).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from jupyter_qwen.model.quant.fp8 import Fp8Rows


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    max_query_len: int
    max_seq_len: int
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def is_decode(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend(Protocol):
    def store_kv(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None: ...

    def attend(self, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float, fp8: bool = False,
               ) -> torch.Tensor | Fp8Rows:
        """The attention output like query; `fp8` (head_dim 128, backends that quantize):
        its rows [T, heads * head_dim] quantized per head for an FP8 o projection
        (`Fp8Rows`)."""
        ...

    def fuses_decode_step(self, meta: AttentionMetadata, head_dim: int) -> bool:
        """Whether `attend_decode_step` runs this step (from the qkv projection)."""
        ...

    def attend_decode_step(self, qkv: torch.Tensor, positions: torch.Tensor,
                           meta: AttentionMetadata, q_weight: torch.Tensor,
                           k_weight: torch.Tensor, eps: float, cos_cache: torch.Tensor,
                           sin_cache: torch.Tensor, k_cache: torch.Tensor,
                           v_cache: torch.Tensor, scale: float) -> torch.Tensor: ...


class TorchAttention:
    """Reference backend: plain torch, one sequence at a time. Runs on CPU and GPU."""

    def store_kv(self, key, value, k_cache, v_cache, slot_mapping) -> None:
        store_kv_reference(key, value, k_cache, v_cache, slot_mapping)

    def attend(self, query, k_cache, v_cache, meta, scale, fp8: bool = False) -> torch.Tensor:
        if fp8:
            raise ValueError("the torch reference attention does not quantize its output")
        return paged_attention_reference(query, k_cache, v_cache, meta, scale)

    def fuses_decode_step(self, meta: AttentionMetadata, head_dim: int) -> bool:
        return False

    def attend_decode_step(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError("the torch reference has no one-launch decode step")


def store_kv_reference(key, value, k_cache, v_cache, slot_mapping) -> None:
    written = slot_mapping >= 0
    slots = slot_mapping[written]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[written]
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[written]


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    return cache[block_table[:num_blocks].long()].flatten(0, 1)[:length]


def paged_attention_reference(query, k_cache, v_cache, meta: AttentionMetadata, scale):
    out = torch.empty_like(query)
    starts = meta.query_start_loc_cpu
    for i, seq_len in enumerate(meta.seq_lens_cpu):
        rows = slice(starts[i], starts[i + 1])
        key = gather_context(k_cache, meta.block_tables[i], seq_len)
        value = gather_context(v_cache, meta.block_tables[i], seq_len)
        out[rows] = causal_attention(query[rows], key, value, scale)
    return out


def causal_attention(query, key, value, scale) -> torch.Tensor:
    """Attention of the last `len(query)` positions of a context over all of it.

    Shapes and memory layouts follow transformers' (a decode step reads its keys and
    values contiguous, as from its cache), so the same attention kernels run.
    """
    q_len, k_len = query.shape[0], key.shape[0]
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))
    gqa = q.shape[1] != k.shape[1]
    if q_len == 1:
        k, v = k.contiguous(), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    elif q_len == k_len:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out[0].transpose(0, 1)
