"""A pure decode step's attention in one launch: every sequence has exactly one new token.

Program (seq, kv_head, split) loads its GQA group's q heads and the new token's k and v
straight from the qkv projection row, RMS-normalises and rotates q and k (fp32 inside,
rounded once to the cache dtype, as `fused_ops.qk_norm_rope_store`), and runs
flash-decoding over its chunk of the paged cache (chunks as in `decode_attention`, but at
least `min_chunk` tokens). The new token is never read back from the cache: the split that
owns position seq_len - 1 starts its softmax state with that token from registers and writes
its k and v to the token's slot (-1: not written).

Splits merge inside the launch. A sequence with one live split writes its output directly;
otherwise each live split writes its partial (max, sum, acc) to the workspace and takes a
ticket from its (seq, kv_head) counter, and the last one merges the partials, writes the
output rows and resets the counter to 0 for the next launch. Grid and workspace depend on
shapes only and nothing is read on the host: CUDA-graph safe; a split past the sequence's
live ones ends at once. On Hopper the launch is a programmatic dependent one (`pdl`): the
step inputs, norm weights, RoPE rows and the split's first tile of earlier tokens' keys and
values are read before waiting for the kernel that wrote qkv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import pdl
from jupyter_qwen.model.kernels.decode_attention import (
    BLOCK_N,
    LOG2_E,
    attend_cache,
    attend_tile,
    cache_tile,
    decode_num_splits,
    dot_precision,
)
from jupyter_qwen.model.kernels.store_kv import check_cache_pair

MERGE_TILE_ELEMENTS = 4096
MIN_HEAD_DIM = 32
MIN_CHUNK = 64


@triton.jit
def _norm_rope(x, x_partner, weight, weight_partner, cos, sin, sign, eps,
               HEAD_DIM: tl.constexpr):
    """RMS norm then RoPE of fp32 rows x [R, D], given x_partner (x with its halves swapped)
    and the weight likewise; cos and sin as the caches hold them (halves repeated)."""
    inverse_rms = tl.rsqrt(tl.sum(x * x, 1) / HEAD_DIM + eps)[:, None]
    normed = x * inverse_rms * weight
    normed_partner = x_partner * inverse_rms * weight_partner
    return normed * cos + sign * normed_partner * sin


@triton.jit
def _merge_splits(part_acc_ptr, part_max_ptr, part_sum_ptr, out_ptr, first_part, num_live,
                  out_at, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr,
                  SPLIT_TILE: tl.constexpr):
    splits = tl.arange(0, SPLIT_TILE)[:, None]
    group = tl.arange(0, BLOCK_G)[None, :]
    dims = tl.arange(0, HEAD_DIM)
    top = tl.full([BLOCK_G], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for s0 in range(0, num_live, SPLIT_TILE):
        live = (s0 + splits < num_live) & (group < GROUP)
        part = (first_part + s0 + splits) * GROUP + group
        split_max = tl.load(part_max_ptr + part, mask=live, other=float("-inf"),
                            cache_modifier=".cg")
        split_sum = tl.load(part_sum_ptr + part, mask=live, other=0.0, cache_modifier=".cg")
        split_acc = tl.load(part_acc_ptr + part[:, :, None] * HEAD_DIM + dims[None, None, :],
                            mask=live[:, :, None], other=0.0, cache_modifier=".cg")
        new_top = tl.maximum(top, tl.max(split_max, 0))
        finite_top = tl.where(new_top > float("-inf"), new_top, 0.0)
        rescale = tl.exp2(top - finite_top)
        weight = tl.exp2(split_max - finite_top[None, :])
        total = total * rescale + tl.sum(weight * split_sum, 0)
        acc = acc * rescale[:, None] + tl.sum(split_acc * weight[:, :, None], 0)
        top = new_top
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    heads = tl.arange(0, BLOCK_G)[:, None]
    tl.store(out_ptr + out_at + heads * HEAD_DIM + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=heads < GROUP)


@triton.jit(do_not_specialize=["table_stride", "num_splits"])
def _decode_step_kernel(qkv_ptr, positions_ptr, slots_ptr, q_weight_ptr, k_weight_ptr, cos_ptr,
                        sin_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
                        out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, tickets_ptr, eps,
                        scale_log2, qkv_stride, rope_stride, table_stride, cache_stride_b,
                        cache_stride_s, cache_stride_h, num_q_heads, num_kv_heads, num_splits,
                        min_chunk, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                        HALF: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, SPLIT_TILE: tl.constexpr,
                        PRECISION: tl.constexpr, USE_GDC: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    chunk = tl.maximum(tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N, min_chunk)
    num_live = tl.maximum(tl.cdiv(seq_len, chunk), 1)
    if split < num_live:  # the others end here: no wait, no write
        dtype = k_cache_ptr.dtype.element_ty
        position = tl.load(positions_ptr + seq).to(tl.int64)
        slot = tl.load(slots_ptr + seq).to(tl.int64)
        dims = tl.arange(0, HEAD_DIM)[None, :]
        partner = (dims + HALF) % HEAD_DIM
        q_weight = tl.load(q_weight_ptr + dims).to(tl.float32)
        q_weight_partner = tl.load(q_weight_ptr + partner).to(tl.float32)
        k_weight = tl.load(k_weight_ptr + dims).to(tl.float32)
        k_weight_partner = tl.load(k_weight_ptr + partner).to(tl.float32)
        cos = tl.load(cos_ptr + position * rope_stride + dims).to(tl.float32)
        sin = tl.load(sin_ptr + position * rope_stride + dims).to(tl.float32)
        table = block_tables_ptr + seq.to(tl.int64) * table_stride
        start = split * chunk
        end = tl.minimum(start + chunk, seq_len - 1)
        head_at = kv_head * cache_stride_h
        # the split's first tile of earlier tokens' keys and values (no kernel of this step
        # writes them), requested before the wait so that it overlaps the kernel before
        first = start + tl.arange(0, BLOCK_N)
        first_ok = first < end
        k_first, v_first = cache_tile(k_cache_ptr, v_cache_ptr, table, first, first_ok,
                                      head_at, cache_stride_b, cache_stride_s, HEAD_DIM,
                                      BLOCK_SIZE)
        pdl.after_previous_kernel(USE_GDC)

        row = qkv_ptr + seq.to(tl.int64) * qkv_stride
        group_rows = tl.arange(0, BLOCK_H)[:, None]
        head_ok = group_rows < GROUP
        q_at = row + (kv_head * GROUP + group_rows) * HEAD_DIM
        q_x = tl.load(q_at + dims, mask=head_ok, other=0.0).to(tl.float32)
        q_partner = tl.load(q_at + partner, mask=head_ok, other=0.0).to(tl.float32)
        k_at = row + (num_q_heads + kv_head) * HEAD_DIM
        k_x = tl.load(k_at + dims).to(tl.float32)
        k_partner = tl.load(k_at + partner).to(tl.float32)
        v_new = tl.load(row + (num_q_heads + num_kv_heads + kv_head) * HEAD_DIM
                        + dims).to(dtype)

        sign = tl.where(dims < HALF, -1.0, 1.0)
        q = _norm_rope(q_x, q_partner, q_weight, q_weight_partner, cos, sin, sign, eps,
                       HEAD_DIM).to(dtype)
        k_new = _norm_rope(k_x, k_partner, k_weight, k_weight_partner, cos, sin, sign, eps,
                           HEAD_DIM).to(dtype)
        owner = (split == num_live - 1) & (seq_len > 0)
        if owner & (slot >= 0):
            at = (slot // BLOCK_SIZE) * cache_stride_b + (slot % BLOCK_SIZE) * cache_stride_s
            tl.store(k_cache_ptr + at + head_at + dims, k_new)
            tl.store(v_cache_ptr + at + head_at + dims, v_new)
        score = tl.sum(q.to(tl.float32) * k_new.to(tl.float32), 1) * scale_log2
        row_max = tl.where(owner, score, float("-inf"))
        row_sum = tl.where(owner, 1.0, 0.0) + tl.zeros([BLOCK_H], tl.float32)
        acc = tl.where(owner, v_new.to(tl.float32), 0.0) + tl.zeros([BLOCK_H, HEAD_DIM],
                                                                     tl.float32)
        if start < end:  # else no earlier token here (a padding row, or only the new one)
            row_max, row_sum, acc = attend_tile(q, row_max, row_sum, acc, k_first, v_first,
                                                first_ok, scale_log2, PRECISION)
        row_max, row_sum, acc = attend_cache(
            q, row_max, row_sum, acc, k_cache_ptr, v_cache_ptr, table, head_at,
            start + BLOCK_N, end, scale_log2, cache_stride_b, cache_stride_s, HEAD_DIM,
            BLOCK_SIZE, BLOCK_N, PRECISION)

        out_at = (seq.to(tl.int64) * num_q_heads + kv_head * GROUP) * HEAD_DIM
        if num_live == 1:
            out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
            tl.store(out_ptr + out_at + group_rows * HEAD_DIM + dims,
                     out.to(out_ptr.dtype.element_ty), mask=head_ok)
        else:
            first_part = (seq * num_kv_heads + kv_head).to(tl.int64) * num_splits
            part = (first_part + split) * GROUP + group_rows
            tl.store(part_max_ptr + part, row_max[:, None], mask=head_ok)
            tl.store(part_sum_ptr + part, row_sum[:, None], mask=head_ok)
            tl.store(part_acc_ptr + part * HEAD_DIM + dims, acc, mask=head_ok)
            tl.debug_barrier()
            ticket_ptr = tickets_ptr + seq * num_kv_heads + kv_head
            if tl.atomic_add(ticket_ptr, 1, sem="acq_rel") == num_live - 1:
                tl.debug_barrier()
                _merge_splits(part_acc_ptr, part_max_ptr, part_sum_ptr, out_ptr, first_part,
                              num_live, out_at, GROUP, HEAD_DIM, BLOCK_G, SPLIT_TILE)
                tl.atomic_xchg(ticket_ptr, 0, sem="relaxed")


@dataclass
class DecodeStepWorkspace:
    """Partials of the splits (fp32) and one ticket counter per (seq, kv_head), all zero
    between launches. Allocated once, outside any graph capture; layers share it."""

    part_acc: torch.Tensor
    part_max: torch.Tensor
    part_sum: torch.Tensor
    tickets: torch.Tensor
    shape: tuple[int, int, int, int]

    @classmethod
    def allocate(cls, max_batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                 device: torch.device, num_splits: int | None = None) -> DecodeStepWorkspace:
        """Room for any batch up to `max_batch` with `num_splits` splits, or by default with
        the split counts `decode_num_splits` gives."""
        pairs = (max_batch * num_splits if num_splits is not None
                 else most_partials(max_batch, num_kv_heads, device))
        rows = pairs * num_q_heads
        part_max = torch.empty(rows, dtype=torch.float32, device=device)
        return cls(part_acc=torch.empty(rows, head_dim, dtype=torch.float32, device=device),
                   part_max=part_max, part_sum=torch.empty_like(part_max),
                   tickets=torch.zeros(max_batch * num_kv_heads, dtype=torch.int32,
                                       device=device),
                   shape=(max_batch, num_q_heads, num_kv_heads, head_dim))

    def covers(self, batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
               device: torch.device) -> bool:
        """Whether `allocate` for this batch would fit in this workspace."""
        max_batch, *heads = self.shape
        return (batch <= max_batch and heads == [num_q_heads, num_kv_heads, head_dim]
                and self.tickets.device == device)

    def holds(self, batch: int, num_splits: int, num_q_heads: int, num_kv_heads: int,
              head_dim: int) -> bool:
        return (batch * num_kv_heads <= self.tickets.numel()
                and batch * num_splits * num_q_heads <= self.part_max.numel()
                and head_dim == self.part_acc.shape[1])


def most_partials(max_batch: int, num_kv_heads: int, device: torch.device) -> int:
    """The most (seq, split) pairs of any batch up to max_batch, whatever the context."""
    unbounded = 1 << 40
    return max(batch * decode_num_splits(batch, num_kv_heads, unbounded, device)
               for batch in range(1, max_batch + 1))


def decode_step_attention(qkv: torch.Tensor, positions: torch.Tensor,
                          slot_mapping: torch.Tensor, q_weight: torch.Tensor,
                          k_weight: torch.Tensor, eps: float, cos_cache: torch.Tensor,
                          sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                          workspace: DecodeStepWorkspace | None = None,
                          num_splits: int | None = None, min_chunk: int | None = None,
                          block_n: int = BLOCK_N, num_warps: int = 4,
                          num_stages: int = 3, launch_pdl: bool = False) -> torch.Tensor:
    """qkv [B, (Hq + 2 Hkv) * D], row i the one new token of sequence i (position
    positions[i] = seq_lens[i] - 1; seq_len 0: a padding row, output zeros) -> out
    [B, Hq, D]; the new k and v land in their cache slots. `launch_pdl`: a programmatic
    dependent launch (only where `pdl.supported`)."""
    batch = qkv.shape[0]
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    num_q_heads = qkv.shape[1] // head_dim - 2 * num_kv_heads
    check_cache_pair(k_cache, v_cache)
    if qkv.stride(-1) != 1 or head_dim < MIN_HEAD_DIM:
        raise ValueError("decode_step_attention needs contiguous qkv rows and head_dim >= "
                         f"{MIN_HEAD_DIM}")
    out = torch.empty(batch, num_q_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if batch == 0:
        return out
    if num_splits is None:
        num_splits = decode_num_splits(batch, num_kv_heads, block_tables.shape[1] * block_size,
                                       qkv.device)
    if workspace is None:
        workspace = DecodeStepWorkspace.allocate(batch, num_q_heads, num_kv_heads, head_dim,
                                                 qkv.device)
    if not workspace.holds(batch, num_splits, num_q_heads, num_kv_heads, head_dim):
        raise ValueError(f"the decode-step workspace is too small for batch {batch}, "
                         f"{num_splits} splits")
    group = num_q_heads // num_kv_heads
    block_g = triton.next_power_of_2(group)
    split_tile = max(1, MERGE_TILE_ELEMENTS // (block_g * head_dim))
    _decode_step_kernel[(batch, num_kv_heads, num_splits)](
        qkv, positions, slot_mapping, q_weight, k_weight, cos_cache, sin_cache, k_cache,
        v_cache, block_tables, seq_lens, out, workspace.part_acc, workspace.part_max,
        workspace.part_sum, workspace.tickets, eps, scale * LOG2_E, qkv.stride(0),
        cos_cache.stride(0), block_tables.stride(0), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), num_q_heads, num_kv_heads, num_splits,
        MIN_CHUNK if min_chunk is None else min_chunk,
        GROUP=group, HEAD_DIM=head_dim, HALF=head_dim // 2, BLOCK_SIZE=block_size,
        BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_G=block_g,
        SPLIT_TILE=split_tile, PRECISION=dot_precision(k_cache), USE_GDC=launch_pdl,
        num_warps=num_warps, num_stages=num_stages, launch_pdl=launch_pdl,
    )
    return out
