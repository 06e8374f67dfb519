"""y = x @ W.T for a few rows of x (decode batches, M <= 16) with W stored quantized (FP8 or
AWQ), with the fused prologues of `gemv` (plain, RMS norm, add + RMS norm, SiLU·mul).

- `linear_small_m(x, layer)`, `rms_norm_linear(x, norm_weight, eps, layer, residual=None)`,
  `silu_mul_linear(gate_up, layer)`: as the functions of the same names in `gemv`, for a
  quantized projection `layer` (`Fp8Linear` or `AwqLinear`, model/quant/linear.py: read
  through their buffers, so this module imports nothing of the quant package);
- `takes(layer, device)`: whether these kernels run that projection on `device`.

The prologues, the norm pass, PDL and the one-K-step-ahead operand are gemv's own
(`gemv._operand`, `gemv._inv_rms`, `pdl.after_previous_kernel`); only the weight tiles
differ. Every program owns BLOCK_N outputs of every row and streams their weights once,
the next tile loaded into registers while the current one is used; no atomics, so results
are bitwise reproducible; nothing is read on the host in a launch (M is not specialised),
so launches are CUDA-graph safe.

FP8 (W = value * scale_inv[scale_rows[n], k // 128]): tiles [BLOCK_N, BLOCK_K] of e4m3
bytes (16-byte loads). Where each program's BLOCK_N rows share one scale row (`folds`:
BLOCK_N divides 128 and no program straddles a shard or block boundary, checked on the
host from the shard sizes), the scale goes into the operand: a'[k] = a[k] * s[k // 128], so
each weight is only converted (M = 1: fp32 FMAs on a' in fp32; M > 1: the tensor cores on
a' rounded to x's dtype and W converted exactly). Otherwise (the fallback) every weight is
multiplied by its own scale (gathered from L1) and rounded to x's dtype, as the reference
dequantizes.

AWQ (W.T[k, n] = (q - z) * s per group of 128 input rows, eight 4-bit q per int32 along
N): each program owns BLOCK_N / 8 consecutive words of every row of qweight and streams K
in steps of BLOCK_K (whole groups), a step's tile being [groups, 128, words]. Within a
group, sum_k (q - z) * s * a = s * (sum_k q * a - z * sum_k a), so a weight costs one
unpack (shift, mask), one int -> float convert and one FMA per row of x; the group's zero
and scale are applied to the [groups, BLOCK_N] partial sums. Rows of x are summed one by
one with FMAs (no tensor cores), which suits the decode cutoffs (M <= 2). A second AWQ
kernel, `unpack="planes"` in the tiling (opt-in until measured; benchmarks/KERNEL_NOTES.md),
loads the step's words as [groups, 128 / LANES, LANES, words] with 16-byte vectors and takes
the eight nibble positions one at a time in place (no interleave, no int -> float convert),
keeping each lane's sums over K in registers until the end of the K loop. A third,
`unpack="split"` (awq_split.py), runs the same plane step with K split across programs
(grid N tiles x K splits, for products whose N alone gives fewer programs than SMs) and
adds the splits' fp32 partial sums up in a second launch, in a fixed order. A fourth,
`unpack="lop3"` (awq_lop3.py; the default for every AWQ product at M = 1 and 2 since
runs 51-52), splits K the same way with one group
a step, loads the step's scales, zeros and operand one step ahead with its words, and takes
nibbles in pairs (one lop3 and one bf16x2 subtract of the zero each, inline asm on the GPU),
applying the group's scale to the fp32 sums of (q - z) * a.

An AWQ projection repacked into the rows layout at start-up (`AwqLinear.to_rows`, for the
shapes `awq_rows.ROWS_TUNED` names) runs awq_rows.py's kernels instead: a program owns a
few output rows of one row of x and streams their K, as the bf16 products do (no K split,
no partials); tilings there are `awq_rows.RowsTiling`.

FP8 has a second kernel too, `unpack="words"` (fp8_words.py; the default at M = 1 and 2
since run 51): the
weights read as int32 words of four e4m3 each, two words of each of the BLOCK_N rows a
thread, 32 x num_warps threads along K a step, converted by two `cvt.rn.f16x2.e4m3x2` a
word (inline asm on the GPU), the products kept per thread in the words' layout and summed
across threads once after the K loop (the first kernel sums across threads every step).
It takes projections whose programs each read one scale row (`folds`) with x in bf16 (its
operand is read as int64 quads of bf16); others run on the first kernel's guessed tiling.

Accuracy against the dequantizing reference (`QuantLinear.dequantize` + F.linear on the
prologue's result): the output's own rounding for x in bf16 (relative 2-norm error under
2e-2, kernel_modes.TOLERANCE) and 1e-5 in fp32; FP8 with the scale folded rounds a * s
instead of q * s to bf16 (M > 1), the same size of error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import awq_lop3, awq_mma, awq_rows, awq_split, fp8_words, pdl
from jupyter_qwen.model.kernels.awq_split import _awq_plane
from jupyter_qwen.model.kernels.gemv import (
    ADD_RMS_NORM,
    MAX_M,
    PLAIN,
    RMS_NORM,
    SILU_MUL,
    _inv_rms,
    _load_w,
    _operand,
    _output,
    _rows,
    m_bucket,
)

FP8_BLOCK = 128
AWQ_GROUP = 128


@dataclass(frozen=True)
class DecodeTiling:
    """BLOCK_N outputs per program (AWQ: a multiple of 8, one word per 8), BLOCK_K inputs per
    step (FP8: any power of two >= 16; AWQ: a multiple of 128); `dot` (FP8, M = 1): tensor
    cores rather than FMAs (M > 1 always takes them for FP8; AWQ never does); `unpack` (FP8):
    "interleave" (the default) is the [BLOCK_N, BLOCK_K] kernel, "words" the int32-word one
    (fp8_words.py; BLOCK_K = 256 x num_warps, BLOCK_N a power of two <= 128); (AWQ):
    "interleave" widens words into a [K, BLOCK_N] tile, "planes" takes the eight nibble
    positions one at a time (BLOCK_N a power of two), "split" is planes with K split over
    about `split_k` programs per N tile and a second launch adding the splits up
    (awq_split.py; BLOCK_N a power of two >= 32), "lop3" splits K the same way with one
    group a step and nibble pairs unpacked by one lop3 each (awq_lop3.py; BLOCK_K 128,
    32 threads along K: n32 w1, n64 w2, n128 w4, n256 w8); "lop3_one" is lop3 with the last
    split of each N tile adding the partials up (one launch); "half2" and "half2_one" are
    lop3 and lop3_one with each thread's four rows of a group summed, scaled and added up
    in f16x2 FMAs (14 instructions a word rather than 27; awq_lop3.py); "mma" splits K likewise and
    multiplies on the tensor cores, the tile unpacked to bf16 q - z (awq_mma.py; BLOCK_K
    128, BLOCK_N a power of two >= 32, the last split summing as lop3_one does)."""

    block_n: int
    block_k: int
    num_warps: int = 4
    dot: bool = False
    unpack: str = "interleave"  # AWQ: "interleave", "planes", "split", "mma" and
    # awq_lop3.KINDS ("lop3", "lop3_one", "half2", "half2_one"); FP8: "interleave", "words"
    split_k: int = 1  # AWQ "split", awq_lop3.KINDS, "mma": K splits per N tile (fewer where K
    # has fewer steps)
    max_registers: int = 0  # AWQ awq_lop3.KINDS, "mma": ptxas's cap a thread (0: its own)

    def __post_init__(self) -> None:
        if self.max_registers and (self.unpack not in (*awq_lop3.KINDS, "mma")
                                   or not 32 <= self.max_registers <= 255):
            raise ValueError(f"max_registers is 0 or 32-255, for the AWQ "
                             f"{', '.join(awq_lop3.KINDS)} and mma kernels only, not {self}")

    def name(self) -> str:
        if self.unpack in ("split", *awq_lop3.KINDS, "mma"):
            cap = f" r{self.max_registers}" if self.max_registers else ""
            return (f"{self.unpack} n{self.block_n} k{self.block_k} s{self.split_k} "
                    f"w{self.num_warps}{cap}")
        if self.unpack == "words":
            return f"words n{self.block_n} k{self.block_k} w{self.num_warps}"
        kind = "planes" if self.unpack == "planes" else ("dot" if self.dot else "fma")
        return f"{kind} n{self.block_n} k{self.block_k} w{self.num_warps}"


# Default tilings, key (format, M bucket, N, K); the lead updates them from
# benchmarks/quant_decode.py. Shapes not listed take `guess_tiling`.
# benchmarks/quant_decode.py, fastest per product: FP8 on an H200 (2026-12-06, run 51, with
# the FP8 words kernel among the candidates), AWQ on an H100 (2026-12-06, run 55, with the
# lop3 and mma kernels; Qwen3-4B at M = 1 from run 77, 2026-12-07, the half2 kinds with
# f16x2 group sums and register caps among the candidates; `quant_decode.py --apply` writes
# these lines)
TUNED: dict[tuple[str, int, int, int], DecodeTiling] = {
    ('fp8', 1, 4096, 1024): DecodeTiling(16, 1024, 4, dot=False, unpack='words'),
    ('fp8', 1, 1024, 2048): DecodeTiling(8, 2048, 8, dot=False, unpack='words'),
    ('fp8', 1, 6144, 1024): DecodeTiling(16, 1024, 4, dot=False, unpack='words'),
    ('fp8', 1, 1024, 3072): DecodeTiling(8, 2048, 8, dot=False, unpack='words'),
    ('awq', 1, 4096, 1024): DecodeTiling(64, 128, 4, dot=False, unpack='mma', split_k=8),
    ('awq', 1, 1024, 2048): DecodeTiling(64, 128, 4, dot=False, unpack='mma', split_k=16),
    ('awq', 1, 6144, 1024): DecodeTiling(128, 128, 4, dot=False, unpack='mma', split_k=8),
    ('awq', 1, 1024, 3072): DecodeTiling(64, 128, 4, dot=False, unpack='mma', split_k=24),
    ('fp8', 2, 4096, 1024): DecodeTiling(16, 512, 2, dot=False, unpack='words'),
    ('fp8', 2, 1024, 2048): DecodeTiling(8, 1024, 4, dot=False, unpack='words'),
    ('fp8', 2, 6144, 1024): DecodeTiling(16, 512, 2, dot=False, unpack='words'),
    ('fp8', 2, 1024, 3072): DecodeTiling(8, 1024, 4, dot=False, unpack='words'),
    ('awq', 2, 4096, 1024): DecodeTiling(128, 128, 4, dot=False, unpack='mma', split_k=8),
    ('awq', 2, 1024, 2048): DecodeTiling(64, 128, 4, dot=False, unpack='mma', split_k=16),
    ('awq', 2, 6144, 1024): DecodeTiling(128, 128, 4, dot=False, unpack='lop3_one', split_k=6),
    ('awq', 2, 1024, 3072): DecodeTiling(64, 128, 4, dot=False, unpack='mma', split_k=24),
    ('fp8', 1, 6144, 2560): DecodeTiling(16, 1024, 4, dot=False, unpack='words'),
    ('fp8', 1, 2560, 4096): DecodeTiling(8, 2048, 8, dot=False, unpack='words'),
    ('fp8', 1, 19456, 2560): DecodeTiling(16, 512, 2, dot=False, unpack='words'),
    ('fp8', 1, 2560, 9728): DecodeTiling(8, 2048, 8, dot=False, unpack='words'),
    ('fp8', 2, 6144, 2560): DecodeTiling(8, 512, 2, dot=False, unpack='words'),
    ('fp8', 2, 2560, 4096): DecodeTiling(8, 1024, 4, dot=False, unpack='words'),
    ('fp8', 2, 19456, 2560): DecodeTiling(16, 512, 2, dot=False, unpack='words'),
    ('fp8', 2, 2560, 9728): DecodeTiling(8, 1024, 4, dot=False, unpack='words'),
    ('awq', 2, 6144, 2560): DecodeTiling(128, 128, 4, dot=False, unpack='lop3_one', split_k=6),
    ('awq', 2, 2560, 4096): DecodeTiling(64, 128, 4, dot=False, unpack='mma', split_k=13),
    ('awq', 2, 19456, 2560): DecodeTiling(128, 128, 4, dot=False, unpack='lop3', split_k=2),
    ('awq', 2, 2560, 9728): DecodeTiling(128, 128, 4, dot=False, unpack='lop3_one', split_k=13),
    ('awq', 1, 6144, 2560): DecodeTiling(128, 128, 4, dot=False, unpack='half2_one', split_k=6,
                                         max_registers=128),
    ('awq', 1, 2560, 4096): DecodeTiling(128, 128, 4, dot=False, unpack='half2_one', split_k=13,
                                         max_registers=128),
    ('awq', 1, 19456, 2560): DecodeTiling(128, 128, 4, dot=False, unpack='half2_one', split_k=3,
                                          max_registers=128),
    ('awq', 1, 2560, 9728): DecodeTiling(128, 128, 4, dot=False, unpack='half2_one', split_k=26,
                                         max_registers=128),
}


def guess_tiling(fmt: str, m: int, n: int, k: int) -> DecodeTiling:
    """~128 programs or more (an H100 has 132 SMs), each with about 8 KB of weights per
    tile (two tiles in flight), and no register spills in the sm_90 build (FP8 M = 1 at
    16 x 1024 takes 200 registers; AWQ M = 2 at 32 x 512 spills)."""
    if fmt == "fp8":
        if m > 1:
            return DecodeTiling(16, min(512, max(16, triton.next_power_of_2(k))))
        block_n = 8 if triton.cdiv(n, 8) >= 128 else 4
        return DecodeTiling(block_n, min(1024, max(16, triton.next_power_of_2(k))))
    block_n = next((b for b in (32, 16) if triton.cdiv(n, b) >= 128), 8)
    return DecodeTiling(block_n, 512 if m == 1 and k > 256 else 256)


def default_tiling(fmt: str, m: int, n: int, k: int) -> DecodeTiling:
    return TUNED.get((fmt, m_bucket(m), n, k)) or guess_tiling(fmt, m, n, k)


def format_of(layer) -> str:
    """"fp8", "awq" or "awq_rows" (AWQ repacked into the rows layout, awq_rows.py), from
    the projection's buffers."""
    if hasattr(layer, "weight_scale_inv"):
        return "fp8"
    if hasattr(layer, "qweight"):
        return "awq"
    if hasattr(layer, "words"):
        return "awq_rows"
    raise TypeError(f"{type(layer).__name__} is not a quantized projection")


def takes(layer, device: torch.device) -> bool:
    """Whether these kernels run `layer` on `device`: AWQ anywhere; FP8 where Triton has
    e4m3 (compute capability 8.9 and later, or the CPU interpreter)."""
    if format_of(layer) != "fp8":
        return layer.group_size == AWQ_GROUP
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


@lru_cache(maxsize=256)
def folds(shard_sizes: tuple[int, ...], block_n: int) -> bool:
    """Whether every program's BLOCK_N rows (up to the last row) read one scale row of a
    projection packed from `shard_sizes` (model/quant/fp8.py `scale_rows_of`)."""
    if FP8_BLOCK % block_n:
        return False
    first = 0
    for size in shard_sizes:  # scale rows change at shard starts and every 128 rows after
        if first % block_n:
            return False
        first += size
    return True


@triton.jit(do_not_specialize=["M"])
def _fp8_kernel(x_ptr, res_ptr, norm_w_ptr, w_ptr, s_ptr, srow_ptr, y_ptr, res_out_ptr,
                M, N, K, eps, x_stride, res_stride, w_stride, s_stride, y_stride,
                res_out_stride, PROLOGUE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
                EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, FOLD: tl.constexpr,
                PRECISION: tl.constexpr, NORM_BLOCK: tl.constexpr, USE_GDC: tl.constexpr):
    pid = tl.program_id(0)
    dtype = x_ptr.dtype.element_ty
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = ns if EVEN_N else tl.minimum(ns, N - 1)
    w_base = w_ptr + w_rows[:, None] * w_stride
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_at = rows[:, None] * x_stride
    res_at = rows[:, None] * res_stride

    w_next = _load_w(w_base, tl.arange(0, BLOCK_K), K, EVEN_K)
    if FOLD:  # one scale row for the whole program
        s_base = s_ptr + tl.load(srow_ptr + pid * BLOCK_N) * s_stride
    else:
        s_base = s_ptr + tl.load(srow_ptr + w_rows)[:, None] * s_stride
    pdl.after_previous_kernel(USE_GDC)
    inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, x_at, res_at, res_out_stride, M, K,
                       eps, pid == 0, PROLOGUE, BLOCK_M, NORM_BLOCK)

    ks = tl.arange(0, BLOCK_K)
    a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ks[None, :],
                      row_ok[:, None] & (ks < K)[None, :], inv_rms[:, None], K, PROLOGUE)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = a_next
        ks = k0 + tl.arange(0, BLOCK_K)
        ahead = ks + BLOCK_K
        a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ahead[None, :],
                          row_ok[:, None] & (ahead < K)[None, :], inv_rms[:, None], K,
                          PROLOGUE)
        w = w_next
        w_next = _load_w(w_base, ahead, K, False)
        k_ok = ks < K
        if FOLD:
            scale = tl.load(s_base + ks // 128, mask=k_ok, other=0.0)
            a32 = a.to(tl.float32) * scale[None, :]
            if USE_DOT:
                acc = tl.dot(w.to(dtype), tl.trans(a32.to(dtype)), acc,
                             input_precision=PRECISION)
            else:  # BLOCK_M == 1
                acc += tl.sum(w.to(tl.float32) * a32, 1)[:, None]
        else:
            scale = tl.load(s_base + (ks // 128)[None, :], mask=k_ok[None, :], other=0.0)
            wd = (w.to(tl.float32) * scale).to(dtype)
            if USE_DOT:
                acc = tl.dot(wd, tl.trans(a), acc, input_precision=PRECISION)
            else:
                acc += tl.sum(wd.to(tl.float32) * a.to(tl.float32), 1)[:, None]

    out_mask = (ns < N)[:, None] & row_ok[None, :]
    tl.store(y_ptr + rows[None, :] * y_stride + ns[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=out_mask)


@triton.jit
def _widen_words(packed, shifts):
    """[..., W] int32 words -> [..., 8 W] 4-bit values, column 8 w + j of word w taken from
    the nibble `shifts` names for j (AWQ's order)."""
    wide = tl.interleave(packed, packed)
    wide = tl.interleave(wide, wide)
    wide = tl.interleave(wide, wide)
    return (wide >> shifts) & 0xF


@triton.jit
def _load_words(q_base, ks, stride, K, EVEN_K: tl.constexpr):
    """The [groups, 128, words] tile of qweight for input rows ks ([groups, 128])."""
    if EVEN_K:
        return tl.load(q_base + ks[:, :, None] * stride)
    return tl.load(q_base + ks[:, :, None] * stride, mask=(ks < K)[:, :, None], other=0)


@triton.jit(do_not_specialize=["M"])
def _awq_kernel(x_ptr, res_ptr, norm_w_ptr, qw_ptr, qz_ptr, sc_ptr, y_ptr, res_out_ptr,
                M, N, K, eps, x_stride, res_stride, qw_stride, qz_stride, sc_stride, y_stride,
                res_out_stride, PROLOGUE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, EVEN_K: tl.constexpr,
                NORM_BLOCK: tl.constexpr, USE_GDC: tl.constexpr):
    GROUP: tl.constexpr = 128
    WORDS: tl.constexpr = BLOCK_N // 8
    BLOCK_K: tl.constexpr = GROUPS * GROUP
    pid = tl.program_id(0)
    words = tl.minimum(pid * WORDS + tl.arange(0, WORDS), N // 8 - 1)  # the tail re-reads
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    columns = tl.minimum(ns, N - 1)
    j = ns % 8
    shifts = ((j // 2) + (j % 2) * 4) * 4  # AWQ's nibble of column j of eight
    step_ks = tl.arange(0, GROUPS)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    q_base = qw_ptr + words[None, None, :]
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_at = rows[:, None] * x_stride
    res_at = rows[:, None] * res_stride
    x_at3 = rows[:, None, None] * x_stride
    res_at3 = rows[:, None, None] * res_stride
    groups = tl.cdiv(K, GROUP)

    q_next = _load_words(q_base, step_ks, qw_stride, K, EVEN_K)
    pdl.after_previous_kernel(USE_GDC)
    inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, x_at, res_at, res_out_stride, M, K,
                       eps, pid == 0, PROLOGUE, BLOCK_M, NORM_BLOCK)
    inv_rms3 = inv_rms[:, None, None]
    ks = step_ks[None, :, :]
    a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at3, res_at3, ks,
                      row_ok[:, None, None] & (ks < K), inv_rms3, K, PROLOGUE)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = a_next.to(tl.float32)  # [BLOCK_M, GROUPS, 128]
        ahead = k0 + BLOCK_K + step_ks
        a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at3, res_at3, ahead[None, :, :],
                          row_ok[:, None, None] & (ahead < K)[None, :, :], inv_rms3, K,
                          PROLOGUE)
        packed = q_next
        q_next = _load_words(q_base, ahead, qw_stride, K, False)
        q = _widen_words(packed, shifts[None, None, :]).to(tl.float32)  # [GROUPS, 128, BN]
        gs = k0 // GROUP + tl.arange(0, GROUPS)
        g_ok = (gs < groups)[:, None]
        zw = tl.load(qz_ptr + gs[:, None] * qz_stride + words[None, :], mask=g_ok, other=0)
        zeros = _widen_words(zw, shifts[None, :]).to(tl.float32)  # [GROUPS, BN]
        scales = tl.load(sc_ptr + gs[:, None] * sc_stride + columns[None, :], mask=g_ok,
                         other=0.0).to(tl.float32)
        for m in tl.static_range(BLOCK_M):
            a_m = tl.sum(tl.where((rows == m)[:, None, None], a, 0.0), 0)  # [GROUPS, 128]
            qa = tl.sum(q * a_m[:, :, None], 1)  # [GROUPS, BN]
            a_sum = tl.sum(a_m, 1)[:, None]
            part = tl.sum(scales * (qa - zeros * a_sum), 0)
            acc += tl.where((rows == m)[:, None], part[None, :], 0.0)

    out_mask = row_ok[:, None] & (ns < N)[None, :]
    tl.store(y_ptr + rows[:, None] * y_stride + ns[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=out_mask)


@triton.jit
def _store_plane(y_ptr, acc, rows, words, store_ok, y_stride, J: tl.constexpr):
    """Column 8 w + J of each word's outputs, the lanes' partial sums added up."""
    tl.store(y_ptr + rows[:, None] * y_stride + (words * 8 + J)[None, :],
             tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=store_ok)


@triton.jit(do_not_specialize=["M"])
def _awq_planes_kernel(x_ptr, res_ptr, norm_w_ptr, qw_ptr, qz_ptr, sc_ptr, y_ptr, res_out_ptr,
                       M, N, K, eps, x_stride, res_stride, qw_stride, qz_stride, sc_stride,
                       y_stride, res_out_stride, PROLOGUE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
                       LANES: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
                       NORM_BLOCK: tl.constexpr, USE_GDC: tl.constexpr):
    """AWQ by nibble planes: the step's words are loaded once as [GROUPS, REPEAT, LANES,
    WORDS] (input row k = 128 g + LANES r + l; words contiguous, 16-byte loads) and each of
    the eight nibble positions is taken from them in place; the sums over k stay in each
    lane's registers across the whole K loop (axis 1 is the rows a thread holds when the
    compiler puts LANES threads along k), and lanes are added up once, at the end."""
    GROUP: tl.constexpr = 128
    WORDS: tl.constexpr = BLOCK_N // 8
    REPEAT: tl.constexpr = GROUP // LANES
    BLOCK_K: tl.constexpr = GROUPS * GROUP
    pid = tl.program_id(0)
    word_count = N // 8
    owned = pid * WORDS + tl.arange(0, WORDS)
    if EVEN_N:
        at = owned
        words = owned
    else:  # the last program steps back to stay contiguous; it stores only its own words
        at = tl.maximum(tl.minimum(pid * WORDS, word_count - WORDS), 0) + tl.arange(0, WORDS)
        words = tl.minimum(at, word_count - 1)
    store_ok_words = (at >= pid * WORDS) & (at < word_count)
    step_ks = (tl.arange(0, GROUPS)[:, None, None] * GROUP
               + tl.arange(0, REPEAT)[None, :, None] * LANES
               + tl.arange(0, LANES)[None, None, :])  # [GROUPS, REPEAT, LANES]
    q_base = qw_ptr + words[None, None, None, :]
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_at = rows[:, None] * x_stride
    res_at = rows[:, None] * res_stride
    x_at4 = rows[:, None, None, None] * x_stride
    res_at4 = rows[:, None, None, None] * res_stride
    groups = tl.cdiv(K, GROUP)

    q_next = _load_plane_words(q_base, step_ks, qw_stride, K, EVEN_K)
    pdl.after_previous_kernel(USE_GDC)
    inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, x_at, res_at, res_out_stride, M, K,
                       eps, pid == 0, PROLOGUE, BLOCK_M, NORM_BLOCK)
    inv_rms4 = inv_rms[:, None, None, None]
    row_ok4 = row_ok[:, None, None, None]
    ks = step_ks[None, :, :, :]
    a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at4, res_at4, ks, row_ok4 & (ks < K),
                      inv_rms4, K, PROLOGUE)
    acc0 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc1 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc2 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc3 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc4 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc5 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc6 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc7 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = a_next.to(tl.float32)  # [BLOCK_M, GROUPS, REPEAT, LANES]
        ahead = k0 + BLOCK_K + step_ks
        a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at4, res_at4, ahead[None, :, :, :],
                          row_ok4 & (ahead < K)[None, :, :, :], inv_rms4, K, PROLOGUE)
        a_sums = tl.sum(a, 2)  # [BLOCK_M, GROUPS, LANES], shared by the eight planes
        packed = q_next
        q_next = _load_plane_words(q_base, ahead, qw_stride, K, False)
        gs = k0 // GROUP + tl.arange(0, GROUPS)
        g_ok = (gs < groups)[:, None]
        zw = tl.load(qz_ptr + gs[:, None] * qz_stride + words[None, :], mask=g_ok, other=0)
        sc_row = sc_ptr + gs[:, None] * sc_stride + words[None, :] * 8  # [GROUPS, WORDS]
        acc0 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 0, BLOCK_M)
        acc1 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 1, BLOCK_M)
        acc2 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 2, BLOCK_M)
        acc3 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 3, BLOCK_M)
        acc4 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 4, BLOCK_M)
        acc5 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 5, BLOCK_M)
        acc6 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 6, BLOCK_M)
        acc7 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 7, BLOCK_M)

    store_ok = row_ok[:, None] & store_ok_words[None, :]
    _store_plane(y_ptr, acc0, rows, words, store_ok, y_stride, 0)
    _store_plane(y_ptr, acc1, rows, words, store_ok, y_stride, 1)
    _store_plane(y_ptr, acc2, rows, words, store_ok, y_stride, 2)
    _store_plane(y_ptr, acc3, rows, words, store_ok, y_stride, 3)
    _store_plane(y_ptr, acc4, rows, words, store_ok, y_stride, 4)
    _store_plane(y_ptr, acc5, rows, words, store_ok, y_stride, 5)
    _store_plane(y_ptr, acc6, rows, words, store_ok, y_stride, 6)
    _store_plane(y_ptr, acc7, rows, words, store_ok, y_stride, 7)


@triton.jit
def _load_plane_words(q_base, ks, stride, K, EVEN_K: tl.constexpr):
    """The [GROUPS, REPEAT, LANES, WORDS] tile of qweight for input rows ks."""
    if EVEN_K:
        return tl.load(q_base + ks[:, :, :, None] * stride)
    return tl.load(q_base + ks[:, :, :, None] * stride, mask=(ks < K)[:, :, :, None],
                   other=0)


def _norm_block(k: int, block_k: int, block_m: int, num_warps: int) -> int:
    return min(triton.next_power_of_2(k), max(block_k, 2048 * num_warps // block_m))


def _launch(prologue: int, x: torch.Tensor, layer, k: int, y: torch.Tensor,
            residual: torch.Tensor | None = None, res_out: torch.Tensor | None = None,
            norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            tiling: DecodeTiling | None = None, launch_pdl: bool = False) -> None:
    """x: [M, K] ([M, 2K] for SILU_MUL) with contiguous rows; y: [M, N]; `tiling` an
    `awq_rows.RowsTiling` for a projection in the rows layout."""
    fmt = format_of(layer)
    m, n = x.shape[0], layer.out_features
    if layer.in_features != k:
        raise ValueError(f"the projection takes {layer.in_features} inputs, not {k}")
    if m > MAX_M:
        raise ValueError(f"{m} rows: the small-M kernels take at most {MAX_M} (see use_small_m)")
    if m == 0 or n == 0:
        return
    if fmt == "awq_rows":
        awq_rows.launch_small_m(prologue, x, layer, y, residual=residual, res_out=res_out,
                                norm_weight=norm_weight, eps=eps, tiling=tiling,
                                launch_pdl=launch_pdl)
        return
    tiling = tiling or default_tiling(fmt, m, n, k)
    block_m = triton.next_power_of_2(m)
    residual = residual if residual is not None else x
    args = dict(x_ptr=x, res_ptr=residual,
                norm_w_ptr=norm_weight.contiguous() if norm_weight is not None else x,
                y_ptr=y, res_out_ptr=res_out if res_out is not None else y, M=m, N=n, K=k,
                eps=eps, x_stride=x.stride(0), res_stride=residual.stride(0),
                y_stride=y.stride(0),
                res_out_stride=res_out.stride(0) if res_out is not None else 0,
                PROLOGUE=prologue, BLOCK_M=block_m, USE_GDC=launch_pdl,
                num_warps=tiling.num_warps, num_stages=1, launch_pdl=launch_pdl)
    grid = (triton.cdiv(n, tiling.block_n),)
    if fmt == "fp8":
        _launch_fp8(grid, args, layer, tiling, x.dtype, m, k)
    else:
        _launch_awq(grid, args, layer, tiling, m, k)


def _launch_fp8(grid, args: dict, layer, tiling: DecodeTiling, dtype: torch.dtype, m: int,
                k: int) -> None:
    if tiling.unpack not in ("interleave", "words"):
        raise ValueError(f"FP8 unpack is 'interleave' or 'words', not {tiling.unpack!r}")
    if tiling.unpack == "words":
        fp8_words.check_tiling(tiling)
        quads = fp8_words.operand_quads(args)
        if (quads is not None and k % 4 == 0 and layer.weight.stride(0) % 4 == 0
                and folds(tuple(layer.shard_sizes), tiling.block_n)):
            fp8_words.launch(args, layer, tiling, k, _norm_block(
                k, tiling.block_k, args["BLOCK_M"], tiling.num_warps), quads)
            return
        tiling = guess_tiling("fp8", m, layer.out_features, k)
        grid = (triton.cdiv(layer.out_features, tiling.block_n),)
        args = {**args, "num_warps": tiling.num_warps}
    weight = layer.weight
    use_dot = tiling.dot or m > 1
    block_k = min(tiling.block_k, max(16, triton.next_power_of_2(k)))
    if use_dot and dtype == torch.float32:  # an fp32 ('ieee') dot is FMAs: keep it small
        block_k = min(block_k, 64)
    n = layer.out_features
    _fp8_kernel[grid](
        w_ptr=weight, s_ptr=layer.weight_scale_inv, srow_ptr=layer.scale_rows,
        w_stride=weight.stride(0), s_stride=layer.weight_scale_inv.stride(0),
        BLOCK_N=tiling.block_n, BLOCK_K=block_k, USE_DOT=use_dot,
        EVEN_N=n % tiling.block_n == 0, EVEN_K=k % block_k == 0,
        FOLD=folds(tuple(layer.shard_sizes), tiling.block_n),
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
        NORM_BLOCK=_norm_block(k, block_k, args["BLOCK_M"] if use_dot else 1,
                               tiling.num_warps),
        **args)


def planes_lanes(words: int, num_warps: int) -> int:
    """The threads Triton's default layout puts along K for a [.., WORDS] int32 tile whose
    words are contiguous: 16-byte vectors (4 words a thread), the warp's other threads and
    every warp along K (for WORDS <= 128); at most a group's 128 rows."""
    across_words = min(32, max(1, words // 4))
    return min(AWQ_GROUP, 32 // across_words * num_warps)


def _launch_awq(grid, args: dict, layer, tiling: DecodeTiling, m: int, k: int) -> None:
    if tiling.block_n % 8 or tiling.block_k % AWQ_GROUP:
        raise ValueError(f"AWQ tiles need block_n a multiple of 8 and block_k of "
                         f"{AWQ_GROUP}, not {tiling}")
    groups = min(tiling.block_k, triton.next_power_of_2(k)) // AWQ_GROUP
    groups = triton.next_power_of_2(max(1, groups))
    if tiling.unpack == "planes":
        _launch_awq_planes(grid, args, layer, tiling, groups, k)
        return
    if tiling.unpack == "split":
        awq_split.launch(args, layer, tiling, m, k, groups, _norm_block(
            k, groups * AWQ_GROUP, args["BLOCK_M"], tiling.num_warps))
        return
    if tiling.unpack in awq_lop3.KINDS:
        awq_lop3.launch(args, layer, tiling, m, k, _norm_block(
            k, AWQ_GROUP, args["BLOCK_M"], tiling.num_warps))
        return
    if tiling.unpack == "mma":
        awq_mma.launch(args, layer, tiling, m, k, _norm_block(
            k, AWQ_GROUP, awq_mma.prologue_rows(m), tiling.num_warps))
        return
    if tiling.unpack != "interleave":
        raise ValueError(f"AWQ unpack is 'interleave', 'planes', 'split', 'mma' or one of "
                         f"{awq_lop3.KINDS}, not {tiling.unpack!r}")
    _awq_kernel[grid](
        qw_ptr=layer.qweight, qz_ptr=layer.qzeros, sc_ptr=layer.scales,
        qw_stride=layer.qweight.stride(0), qz_stride=layer.qzeros.stride(0),
        sc_stride=layer.scales.stride(0), BLOCK_N=tiling.block_n, GROUPS=groups,
        EVEN_K=k % (groups * AWQ_GROUP) == 0,
        NORM_BLOCK=_norm_block(k, groups * AWQ_GROUP, args["BLOCK_M"], tiling.num_warps),
        **args)


def _launch_awq_planes(grid, args: dict, layer, tiling: DecodeTiling, groups: int,
                       k: int) -> None:
    words = tiling.block_n // 8
    if words & (words - 1):
        raise ValueError(f"AWQ planes need block_n a power of two (8 to 512), not {tiling}")
    _awq_planes_kernel[grid](
        qw_ptr=layer.qweight, qz_ptr=layer.qzeros, sc_ptr=layer.scales,
        qw_stride=layer.qweight.stride(0), qz_stride=layer.qzeros.stride(0),
        sc_stride=layer.scales.stride(0), BLOCK_N=tiling.block_n, GROUPS=groups,
        LANES=planes_lanes(words, tiling.num_warps),
        EVEN_N=layer.out_features % tiling.block_n == 0,
        EVEN_K=k % (groups * AWQ_GROUP) == 0,
        NORM_BLOCK=_norm_block(k, groups * AWQ_GROUP, args["BLOCK_M"], tiling.num_warps),
        **args)


def linear_small_m(x: torch.Tensor, layer, *, out: torch.Tensor | None = None,
                   tiling: DecodeTiling | None = None, launch_pdl: bool = False) -> torch.Tensor:
    """x [..., K] @ W.T for a quantized W and x with at most 16 rows; out: [..., N]."""
    k, n = x.shape[-1], layer.out_features
    y = _output(out, (*x.shape[:-1], n), x)
    _launch(PLAIN, _rows(x, k), layer, k, y.view(-1, n), tiling=tiling, launch_pdl=launch_pdl)
    return y


def rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, layer,
                    residual: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
                    residual_out: torch.Tensor | None = None,
                    tiling: DecodeTiling | None = None,
                    launch_pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * norm_weight @ W.T, x + residual); without a residual,
    (rms_norm(x) * norm_weight @ W.T, x). As `gemv.rms_norm_linear`."""
    k, n = x.shape[-1], layer.out_features
    rows = _rows(x, k)
    y = _output(out, (*x.shape[:-1], n), x)
    if residual is None:
        _launch(RMS_NORM, rows, layer, k, y.view(-1, n), norm_weight=norm_weight, eps=eps,
                tiling=tiling, launch_pdl=launch_pdl)
        return y, x
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    summed = _output(residual_out, tuple(x.shape), x)
    _launch(ADD_RMS_NORM, rows, layer, k, y.view(-1, n), residual=_rows(residual, k),
            res_out=summed.view(-1, k), norm_weight=norm_weight, eps=eps, tiling=tiling,
            launch_pdl=launch_pdl)
    return y, summed


def silu_mul_linear(gate_up: torch.Tensor, layer, *, out: torch.Tensor | None = None,
                    tiling: DecodeTiling | None = None, launch_pdl: bool = False) -> torch.Tensor:
    """(silu(gate) * up) @ W.T for gate_up = [gate | up] of shape [..., 2K]."""
    k, n = gate_up.shape[-1] // 2, layer.out_features
    y = _output(out, (*gate_up.shape[:-1], n), gate_up)
    _launch(SILU_MUL, _rows(gate_up, 2 * k), layer, k, y.view(-1, n), tiling=tiling,
            launch_pdl=launch_pdl)
    return y
