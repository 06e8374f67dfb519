"""The AWQ small-M product on the tensor cores (`DecodeTiling(..., unpack="mma")`, launched
by quant_gemv): K split over programs as the lop3 kernel does (quant_tiles.py's `chunk_of`, the
lop3 kernel's fixed-order sums of the splits' fp32 partials), one group (128 input rows) a
step.

Per step a program unpacks its [128 k, BLOCK_N] tile of W.T to (q - z) in bf16, multiplies
x's [16, 128] step tile (rows past M are zeros) by it with one `tl.dot` (fp32 sums), and
adds the product times the group's scales (fp32, one per column) to its accumulator:
y = sum over groups of s * (x @ (q - z)), the reference's arithmetic up to where the scale
is applied (the reference rounds (q - z) * s to x's dtype; here the scale multiplies the
fp32 sums).

Why the tensor cores: the FMA kernels (lop3, split) spend one FMA per weight and row of x
plus the unpacking, 40-47 instructions a 4-bit word (KERNEL_NOTES "AWQ decode by lop3
pairs"). Here a word costs the unpacking: nibbles K and K + 4 are AWQ's columns 2 K and
2 K + 1, so one shift and one `lop3` put both into a bf16x2 pair (128 + q, 128 + q') in
column order, and one bf16x2 FMA adds the group's (-(128 + z), -(128 + z')): 11
instructions a word; the pairs are the tile's bf16 values as they lie in memory, so the
tile reaches the dot's operand layout through shared memory with 16-byte stores.

`ASM` picks the unpacking: on the GPU one `tl.inline_asm_elementwise` (sm_80+: shr, lop3,
fma.rn.bf16x2), for CPU tensors (Triton's interpreter cannot run PTX) the same values from
tl ops; everything else is the same code.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import pdl
from jupyter_qwen.model.kernels.awq_lop3 import (
    _counts,
    _pair,
    _sum_if_last,
    _zero_pair,
    register_cap,
    split_partials,
    uses_asm,
)
from jupyter_qwen.model.kernels.awq_split import GROUP
from jupyter_qwen.model.kernels.gemv import _inv_rms, _operand

MMA_ROWS = 16  # the dot's rows of x: tl.dot takes at least 16
_MMA_ROWS = tl.constexpr(MMA_ROWS)


@triton.jit
def _packed_pair(words, zero_pair, K: tl.constexpr):
    """The tl-op twin of the asm: the lop3 kernel's exact fp32 halves of the pair (its CPU
    form), put back together as bf16x2 bits in an int32."""
    low, high = _pair(words, zero_pair, K, False)
    return ((low.to(tl.int32, bitcast=True) >> 16) & 0xFFFF) | (
        high.to(tl.int32, bitcast=True) & -65536)


@triton.jit
def _unpack(words, zw, ASM: tl.constexpr):
    """[R, WORDS] qweight words and their group's [1, WORDS] zero words -> [R, 8 WORDS]
    q - z in bf16, columns in order: nibbles K and K + 4 of a word are AWQ's columns 2 K and
    2 K + 1, one bf16x2 pair (low, high) in column order."""
    z0 = _zero_pair(zw, 0)
    z1 = _zero_pair(zw, 1)
    z2 = _zero_pair(zw, 2)
    z3 = _zero_pair(zw, 3)
    if ASM:  # one lop3 puts nibbles K and K + 4 into bf16x2 (128.0, 128.0)'s mantissas
        p0, p1, p2, p3 = tl.inline_asm_elementwise(
            "{ .reg .b32 t, one; mov.b32 one, 0x3F803F80; "
            "lop3.b32 t, $4, 0x000F000F, 0x43004300, 0xEA; fma.rn.bf16x2 $0, t, one, $5; "
            "shr.b32 t, $4, 4; lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA; "
            "fma.rn.bf16x2 $1, t, one, $6; "
            "shr.b32 t, $4, 8; lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA; "
            "fma.rn.bf16x2 $2, t, one, $7; "
            "shr.b32 t, $4, 12; lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA; "
            "fma.rn.bf16x2 $3, t, one, $8; }",
            "=r,=r,=r,=r,r,r,r,r,r", [words, z0, z1, z2, z3],
            dtype=(tl.int32,) * 4, is_pure=True, pack=1)
    else:
        p0 = _packed_pair(words, z0, 0)
        p1 = _packed_pair(words, z1, 1)
        p2 = _packed_pair(words, z2, 2)
        p3 = _packed_pair(words, z3, 3)
    # [R, WORDS, 2 (a), 2 (b)]: pair K = 2 a + b, then each pair's two bf16
    pairs = tl.reshape(tl.join(tl.join(p0, p2), tl.join(p1, p3)),
                       [words.shape[0], words.shape[1] * 4])
    bits = tl.join(pairs.to(tl.int16), (pairs >> 16).to(tl.int16))
    return tl.reshape(bits, [words.shape[0], words.shape[1] * 8]).to(tl.bfloat16,
                                                                     bitcast=True)


@triton.jit(do_not_specialize=["M"])
def _awq_mma_kernel(x_ptr, res_ptr, norm_w_ptr, qw_ptr, qz_ptr, sc_ptr, part_ptr,
                    res_out_ptr, M, N, K, K_CHUNK, eps, x_stride, res_stride, qw_stride,
                    qz_stride, sc_stride, res_out_stride, part_stride, y_ptr, y_stride,
                    count_ptr, SPLITS, PROLOGUE: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, NORM_BLOCK: tl.constexpr, USE_GDC: tl.constexpr,
                    ASM: tl.constexpr, LAST_SUMS: tl.constexpr, SPLITS_P2: tl.constexpr,
                    PRECISION: tl.constexpr):
    """part_ptr: partials [splits, M, N] fp32 (part_stride N), or y itself (its dtype and
    row stride) where there is one split; LAST_SUMS as in the lop3 kernel. BLOCK_M: the rows
    the prologue makes (1 or 16); the dot always takes 16, a one-row operand in row 0."""
    WORDS: tl.constexpr = BLOCK_N // 8
    STEP: tl.constexpr = 128
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    k_begin = split * K_CHUNK
    k_end = tl.minimum(k_begin + K_CHUNK, K)
    words = pid_n * WORDS + tl.arange(0, WORDS)
    words_ok = words < N // 8
    steps = tl.arange(0, STEP)
    columns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    columns_ok = columns < N
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_at = rows[:, None] * x_stride
    res_at = rows[:, None] * res_stride

    word_at = qw_ptr + words[None, :]
    ks = k_begin + steps
    q = tl.load(word_at + ks[:, None] * qw_stride,
                mask=(ks < k_end)[:, None] & words_ok[None, :], other=0)
    g = k_begin // STEP
    zw = tl.load(qz_ptr + g * qz_stride + words, mask=words_ok, other=0)[None, :]
    s = tl.load(sc_ptr + g * sc_stride + columns, mask=columns_ok, other=0.0)
    pdl.after_previous_kernel(USE_GDC)
    inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, x_at, res_at, res_out_stride, M, K,
                       eps, (pid_n == 0) & (split == 0), PROLOGUE, BLOCK_M,
                       NORM_BLOCK)[:, None]
    a = _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ks[None, :],
                 row_ok[:, None] & (ks < k_end)[None, :], inv_rms, K, PROLOGUE)
    acc = tl.zeros([_MMA_ROWS, BLOCK_N], tl.float32)
    for k0 in range(k_begin, k_end, STEP):
        # this step's tiles; the next step's requested before any arithmetic
        cq, czw, cs, ca = q, zw, s, a
        ks = k0 + STEP + steps
        more = k0 + STEP < k_end
        g = (k0 + STEP) // STEP
        q = tl.load(word_at + ks[:, None] * qw_stride,
                    mask=(ks < k_end)[:, None] & words_ok[None, :], other=0)
        zw = tl.load(qz_ptr + g * qz_stride + words, mask=words_ok & more, other=0)[None, :]
        s = tl.load(sc_ptr + g * sc_stride + columns, mask=columns_ok & more, other=0.0)
        a = _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ks[None, :],
                     row_ok[:, None] & (ks < k_end)[None, :], inv_rms, K, PROLOGUE)
        w = _unpack(cq, czw, ASM).to(ca.dtype)
        if BLOCK_M == 1:
            lhs = tl.where(tl.arange(0, _MMA_ROWS)[:, None] == 0, ca, tl.zeros_like(ca))
        else:
            lhs = ca
        part = tl.dot(lhs, w, input_precision=PRECISION)
        acc += part * cs.to(tl.float32)[None, :]

    rows = tl.arange(0, _MMA_ROWS)
    store_ok = (rows < M)[:, None] & columns_ok[None, :]
    tl.store(part_ptr + split * M * N + rows[:, None] * part_stride + columns[None, :],
             acc.to(part_ptr.dtype.element_ty), mask=store_ok)
    if LAST_SUMS:
        _sum_if_last(part_ptr, y_ptr, count_ptr + pid_n, M, N, SPLITS, y_stride, columns,
                     columns_ok, SPLITS_P2)


def check_tiling(tiling) -> None:
    """What the mma kernel takes: one group a step, BLOCK_N a power of two >= 32 (the split
    counters are one per 32 columns)."""
    if tiling.block_n < 32 or tiling.block_n & (tiling.block_n - 1):
        raise ValueError(f"AWQ mma tiles need block_n a power of two >= 32, not {tiling}")
    if tiling.block_k != GROUP:
        raise ValueError(f"AWQ mma tiles take one group ({GROUP} rows) a step, not {tiling}")
    if tiling.split_k < 1:
        raise ValueError(f"split_k is at least 1, not {tiling}")


def launch(args: dict, layer, tiling, m: int, k: int, norm_block: int) -> None:
    """The mma product, then the sum of its splits where K is split (by the last split of
    each N tile: one launch); args as quant_gemv._launch builds them."""
    check_tiling(tiling)
    n, y = layer.out_features, args["y_ptr"]
    chunk, splits, partials, part_stride = split_partials(y, m, n, k, tiling.split_k)
    last_sums = splits > 1
    splits_p2 = triton.next_power_of_2(splits)
    precision = "ieee" if y.dtype == torch.float32 else "tf32"
    _awq_mma_kernel[(triton.cdiv(n, tiling.block_n), splits)](
        qw_ptr=layer.qweight, qz_ptr=layer.qzeros, sc_ptr=layer.scales, part_ptr=partials,
        K_CHUNK=chunk, qw_stride=layer.qweight.stride(0), qz_stride=layer.qzeros.stride(0),
        sc_stride=layer.scales.stride(0), part_stride=part_stride,
        count_ptr=_counts(layer, y.device) if last_sums else partials, SPLITS=splits,
        BLOCK_N=tiling.block_n, NORM_BLOCK=norm_block, ASM=uses_asm(y.device),
        LAST_SUMS=last_sums, SPLITS_P2=splits_p2 if last_sums else 1, PRECISION=precision,
        **register_cap(tiling, y.device),
        **{**args, "BLOCK_M": prologue_rows(m)})


def prologue_rows(m: int) -> int:
    """The rows the kernel's prologue makes: one for one row of x, else the dot's 16."""
    return 1 if m == 1 else MMA_ROWS
