"""Flash-decoding over a paged KV cache: one query token per sequence.

The context of each sequence is cut into `num_splits` chunks (a count fixed by
shapes, so the launch is CUDA-graph safe); program (seq, kv_head, split) reads its
chunk's K/V tiles once for all query heads of the GQA group and writes an
unnormalised partial result; a second kernel merges the splits. With one split
the first kernel writes the output itself.

Given `query_start_loc` (a mixed batch), sequence i's query row is
`query_start_loc[i]`, and only sequences with exactly one new token are computed;
the other rows of `out` are left as they are (the varlen kernel writes them).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels.fused_ops import TL_DTYPES, store_rows
from jupyter_qwen.model.kernels.store_kv import check_cache_pair

LOG2_E = 1.4426950408889634
BLOCK_N = 64
PROGRAMS_PER_SM = 4
MIN_SPLIT_TOKENS = 256
MERGE_SPLIT_TILE = 16


@triton.jit
def _decode_row(query_start_loc_ptr, seq, seq_len, MIXED: tl.constexpr):
    if MIXED:
        row = tl.load(query_start_loc_ptr + seq)
        single = tl.load(query_start_loc_ptr + seq + 1) - row == 1
        return row.to(tl.int64), tl.where(single, seq_len, 0), single
    return seq.to(tl.int64), seq_len, seq >= 0


@triton.jit
def cache_tile(k_cache_ptr, v_cache_ptr, table, positions, key_ok, head_at, cache_stride_b,
               cache_stride_s, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """The K and V rows [len(positions), HEAD_DIM] of cache positions (zeros where not
    key_ok), through the sequence's block table."""
    block = tl.load(table + positions // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
    token_at = block * cache_stride_b + (positions % BLOCK_SIZE) * cache_stride_s + head_at
    tile_at = token_at[:, None] + tl.arange(0, HEAD_DIM)[None, :]
    k = tl.load(k_cache_ptr + tile_at, mask=key_ok[:, None], other=0.0)
    v = tl.load(v_cache_ptr + tile_at, mask=key_ok[:, None], other=0.0)
    return k, v


@triton.jit
def attend_tile(q, row_max, row_sum, acc, k, v, key_ok, scale_log2, PRECISION: tl.constexpr):
    """One online-softmax update of (row_max, row_sum, acc) by a tile of keys and values."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    scores = tl.where(key_ok[None, :], scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    probs = tl.exp2(scores - new_max[:, None])
    rescale = tl.exp2(row_max - new_max)
    row_sum = row_sum * rescale + tl.sum(probs, 1)
    acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
    return new_max, row_sum, acc


@triton.jit
def attend_cache(q, row_max, row_sum, acc, k_cache_ptr, v_cache_ptr, table, head_at, start,
                 end, scale_log2, cache_stride_b, cache_stride_s, HEAD_DIM: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Online-softmax attention of the group's q rows over cache positions [start, end),
    carried on from (row_max, row_sum, acc)."""
    for n0 in range(start, end, BLOCK_N):
        positions = n0 + tl.arange(0, BLOCK_N)
        key_ok = positions < end
        k, v = cache_tile(k_cache_ptr, v_cache_ptr, table, positions, key_ok, head_at,
                          cache_stride_b, cache_stride_s, HEAD_DIM, BLOCK_SIZE)
        row_max, row_sum, acc = attend_tile(q, row_max, row_sum, acc, k, v, key_ok,
                                            scale_log2, PRECISION)
    return row_max, row_sum, acc


@triton.jit(do_not_specialize=["table_stride", "num_splits"])
def _decode_split_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
                         query_start_loc_ptr, out_ptr, out_scale_ptr, part_acc_ptr,
                         part_max_ptr, part_sum_ptr, scale_log2,
                         q_stride_t, q_stride_h, out_stride_t, out_stride_h, table_stride,
                         cache_stride_b, cache_stride_s, cache_stride_h, num_heads, num_splits,
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                         BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, DIRECT: tl.constexpr,
                         MIXED: tl.constexpr, PRECISION: tl.constexpr,
                         ROWS_DTYPE: tl.constexpr, FP8: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    row, seq_len, single = _decode_row(query_start_loc_ptr, seq, tl.load(seq_lens_ptr + seq),
                                       MIXED)
    chunk = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    group_rows = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + group_rows
    row_ok = group_rows < GROUP
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + row * q_stride_t + heads[:, None] * q_stride_h + dims[None, :],
                mask=row_ok[:, None] & single, other=0.0)
    q = q.to(k_cache_ptr.dtype.element_ty)

    table = block_tables_ptr + seq.to(tl.int64) * table_stride
    head_at = kv_head * cache_stride_h
    row_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    row_max, row_sum, acc = attend_cache(
        q, row_max, row_sum, acc, k_cache_ptr, v_cache_ptr, table, head_at, start, end,
        scale_log2, cache_stride_b, cache_stride_s, HEAD_DIM, BLOCK_SIZE, BLOCK_N, PRECISION)

    if DIRECT:
        out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
        out_at = row * out_stride_t + heads[:, None] * out_stride_h + dims[None, :]
        store_rows(out_ptr, out_scale_ptr, out, out_at, row * num_heads + heads,
                   row_ok & single, ROWS_DTYPE, FP8)
    else:
        part = (seq * num_heads + heads).to(tl.int64) * num_splits + split
        written = row_ok & (start < seq_len)
        tl.store(part_max_ptr + part, row_max, mask=written)
        tl.store(part_sum_ptr + part, row_sum, mask=written)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc,
                 mask=written[:, None])


@triton.jit(do_not_specialize=["num_splits"])
def _decode_merge_kernel(out_ptr, out_scale_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
                         seq_lens_ptr, query_start_loc_ptr, out_stride_t, out_stride_h,
                         num_heads, num_splits, HEAD_DIM: tl.constexpr,
                         SPLIT_TILE: tl.constexpr, BLOCK_N: tl.constexpr,
                         MIXED: tl.constexpr, ROWS_DTYPE: tl.constexpr, FP8: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row, seq_len, single = _decode_row(query_start_loc_ptr, seq, tl.load(seq_lens_ptr + seq),
                                       MIXED)
    chunk = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    first_part = (seq * num_heads + head).to(tl.int64) * num_splits
    dims = tl.arange(0, HEAD_DIM)
    top = tl.full([1], float("-inf"), tl.float32)
    total = tl.zeros([1], tl.float32)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    for s0 in range(0, num_splits, SPLIT_TILE):
        splits = s0 + tl.arange(0, SPLIT_TILE)
        active = (splits < num_splits) & (splits * chunk < seq_len)
        part = first_part + splits
        split_max = tl.load(part_max_ptr + part, mask=active, other=float("-inf"))
        split_sum = tl.load(part_sum_ptr + part, mask=active, other=0.0)
        split_acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :],
                            mask=active[:, None], other=0.0)
        new_top = tl.maximum(top, tl.max(split_max, 0))
        finite_top = tl.where(new_top > float("-inf"), new_top, 0.0)
        rescale = tl.exp2(top - finite_top)
        weight = tl.where(active, tl.exp2(split_max - finite_top), 0.0)
        total = total * rescale + tl.sum(weight * split_sum, 0)
        acc = acc * rescale + tl.sum(split_acc * weight[:, None], 0)
        top = new_top
    out = acc / tl.where(total > 0, total, 1.0)
    out_at = row * out_stride_t + head * out_stride_h + dims
    one = tl.arange(0, 1)  # the head's output as a row of one
    store_rows(out_ptr, out_scale_ptr, out[None, :], out_at[None, :],
               row * num_heads + head + one, single & (one == 0), ROWS_DTYPE, FP8)


def decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                     num_splits: int | None = None, out: torch.Tensor | None = None,
                     query_start_loc: torch.Tensor | None = None, block_n: int = BLOCK_N,
                     num_warps: int = 4, num_stages: int = 3,
                     out_scales: torch.Tensor | None = None) -> torch.Tensor:
    """query [B, heads, head_dim], one token per sequence -> out like query (or into `out`).

    With `query_start_loc`, computes only the one-token sequences of a mixed batch. With
    `out_scales` (fp32 [B, heads], contiguous), `out` is e4m3 and each head's output row is
    quantized into it, its scale into `out_scales` (`fused_ops.store_rows`).
    """
    num_heads, head_dim = query.shape[1:]
    mixed = query_start_loc is not None
    batch = query_start_loc.shape[0] - 1 if mixed else query.shape[0]
    starts = query_start_loc if mixed else seq_lens
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    check_cache_pair(k_cache, v_cache)
    if query.stride(-1) != 1:
        query = query.contiguous()
    out = torch.empty_like(query) if out is None else out
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    if num_splits is None:
        num_splits = decode_num_splits(batch, num_kv_heads, block_tables.shape[1] * block_size,
                                       query.device)
    direct = num_splits == 1
    part_shape = (batch, num_heads, num_splits) if not direct else (1,)
    part_max = query.new_empty(part_shape, dtype=torch.float32)
    part_sum = torch.empty_like(part_max)
    part_acc = query.new_empty((*part_shape, head_dim), dtype=torch.float32)
    fp8 = out_scales is not None
    rows_dtype = TL_DTYPES[query.dtype]
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens, starts, out,
        out_scales if fp8 else out, part_acc, part_max, part_sum,
        scale * LOG2_E, query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        block_tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_heads, num_splits,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, DIRECT=direct,
        MIXED=mixed, PRECISION=dot_precision(k_cache), ROWS_DTYPE=rows_dtype, FP8=fp8,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not direct:
        _decode_merge_kernel[(batch, num_heads)](
            out, out_scales if fp8 else out, part_acc, part_max, part_sum, seq_lens, starts,
            out.stride(0), out.stride(1), num_heads, num_splits, HEAD_DIM=head_dim,
            SPLIT_TILE=MERGE_SPLIT_TILE, BLOCK_N=block_n, MIXED=mixed,
            ROWS_DTYPE=rows_dtype, FP8=fp8, num_warps=4,
        )
    return out


def decode_num_splits(batch: int, num_kv_heads: int, capacity: int,
                      device: torch.device) -> int:
    """Enough (seq, kv_head, split) programs to fill the chip, never below MIN_SPLIT_TOKENS each."""
    wanted = math.ceil(PROGRAMS_PER_SM * multiprocessor_count(device) / (batch * num_kv_heads))
    most = max(1, capacity // MIN_SPLIT_TOKENS)
    return max(1, min(wanted, most))


@lru_cache(maxsize=8)
def multiprocessor_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def dot_precision(cache: torch.Tensor) -> str:
    return "ieee" if cache.dtype == torch.float32 else "tf32"
