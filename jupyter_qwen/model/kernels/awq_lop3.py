"""The AWQ small-M product with nibble pairs unpacked by one `lop3` each
(`DecodeTiling(..., unpack="lop3")`, launched by quant_gemv): K split over programs as
awq_split.py does (quant_tiles.py's `chunk_of` split bookkeeping, its `_sum_splits_kernel`,
a fixed-order sum of the splits' fp32 partials), one group (128 input rows) a step.

Per step a program holds a [128 k, BLOCK_N] tile as REPEAT = 4 [LANES = 32, WORDS] tiles of
qweight words (rows k0 + 32 r + l; a thread keeps the same lanes and words in all four, so the
sums over k stay in its registers) and loads, one step ahead of their use, the next step's
words, zero words, scales (as int32 pairs: the 8 fp16 scales of a word are 4 int32 words) and
operand. Nibbles s and s + 4 of a word (AWQ columns 2 s and 2 s + 1) are taken together:
`(w >> 4 s) & 0x000F000F | 0x43004300` is two bf16 128 + q (bf16 holds 128..143 exactly),
one bf16x2 add of the group's -(128 + z) (the same lop3 on the zero word) leaves q - z exactly,
and each half widens to fp32 exactly (bf16 is fp32's top half: a shift or a mask). Then one
FMA per row of x; the group's scale multiplies the step's [rows, lanes, words] sums in fp32
(s * sum_k (q - z) a, as the other AWQ kernels), lanes are added once per program.

`ASM` picks how the pair is taken: on the GPU one `tl.inline_asm_elementwise` (lop3 + sub),
for CPU tensors (Triton's interpreter cannot run PTX) the same arithmetic in tl ops (fp32
subtraction of the two exact halves: the same values). Everything else is the same code, so
the CPU tests check the arithmetic the GPU runs; the asm itself is checked by the GPU tests
(`pytest -m gpu tests/test_quant_decode.py`) and its build by benchmarks/awq_sm90_build.py.

`unpack="half2"` (and "half2_one") sums the four rows a thread holds of each group in f16x2
instead (KERNEL_NOTES "AWQ decode in f16x2 sums"): `w & 0x000F000F | 0x64006400` is fp16
(1024 + q, 1024 + q') and `w & 0x00F000F0 | 0x64006400` (1024 + 16 q, ...), so one shift
serves four pairs; one f16x2 add of -(1024 + z), or FMA by 1/16 with -(64 + z), leaves q - z
exactly, and one `fma.rn.f16x2` a pair and row of x adds (q - z) x' for the operand x' = x /
64 in fp16 (exact for bf16 |x| from 2**-8 up; a four-row sum overflows only for |x| near
70,000, where 4 x 15 x |x| / 64 reaches fp16's 65,504). One
more `fma.rn.f16x2` a pair and group adds the four-row sums times the group's scale pair
into the program's f16x2 sums, which widen to fp32 once, after the loop (with the 64 back):
14 instructions a word where lop3 issues 27, every step's sums rounded to fp16 (11 bits)
where the reference rounds every weight to bf16 (8). Under the interpreter the same bit
patterns in tl ops and each f16x2 operation as fp32 rounded to fp16.

Where K is whole groups (Qwen3's shapes; `EVEN_K`) no load is masked: the loads one step
ahead of a split's last step re-read that step instead of reading past the split. The norm
prologues issue the first step's operand loads before the norm pass, so the two overlap.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import pdl
from jupyter_qwen.model.kernels.awq_split import (
    GROUP,
    SUM_TILE,
    _sum_splits_kernel,
    split_lanes,
)
from jupyter_qwen.model.kernels.gemv import _inv_rms, _load_h, _operand
from jupyter_qwen.model.kernels.quant_tiles import chunk_of

LANES = 32  # rows of a [LANES, WORDS] tile; REPEAT = 128 / LANES tiles a step
KINDS = ("lop3", "lop3_one", "half2", "half2_one")  # the unpack kinds this kernel runs
ONE_LAUNCH = ("lop3_one", "half2_one")  # the last split of each N tile sums the partials
HALF2_X = tl.constexpr(64.0)  # the half2 kinds multiply x / HALF2_X (exact: a power of 2)


@triton.jit
def _high_half(bits):
    return (bits & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _low_half(bits):
    return (bits << 16).to(tl.float32, bitcast=True)


@triton.jit
def _zero_pair(zw, S: tl.constexpr):
    """bf16x2 (-(128 + z) of nibble S, -(128 + z) of nibble S + 4) of each zero word:
    the nibbles or-ed into the mantissas of -128.0 (0xC300C300, as a signed int32)."""
    return ((zw >> (4 * S)) & 0x000F000F) | -1023360256


@triton.jit
def _pair(packed, zero_pair, S: tl.constexpr, ASM: tl.constexpr):
    """q - z of nibbles S (columns 2 S: low) and S + 4 (2 S + 1: high) of each word, fp32:
    (w >> 4 S) & 0x000F000F | 0x43004300 is bf16x2 (128 + q, 128 + q'), plus the zero pair
    (-(128 + z), -(128 + z')) is exact in bf16 (|q - z| <= 15), and so are its halves in
    fp32. On the GPU one lop3 and one bf16x2 FMA (x 1.0 + zero pair: sm_80 has it, where
    sub.bf16x2 needs sm_90); under the interpreter the same sums in fp32."""
    shifted = packed >> (4 * S)
    if ASM:
        diff = tl.inline_asm_elementwise(
            "{ .reg .b32 t, one; mov.b32 one, 0x3F803F80; "
            "lop3.b32 t, $1, 0x000F000F, 0x43004300, 0xEA; fma.rn.bf16x2 $0, t, one, $2; }",
            "=r,r,r", [shifted, zero_pair], dtype=tl.int32, is_pure=True, pack=1)
        low = _low_half(diff)
        high = _high_half(diff)
    else:
        biased = (shifted & 0x000F000F) | 0x43004300
        low = _low_half(biased) + _low_half(zero_pair)
        high = _high_half(biased) + _high_half(zero_pair)
    return low, high


@triton.jit
def _scale_pair(pair):
    """fp32 (low fp16, high fp16) of an int32 holding two fp16 (scales, f16x2 sums)."""
    low = (pair & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    high = (pair >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return low, high


@triton.jit
def _tile_sums(q0, q1, q2, q3, zw, a0, a1, a2, a3, S: tl.constexpr, ASM: tl.constexpr):
    """The step's [BLOCK_M, LANES, WORDS] sums of (q - z) a for columns 2 S and 2 S + 1."""
    zp = _zero_pair(zw, S)
    lo, hi = _pair(q0, zp, S, ASM)
    sum_lo = lo * a0
    sum_hi = hi * a0
    lo, hi = _pair(q1, zp, S, ASM)
    sum_lo += lo * a1
    sum_hi += hi * a1
    lo, hi = _pair(q2, zp, S, ASM)
    sum_lo += lo * a2
    sum_hi += hi * a2
    lo, hi = _pair(q3, zp, S, ASM)
    sum_lo += lo * a3
    sum_hi += hi * a3
    return sum_lo, sum_hi


@triton.jit
def _half2_zeros(zw, P: tl.constexpr, ASM: tl.constexpr):
    """f16x2 -(1024 + z) of nibbles 2 P and 2 P + 4 (0xE400 is -1024, its last 4 bits z)
    and -(64 + z) of nibbles 2 P + 1 and 2 P + 5 (0xD400 is -64, ulp 1/16: z in bits 4-7);
    one lop3 each on the GPU."""
    z = zw >> (8 * P)
    if ASM:
        even, odd = tl.inline_asm_elementwise(
            "lop3.b32 $0, $2, 0x000F000F, 0xE400E400, 0xEA; "
            "lop3.b32 $1, $2, 0x00F000F0, 0xD400D400, 0xEA;",
            "=r,=r,r", [z], dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
    else:
        even, odd = (z & 0x000F000F) | -469703680, (z & 0x00F000F0) | -738143232
    return even, odd


@triton.jit
def _f16_halves(pair, ASM: tl.constexpr):
    """fp32 (low, high) of an int32 holding two fp16: on the GPU one conversion each, which
    reads its half in place."""
    if ASM:
        low, high = tl.inline_asm_elementwise(
            "{ .reg .f16 l, h; mov.b32 {l, h}, $2; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; }",
            "=f,=f,r", [pair], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
    else:
        low, high = _scale_pair(pair)
    return low, high


@triton.jit
def _half2_operand(a, ASM: tl.constexpr):
    """x / HALF2_X in fp16: on the GPU its bits twice in an int32 (f16x2), else the fp16."""
    h = (a * (1.0 / HALF2_X)).to(tl.float16)
    if ASM:
        bits = h.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        h = bits | (bits << 16)
    return h


@triton.jit
def _half2_diffs(shifted, zero_even, zero_odd):
    """f16x2 q - z of nibble pairs (0, 4) and (1, 5) of each shifted word, exactly."""
    return tl.inline_asm_elementwise(
        "{ .reg .b32 e, o, h; mov.b32 h, 0x2C002C00; "
        "lop3.b32 e, $2, 0x000F000F, 0x64006400, 0xEA; "
        "lop3.b32 o, $2, 0x00F000F0, 0x64006400, 0xEA; "
        "add.rn.f16x2 $0, e, $3; fma.rn.f16x2 $1, o, h, $4; }",
        "=r,=r,r,r,r", [shifted, zero_even, zero_odd], dtype=(tl.int32, tl.int32),
        is_pure=True, pack=1)


@triton.jit
def _half2_fma(diff, x2, acc):
    return tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r",
                                     [diff, x2, acc], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _half2_mul(diff, x2):
    return tl.inline_asm_elementwise("mul.rn.f16x2 $0, $1, $2;", "=r,r,r", [diff, x2],
                                     dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _f16_diffs(shifted, zero_even, zero_odd):
    """The interpreter's `_half2_diffs`: the same bit patterns, their halves in fp32 (exact)
    as (even low, even high, odd low, odd high)."""
    e_lo, e_hi = _scale_pair((shifted & 0x000F000F) | 0x64006400)
    o_lo, o_hi = _scale_pair((shifted & 0x00F000F0) | 0x64006400)
    ze_lo, ze_hi = _scale_pair(zero_even)
    zo_lo, zo_hi = _scale_pair(zero_odd)
    return e_lo + ze_lo, e_hi + ze_hi, o_lo * 0.0625 + zo_lo, o_hi * 0.0625 + zo_hi


@triton.jit
def _f16_fma(diff, x, acc):
    """fma.rn.f16x2 of one half: the product is exact in fp32 and the sum rounds to fp16
    (through fp32: in rare near-ties one fp16 ulp from the fused operation)."""
    return (diff * x.to(tl.float32) + acc.to(tl.float32)).to(tl.float16)


@triton.jit
def _half2_sums(q0, q1, q2, q3, zw, a0, a1, a2, a3, P: tl.constexpr):
    """The step's f16x2 four-row sums of (q - z) x' (a0..a3: `_half2_operand`): columns
    4 P, 4 P + 1 (nibbles 2 P, 2 P + 4) and 4 P + 2, 4 P + 3 (2 P + 1, 2 P + 5)."""
    zero_even, zero_odd = _half2_zeros(zw, P, True)
    e, o = _half2_diffs(q0 >> (8 * P), zero_even, zero_odd)
    sum_e = _half2_mul(e, a0)
    sum_o = _half2_mul(o, a0)
    e, o = _half2_diffs(q1 >> (8 * P), zero_even, zero_odd)
    sum_e = _half2_fma(e, a1, sum_e)
    sum_o = _half2_fma(o, a1, sum_o)
    e, o = _half2_diffs(q2 >> (8 * P), zero_even, zero_odd)
    sum_e = _half2_fma(e, a2, sum_e)
    sum_o = _half2_fma(o, a2, sum_o)
    e, o = _half2_diffs(q3 >> (8 * P), zero_even, zero_odd)
    sum_e = _half2_fma(e, a3, sum_e)
    sum_o = _half2_fma(o, a3, sum_o)
    return sum_e, sum_o


@triton.jit
def _f16_sums(q0, q1, q2, q3, zw, a0, a1, a2, a3, P: tl.constexpr):
    """The interpreter's `_half2_sums`: the same sums, each half an fp16 tensor."""
    zero_even, zero_odd = _half2_zeros(zw, P, False)
    zero = (a0 * 0).to(tl.float16)
    e_lo, e_hi, o_lo, o_hi = _f16_diffs(q0 >> (8 * P), zero_even, zero_odd)
    s0, s1 = _f16_fma(e_lo, a0, zero), _f16_fma(e_hi, a0, zero)
    s2, s3 = _f16_fma(o_lo, a0, zero), _f16_fma(o_hi, a0, zero)
    e_lo, e_hi, o_lo, o_hi = _f16_diffs(q1 >> (8 * P), zero_even, zero_odd)
    s0, s1 = _f16_fma(e_lo, a1, s0), _f16_fma(e_hi, a1, s1)
    s2, s3 = _f16_fma(o_lo, a1, s2), _f16_fma(o_hi, a1, s3)
    e_lo, e_hi, o_lo, o_hi = _f16_diffs(q2 >> (8 * P), zero_even, zero_odd)
    s0, s1 = _f16_fma(e_lo, a2, s0), _f16_fma(e_hi, a2, s1)
    s2, s3 = _f16_fma(o_lo, a2, s2), _f16_fma(o_hi, a2, s3)
    e_lo, e_hi, o_lo, o_hi = _f16_diffs(q3 >> (8 * P), zero_even, zero_odd)
    s0, s1 = _f16_fma(e_lo, a3, s0), _f16_fma(e_hi, a3, s1)
    s2, s3 = _f16_fma(o_lo, a3, s2), _f16_fma(o_hi, a3, s3)
    return s0, s1, s2, s3


@triton.jit
def _add_step(q0, q1, q2, q3, zw, a0, a1, a2, a3, scales_a, scales_b, acc0, acc1, acc2, acc3,
              P: tl.constexpr, HALF2: tl.constexpr, ASM: tl.constexpr):
    """acc0..acc3 (columns 4 P .. 4 P + 3) plus the step's scaled sums s (q - z) a
    (scales_a: the int32 pair of columns 4 P, 4 P + 1; scales_b: 4 P + 2, 4 P + 3).
    lop3 kinds: fp32 sums (`_tile_sums`) scaled in fp32. HALF2: the four-row sums times the
    scale pair added in f16x2 (`fma.rn.f16x2`: acc0 holds columns 4 P, 4 P + 1 and acc1
    4 P + 2, 4 P + 3; acc2, acc3 unused), under the interpreter in fp16 halves."""
    if HALF2:
        if ASM:
            sum_e, sum_o = _half2_sums(q0, q1, q2, q3, zw, a0, a1, a2, a3, P)
            acc0 = _half2_fma(sum_e, scales_a, acc0)
            acc1 = _half2_fma(sum_o, scales_b, acc1)
        else:
            lo, hi, lo2, hi2 = _f16_sums(q0, q1, q2, q3, zw, a0, a1, a2, a3, P)
            s_lo, s_hi = _scale_pair(scales_a)
            s_lo2, s_hi2 = _scale_pair(scales_b)
            acc0, acc1 = _f16_fma(lo, s_lo, acc0), _f16_fma(hi, s_hi, acc1)
            acc2, acc3 = _f16_fma(lo2, s_lo2, acc2), _f16_fma(hi2, s_hi2, acc3)
    else:
        lo, hi = _tile_sums(q0, q1, q2, q3, zw, a0, a1, a2, a3, 2 * P, ASM)
        lo2, hi2 = _tile_sums(q0, q1, q2, q3, zw, a0, a1, a2, a3, 2 * P + 1, ASM)
        s_lo, s_hi = _scale_pair(scales_a)
        s_lo2, s_hi2 = _scale_pair(scales_b)
        acc0 += s_lo * lo
        acc1 += s_hi * hi
        acc2 += s_lo2 * lo2
        acc3 += s_hi2 * hi2
    return acc0, acc1, acc2, acc3


@triton.jit
def _zero_sums(BLOCK_M: tl.constexpr, L: tl.constexpr, WORDS: tl.constexpr,
               HALF2: tl.constexpr, ASM: tl.constexpr):
    """A program's starting sums: fp32, or (HALF2) f16x2 pairs in int32 / fp16 halves."""
    if HALF2:
        if ASM:
            zeros = tl.zeros([BLOCK_M, L, WORDS], tl.int32)
        else:
            zeros = tl.zeros([BLOCK_M, L, WORDS], tl.float16)
    else:
        zeros = tl.zeros([BLOCK_M, L, WORDS], tl.float32)
    return zeros


@triton.jit
def _widen_sums(acc0, acc1, acc2, acc3, ASM: tl.constexpr):
    """The HALF2 sums of columns 4 P .. 4 P + 3 in fp32 (`_add_step`'s layout)."""
    if ASM:
        lo, hi = _f16_halves(acc0, ASM)
        lo2, hi2 = _f16_halves(acc1, ASM)
    else:
        lo, hi = acc0.to(tl.float32), acc1.to(tl.float32)
        lo2, hi2 = acc2.to(tl.float32), acc3.to(tl.float32)
    return lo, hi, lo2, hi2


@triton.jit
def _load_words(q_base, k0, lanes, stride, k_end, EVEN_K: tl.constexpr):
    """[1, LANES, WORDS] words of rows k0 + lanes (q_base: [1, 1, WORDS]); rows from k_end
    on read as 0, unmasked where K is whole groups (every split's rows exist then)."""
    ks = k0 + lanes
    if EVEN_K:
        words = tl.load(q_base + ks * stride)
    else:
        words = tl.load(q_base + ks * stride, mask=ks < k_end, other=0)
    return words


@triton.jit
def _load_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k0, lanes, row_ok, k_end, inv_rms,
                  K, PROLOGUE: tl.constexpr, EVEN_K: tl.constexpr):
    """[BLOCK_M, LANES, 1] operand of columns k0 + lanes (lanes: [1, LANES, 1]); columns from
    k_end on read as 0 (no column mask where K is whole groups)."""
    ks = k0 + lanes
    mask = row_ok
    if not EVEN_K:
        mask = mask & (ks < k_end)
    return _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ks, mask, inv_rms, K,
                    PROLOGUE).to(tl.float32)


@triton.jit
def _step_words(q_base, k0, lanes, stride, k_end, EVEN_K: tl.constexpr):
    """The four [1, LANES, WORDS] word tiles of the step at k0 (rows k0 + 32 r + lanes)."""
    L: tl.constexpr = 32
    return (_load_words(q_base, k0, lanes, stride, k_end, EVEN_K),
            _load_words(q_base, k0 + L, lanes, stride, k_end, EVEN_K),
            _load_words(q_base, k0 + 2 * L, lanes, stride, k_end, EVEN_K),
            _load_words(q_base, k0 + 3 * L, lanes, stride, k_end, EVEN_K))


@triton.jit
def _group_scales(z_base, s_base, g, qz_stride, sc_stride):
    """Group g's zero words and its scales as four int32 pairs a word."""
    at = s_base + g * sc_stride
    return (tl.load(z_base + g * qz_stride), tl.load(at), tl.load(at + 1), tl.load(at + 2),
            tl.load(at + 3))


@triton.jit
def _step_operands(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k0, lanes, row_ok, k_end,
                   inv_rms, K, PROLOGUE: tl.constexpr, EVEN_K: tl.constexpr,
                   HALF2: tl.constexpr, ASM: tl.constexpr):
    """The four operand tiles of the step at k0, as the step's sums take them."""
    L: tl.constexpr = 32
    a0 = _load_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k0, lanes, row_ok, k_end,
                       inv_rms, K, PROLOGUE, EVEN_K)
    a1 = _load_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k0 + L, lanes, row_ok, k_end,
                       inv_rms, K, PROLOGUE, EVEN_K)
    a2 = _load_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k0 + 2 * L, lanes, row_ok,
                       k_end, inv_rms, K, PROLOGUE, EVEN_K)
    a3 = _load_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k0 + 3 * L, lanes, row_ok,
                       k_end, inv_rms, K, PROLOGUE, EVEN_K)
    return _step_operand_form(a0, a1, a2, a3, HALF2, ASM)


@triton.jit
def _step_operand_form(a0, a1, a2, a3, HALF2: tl.constexpr, ASM: tl.constexpr):
    """fp32 operand tiles as the step's sums take them (`_half2_operand` for HALF2)."""
    if HALF2:
        a0, a1 = _half2_operand(a0, ASM), _half2_operand(a1, ASM)
        a2, a3 = _half2_operand(a2, ASM), _half2_operand(a3, ASM)
    return a0, a1, a2, a3


@triton.jit
def _lanes_in_order(s0, s1, s2, s3, s4, s5, s6, s7):
    """[BLOCK_M, LANES, WORDS] sums of columns 8 w + j (s_j) -> [BLOCK_M, LANES, 8 WORDS] in
    column order (`_columns_in_order` before the sum over lanes: the joins stay in each
    thread's registers)."""
    low = tl.join(tl.join(s0, s4), tl.join(s2, s6))  # c = 0: j = 0, 4, 2, 6
    high = tl.join(tl.join(s1, s5), tl.join(s3, s7))  # c = 1: j = 1, 5, 3, 7
    joined = tl.join(low, high)  # [BLOCK_M, LANES, WORDS, 2 (a), 2 (b), 2 (c)]
    return tl.reshape(joined, [s0.shape[0], s0.shape[1], s0.shape[2] * 8])


@triton.jit
def _early_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k0, lanes, row_ok, k_end, K,
                   PROLOGUE: tl.constexpr, EVEN_K: tl.constexpr):
    """The norm prologues' `_load_operand` loads, issued before the norm pass so that they
    overlap it: fp32 h = x (+ residual) and the norm weight (`_normed` finishes them)."""
    ks = k0 + lanes
    mask = row_ok
    if not EVEN_K:
        mask = mask & (ks < k_end)
    h = _load_h(x_ptr, res_ptr, x_at, res_at, ks, mask, PROLOGUE).to(tl.float32)
    weight = tl.load(norm_w_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)
    return h, weight


@triton.jit
def _normed(h, weight, inv_rms, dtype: tl.constexpr):
    """`_early_operand`'s parts as `_load_operand` gives them (the same bits)."""
    return (h * inv_rms * weight).to(dtype).to(tl.float32)


@triton.jit(do_not_specialize=["M"])
def _awq_lop3_kernel(x_ptr, res_ptr, norm_w_ptr, qw_ptr, qz_ptr, sc_ptr, part_ptr,
                     res_out_ptr, M, N, K, K_CHUNK, eps, x_stride, res_stride, qw_stride,
                     qz_stride, sc_stride, res_out_stride, part_stride, y_ptr, y_stride,
                     count_ptr, SPLITS, PROLOGUE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr,
                     NORM_BLOCK: tl.constexpr, USE_GDC: tl.constexpr, ASM: tl.constexpr,
                     LAST_SUMS: tl.constexpr, SPLITS_P2: tl.constexpr, HALF2: tl.constexpr,
                     EVEN_K: tl.constexpr):
    """sc_ptr: the scales as int32 pairs ([groups, N / 2], sc_stride in int32 words);
    part_ptr: partials [splits, M, N] fp32 (part_stride N), or y itself (in its dtype, its
    row stride) where there is one split. LAST_SUMS: the last of an N tile's SPLITS programs
    to finish (count_ptr[pid_n], an int32 that it resets to 0) adds the tile's partials up
    in a fixed order and writes y (no second launch). HALF2: the four rows of a group a
    thread holds summed, scaled and added up in f16x2 (`_add_step`). EVEN_K: K is whole
    groups (no masked load)."""
    WORDS: tl.constexpr = BLOCK_N // 8
    L: tl.constexpr = 32
    STEP: tl.constexpr = 128
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    k_begin = split * K_CHUNK
    k_end = tl.minimum(k_begin + K_CHUNK, K)
    word_count = N // 8
    if EVEN_N:
        first = pid_n * WORDS
        words = first + tl.arange(0, WORDS)
    else:  # the last tile steps back to stay contiguous; it stores only its own columns
        first = tl.maximum(tl.minimum(pid_n * WORDS, word_count - WORDS), 0)
        words = tl.minimum(first + tl.arange(0, WORDS), word_count - 1)
    # every tile is 3-d ([rows of x, lanes, words]) so that one layout, the words' load's,
    # serves the whole step: no layout conversion of the unpacked weights
    lanes = tl.arange(0, L)[None, :, None]
    q_base = qw_ptr + words[None, None, :]
    z_base = qz_ptr + words[None, None, :]
    s_base = sc_ptr + words[None, None, :] * 4
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_at = rows[:, None, None] * x_stride
    res_at = rows[:, None, None] * res_stride

    # the first step's words, zeros and scales (weights only: before the previous kernel ends)
    q0, q1, q2, q3 = _step_words(q_base, k_begin, lanes, qw_stride, k_end, EVEN_K)
    zw, s01, s23, s45, s67 = _group_scales(z_base, s_base, k_begin // STEP, qz_stride,
                                           sc_stride)
    pdl.after_previous_kernel(USE_GDC)
    row_ok2 = row_ok[:, None, None]
    NORM: tl.constexpr = PROLOGUE == 1 or PROLOGUE == 2
    if NORM:  # the first operand's loads before the norm pass, so that they overlap it
        h0, w0 = _early_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k_begin, lanes,
                                row_ok2, k_end, K, PROLOGUE, EVEN_K)
        h1, w1 = _early_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k_begin + L, lanes,
                                row_ok2, k_end, K, PROLOGUE, EVEN_K)
        h2, w2 = _early_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k_begin + 2 * L,
                                lanes, row_ok2, k_end, K, PROLOGUE, EVEN_K)
        h3, w3 = _early_operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k_begin + 3 * L,
                                lanes, row_ok2, k_end, K, PROLOGUE, EVEN_K)
    inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, rows[:, None] * x_stride,
                       rows[:, None] * res_stride, res_out_stride, M, K, eps,
                       (pid_n == 0) & (split == 0), PROLOGUE, BLOCK_M,
                       NORM_BLOCK)[:, None, None]
    if NORM:
        dtype = x_ptr.dtype.element_ty
        a0, a1, a2, a3 = _step_operand_form(
            _normed(h0, w0, inv_rms, dtype), _normed(h1, w1, inv_rms, dtype),
            _normed(h2, w2, inv_rms, dtype), _normed(h3, w3, inv_rms, dtype), HALF2, ASM)
    else:
        a0, a1, a2, a3 = _step_operands(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, k_begin,
                                        lanes, row_ok2, k_end, inv_rms, K, PROLOGUE, EVEN_K,
                                        HALF2, ASM)
    acc0 = _zero_sums(BLOCK_M, L, WORDS, HALF2, ASM)
    acc1 = _zero_sums(BLOCK_M, L, WORDS, HALF2, ASM)
    acc2 = _zero_sums(BLOCK_M, L, WORDS, HALF2, ASM)
    acc3 = _zero_sums(BLOCK_M, L, WORDS, HALF2, ASM)
    acc4 = _zero_sums(BLOCK_M, L, WORDS, HALF2, ASM)
    acc5 = _zero_sums(BLOCK_M, L, WORDS, HALF2, ASM)
    acc6 = _zero_sums(BLOCK_M, L, WORDS, HALF2, ASM)
    acc7 = _zero_sums(BLOCK_M, L, WORDS, HALF2, ASM)
    # the split's last step (the loads ahead of it re-read it: no row past the split's end)
    last = k_begin + (k_end - 1 - k_begin) // STEP * STEP
    for k0 in range(k_begin, k_end, STEP):
        # this step's tiles; the next step's requested before any arithmetic
        c0, c1, c2, c3, czw = q0, q1, q2, q3, zw
        b0, b1, b2, b3 = a0, a1, a2, a3
        t01, t23, t45, t67 = s01, s23, s45, s67
        ahead = tl.minimum(k0 + STEP, last)
        q0, q1, q2, q3 = _step_words(q_base, ahead, lanes, qw_stride, k_end, EVEN_K)
        zw, s01, s23, s45, s67 = _group_scales(z_base, s_base, ahead // STEP, qz_stride,
                                               sc_stride)
        a0, a1, a2, a3 = _step_operands(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ahead,
                                        lanes, row_ok2, k_end, inv_rms, K, PROLOGUE, EVEN_K,
                                        HALF2, ASM)
        acc0, acc1, acc2, acc3 = _add_step(c0, c1, c2, c3, czw, b0, b1, b2, b3, t01, t23,
                                           acc0, acc1, acc2, acc3, 0, HALF2, ASM)
        acc4, acc5, acc6, acc7 = _add_step(c0, c1, c2, c3, czw, b0, b1, b2, b3, t45, t67,
                                           acc4, acc5, acc6, acc7, 1, HALF2, ASM)
    if HALF2:
        acc0, acc1, acc2, acc3 = _widen_sums(acc0, acc1, acc2, acc3, ASM)
        acc4, acc5, acc6, acc7 = _widen_sums(acc4, acc5, acc6, acc7, ASM)
    # the columns in order first, then one sum over the lanes (one cross-warp exchange)
    sums = tl.sum(_lanes_in_order(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7), 1)
    if HALF2:
        sums *= HALF2_X
    columns = first * 8 + tl.arange(0, BLOCK_N)
    store_ok = row_ok[:, None] & ((columns >= pid_n * BLOCK_N) & (columns < N))[None, :]
    tl.store(part_ptr + split * M * N + rows[:, None] * part_stride + columns[None, :],
             sums.to(part_ptr.dtype.element_ty), mask=store_ok)
    if LAST_SUMS:
        _sum_if_last(part_ptr, y_ptr, count_ptr + pid_n, M, N, SPLITS, y_stride, columns,
                     (columns >= pid_n * BLOCK_N) & (columns < N), SPLITS_P2)


@triton.jit
def _sum_if_last(part_ptr, y_ptr, count_at, M, N, SPLITS, y_stride, columns, ok,
                 SPLITS_P2: tl.constexpr):
    """Count this program's partials in (release: every thread's stores first); the last
    of the SPLITS programs (acquire) sums the tile's columns over the splits, as
    `_sum_splits_kernel` does, and resets the count for the next launch or graph replay."""
    tl.debug_barrier()
    done = tl.atomic_add(count_at, 1, sem="acq_rel", scope="gpu")
    if done == SPLITS - 1:
        splits = tl.arange(0, SPLITS_P2)
        at = splits[:, None] * M * N + columns[None, :]
        load_ok = (splits < SPLITS)[:, None] & ok[None, :]
        for m in range(M):
            part = tl.load(part_ptr + at + m * N, mask=load_ok, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + m * y_stride + columns,
                     tl.sum(part, 0).to(y_ptr.dtype.element_ty), mask=ok)
        tl.atomic_xchg(count_at, 0, sem="relaxed", scope="gpu")


def uses_asm(device: torch.device) -> bool:
    """The inline-asm pair on a GPU; its tl-op twin for CPU tensors (Triton's interpreter,
    which cannot run PTX)."""
    return device.type == "cuda"


def register_cap(tiling, device: torch.device) -> dict:
    """The launch's `maxnreg` where the tiling caps ptxas's registers (GPU builds only)."""
    if tiling.max_registers and device.type == "cuda":
        return {"maxnreg": tiling.max_registers}
    return {}


def check_tiling(tiling) -> None:
    """What the lop3 kernel takes: one group a step, 32 lanes (4 rows of words a thread)."""
    words = tiling.block_n // 8
    if words < 4 or words & (words - 1):
        raise ValueError(f"AWQ lop3 tiles need block_n a power of two >= 32, not {tiling}")
    if tiling.block_k != GROUP:
        raise ValueError(f"AWQ lop3 tiles take one group ({GROUP} rows) a step, not {tiling}")
    if split_lanes(words, tiling.num_warps) != LANES:
        raise ValueError(f"AWQ lop3 tiles need {LANES} threads along K (block_n 32 w1, 64 w2, "
                         f"128 w4, 256 w8, ...), not {tiling}")
    if tiling.split_k < 1:
        raise ValueError(f"split_k is at least 1, not {tiling}")


def _counts(layer, device: torch.device) -> torch.Tensor:
    """The layer's per-N-tile split counters for `lop3_one` (zeros; every launch leaves them
    zero again): one int32 per 32 columns, enough for any tile width. Made on the first
    launch; if that launch is being captured, the zeros are a captured memset that every
    replay repeats, which is as correct."""
    counts = getattr(layer, "_lop3_counts", None)
    if counts is None or counts.device != device:
        counts = torch.zeros(triton.cdiv(layer.out_features, 32), dtype=torch.int32,
                             device=device)
        layer._lop3_counts = counts
    return counts


def split_partials(y: torch.Tensor, m: int, n: int, k: int, split_k: int):
    """K split into whole groups for about `split_k` programs per N tile: (rows a split,
    splits, where the splits write, its row stride): y itself where there is one split,
    else fp32 partials [splits, M, N] for a fixed-order sum."""
    chunk = chunk_of(k, GROUP, split_k)
    splits = triton.cdiv(k, chunk)
    if splits == 1:
        return chunk, splits, y, y.stride(0)
    return chunk, splits, torch.empty((splits, m, n), device=y.device, dtype=torch.float32), n


def launch(args: dict, layer, tiling, m: int, k: int, norm_block: int) -> None:
    """The lop3 product then the sum of its splits (one launch where K is not split: the
    product writes y; the ONE_LAUNCH kinds: the last split of each N tile sums it); args as
    quant_gemv._launch builds them."""
    check_tiling(tiling)
    n, y = layer.out_features, args["y_ptr"]
    chunk, splits, partials, part_stride = split_partials(y, m, n, k, tiling.split_k)
    scales = layer.scales.view(torch.int32)
    last_sums = splits > 1 and tiling.unpack in ONE_LAUNCH
    splits_p2 = triton.next_power_of_2(splits)
    _awq_lop3_kernel[(triton.cdiv(n, tiling.block_n), splits)](
        qw_ptr=layer.qweight, qz_ptr=layer.qzeros, sc_ptr=scales, part_ptr=partials,
        K_CHUNK=chunk, qw_stride=layer.qweight.stride(0), qz_stride=layer.qzeros.stride(0),
        sc_stride=scales.stride(0), part_stride=part_stride,
        count_ptr=_counts(layer, y.device) if last_sums else partials, SPLITS=splits,
        BLOCK_N=tiling.block_n, EVEN_N=n % tiling.block_n == 0, NORM_BLOCK=norm_block,
        ASM=uses_asm(y.device), LAST_SUMS=last_sums,
        SPLITS_P2=splits_p2 if last_sums else 1, HALF2=tiling.unpack.startswith("half2"),
        EVEN_K=k % GROUP == 0,
        **register_cap(tiling, y.device), **args)
    if splits == 1 or last_sums:
        return
    block = max(32, min(1024, SUM_TILE // splits_p2))
    _sum_splits_kernel[(triton.cdiv(n, block),)](
        partials, y, m, n, splits, y.stride(0), SPLITS_P2=splits_p2, BLOCK=block,
        USE_GDC=args["USE_GDC"], num_warps=4, num_stages=1, launch_pdl=args["launch_pdl"])
