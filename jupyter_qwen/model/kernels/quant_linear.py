"""y = x @ W.T for quantized projections, reading the packed weights as they are stored and
dequantizing in registers (no bf16 copy of W in memory).

- `fp8_linear(x, weight, scale_inv, scale_rows)`: W = weight (float8_e4m3fn [N, K]) times
  its 128 x 128 block's scale (`scale_inv[scale_rows[n], k // 128]`);
- `awq_linear(x, qweight, qzeros, scales)`: W.T[k, n] = (q - z) * s, with q and z 4-bit
  values packed eight per int32 in AWQ's order and z, s per group of 128 input rows.

One kernel per format, two tilings (`quant_tiling`): decode steps (M <= SMALL_M: one row
of x, summed with FMAs, or 16 rows on the tensor cores) with narrow N tiles so that every
SM streams weights; and prefill (`tl.dot` on the tiling that `quant_tiles.py`'s measured
table names for the batch's M bucket and the projection's N x K, else 64 x 128 tiles;
optionally with grouped program order for L2 reuse of W tiles). Each K step
stays inside one scale block / group, so the scale is applied once per step: FP8 adds
`dot(a, w) * s[n]` to the fp32 accumulator; AWQ dequantizes its tile to x's dtype (the
same rounding as the reference) before the dot. With `fp8_dot` (Hopper / Ada, prefill
only) the FP8 product runs on FP8 tensor cores: each row's 128-wide K step of x is
quantized to e4m3 with its own scale (dynamic per-token-group activations, as Qwen's
FP8 checkpoints are meant to run), and the step adds `dot(a8, w) * a_scale[m] * s[n]`;
a tiling with `quantize_x` quantizes x once in a separate launch (`_quantize_x_kernel`,
the same arithmetic) instead of in every N tile's loop, or takes x quantized beforehand
(`Fp8Rows`, from the fused norm or SiLU·mul that made the rows: `quantizes_x`,
`TritonQuantKernels.takes_fp8_rows`). A tiling with `chain` (where every
N tile reads one weight scale row: `chains`) folds that row into x instead,
x'[m, k] = x[m, k] * s[k // 128], quantizes x' with one scale per row over all of K (from
each row's maxima per 128 columns, `_row_block_max_kernel`, and the tile's scale row), runs
the K loop as one chain of FP8 dots with no scaling per step, and scales the rows once
at the end; elsewhere it runs as without `chain`. A `quantize_x` tiling with `tile_scale`
on such a projection reads the N tile's one scale row too and adds
`dot(a8, w) * (a_scale[m] * s)` per step: one FMA an accumulator element and no scale
vector in registers (fewer registers: more programs resident per SM). A `swap_ab` tiling on
such a projection computes y.T = W' @ x.T (`_fp8_swap_kernel`): the step's weight tile
times its one scale, rounded to x's dtype as the reference dequantizes, is the dot's left
operand, made in registers, and the K loop is one chain of dots on x's dtype's tensor
cores with no scaling of the sums and no FP8 activations. AWQ's `swap_ab` tilings likewise
make the dequantized tile the left operand (y.T = W @ x.T), where the plain form waits for
every step's tensor-core product. A `wgmma` tiling (with `quantize_x`) on a Hopper GPU runs
`fp8_wgmma.py`'s Gluon kernel instead of `_fp8_kernel` where `runs_wgmma` allows: the same
arithmetic with each step's scaling done while the next step's product runs. A `split_k`
tiling splits `_fp8_kernel`'s K loop over programs (a third grid axis); the last program of
each output tile to finish adds the fp32 partials in split order (`_store_tile`), with
counters that every launch leaves zero (`split_counts_for` keeps them on the layer).

An AWQ projection repacked into the rows layout (`TritonQuantKernels.prepare`, for the shapes
whose decode product is faster so: awq_rows.py) multiplies through `awq_rows.rows_linear`.

From `AWQ_VIA_BF16_MIN_M` rows (quant_tiles.py) an AWQ product dequantizes W once into a
scratch [N, K] tensor of x's dtype (`awq_dequantize`: the reference's arithmetic, one pass
over the packed words) and runs F.linear on it, as the reference path does: for batches
this large cuBLAS's bf16 product plus the pass beats the dequantizing GEMM.

From `BLOCK_SCALED_MIN_M` rows (or the rows `BLOCK_SCALED_FROM_M` names for shapes measured
otherwise) on a Hopper GPU (compute capability 9.0), FP8 projections
whose shards are whole 128-row blocks go to cuBLAS's block-scaled FP8 product instead
(`block_scaled_mm`: torch._scaled_mm with x's per-row, per-128-column scales and the
weight's 128 x 128 block scales, the same arithmetic as the kernel's `quantize_x`
tilings); `TritonQuantKernels` checks once, on a small product against the reference,
that this torch build takes those scales, else keeps the kernel.

M is not specialised (one compile serves every batch size of a tiling); nothing is read on
the host, so launches are CUDA-graph safe. The reference is `QuantLinear.dequantize` and
F.linear (`model/quant/linear.py`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import awq_rows
from jupyter_qwen.model.kernels.fused_ops import e4m3_rows
from jupyter_qwen.model.kernels.quant_gemv import folds
from jupyter_qwen.model.kernels.quant_tiles import (
    AWQ_GROUP,
    AWQ_VIA_BF16_MIN_M,
    FP8_BLOCK,
    QuantTiling,
    chunk_of,
    large_m_tiling,
)
from jupyter_qwen.model.quant.fp8 import Fp8Rows

__all__ = ["QuantTiling", "TritonQuantKernels", "awq_dequantize", "awq_linear", "fp8_linear",
           "quant_tiling"]

SMALL_M = 16
AWQ_DEQUANT_BLOCK_N = 64  # a program of awq_dequantize: 128 x 64 values, 4 KB of words
AWQ_DEQUANT_BLOCK_K = 128
MIN_PROGRAMS = 128


def quant_tiling(m: int, n: int, awq: bool = False, k: int = 0) -> QuantTiling:
    """Decode steps: one row (FMAs) or 16 (tensor cores), N tiles of 16-64 rows so that at
    least ~128 programs stream the weights; prefill: the measured table of quant_tiles.py
    for this (M bucket, N, K), else 64 x 128 tiles."""
    if m <= SMALL_M:
        block_n = next((b for b in (64, 32) if triton.cdiv(n, b) >= MIN_PROGRAMS), 16)
        return QuantTiling(1 if m == 1 else 16, block_n, 128, num_warps=4, num_stages=3)
    return large_m_tiling("awq" if awq else "fp8", m, n, k)


@triton.jit
def _tile_of_program(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     GROUP_M: tl.constexpr):
    """(N tile, M tile) of this program. The grid is (N tiles, M tiles), launched N tiles
    fastest; with GROUP_M > 1 the programs are renumbered so that runs of GROUP_M M tiles
    take each N tile in turn: programs resident together share W tiles in L2."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    if GROUP_M > 1:
        tiles_n = tl.cdiv(N, BLOCK_N)
        tiles_m = tl.cdiv(M, BLOCK_M)
        pid = pid_m * tiles_n + pid_n
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % rows_in_group
        pid_n = (pid % per_group) // rows_in_group
    return pid_n, pid_m


@triton.jit
def _k_range(K, K_CHUNK, SPLIT: tl.constexpr):
    """The input columns this program sums: all of K, or with SPLIT program_id(2)'s chunk,
    [K_CHUNK * split, K_CHUNK * (split + 1)) within K."""
    k_begin = 0
    k_end = K
    if SPLIT:
        k_begin = tl.program_id(2) * K_CHUNK
        k_end = tl.minimum(K, k_begin + K_CHUNK)
    return k_begin, k_end


@triton.jit
def _store_tile(acc, y_ptr, part_ptr, count_ptr, pid_n, pid_m, M, N, y_stride, SPLITS,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
    """Store the fp32 [BLOCK_M, BLOCK_N] tile `acc` of y (tile pid_m, pid_n) in y's dtype.
    SPLIT (K split over the tile's SPLITS programs, this one program_id(2)): store the
    partial sums (part_ptr: [SPLITS, M, N] fp32), count them in (release: every thread's
    stores first; one counter a tile at count_ptr), and the last of the tile's programs
    (acquire) adds the partials in split order, stores y and sets the count back to 0 for
    the next launch or graph replay: the same bits whichever program finishes last."""
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (ms < M)[:, None] & (ns < N)[None, :]
    if SPLIT:
        at = ms[:, None] * N + ns[None, :]
        tl.store(part_ptr + tl.program_id(2) * M * N + at, acc, mask=mask)
        tl.debug_barrier()
        tile = pid_m * tl.cdiv(N, BLOCK_N) + pid_n
        done = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if done == SPLITS - 1:
            total = tl.load(part_ptr + at, mask=mask, other=0.0, cache_modifier=".cg")
            for split in range(1, SPLITS):
                total += tl.load(part_ptr + split * M * N + at, mask=mask, other=0.0,
                                 cache_modifier=".cg")
            tl.store(y_ptr + ms[:, None] * y_stride + ns[None, :],
                     total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed", scope="gpu")
    else:
        tl.store(y_ptr + ms[:, None] * y_stride + ns[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit(do_not_specialize=["M"])
def _quantize_x_kernel(x_ptr, q_ptr, s_ptr, M, K, x_stride, s_stride,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """x [M, K] -> e4m3 [M, K] and fp32 scales [M, K / BLOCK_K]: each row's BLOCK_K-wide
    group divided by its absolute maximum / 448 (what the FP8 kernel does in its loop)."""
    ms = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (ms < M)[:, None] & (ks < K)[None, :]
    a = tl.load(x_ptr + ms[:, None] * x_stride + ks[None, :], mask=ok, other=0.0)
    a8, a_scale = e4m3_rows(a.to(tl.float32))
    tl.store(q_ptr + ms[:, None] * K + ks[None, :], a8, mask=ok)
    tl.store(s_ptr + ms * s_stride + tl.program_id(1), a_scale, mask=ms < M)


@triton.jit(do_not_specialize=["M"])
def _row_block_max_kernel(x_ptr, max_ptr, M, K, x_stride, max_stride,
                          BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """x [M, K] -> fp32 [M, K / BLOCK_K]: the largest |x| of each row's BLOCK_K columns."""
    ms = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (ms < M)[:, None] & (ks < K)[None, :]
    a = tl.load(x_ptr + ms[:, None] * x_stride + ks[None, :], mask=ok, other=0.0)
    tl.store(max_ptr + ms * max_stride + tl.program_id(1), tl.max(tl.abs(a.to(tl.float32)), 1),
             mask=ms < M)


@triton.jit
def _chain_row_scale(max_ptr, max_stride, scale_at, ms, m_ok, K, BLOCK_M: tl.constexpr,
                     CHUNK: tl.constexpr):
    """Each row's e4m3 scale of x folded with one weight scale row: max_k |x[m, k]| *
    s[k // 128] / 448, from the row-block maxima (`_row_block_max_kernel`) and the N tile's
    scale row (`scale_at`), CHUNK blocks at a time."""
    row_max = tl.zeros((BLOCK_M,), tl.float32)
    blocks = tl.cdiv(K, 128)
    for b0 in range(0, blocks, CHUNK):
        bs = b0 + tl.arange(0, CHUNK)
        b_ok = bs < blocks
        block_max = tl.load(max_ptr + ms[:, None] * max_stride + bs[None, :],
                            mask=m_ok[:, None] & b_ok[None, :], other=0.0)
        scales = tl.load(scale_at + bs, mask=b_ok, other=0.0)
        row_max = tl.maximum(row_max, tl.max(block_max * scales[None, :], 1))
    return tl.maximum(row_max, 1e-12) / 448.0


@triton.jit
def _fp8_step_tiles(x_ptr, w_ptr, ms, m_ok, rows, k0, K, x_stride, w_stride,
                    BLOCK_K: tl.constexpr):
    """x's [BLOCK_M, BLOCK_K] and W's [BLOCK_N, BLOCK_K] tiles at columns k0.. (zeros past
    K and past M)."""
    ks = k0 + tl.arange(0, BLOCK_K)
    k_ok = ks < K
    a = tl.load(x_ptr + ms[:, None] * x_stride + ks[None, :],
                mask=m_ok[:, None] & k_ok[None, :], other=0.0)
    w = tl.load(w_ptr + rows[:, None] * w_stride + ks[None, :], mask=k_ok[None, :],
                other=0.0)
    return a, w


@triton.jit(do_not_specialize=["M", "SPLITS"])
def _fp8_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, srow_ptr, y_ptr, part_ptr, count_ptr, M, N, K,
                K_CHUNK, SPLITS, x_stride, xs_stride, w_stride, s_stride, y_stride,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr, FP8_DOT: tl.constexpr, X_FP8: tl.constexpr,
                CHAIN: tl.constexpr, PROMOTE_K: tl.constexpr, TILE_SCALE: tl.constexpr,
                SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    """X_FP8: x is already e4m3 with its scales at xs_ptr (`_quantize_x_kernel`). CHAIN
    (every row of the N tile reads one scale row): xs_ptr holds x's row-block maxima
    (`_row_block_max_kernel`); the loop chains the FP8 dots and the epilogue scales;
    PROMOTE_K > 0: the dots' sums are promoted to fp32 every PROMOTE_K columns. TILE_SCALE
    (with X_FP8, one scale row per N tile): each step's dot is scaled by the vector
    a_scale[m] * s, one FMA per accumulator element. SPLIT: program_id(2) of SPLITS takes
    input columns [K_CHUNK * split, K_CHUNK * (split + 1)) and `_store_tile` sums the
    splits."""
    pid_n, pid_m = _tile_of_program(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    k_begin, k_end = _k_range(K, K_CHUNK, SPLIT)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(ns, N - 1)  # the tail re-reads row N - 1 rather than masking
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = ms < M
    if CHAIN or TILE_SCALE:
        tile_scale_at = s_ptr + tl.load(srow_ptr + pid_n * BLOCK_N) * s_stride
    else:
        scale_at = s_ptr + tl.load(srow_ptr + rows) * s_stride
    if CHAIN:
        row_scale = _chain_row_scale(xs_ptr, xs_stride, tile_scale_at, ms, m_ok, K, BLOCK_M,
                                     16)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        a, w = _fp8_step_tiles(x_ptr, w_ptr, ms, m_ok, rows, k0, K, x_stride, w_stride,
                               BLOCK_K)
        if CHAIN:  # x' = x * s[k // 128] / row_scale, in e4m3; no scaling of the sum
            fold = tl.load(tile_scale_at + k0 // 128) / row_scale
            a8 = (a.to(tl.float32) * fold[:, None]).to(tl.float8e4nv)
            if PROMOTE_K > 0:
                acc = tl.dot(a8, tl.trans(w), acc, max_num_imprecise_acc=PROMOTE_K)
            else:
                acc = tl.dot(a8, tl.trans(w), acc)
        elif TILE_SCALE:  # x in e4m3; the N tile's one weight scale row
            a_scale = tl.load(xs_ptr + ms * xs_stride + k0 // 128, mask=m_ok, other=1.0)
            step_scale = a_scale * tl.load(tile_scale_at + k0 // 128)
            acc += tl.dot(a, tl.trans(w)) * step_scale[:, None]
        else:
            scale = tl.load(scale_at + k0 // 128)
            if X_FP8:
                a_scale = tl.load(xs_ptr + ms * xs_stride + k0 // 128, mask=m_ok, other=1.0)
                part = tl.dot(a, tl.trans(w)) * a_scale[:, None]
            elif FP8_DOT:
                a8, a_scale = e4m3_rows(a.to(tl.float32))
                part = tl.dot(a8, tl.trans(w)) * a_scale[:, None]
            elif BLOCK_M == 1:
                part = tl.sum(a.to(tl.float32) * w.to(tl.float32), 1)[None, :]
            else:
                part = tl.dot(a, tl.trans(w.to(a.dtype)), input_precision=PRECISION)
            acc += part * scale[None, :]
    if CHAIN:
        acc = acc * row_scale[:, None]
    _store_tile(acc, y_ptr, part_ptr, count_ptr, pid_n, pid_m, M, N, y_stride, SPLITS,
                BLOCK_M, BLOCK_N, SPLIT)


@triton.jit(do_not_specialize=["M"])
def _fp8_swap_kernel(x_ptr, w_ptr, s_ptr, srow_ptr, y_ptr, M, N, K, x_stride, w_stride,
                     s_stride, y_stride, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     GROUP_M: tl.constexpr, PRECISION: tl.constexpr):
    """y.T [BLOCK_N, BLOCK_M] tiles = W' @ x.T, one 128-column scale block a step: W' = the
    N tile's weights times their one scale row's step scale, rounded to x's dtype (the
    left operand, made in registers), then one dot chained over K."""
    BLOCK_K: tl.constexpr = 128
    pid_n, pid_m = _tile_of_program(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(ns, N - 1)  # the tail re-reads row N - 1 rather than masking
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = ms < M
    scale_at = s_ptr + tl.load(srow_ptr + pid_n * BLOCK_N) * s_stride
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a, w = _fp8_step_tiles(x_ptr, w_ptr, ms, m_ok, rows, k0, K, x_stride, w_stride,
                               BLOCK_K)
        w_scaled = (w.to(tl.float32) * tl.load(scale_at + k0 // BLOCK_K)).to(a.dtype)
        acc = tl.dot(w_scaled, tl.trans(a), acc, input_precision=PRECISION)
    mask = (ns < N)[:, None] & m_ok[None, :]
    tl.store(y_ptr + ms[None, :] * y_stride + ns[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _awq_unpack(packed, shifts):
    """[R, C / 8] int32 -> [R, C] 4-bit values: each word widened to its eight columns."""
    wide = tl.interleave(packed, packed)
    wide = tl.interleave(wide, wide)
    wide = tl.interleave(wide, wide)
    return (wide >> shifts[None, :]) & 0xF


@triton.jit
def _awq_columns(pid_n, N, BLOCK_N: tl.constexpr):
    """The N tile's columns and their packed words (with validity) and each column's nibble
    shift in its word (AWQ's order)."""
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    words = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    column = ns % 8
    shifts = ((column // 2) + (column % 2) * 4) * 4  # AWQ's nibble of column j of eight
    return ns, words, words < N // 8, shifts


@triton.jit
def _awq_tile(qw_ptr, qz_ptr, sc_ptr, k0, ns, words, words_ok, shifts, K, N, qw_stride,
              qz_stride, sc_stride, dtype, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """W.T's [BLOCK_K, BLOCK_N] tile at rows k0.., dequantized to `dtype` as the reference
    does: (q - z) * s in fp32, rounded once."""
    ks = k0 + tl.arange(0, BLOCK_K)
    k_ok = ks < K
    packed = tl.load(qw_ptr + ks[:, None] * qw_stride + words[None, :],
                     mask=k_ok[:, None] & words_ok[None, :], other=0)
    q = _awq_unpack(packed, shifts)
    group = k0 // GROUP
    zeros = tl.load(qz_ptr + group * qz_stride + words, mask=words_ok, other=0)
    z = _awq_unpack(zeros[None, :], shifts)
    s = tl.load(sc_ptr + group * sc_stride + ns, mask=ns < N, other=0.0).to(tl.float32)
    return ((q - z).to(tl.float32) * s[None, :]).to(dtype)


@triton.jit(do_not_specialize=["M", "SPLITS"])
def _awq_kernel(x_ptr, qw_ptr, qz_ptr, sc_ptr, y_ptr, part_ptr, count_ptr, M, N, K, K_CHUNK,
                SPLITS, x_stride, qw_stride, qz_stride, sc_stride, y_stride,
                GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr,
                SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    """SWAP_AB: y.T tiles = W @ x.T, the dequantized tile the dot's left operand (made in
    registers) and x's the right one (shared memory), so the tensor cores' K chain runs
    asynchronously; else y = x @ W.T with the tile as the right operand. SPLIT (not with
    SWAP_AB): K split over programs as `_fp8_kernel` does."""
    pid_n, pid_m = _tile_of_program(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    k_begin, k_end = _k_range(K, K_CHUNK, SPLIT)
    ns, words, words_ok, shifts = _awq_columns(pid_n, N, BLOCK_N)
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = ms < M
    dtype = x_ptr.dtype.element_ty
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + ms[:, None] * x_stride + ks[None, :],
                    mask=m_ok[:, None] & (ks < K)[None, :], other=0.0)
        w = _awq_tile(qw_ptr, qz_ptr, sc_ptr, k0, ns, words, words_ok, shifts, K, N,
                      qw_stride, qz_stride, sc_stride, dtype, GROUP, BLOCK_K)
        if SWAP_AB:
            acc = tl.dot(tl.trans(w), tl.trans(a), acc, input_precision=PRECISION)
        elif BLOCK_M == 1:
            acc += tl.sum(tl.trans(a).to(tl.float32) * w.to(tl.float32), 0)[None, :]
        else:
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if SWAP_AB:
        tl.store(y_ptr + ms[None, :] * y_stride + ns[:, None],
                 acc.to(y_ptr.dtype.element_ty), mask=(ns < N)[:, None] & m_ok[None, :])
    else:
        _store_tile(acc, y_ptr, part_ptr, count_ptr, pid_n, pid_m, M, N, y_stride, SPLITS,
                    BLOCK_M, BLOCK_N, SPLIT)


@triton.jit
def _awq_dequantize_kernel(qw_ptr, qz_ptr, sc_ptr, w_ptr, N, K, qw_stride, qz_stride,
                           sc_stride, w_stride, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    """W [N, K]: one [BLOCK_K, BLOCK_N] tile of W.T a program, dequantized as the GEMM's
    K steps do (`_awq_tile`) and stored transposed."""
    ns, words, words_ok, shifts = _awq_columns(tl.program_id(0), N, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    w = _awq_tile(qw_ptr, qz_ptr, sc_ptr, k0, ns, words, words_ok, shifts, K, N, qw_stride,
                  qz_stride, sc_stride, w_ptr.dtype.element_ty, GROUP, BLOCK_K)
    ks = k0 + tl.arange(0, BLOCK_K)
    tl.store(w_ptr + ns[None, :] * w_stride + ks[:, None], w,
             mask=(ks < K)[:, None] & (ns < N)[None, :])


def _rows(x: torch.Tensor, k: int) -> torch.Tensor:
    rows = x.reshape(-1, k)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _grid(m: int, n: int, tiling: QuantTiling) -> tuple[int, int]:
    return triton.cdiv(n, tiling.block_n), triton.cdiv(m, tiling.block_m)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def fp8_linear(x: torch.Tensor | Fp8Rows, weight: torch.Tensor, scale_inv: torch.Tensor,
               scale_rows: torch.Tensor, *, tiling: QuantTiling | None = None,
               fp8_dot: bool = False, shard_sizes: Sequence[int] | None = None,
               split_counts: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ dequantized(weight).T -> [..., N] in x's dtype. `fp8_dot` (the device
    has FP8 tensor cores; prefill tilings whose `fp8_dot` is set): activations quantized per
    row and 128 columns, FP8 tensor cores. `shard_sizes` (the rows of each shard packed in
    weight, as `scale_rows` was built): lets a `chain` tiling run chained (`chains`). x may
    come quantized (`Fp8Rows`, rows [M, K]) where `quantizes_x` holds for the tiling.
    `split_counts`: zeroed int32 counters, one an output tile, that a `split_k` tiling's
    launches leave zero (`split_counts_for`); without them (or too few) it makes its own."""
    k, n = x.shape[-1], weight.shape[0]
    rows = x.values if isinstance(x, Fp8Rows) else _rows(x, k)
    m = rows.shape[0]
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=rows.device)
    if m == 0:
        return y
    tiling = tiling or quant_tiling(m, n, k=k)
    if FP8_BLOCK % tiling.block_k:
        raise ValueError(f"block_k {tiling.block_k} must divide the scale block {FP8_BLOCK}")
    x_fp8 = quantizes_x(tiling, shard_sizes, fp8_dot)
    if isinstance(x, Fp8Rows) and not x_fp8:
        raise ValueError(f"{tiling} does not take rows quantized beforehand (quantizes_x)")
    if swaps(tiling, shard_sizes):
        _fp8_swap_kernel[_grid(m, n, tiling)](
            rows, weight, scale_inv, scale_rows, y.view(-1, n), m, n, k, rows.stride(0),
            weight.stride(0), scale_inv.stride(0), n, BLOCK_M=tiling.block_m,
            BLOCK_N=tiling.block_n, GROUP_M=tiling.group_m, PRECISION=_precision(x.dtype),
            num_warps=tiling.num_warps, num_stages=tiling.num_stages)
        return y
    use_fp8_dot = (fp8_dot and tiling.fp8_dot and tiling.block_m > SMALL_M
                   and tiling.block_k == FP8_BLOCK)
    chain = use_fp8_dot and chains(tiling, shard_sizes)
    tile_scale = x_fp8 and tiling.tile_scale and one_scale_row(tiling.block_n, shard_sizes)
    x_scales = rows  # not read unless the activations are quantized beforehand
    if chain:
        x_scales = _row_block_max(rows)
    elif isinstance(x, Fp8Rows):
        x_scales = x.scales
    elif x_fp8:
        rows, x_scales = _quantize_x(rows)
    if x_fp8 and runs_wgmma(tiling, shard_sizes, weight):
        from .fp8_wgmma import fp8_wgmma_product

        fp8_wgmma_product(rows, x_scales, weight, scale_inv, scale_rows, y.view(-1, n),
                          tiling.block_m, tiling.block_n, tiling.num_stages, tiling.wgmma_chunk)
        return y
    chunk, splits, partials, counts = _split_buffers(y.view(-1, n), k, tiling, split_counts)
    _fp8_kernel[(*_grid(m, n, tiling), splits)](
        rows, x_scales, weight, scale_inv, scale_rows, y.view(-1, n), partials, counts, m, n,
        k, chunk, splits, rows.stride(0), x_scales.stride(0), weight.stride(0),
        scale_inv.stride(0), n, BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n,
        BLOCK_K=tiling.block_k, GROUP_M=tiling.group_m, FP8_DOT=use_fp8_dot, X_FP8=x_fp8,
        CHAIN=chain, PROMOTE_K=tiling.promote_k if chain else 0, TILE_SCALE=tile_scale,
        SPLIT=splits > 1, PRECISION=_precision(x.dtype),
        num_warps=tiling.num_warps, num_stages=tiling.num_stages)
    return y


def _split_buffers(y: torch.Tensor, k: int, tiling: QuantTiling,
                   split_counts: torch.Tensor | None):
    """How a `split_k` tiling splits K for y [M, N]: (input columns a split, splits, fp32
    partials [splits, M, N], the counters: `split_counts` where they cover every output
    tile, else zeroed ones of this call's own). One split: y stands in for both (unread)."""
    m, n = y.shape
    chunk = chunk_of(k, tiling.block_k, tiling.split_k)
    splits = triton.cdiv(k, chunk)
    if splits == 1:
        return chunk, splits, y, y
    partials = torch.empty((splits, m, n), dtype=torch.float32, device=y.device)
    tiles = math.prod(_grid(m, n, tiling))
    if split_counts is None or split_counts.numel() < tiles:
        split_counts = torch.zeros(tiles, dtype=torch.int32, device=y.device)
    return chunk, splits, partials, split_counts


SPLIT_COUNTS_ROWS = 512  # a layer's split counters cover tiles of >= 32 x 32 up to this M


def split_counts_for(layer, m: int, device: torch.device) -> torch.Tensor | None:
    """The counters a `split_k` tiling of this projection (FP8 or AWQ) at m rows needs,
    kept on the layer (`_split_counts`, zeros; every launch leaves them zero): one int32
    per 32 x 32 tile of SPLIT_COUNTS_ROWS rows, enough for any tiling the sweep has. None
    where the table's tiling does not split K. Made on the first launch; if that launch is
    being captured, the zeros are a captured memset that every replay repeats, as correct."""
    n, k = layer.out_features, layer.in_features
    if quant_tiling(m, n, awq=not hasattr(layer, "weight_scale_inv"), k=k).split_k == 1:
        return None
    counts = getattr(layer, "_split_counts", None)
    if counts is None:
        counts = torch.zeros(SPLIT_COUNTS_ROWS // 32 * triton.cdiv(n, 32), dtype=torch.int32,
                             device=device)
        layer._split_counts = counts
    return counts


def quantizes_x(tiling: QuantTiling, shard_sizes: Sequence[int] | None, fp8_dot: bool,
                ) -> bool:
    """Whether `fp8_linear` on `tiling` quantizes its rows to e4m3 in a launch of their own
    before the product (`_quantize_x`), so that it can take them quantized by the kernel
    that makes them (`Fp8Rows`) instead: a `quantize_x` tiling on FP8 tensor cores that
    does not run swapped."""
    return (fp8_dot and tiling.fp8_dot and tiling.quantize_x and tiling.block_m > SMALL_M
            and tiling.block_k == FP8_BLOCK and not swaps(tiling, shard_sizes))


def swaps(tiling: QuantTiling, shard_sizes: Sequence[int] | None) -> bool:
    """Whether a `swap_ab` tiling runs swapped on a projection packed from `shard_sizes`:
    one scale block a K step and every N tile's rows reading one scale row."""
    return (tiling.swap_ab and tiling.block_k == FP8_BLOCK
            and one_scale_row(tiling.block_n, shard_sizes))


def runs_wgmma(tiling: QuantTiling, shard_sizes: Sequence[int] | None,
               weight: torch.Tensor) -> bool:
    """Whether a `wgmma` tiling runs `fp8_wgmma.py`'s kernel on this [N, K] weight: a Hopper
    GPU, every N tile reading one scale row, K a multiple of its chunk of 128-column steps
    (every Qwen3 projection at chunks of 4: K / 128 is 8 to 76, a multiple of 4), and rows
    TMA can read (contiguous, 16-byte aligned)."""
    k = weight.shape[1]
    return (tiling.wgmma and k % (tiling.wgmma_chunk * FP8_BLOCK) == 0
            and hopper(weight.device) and weight.stride(1) == 1 and weight.stride(0) % 16 == 0
            and weight.data_ptr() % 16 == 0 and one_scale_row(tiling.block_n, shard_sizes))


@functools.cache
def hopper(device: torch.device) -> bool:
    """Compute capability 9.0 (H100, H200): wgmma and TMA, what `fp8_wgmma.py` runs on."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


def chains(tiling: QuantTiling, shard_sizes: Sequence[int] | None) -> bool:
    """Whether a `chain` tiling runs chained on a projection packed from `shard_sizes`:
    every N tile's rows (up to the last row) read one scale row. Unknown shards: no."""
    return (tiling.chain and not tiling.quantize_x
            and one_scale_row(tiling.block_n, shard_sizes))


def one_scale_row(block_n: int, shard_sizes: Sequence[int] | None) -> bool:
    """Whether every N tile of block_n rows reads one weight scale row on a projection
    packed from `shard_sizes` (no shard starts inside a tile). Unknown shards: no."""
    return shard_sizes is not None and folds(tuple(shard_sizes), block_n)


def _row_block_max(rows: torch.Tensor, block_m: int = 32) -> torch.Tensor:
    """rows [M, K] -> fp32 [M, cdiv(K, 128)]: each row's largest |x| per 128 columns."""
    m, k = rows.shape
    maxima = torch.empty((m, triton.cdiv(k, FP8_BLOCK)), dtype=torch.float32,
                         device=rows.device)
    _row_block_max_kernel[(triton.cdiv(m, block_m), maxima.shape[1])](
        rows, maxima, m, k, rows.stride(0), maxima.stride(0), BLOCK_M=block_m,
        BLOCK_K=FP8_BLOCK)
    return maxima


def _quantize_x(rows: torch.Tensor, block_m: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [M, K] -> (e4m3 [M, K], fp32 scales [M, cdiv(K, 128)]), one launch."""
    m, k = rows.shape
    quantized = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=rows.device)
    scales = torch.empty((m, triton.cdiv(k, FP8_BLOCK)), dtype=torch.float32,
                         device=rows.device)
    _quantize_x_kernel[(triton.cdiv(m, block_m), scales.shape[1])](
        rows, quantized, scales, m, k, rows.stride(0), scales.stride(0), BLOCK_M=block_m,
        BLOCK_K=FP8_BLOCK)
    return quantized, scales


BLOCK_SCALED_MIN_M = 2048  # run 49 (H100): from here cuBLAS's block-scaled FP8 beat bf16
# (N, K) measured otherwise: the rows from which cuBLAS's product beats the table's Triton
# tiling, None for never. Runs 66 and 68 (H100, 2,048 and 8,192 rows;
# benchmarks/fp8_scaled_mm.py and quant_tiles.py): Qwen3-0.6B's products take 121-140 us in
# cuBLAS at either size (0.14-0.50x bf16) against 0.90-1.22x for the tilings; only gate_up
# at 8,192 rows wins there (1.13x against 1.00x).
BLOCK_SCALED_FROM_M: dict[tuple[int, int], int | None] = {
    (4096, 1024): None, (1024, 2048): None, (6144, 1024): 8192, (1024, 3072): None,
}
ROW_MULTIPLE = 16  # rows padded to this for cuBLAS's FP8 product


def block_scaled_mm(x: torch.Tensor | Fp8Rows, weight: torch.Tensor, scale_inv: torch.Tensor,
                    ) -> torch.Tensor:
    """`fp8_linear`'s product by cuBLAS (torch._scaled_mm's block-wise scaling): x quantized
    per row and 128 columns (`_quantize_x`, or beforehand: `Fp8Rows`; the scales laid out
    column-major as cuBLAS reads them), the weight's e4m3 values and its [N / 128, K / 128]
    block scales as stored. Rows are padded to a multiple of 16 where needed (zeros)."""
    k, n = x.shape[-1], weight.shape[0]
    x8, x_scales = (x.values, x.scales) if isinstance(x, Fp8Rows) else _quantize_x(_rows(x, k))
    m = x8.shape[0]
    padded = -m % ROW_MULTIPLE
    if padded:  # zero rows (as bytes: e4m3's zero is 0x00), scale 1; their outputs dropped
        x8 = torch.cat([x8.view(torch.uint8), x8.new_zeros(padded, k, dtype=torch.uint8)]
                       ).view(x8.dtype)
        x_scales = torch.cat([x_scales, x_scales.new_ones(padded, x_scales.shape[1])])
    y = torch._scaled_mm(x8, weight.t(), scale_a=x_scales.t().contiguous().t(),
                         scale_b=scale_inv.float().t(), out_dtype=x.dtype)
    return y[:m].view(*x.shape[:-1], n)


def takes_block_scaled(layer, m: int) -> bool:
    """Whether a projection of m rows goes to `block_scaled_mm`: enough rows for its shape
    (`block_scaled_from`), and its scale rows are the weight's rows // 128 (every shard
    whole 128-row blocks, K too)."""
    n, k = layer.weight.shape
    first = block_scaled_from(n, k)
    return (first is not None and m >= first and n % FP8_BLOCK == 0 and k % FP8_BLOCK == 0
            and one_scale_row(FP8_BLOCK, layer.shard_sizes))


def block_scaled_from(n: int, k: int) -> int | None:
    """The rows from which an N x K FP8 projection goes to cuBLAS (None: never)."""
    return BLOCK_SCALED_FROM_M.get((n, k), BLOCK_SCALED_MIN_M)


def block_scaled_mm_works(device: torch.device, weight: torch.Tensor,
                          scale_inv: torch.Tensor, rows: int = 256) -> bool:
    """Hopper, and this torch build's _scaled_mm takes block-wise scales and multiplies this
    projection right (cuBLAS was seen to return wrong products for a small shape, so each
    shape is checked once): `rows` random activation rows times the projection's own
    weights, its first and last 128 outputs against the dequantized product of those weight
    rows. Little memory: it runs inside the start-up's memory measurement."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) != (9, 0):
        return False
    n, k = weight.shape
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, k, device=device, generator=generator).to(torch.bfloat16)
    try:
        y = block_scaled_mm(x, weight, scale_inv).float()
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False
    for begin in (0, n - FP8_BLOCK):
        scales = scale_inv[begin // FP8_BLOCK].float().repeat_interleave(FP8_BLOCK)[:k]
        reference = x.float() @ (weight[begin:begin + FP8_BLOCK].float() * scales).t()
        error = (y[:, begin:begin + FP8_BLOCK] - reference).norm() / reference.norm()
        if not error < 5e-2:
            return False
    return True


def awq_linear(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
               scales: torch.Tensor, group_size: int = AWQ_GROUP, *,
               tiling: QuantTiling | None = None,
               split_counts: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ W -> [..., N] for AWQ's packed W.T (qweight [K, N / 8]); from
    AWQ_VIA_BF16_MIN_M rows (no tiling given) F.linear on `awq_dequantize`'s W.
    `split_counts` as for `fp8_linear`."""
    k, n = x.shape[-1], scales.shape[1]
    rows = _rows(x, k)
    m = rows.shape[0]
    if tiling is None and m >= AWQ_VIA_BF16_MIN_M:
        weight = awq_dequantize(qweight, qzeros, scales, group_size, x.dtype)
        return torch.nn.functional.linear(x, weight)
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    tiling = tiling or quant_tiling(m, n, awq=True, k=k)
    if group_size % tiling.block_k or tiling.block_n % 8:
        raise ValueError(f"block_k {tiling.block_k} must divide the group size {group_size} "
                         f"and block_n {tiling.block_n} be a multiple of 8")
    swap_ab = tiling.swap_ab and tiling.block_m > 1
    if swap_ab and tiling.split_k > 1:
        raise ValueError(f"{tiling}: swap_ab tilings do not split K")
    chunk, splits, partials, counts = _split_buffers(y.view(-1, n), k, tiling, split_counts)
    _awq_kernel[(*_grid(m, n, tiling), splits)](
        rows, qweight, qzeros, scales, y.view(-1, n), partials, counts, m, n, k, chunk, splits,
        rows.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), n,
        GROUP=group_size, BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n,
        BLOCK_K=tiling.block_k, GROUP_M=tiling.group_m, SWAP_AB=swap_ab, SPLIT=splits > 1,
        PRECISION=_precision(x.dtype), num_warps=tiling.num_warps, num_stages=tiling.num_stages)
    return y


def awq_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                   group_size: int = AWQ_GROUP, dtype: torch.dtype = torch.bfloat16,
                   ) -> torch.Tensor:
    """W [N, K] in `dtype`, equal to the reference's `dequantize_awq(...).to(dtype)`: one
    pass over the packed words into a fresh tensor."""
    k, n = qweight.shape[0], scales.shape[1]
    if group_size % AWQ_DEQUANT_BLOCK_K:
        raise ValueError(f"group size {group_size} is not a multiple of {AWQ_DEQUANT_BLOCK_K}")
    weight = torch.empty((n, k), dtype=dtype, device=qweight.device)
    grid = (triton.cdiv(n, AWQ_DEQUANT_BLOCK_N), triton.cdiv(k, AWQ_DEQUANT_BLOCK_K))
    _awq_dequantize_kernel[grid](
        qweight, qzeros, scales, weight, n, k, qweight.stride(0), qzeros.stride(0),
        scales.stride(0), weight.stride(0), GROUP=group_size, BLOCK_N=AWQ_DEQUANT_BLOCK_N,
        BLOCK_K=AWQ_DEQUANT_BLOCK_K, num_warps=4)
    return weight


def fp8_tensor_cores(device: torch.device) -> bool:
    """FP8 tensor cores: compute capability 8.9 (Ada) and later."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class TritonQuantKernels:
    """`ModelOps.quant`: the products of `Fp8Linear` and `AwqLinear` (`quant.linear`).
    Triton has no e4m3 before compute capability 8.9: there FP8 projections run the
    dequantizing reference (AWQ's kernels run on any CUDA GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.fp8_dot = fp8_tensor_cores(device)
        self.fp8_kernels = self.fp8_dot or device.type != "cuda"
        self.device = device
        self.block_scaled: dict[tuple[int, int], bool] = {}  # (N, K): checked once

    def linear(self, x: torch.Tensor | Fp8Rows, layer) -> torch.Tensor:
        m = math.prod(x.shape[:-1])
        if hasattr(layer, "weight_scale_inv"):
            if not self.fp8_kernels:
                return torch.nn.functional.linear(x, layer.dequantize(x.dtype))
            if self._block_scaled(layer, m):
                return block_scaled_mm(x, layer.weight, layer.weight_scale_inv)
            return fp8_linear(x, layer.weight, layer.weight_scale_inv, layer.scale_rows,
                              fp8_dot=self.fp8_dot, shard_sizes=layer.shard_sizes,
                              split_counts=split_counts_for(layer, m, self.device))
        if layer.rows:
            return awq_rows.rows_linear(x, layer.words, layer.meta)
        return awq_linear(x, layer.qweight, layer.qzeros, layer.scales, layer.group_size,
                          split_counts=split_counts_for(layer, m, self.device))

    def prepare(self, layer) -> None:
        """AWQ projections whose shape runs faster in the rows layout (`awq_rows.ROWS_TUNED`)
        are repacked into it (once; the same values)."""
        if (hasattr(layer, "qweight") and layer.group_size == AWQ_GROUP
                and awq_rows.prefers_rows(layer.out_features, layer.in_features)):
            layer.to_rows()

    def takes_fp8_rows(self, layer, m: int) -> bool:
        """Whether `linear` on m rows of this projection would quantize them to e4m3 in a
        launch of their own (cuBLAS's block-scaled product, or a `quantizes_x` tiling), so
        that the kernel making the rows should hand them over quantized (`Fp8Rows`)."""
        if not hasattr(layer, "weight_scale_inv") or not self.fp8_kernels:
            return False
        if self._block_scaled(layer, m):
            return True
        n, k = layer.weight.shape
        return quantizes_x(quant_tiling(m, n, k=k), layer.shard_sizes, self.fp8_dot)

    def _block_scaled(self, layer, m: int) -> bool:
        return takes_block_scaled(layer, m) and self._block_scaled_works(layer)

    def _block_scaled_works(self, layer) -> bool:
        """`block_scaled_mm_works` for this layer's shape, checked on the first layer of
        that shape (the start-up's memory measurement runs a batch this large, so before
        serving)."""
        shape = tuple(layer.weight.shape)
        if shape not in self.block_scaled:
            self.block_scaled[shape] = block_scaled_mm_works(self.device, layer.weight,
                                                             layer.weight_scale_inv)
        return self.block_scaled[shape]
