"""The FP8 small-M product read as int32 words (`DecodeTiling(..., unpack="words")`,
launched by quant_gemv): four e4m3 weights a word, partial sums kept per thread until the
end.

Per step a program holds a [LANES, BLOCK_N, 1, VEC] tile of weight words: LANES = 32 x
num_warps threads along K, each with VEC = 2 consecutive words (8 inputs) of every one of
the program's BLOCK_N rows, so the step covers STEP = 8 LANES inputs (`block_k`). x and
the prologue's other inputs are read as int64 quads (four bf16: one word's inputs) at the
words' places, so all loads take one layout (two words are 8 bytes, two quads 16). The
products go into a [LANES, BLOCK_N, BLOCK_M, VEC] accumulator in that layout: no sum
across threads inside the K loop (no shuffles, barriers or shared memory; the Triton 3.6
sm_90 build shows none), one at the end. The next step's words, operand and scales are
loaded before this step's arithmetic.

The block scales ride on the operand: a thread's 8 inputs lie in one 128-input scale
block, and every program's rows read one scale row (`quant_gemv.folds`; Qwen3's shards
are multiples of 128), so a thread multiplies its operand by one scale a step and the
weights go into FMAs as they are.

`ASM` picks how a word becomes four fp32: on the GPU one `tl.inline_asm_elementwise` (two
`cvt.rn.f16x2.e4m3x2`, sm_89 and later, then four exact f16 -> f32 widenings); for CPU
tensors (Triton's interpreter cannot run PTX) the same values from the bits: sign and the
seven exponent-mantissa bits put at fp32's bits 31 and 26..20 are the e4m3 value times
2^-120 exactly (subnormals too), so one multiply by 2^120 restores it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import pdl
from jupyter_qwen.model.kernels.gemv import _inv_rms

SCALE_BLOCK = 128  # inputs a weight scale covers (Qwen3's FP8 block)
VEC = 2  # words (and operand quads) a thread takes a step
_SCALE_BLOCK = tl.constexpr(SCALE_BLOCK)
_TWO_TO_120 = tl.constexpr(2.0**120)


@triton.jit
def _e4m3_at(words, J: tl.constexpr):
    """fp32 of byte J of each word, from its bits."""
    byte = words >> (8 * J)
    bits = ((byte & 0x80) << 24) | ((byte & 0x7F) << 20)
    return bits.to(tl.float32, bitcast=True) * _TWO_TO_120


@triton.jit
def _e4m3_quad(words, ASM: tl.constexpr):
    """fp32 of the four e4m3 bytes of each int32 word, byte 0 (the lowest input) first."""
    if ASM:
        w0, w1, w2, w3 = tl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi, a, b, c, d; .reg .b32 p, q; mov.b32 {lo, hi}, $4; "
            "cvt.rn.f16x2.e4m3x2 p, lo; cvt.rn.f16x2.e4m3x2 q, hi; "
            "mov.b32 {a, b}, p; mov.b32 {c, d}, q; cvt.f32.f16 $0, a; cvt.f32.f16 $1, b; "
            "cvt.f32.f16 $2, c; cvt.f32.f16 $3, d; }",
            "=f,=f,=f,=f,r", [words], dtype=(tl.float32, tl.float32, tl.float32, tl.float32),
            is_pure=True, pack=1)
    else:
        w0 = _e4m3_at(words, 0)
        w1 = _e4m3_at(words, 1)
        w2 = _e4m3_at(words, 2)
        w3 = _e4m3_at(words, 3)
    return w0, w1, w2, w3


@triton.jit
def _bf16_quad(quads):
    """fp32 of the four bf16 values of each int64 (the lowest first): bf16 is fp32's top
    half, so each is a shift or a mask of one 32-bit half."""
    lo = quads.to(tl.int32)
    hi = (quads >> 32).to(tl.int32)
    return ((lo << 16).to(tl.float32, bitcast=True), (lo & -65536).to(tl.float32, bitcast=True),
            (hi << 16).to(tl.float32, bitcast=True), (hi & -65536).to(tl.float32, bitcast=True))


@triton.jit
def _bf16_round(value):
    return value.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _normed(h, inv_rms, weight):
    """gemv._operand's norm prologue, rounded to bf16 as there."""
    return _bf16_round(h * inv_rms * weight)


@triton.jit
def _silu_mul(gate, up):
    return _bf16_round(gate / (1.0 + tl.exp(-gate)) * up)


@triton.jit
def _step_operand(xq_ptr, resq_ptr, normq_ptr, xq_at, resq_at, quads, mask, inv_rms, scale,
                  KQ, PROLOGUE: tl.constexpr):
    """The four [LANES, 1, BLOCK_M, VEC] fp32 operand tiles of a step (input j of each word
    from the int64 quad of x and the prologue's other inputs at the same place), times the
    step's scales; the prologues' arithmetic and roundings are gemv._operand's."""
    h0, h1, h2, h3 = _bf16_quad(tl.load(xq_ptr + xq_at + quads, mask=mask, other=0))
    if PROLOGUE == 3:  # x holds gate | up
        u0, u1, u2, u3 = _bf16_quad(tl.load(xq_ptr + xq_at + KQ + quads, mask=mask, other=0))
        h0 = _silu_mul(h0, u0)
        h1 = _silu_mul(h1, u1)
        h2 = _silu_mul(h2, u2)
        h3 = _silu_mul(h3, u3)
    elif PROLOGUE != 0:
        if PROLOGUE == 2:
            r0, r1, r2, r3 = _bf16_quad(tl.load(resq_ptr + resq_at + quads, mask=mask, other=0))
            h0 = _bf16_round(h0 + r0)
            h1 = _bf16_round(h1 + r1)
            h2 = _bf16_round(h2 + r2)
            h3 = _bf16_round(h3 + r3)
        n0, n1, n2, n3 = _bf16_quad(tl.load(normq_ptr + quads, mask=quads < KQ, other=0))
        h0 = _normed(h0, inv_rms, n0)
        h1 = _normed(h1, inv_rms, n1)
        h2 = _normed(h2, inv_rms, n2)
        h3 = _normed(h3, inv_rms, n3)
    return h0 * scale, h1 * scale, h2 * scale, h3 * scale


@triton.jit(do_not_specialize=["M"])
def _fp8_words_kernel(x_ptr, res_ptr, norm_w_ptr, xq_ptr, resq_ptr, normq_ptr, w_ptr, s_ptr,
                      srow_ptr, y_ptr, res_out_ptr, M, N, K, eps, x_stride, res_stride,
                      xq_stride, resq_stride, w_stride, s_stride, y_stride, res_out_stride,
                      PROLOGUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      LANES: tl.constexpr, VEC: tl.constexpr, EVEN_N: tl.constexpr,
                      EVEN_K: tl.constexpr, NORM_BLOCK: tl.constexpr, USE_GDC: tl.constexpr,
                      ASM: tl.constexpr):
    """w_ptr: the weights as int32 words ([N, K / 4], w_stride in words); xq_ptr, resq_ptr,
    normq_ptr: x, the residual and the norm weight as int64 quads of bf16 (strides in
    quads; x_ptr, res_ptr, norm_w_ptr the same memory as bf16, for the norm pass); s_ptr /
    srow_ptr: the block scales and each weight row's scale row (one per program:
    quant_gemv.folds)."""
    STEP: tl.constexpr = 4 * VEC * LANES
    pid = tl.program_id(0)
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = ns if EVEN_N else tl.minimum(ns, N - 1)
    # every tile is 4-d ([lanes, weight rows, rows of x, words]; lanes first, so that the
    # loads' layouts put threads along them), and the operand's quads are addressed as the
    # words are (a word's four inputs are one quad; two words, 8 bytes, and two quads, 16
    # bytes, a thread): every load takes the same layout and no tile changes layout in the
    # K loop
    word_at = tl.arange(0, LANES)[:, None, None, None] * VEC + tl.arange(0, VEC)[
        None, None, None, :]
    w_base = w_ptr + w_rows[None, :, None, None] * w_stride + word_at
    lane_at = tl.arange(0, LANES)[:, None, None, None] * (4 * VEC)  # a lane's first input
    KQ = K // 4
    s_base = s_ptr + tl.load(srow_ptr + pid * BLOCK_N) * s_stride
    rows = tl.arange(0, BLOCK_M)
    row_ok = (rows < M)[None, None, :, None]
    xq_at = rows[None, None, :, None] * xq_stride
    resq_at = rows[None, None, :, None] * resq_stride

    if EVEN_K:  # noqa: SIM108 (a constexpr branch)
        words = tl.load(w_base)
    else:
        words = tl.load(w_base, mask=word_at < KQ, other=0)
    pdl.after_previous_kernel(USE_GDC)
    inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, rows[:, None] * x_stride,
                       rows[:, None] * res_stride, res_out_stride, M, K, eps, pid == 0,
                       PROLOGUE, BLOCK_M, NORM_BLOCK)[None, None, :, None]
    scale = tl.load(s_base + lane_at // _SCALE_BLOCK, mask=lane_at < K, other=0.0)
    a0, a1, a2, a3 = _step_operand(xq_ptr, resq_ptr, normq_ptr, xq_at, resq_at, word_at,
                                   row_ok & (word_at < KQ), inv_rms, scale, KQ, PROLOGUE)
    acc = tl.zeros([LANES, BLOCK_N, BLOCK_M, VEC], tl.float32)
    for k0 in range(0, K, STEP):
        # this step's tiles; the next step's requested before any arithmetic
        c = words
        b0, b1, b2, b3 = a0, a1, a2, a3
        ahead = (k0 + STEP) // 4 + word_at  # the next step's quads (and words)
        words = tl.load(w_base + (k0 + STEP) // 4, mask=ahead < KQ, other=0)
        lanes_ahead = k0 + STEP + lane_at
        scale = tl.load(s_base + lanes_ahead // _SCALE_BLOCK, mask=lanes_ahead < K, other=0.0)
        a0, a1, a2, a3 = _step_operand(xq_ptr, resq_ptr, normq_ptr, xq_at, resq_at, ahead,
                                       row_ok & (ahead < KQ), inv_rms, scale, KQ, PROLOGUE)
        w0, w1, w2, w3 = _e4m3_quad(c, ASM)
        acc += w0 * b0
        acc += w1 * b1
        acc += w2 * b2
        acc += w3 * b3

    sums = tl.sum(tl.sum(acc, 3), 0)  # [BLOCK_N, BLOCK_M]
    out_ok = (ns < N)[:, None] & (rows < M)[None, :]
    tl.store(y_ptr + rows[None, :] * y_stride + ns[:, None],
             sums.to(y_ptr.dtype.element_ty), mask=out_ok)


def uses_asm(device: torch.device) -> bool:
    """The inline-asm unpacking on a GPU; its tl-op twin for CPU tensors (Triton's
    interpreter, which cannot run PTX)."""
    return device.type == "cuda"


def lanes_and_vec(tiling) -> tuple[int, int]:
    """(LANES, VEC) of a words tiling: 32 threads a warp along K, two words each."""
    return 32 * tiling.num_warps, VEC


def check_tiling(tiling) -> None:
    """What the words kernel takes: two words a thread (block_k = 256 x num_warps: the
    operand's two quads are then 16 bytes, the words 8, and both loads take one layout);
    block_n a power of two dividing 128 (one scale row a program)."""
    if tiling.block_k != 4 * VEC * 32 * tiling.num_warps:
        raise ValueError(f"FP8 words tiles take two words a thread: block_k = 256 x "
                         f"num_warps, not {tiling}")
    if tiling.block_n & (tiling.block_n - 1) or SCALE_BLOCK % tiling.block_n:
        raise ValueError(f"FP8 words tiles need block_n a power of two <= {SCALE_BLOCK}, "
                         f"not {tiling}")


def _quads(tensor: torch.Tensor) -> torch.Tensor | None:
    """`tensor` (bf16, rows contiguous) seen as int64 quads, or None where it cannot be."""
    if (tensor.dtype != torch.bfloat16 or tensor.stride(-1) != 1 or tensor.data_ptr() % 8
            or any(stride % 4 for stride in tensor.stride()[:-1]) or tensor.shape[-1] % 4):
        return None
    return tensor.view(torch.int64)


def operand_quads(args: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """x, the residual and the norm weight of quant_gemv._launch's args as int64 quads, or
    None where one of them cannot be seen so (not bf16, unaligned)."""
    quads = tuple(_quads(args[name]) for name in ("x_ptr", "res_ptr", "norm_w_ptr"))
    return None if any(q is None for q in quads) else quads


def launch(args: dict, layer, tiling, k: int, norm_block: int,
           quads: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """The product, args as quant_gemv._launch builds them (a checked tiling, K and the
    weights' row stride multiples of 4, one scale row a program), `quads` from
    operand_quads(args)."""
    lanes, vec = lanes_and_vec(tiling)
    words = layer.weight.view(torch.int32)
    n = layer.out_features
    xq, resq, normq = quads
    _fp8_words_kernel[(triton.cdiv(n, tiling.block_n),)](
        xq_ptr=xq, resq_ptr=resq, normq_ptr=normq, xq_stride=xq.stride(0),
        resq_stride=resq.stride(0), w_ptr=words, s_ptr=layer.weight_scale_inv,
        srow_ptr=layer.scale_rows, w_stride=words.stride(0),
        s_stride=layer.weight_scale_inv.stride(0), BLOCK_N=tiling.block_n, LANES=lanes,
        VEC=vec, EVEN_N=n % tiling.block_n == 0, EVEN_K=k % tiling.block_k == 0,
        NORM_BLOCK=norm_block, ASM=uses_asm(words.device), **args)
