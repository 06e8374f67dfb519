"""Causal varlen attention of each sequence's new tokens over its paged context.

Program (tile, kv_head) takes BLOCK_Q new tokens of one sequence together with all
GROUP query heads that share the kv head (BLOCK_Q * GROUP rows), and streams the
context's K/V tiles once: first the tiles every row may see (no mask), then the
diagonal tiles under the causal mask. Tile slots are laid out without host
information: sequence s owns slots from `query_start_loc[s] // BLOCK_Q + s`, which
leaves room for its ceil(q_len / BLOCK_Q) tiles, so the grid is
`T // BLOCK_Q + num_seqs` and each program finds its sequence by counting.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels.decode_attention import LOG2_E, dot_precision
from jupyter_qwen.model.kernels.fused_ops import TL_DTYPES, store_rows
from jupyter_qwen.model.kernels.store_kv import check_cache_pair

BLOCK_M = 64
BLOCK_N = 64
SEQ_SCAN = 128


@triton.jit
def _find_sequence(query_start_loc_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr,
                   SEQ_SCAN: tl.constexpr):
    count = 0
    for s0 in range(0, num_seqs, SEQ_SCAN):
        seqs = s0 + tl.arange(0, SEQ_SCAN)
        present = seqs < num_seqs
        first_tile = tl.load(query_start_loc_ptr + seqs, mask=present, other=0) // BLOCK_Q + seqs
        count += tl.sum((present & (first_tile <= tile)).to(tl.int32), 0)
    return count - 1


@triton.jit
def _attend_tile(q, k_cache_ptr, v_cache_ptr, table, head_at, n0, cache_stride_b,
                 cache_stride_s, scale_log2, row_max, row_sum, acc, q_positions, kv_end,
                 MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                 BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    positions = n0 + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    if MASKED:
        key_ok = positions < kv_end
        block = tl.load(table + positions // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
    else:
        block = tl.load(table + positions // BLOCK_SIZE).to(tl.int64)
    tile_at = (block * cache_stride_b + (positions % BLOCK_SIZE) * cache_stride_s
               + head_at)[:, None] + dims[None, :]
    if MASKED:
        k = tl.load(k_cache_ptr + tile_at, mask=key_ok[:, None], other=0.0)
    else:
        k = tl.load(k_cache_ptr + tile_at)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    if MASKED:
        visible = (positions[None, :] <= q_positions[:, None]) & key_ok[None, :]
        scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    probs = tl.exp2(scores - new_max[:, None])
    rescale = tl.exp2(row_max - new_max)
    row_sum = row_sum * rescale + tl.sum(probs, 1)
    if MASKED:
        v = tl.load(v_cache_ptr + tile_at, mask=key_ok[:, None], other=0.0)
    else:
        v = tl.load(v_cache_ptr + tile_at)
    acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
    return new_max, row_sum, acc


@triton.jit(do_not_specialize=["num_seqs", "table_stride"])
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, out_scale_ptr, block_tables_ptr,
                    seq_lens_ptr, query_start_loc_ptr, scale_log2, num_seqs,
                    q_stride_t, q_stride_h, out_stride_t, out_stride_h, table_stride,
                    cache_stride_b, cache_stride_s, cache_stride_h, num_heads,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    SEQ_SCAN: tl.constexpr, SKIP_SINGLE: tl.constexpr,
                    PRECISION: tl.constexpr, ROWS_DTYPE: tl.constexpr, FP8: tl.constexpr):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_sequence(query_start_loc_ptr, num_seqs, tile, BLOCK_Q, SEQ_SCAN)
    q_begin = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_begin
    prefix = tl.load(seq_lens_ptr + seq) - q_len
    q0 = (tile - (q_begin // BLOCK_Q + seq)) * BLOCK_Q
    tile_live = q0 < q_len
    if SKIP_SINGLE:
        tile_live = tile_live & (q_len > 1)

    rows = tl.arange(0, BLOCK_M)
    tokens = q0 + rows // GROUP
    heads = kv_head * GROUP + rows % GROUP
    row_ok = (rows < BLOCK_Q * GROUP) & (tokens < q_len) & tile_live
    dims = tl.arange(0, HEAD_DIM)
    q_rows = (q_begin + tokens).to(tl.int64)
    q = tl.load(q_ptr + (q_rows * q_stride_t + heads * q_stride_h)[:, None] + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    q = q.to(k_cache_ptr.dtype.element_ty)
    q_positions = prefix + tokens

    kv_end = tl.where(tile_live, prefix + tl.minimum(q0 + BLOCK_Q, q_len), 0)
    full_end = tl.where(tile_live, (prefix + q0 + 1) // BLOCK_N * BLOCK_N, 0)
    table = block_tables_ptr + seq.to(tl.int64) * table_stride
    head_at = kv_head * cache_stride_h
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for n0 in range(0, full_end, BLOCK_N):
        row_max, row_sum, acc = _attend_tile(
            q, k_cache_ptr, v_cache_ptr, table, head_at, n0, cache_stride_b, cache_stride_s,
            scale_log2, row_max, row_sum, acc, q_positions, kv_end,
            False, HEAD_DIM, BLOCK_SIZE, BLOCK_N, PRECISION)
    for n0 in range(full_end, kv_end, BLOCK_N):
        row_max, row_sum, acc = _attend_tile(
            q, k_cache_ptr, v_cache_ptr, table, head_at, n0, cache_stride_b, cache_stride_s,
            scale_log2, row_max, row_sum, acc, q_positions, kv_end,
            True, HEAD_DIM, BLOCK_SIZE, BLOCK_N, PRECISION)

    out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
    out_at = (q_rows * out_stride_t + heads * out_stride_h)[:, None] + dims[None, :]
    store_rows(out_ptr, out_scale_ptr, out, out_at, q_rows * num_heads + heads, row_ok,
               ROWS_DTYPE, FP8)


def prefill_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      block_tables: torch.Tensor, seq_lens: torch.Tensor,
                      query_start_loc: torch.Tensor, scale: float,
                      out: torch.Tensor | None = None, skip_single: bool = False,
                      block_m: int = BLOCK_M, block_n: int = BLOCK_N, num_warps: int = 4,
                      num_stages: int = 2, out_scales: torch.Tensor | None = None,
                      ) -> torch.Tensor:
    """query [T, heads, head_dim] of several sequences -> out like query (or into `out`).

    With `skip_single`, sequences with one new token are left to the decode kernel. With
    `out_scales`, `out` is e4m3 as `decode_attention` says.
    """
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    num_seqs = query_start_loc.shape[0] - 1
    check_cache_pair(k_cache, v_cache)
    if query.stride(-1) != 1:
        query = query.contiguous()
    out = torch.empty_like(query) if out is None else out
    if num_tokens == 0 or num_seqs == 0:
        return out
    group = num_heads // num_kv_heads
    block_m = max(block_m, triton.next_power_of_2(group))
    block_q = block_m // group
    grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    fp8 = out_scales is not None
    _prefill_kernel[grid](
        query, k_cache, v_cache, out, out_scales if fp8 else out, block_tables, seq_lens,
        query_start_loc, scale * LOG2_E, num_seqs, query.stride(0), query.stride(1),
        out.stride(0), out.stride(1), block_tables.stride(0), k_cache.stride(0),
        k_cache.stride(1), k_cache.stride(2), num_heads,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_Q=block_q,
        BLOCK_M=block_m, BLOCK_N=block_n, SEQ_SCAN=SEQ_SCAN, SKIP_SINGLE=skip_single,
        PRECISION=dot_precision(k_cache), ROWS_DTYPE=TL_DTYPES[query.dtype], FP8=fp8,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
