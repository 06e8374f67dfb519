"""Products of AWQ projections held in the rows layout (`AwqLinear.to_rows`; word j of row
n and group g holds q[n, 128 g + 32 p + 2 j + h] in nibble p + 4 h, `meta` one int32 a row
and group: fp16 scale bits | zero << 16; model/quant/awq.py).

- `launch_small_m`: decode batches (quant_gemv's products, with their fused prologues).
  Rows of bf16 x up to `GRID_ROWS_MAX_M` run `_rows_kernel`, as the bf16 products run: a
  program owns BLOCK_N output rows of one row of x and streams their K, GROUPS groups a
  step (no K split, no partials, one lane sum a row at the end). Each word's eight
  products are summed in f16x2 (x / 64 in fp16, q - z exact in fp16: the nibble pairs
  (p, p + 4) are taken by one lop3 each, as awq_lop3.py's half2 kinds take them, and are two
  consecutive k, one int32 of x) and widened to fp32 once a word; the group's scale
  multiplies that in fp32. The next step's words, meta and operand are requested before
  this step's arithmetic. Larger batches, or x in another dtype, take the prologue from
  fused_ops and then `rows_linear`.
- `rows_linear`: any batch: `_rows_dot_kernel` (a [BLOCK_N, BLOCK_K] tile of one group a
  step, unpacked in k order and dequantized to x's dtype as the reference rounds it, times
  x's columns on the tensor cores), or from AWQ_VIA_BF16_MIN_M rows `rows_dequantize` (W
  in x's dtype, one pass) and F.linear, as AWQ's own layout does.

`ROWS_TUNED` names the projection shapes (N, K) whose batch-1 product is faster in this
layout than in AWQ's (benchmarks/awq_rows.py) and the tiling of each: `TritonQuantKernels`
repacks those at start-up. Nothing is read on the host in a launch (M is not specialised):
CUDA-graph safe; no atomics: bitwise reproducible.

Accuracy against the dequantizing reference: `_rows_kernel` as the half2 kinds (x / 64 and
the word sums rounded to fp16: relative error ~3e-4 beyond the output's bf16 rounding);
`_rows_dot_kernel` and `rows_dequantize` the output's own rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import fused_ops, pdl
from jupyter_qwen.model.kernels.awq_lop3 import (
    HALF2_X,
    _f16_halves,
    _high_half,
    _low_half,
    _scale_pair,
)
from jupyter_qwen.model.kernels.gemv import ADD_RMS_NORM, PLAIN, RMS_NORM, SILU_MUL, _inv_rms
from jupyter_qwen.model.kernels.quant_tiles import AWQ_VIA_BF16_MIN_M, large_m_tiling

GROUP = 128
GROUP_K = tl.constexpr(GROUP)  # inputs a group, in kernels
WORDS = 16  # words a row and group
GRID_ROWS_MAX_M = 2
DEQUANT_BLOCK_N = 64


@dataclass(frozen=True)
class RowsTiling:
    """`_rows_kernel`'s tiling: BLOCK_N output rows a program, GROUPS groups (of 128
    inputs) a step, num_warps."""

    block_n: int
    groups: int
    num_warps: int

    def name(self) -> str:
        return f"rows n{self.block_n} g{self.groups} w{self.num_warps}"


# benchmarks/awq_rows.py on an H100 (2026-12-08, run 83), M = 1, us against AWQ's layout on
# its TUNED tilings: Qwen3-0.6B qkv 3.14 / 5.41, o 2.30 / 3.80, gate_up 4.19 / 6.48, down
# 3.98 / 4.86; Qwen3-1.7B (AWQ untuned there) qkv 4.71 / 12.74, o 2.66 / 8.69, gate_up
# 8.46 / 34.25, down 7.76 / 25.01; Qwen3-4B qkv 7.25 / 9.19, o 4.73 / 7.34 (its gate_up
# 18.70 / 17.98 and down 13.20 / 11.23 stay in AWQ's layout). Only shapes listed here are
# repacked.
ROWS_TUNED: dict[tuple[int, int], RowsTiling] = {
    (4096, 1024): RowsTiling(4, 8, 1),  # Qwen3-0.6B qkv
    (1024, 2048): RowsTiling(8, 8, 2),  # o
    (6144, 1024): RowsTiling(8, 4, 1),  # gate_up
    (1024, 3072): RowsTiling(16, 8, 4),  # down
    (4096, 2048): RowsTiling(8, 8, 2),  # Qwen3-1.7B qkv
    (2048, 2048): RowsTiling(8, 8, 2),  # o
    (12288, 2048): RowsTiling(8, 4, 1),  # gate_up
    (2048, 6144): RowsTiling(16, 8, 4),  # down
    (6144, 2560): RowsTiling(16, 8, 4),  # Qwen3-4B qkv
    (2560, 4096): RowsTiling(8, 8, 2),  # o
}
DEFAULT_TILING = RowsTiling(8, 4, 1)


def prefers_rows(n: int, k: int) -> bool:
    """Whether an N x K AWQ projection runs faster in the rows layout (`ROWS_TUNED`)."""
    return (n, k) in ROWS_TUNED and k % GROUP == 0


@triton.jit
def _bf16_pair(bits):
    """fp32 (low, high) of an int32 holding two bf16."""
    return _low_half(bits), _high_half(bits)


@triton.jit
def _pack_half2(low, high, ASM: tl.constexpr):
    """int32 f16x2 (low / 64, high / 64)."""
    if ASM:
        bits = tl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $2, $1;", "=r,f,f",
                                         [low * (1.0 / HALF2_X), high * (1.0 / HALF2_X)],
                                         dtype=tl.int32, is_pure=True, pack=1)
    else:
        lo = (low * (1.0 / HALF2_X)).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        hi = (high * (1.0 / HALF2_X)).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        bits = (lo & 0xFFFF) | (hi << 16)
    return bits


@triton.jit
def _load_pairs(ptr, at, limit, EVEN_G: tl.constexpr):
    """int32 pairs at offsets `at`; from `limit` on 0 (unmasked where EVEN_G)."""
    if EVEN_G:
        return tl.load(ptr + at)
    return tl.load(ptr + at, mask=at < limit, other=0)


@triton.jit
def _operand_pair(xi_ptr, ri_ptr, nwi_ptr, at, limit, inv_rms, K,
                  PROLOGUE: tl.constexpr, EVEN_G: tl.constexpr, ASM: tl.constexpr):
    """The operand's k pairs at int32 offsets `at` as f16x2 x / 64, the prologue applied
    with the reference's roundings (h = x + r in bf16, the normed value in bf16)."""
    lo, hi = _bf16_pair(_load_pairs(xi_ptr, at, limit, EVEN_G))
    if PROLOGUE == 3:
        up_lo, up_hi = _bf16_pair(_load_pairs(xi_ptr + K // 2, at, limit, EVEN_G))
        lo = (lo / (1.0 + tl.exp(-lo)) * up_lo).to(tl.bfloat16).to(tl.float32)
        hi = (hi / (1.0 + tl.exp(-hi)) * up_hi).to(tl.bfloat16).to(tl.float32)
    elif PROLOGUE == 1 or PROLOGUE == 2:
        if PROLOGUE == 2:
            r_lo, r_hi = _bf16_pair(_load_pairs(ri_ptr, at, limit, EVEN_G))
            lo = (lo + r_lo).to(tl.bfloat16).to(tl.float32)
            hi = (hi + r_hi).to(tl.bfloat16).to(tl.float32)
        w_lo, w_hi = _bf16_pair(_load_pairs(nwi_ptr, at, limit, EVEN_G))
        lo = (lo * inv_rms * w_lo).to(tl.bfloat16).to(tl.float32)
        hi = (hi * inv_rms * w_hi).to(tl.bfloat16).to(tl.float32)
    return _pack_half2(lo, hi, ASM)


@triton.jit
def _step_operands(xi_ptr, ri_ptr, nwi_ptr, pairs, g0, G, inv_rms, K,
                   PROLOGUE: tl.constexpr, EVEN_G: tl.constexpr, ASM: tl.constexpr):
    """The four pair tiles (p = 0..3) of the step at group g0, [1, GROUPS, 16] (loaded as
    [1, GROUPS * 16]: pairs, the offsets of p = 0)."""
    at = g0 * 64 + pairs
    limit = G * 64  # past the last group
    x0 = _operand_pair(xi_ptr, ri_ptr, nwi_ptr, at, limit, inv_rms, K, PROLOGUE, EVEN_G, ASM)
    x1 = _operand_pair(xi_ptr, ri_ptr, nwi_ptr, at + 16, limit, inv_rms, K, PROLOGUE,
                       EVEN_G, ASM)
    x2 = _operand_pair(xi_ptr, ri_ptr, nwi_ptr, at + 32, limit, inv_rms, K, PROLOGUE,
                       EVEN_G, ASM)
    x3 = _operand_pair(xi_ptr, ri_ptr, nwi_ptr, at + 48, limit, inv_rms, K, PROLOGUE,
                       EVEN_G, ASM)
    shape: tl.constexpr = [1, pairs.shape[1] // 16, 16]
    return (tl.reshape(x0, shape), tl.reshape(x1, shape), tl.reshape(x2, shape),
            tl.reshape(x3, shape))


@triton.jit
def _step_weights(w_base, m_base, g0, G, columns, groups, EVEN_G: tl.constexpr):
    """Words [BLOCK_N, GROUPS, 16] and meta [BLOCK_N, GROUPS, 1] of the step at g0 (the
    words loaded as [BLOCK_N, GROUPS * 16] rows, contiguous, then split); groups from G on
    read as 0 (scale 0: they add nothing)."""
    if EVEN_G:
        words = tl.load(w_base + g0 * 16)
        meta = tl.load(m_base + g0)
    else:
        words = tl.load(w_base + g0 * 16, mask=g0 + columns // 16 < G, other=0)
        meta = tl.load(m_base + g0, mask=g0 + groups < G, other=0)
    return tl.reshape(words, [words.shape[0], groups.shape[1], 16]), meta


@triton.jit
def _zeros_of(meta):
    """f16x2 -(1024 + z) (even pairs) and -(64 + z) (odd pairs, ulp 1/16) of each meta."""
    z = (meta >> 16) & 0xF
    zz = z | (z << 16)
    return zz | -469703680, (zz << 4) | -738143232  # 0xE400E400, 0xD400D400


@triton.jit
def _word_sums(w, zero_even, zero_odd, x0, x1, x2, x3, ASM: tl.constexpr):
    """fp32 (low, high) of a word's f16x2 sum over its four pairs of (q - z) x / 64: pairs 0
    and 2 from nibbles (p, p + 4) & 0x000F000F | 0x64006400 (1024 + q), 1 and 3 from
    & 0x00F000F0 (1024 + 16 q, times 1/16), of the word and of the word >> 8."""
    if ASM:
        sums = tl.inline_asm_elementwise(
            "{ .reg .b32 e0, o0, e1, o1, w8, h, s; mov.b32 h, 0x2C002C00; shr.b32 w8, $1, 8; "
            "lop3.b32 e0, $1, 0x000F000F, 0x64006400, 0xEA; "
            "lop3.b32 o0, $1, 0x00F000F0, 0x64006400, 0xEA; "
            "lop3.b32 e1, w8, 0x000F000F, 0x64006400, 0xEA; "
            "lop3.b32 o1, w8, 0x00F000F0, 0x64006400, 0xEA; "
            "add.rn.f16x2 e0, e0, $2; fma.rn.f16x2 o0, o0, h, $3; "
            "add.rn.f16x2 e1, e1, $2; fma.rn.f16x2 o1, o1, h, $3; "
            "mul.rn.f16x2 s, e0, $4; fma.rn.f16x2 s, o0, $5, s; "
            "fma.rn.f16x2 s, e1, $6, s; fma.rn.f16x2 $0, o1, $7, s; }",
            "=r,r,r,r,r,r,r,r", [w, zero_even, zero_odd, x0, x1, x2, x3], dtype=tl.int32,
            is_pure=True, pack=1)
        low, high = _f16_halves(sums, ASM)
    else:  # the same operations, each f16x2 half in fp32 rounded to fp16
        z_lo, z_hi = _scale_pair(zero_even)
        low = _rounded(_f16_diff(w, 0, z_lo) * _half(x0, 0))
        high = _rounded(_f16_diff(w, 4, z_hi) * _half(x0, 1))
        low = _rounded(_f16_diff(w, 1, z_lo) * _half(x1, 0) + low)
        high = _rounded(_f16_diff(w, 5, z_hi) * _half(x1, 1) + high)
        low = _rounded(_f16_diff(w, 2, z_lo) * _half(x2, 0) + low)
        high = _rounded(_f16_diff(w, 6, z_hi) * _half(x2, 1) + high)
        low = _rounded(_f16_diff(w, 3, z_lo) * _half(x3, 0) + low)
        high = _rounded(_f16_diff(w, 7, z_hi) * _half(x3, 1) + high)
    return low, high


@triton.jit
def _f16_diff(w, S: tl.constexpr, zero):
    """q - z of nibble S in fp32 (zero: -(1024 + z) as `_zeros_of`'s even pair holds it)."""
    return ((w >> (4 * S)) & 0xF).to(tl.float32) + zero + 1024.0


@triton.jit
def _half(pair, H: tl.constexpr):
    low, high = _scale_pair(pair)
    return low if H == 0 else high


@triton.jit
def _rounded(value):
    return value.to(tl.float16).to(tl.float32)


@triton.jit(do_not_specialize=["M", "N"])
def _rows_kernel(x_ptr, res_ptr, norm_w_ptr, xi_ptr, ri_ptr, nwi_ptr, w_ptr, meta_ptr, y_ptr,
                 res_out_ptr, M, N, K, G, eps, x_stride, res_stride, y_stride, w_stride,
                 meta_stride, res_out_stride, PROLOGUE: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUPS: tl.constexpr, EVEN_G: tl.constexpr, NORM_BLOCK: tl.constexpr,
                 USE_GDC: tl.constexpr, ASM: tl.constexpr):
    """y[m, n] for row m = program_id(1) of x and BLOCK_N rows of W: x_ptr / res_ptr /
    norm_w_ptr bf16 (the norm pass), xi_ptr / ri_ptr / nwi_ptr the same as int32 pairs
    (row strides even); G groups of 128 k."""
    pid = tl.program_id(0)
    row = tl.program_id(1)
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = tl.minimum(ns, N - 1)
    groups = tl.arange(0, GROUPS)[None, :, None]
    columns = tl.arange(0, GROUPS * 16)[None, :]
    w_base = w_ptr + w_rows[:, None] * w_stride + columns
    m_base = meta_ptr + w_rows[:, None, None] * meta_stride + groups
    pairs = columns // 16 * 64 + columns % 16
    xi_row = xi_ptr + row * (x_stride // 2)
    ri_row = ri_ptr + row * (res_stride // 2)

    w_next, m_next = _step_weights(w_base, m_base, 0, G, columns, groups, EVEN_G)
    pdl.after_previous_kernel(USE_GDC)
    rows = row + tl.arange(0, 1)
    inv_rms = tl.sum(_inv_rms(x_ptr, res_ptr, res_out_ptr, rows, rows[:, None] * x_stride,
                              rows[:, None] * res_stride, res_out_stride, M, K, eps,
                              pid == 0, PROLOGUE, 1, NORM_BLOCK), 0)
    x0, x1, x2, x3 = _step_operands(xi_row, ri_row, nwi_ptr, pairs, 0, G, inv_rms, K,
                                    PROLOGUE, EVEN_G, ASM)
    acc = tl.zeros([BLOCK_N, GROUPS, 16], tl.float32)
    last = (G - 1) // GROUPS * GROUPS
    for g0 in range(0, G, GROUPS):
        w, meta = w_next, m_next
        a0, a1, a2, a3 = x0, x1, x2, x3
        ahead = tl.minimum(g0 + GROUPS, last)  # the last step re-reads itself
        w_next, m_next = _step_weights(w_base, m_base, ahead, G, columns, groups, EVEN_G)
        x0, x1, x2, x3 = _step_operands(xi_row, ri_row, nwi_ptr, pairs, ahead, G, inv_rms,
                                        K, PROLOGUE, EVEN_G, ASM)
        zero_even, zero_odd = _zeros_of(meta)
        low, high = _word_sums(w, zero_even, zero_odd, a0, a1, a2, a3, ASM)
        scale = (meta & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        acc += (low + high) * scale
    y = tl.sum(tl.sum(acc, 2), 1) * HALF2_X
    tl.store(y_ptr + row * y_stride + ns, y.to(y_ptr.dtype.element_ty), mask=ns < N)


@triton.jit
def _group_tile(w_ptr, meta_ptr, w_rows, g, p0, w_stride, meta_stride, PAIRS: tl.constexpr,
                dtype: tl.constexpr):
    """W's [BLOCK_N, 32 PAIRS] tile of group g from k = 32 p0 on, in `dtype` ((q - z) * s in
    fp32, rounded once as the reference), in k order: k = 32 p + 2 j + h is nibble p + 4 h
    of word j, so the words shifted by 4 p + 16 h as [BLOCK_N, p, j, h] are that order."""
    words = tl.load(w_ptr + w_rows[:, None] * w_stride + g * 16 + tl.arange(0, 16)[None, :])
    pairs = p0 + tl.arange(0, PAIRS)
    shifts = 4 * pairs[:, None, None] + 16 * tl.arange(0, 2)[None, None, :]
    q = (words[:, None, :, None] >> shifts[None, :, :, :]) & 0xF
    q = tl.reshape(q, [w_rows.shape[0], 32 * PAIRS])
    meta = tl.load(meta_ptr + w_rows * meta_stride + g)[:, None]
    scale = (meta & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return ((q - ((meta >> 16) & 0xF)).to(tl.float32) * scale).to(dtype)


@triton.jit(do_not_specialize=["M"])
def _rows_dot_kernel(x_ptr, w_ptr, meta_ptr, y_ptr, M, N, K, x_stride, w_stride, meta_stride,
                     y_stride, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """y [M, N] = x [M, K] @ W.T, a [BLOCK_M, BLOCK_N] tile a program (grid: N tiles, M
    tiles), BLOCK_K (32, 64 or 128) inputs of one group a step."""
    PAIRS: tl.constexpr = BLOCK_K // 32
    ns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    w_rows = tl.minimum(ns, N - 1)
    m_ok = ms < M
    x_base = x_ptr + ms[:, None] * x_stride + tl.arange(0, BLOCK_K)[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(x_base + k0, mask=m_ok[:, None], other=0.0)
        w = _group_tile(w_ptr, meta_ptr, w_rows, k0 // 128, k0 % 128 // 32, w_stride,
                        meta_stride, PAIRS, a.dtype)
        acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
    tl.store(y_ptr + ms[:, None] * y_stride + ns[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & (ns < N)[None, :])


@triton.jit
def _rows_dequantize_kernel(w_ptr, meta_ptr, out_ptr, N, w_stride, meta_stride, out_stride,
                            BLOCK_N: tl.constexpr):
    """W [N, K] in out's dtype: group program_id(1) of BLOCK_N rows a program."""
    ns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1)
    w = _group_tile(w_ptr, meta_ptr, tl.minimum(ns, N - 1), g, 0, w_stride, meta_stride, 4,
                    out_ptr.dtype.element_ty)
    ks = g * GROUP_K + tl.arange(0, GROUP_K)
    tl.store(out_ptr + ns[:, None] * out_stride + ks[None, :], w, mask=(ns < N)[:, None])


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def rows_dequantize(words: torch.Tensor, meta: torch.Tensor,
                    dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """W [N, K] in `dtype`, equal to `dequantize_rows(words, meta).to(dtype)`."""
    n, groups = meta.shape
    weight = torch.empty((n, groups * GROUP), dtype=dtype, device=words.device)
    _rows_dequantize_kernel[(triton.cdiv(n, DEQUANT_BLOCK_N), groups)](
        words, meta, weight, n, words.stride(0), meta.stride(0), weight.stride(0),
        BLOCK_N=DEQUANT_BLOCK_N, num_warps=4)
    return weight


def dot_tiles(m: int, n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) of `_rows_dot_kernel` at m rows: 16 x 32-64 x
    128 for decode batches (~128 programs or more, as AWQ's own kernel), else the AWQ
    table's tiles for the shape (BLOCK_K at least 32)."""
    if m <= 16:
        return 16, next((b for b in (64, 32) if triton.cdiv(n, b) >= 128), 16), GROUP, 4
    tiling = large_m_tiling("awq", m, n, k)
    return tiling.block_m, tiling.block_n, max(32, tiling.block_k), tiling.num_warps


def rows_linear(x: torch.Tensor, words: torch.Tensor, meta: torch.Tensor, *,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] for W in the rows layout."""
    n, groups = meta.shape
    k = groups * GROUP
    if x.shape[-1] != k:
        raise ValueError(f"the projection takes {k} inputs, not {x.shape[-1]}")
    rows = x.reshape(-1, k)
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    m = rows.shape[0]
    if m >= AWQ_VIA_BF16_MIN_M:
        y = F.linear(rows, rows_dequantize(words, meta, x.dtype))
        if out is not None:
            out.view(-1, n).copy_(y)
            return out
        return y.view(*x.shape[:-1], n)
    y = out if out is not None else torch.empty(*x.shape[:-1], n, dtype=x.dtype,
                                                device=x.device)
    if m == 0 or n == 0:
        return y
    block_m, block_n, block_k, num_warps = dot_tiles(m, n, k)
    y_rows = y.view(-1, n)
    _rows_dot_kernel[(triton.cdiv(n, block_n), triton.cdiv(m, block_m))](
        rows, words, meta, y_rows, m, n, k, rows.stride(0), words.stride(0),
        meta.stride(0), y_rows.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION=_precision(x.dtype), num_warps=num_warps, num_stages=3)
    return y


def takes_rows_kernel(x: torch.Tensor, m: int) -> bool:
    """Whether `_rows_kernel` runs m rows of x (bf16 pairs, even row strides)."""
    return 1 <= m <= GRID_ROWS_MAX_M and x.dtype == torch.bfloat16 and x.stride(0) % 2 == 0


def launch_small_m(prologue: int, x: torch.Tensor, layer, y: torch.Tensor, *,
                   residual: torch.Tensor | None = None, res_out: torch.Tensor | None = None,
                   norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                   tiling: RowsTiling | None = None, launch_pdl: bool = False) -> None:
    """quant_gemv's products for a projection in the rows layout: x [M, K] ([M, 2K] for
    SILU_MUL) with contiguous rows, y [M, N]; the add + norm prologue writes x + residual
    to res_out."""
    m, (n, groups) = x.shape[0], layer.meta.shape
    k = groups * GROUP
    if not takes_rows_kernel(x, m) or (residual is not None and residual.stride(0) % 2):
        _unfused(prologue, x, layer, y, residual, res_out, norm_weight, eps)
        return
    tiling = tiling or ROWS_TUNED.get((n, k), DEFAULT_TILING)
    if not isinstance(tiling, RowsTiling):
        raise ValueError(f"a projection in the rows layout takes a RowsTiling, not {tiling}")
    residual = residual if residual is not None else x
    norm_weight = norm_weight.contiguous() if norm_weight is not None else x
    res_out = res_out if res_out is not None else y
    _rows_kernel[(triton.cdiv(n, tiling.block_n), m)](
        x, residual, norm_weight, x.view(torch.int32), residual.view(torch.int32),
        norm_weight.view(torch.int32), layer.words, layer.meta, y, res_out, m, n, k, groups,
        eps, x.stride(0), residual.stride(0), y.stride(0), layer.words.stride(0),
        layer.meta.stride(0), res_out.stride(0), PROLOGUE=prologue, BLOCK_N=tiling.block_n,
        GROUPS=tiling.groups, EVEN_G=groups % tiling.groups == 0,
        NORM_BLOCK=min(triton.next_power_of_2(k), 4096), USE_GDC=launch_pdl,
        ASM=x.device.type == "cuda", num_warps=tiling.num_warps, num_stages=1,
        launch_pdl=launch_pdl)


def _unfused(prologue: int, x: torch.Tensor, layer, y: torch.Tensor,
             residual: torch.Tensor | None, res_out: torch.Tensor | None,
             norm_weight: torch.Tensor | None, eps: float) -> None:
    """The prologue by fused_ops' kernels, then `rows_linear` into y."""
    if prologue == SILU_MUL:
        operand = fused_ops.silu_and_mul(x)
    elif prologue == RMS_NORM:
        operand = fused_ops.rms_norm(x, norm_weight, eps)
    elif prologue == ADD_RMS_NORM:
        operand, summed = fused_ops.add_rms_norm(x, residual, norm_weight, eps)
        res_out.copy_(summed)
    elif prologue == PLAIN:
        operand = x
    else:
        raise ValueError(f"unknown prologue {prologue}")
    rows_linear(operand, layer.words, layer.meta, out=y)
