"""A candidate layout for AWQ decode, measured before the model adopts it: the 4-bit words
repacked along K (`repack`), so that a batch-1 product reads them as the bf16 products read
their weights (a program owns a few output rows and streams each row's K; no K split, no
partials, no per-column sums over lanes). One GPU call (<= ~4 min):

    python benchmarks/awq_rows.py                  # Qwen3-4B's layer at M = 1
    python benchmarks/awq_rows.py --models 0.6B,4B

Why (KERNEL_NOTES "AWQ decode: the intercept"): AWQ's own layout packs eight output columns
in a word, so a program's K loop leaves each thread 32 columns to sum over the lanes that
held K, and short-K products split K over programs and sum the partials; together ~7 us a
product against bf16's ~3. Here word j of row n and group g holds the 4-bit values of that
row at k = 128 g + 2 (16 p + j) + h in nibble p + 4 h (pair p = 0..3, h = 0 low, 1 high), so:

- the nibble pairs `lop3` extracts (as awq_lop3.py's half2 kinds: nibbles p and p + 4) are two
  consecutive k, the two bf16 of one int32 of x: x is read as int32 pairs, pair p of word j
  at 64 g + 16 p + j, contiguous in j like the words;
- a word's eight products are summed in f16x2 (x / 64 in fp16, q - z exact in fp16, as the
  half2 kinds) and widened to fp32 once a word; the group's scale multiplies it in fp32;
- each row's zero and scale are one int32 a group (`meta`: scale bits, zero << 16).

Every product is checked against the dequantizing reference of the same layer in AWQ's
layout, then timed (CUDA graph over rotated copies, PDL as the engine launches), beside the
bf16 product and the current AWQ product (quant_gemv, TUNED) of the same shapes, then a
layer's four products in one graph: all in this layout on their fastest tilings, and each in
the layout whose product was faster alone (one copy of the weights either way). M = 1 only:
the question is the intercept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_qwen.model.kernels import pdl
from jupyter_qwen.model.kernels.awq_lop3 import (
    HALF2_X,
    _f16_halves,
    _high_half,
    _low_half,
    _scale_pair,
)
from jupyter_qwen.model.kernels.awq_split import GROUP
from jupyter_qwen.model.kernels.gemv import ADD_RMS_NORM, PLAIN, RMS_NORM, SILU_MUL, _inv_rms

WORDS = 16  # words a row and group
PROLOGUES = {"plain": PLAIN, "norm": RMS_NORM, "add_norm": ADD_RMS_NORM, "silu": SILU_MUL}


@dataclass(frozen=True)
class RowsTiling:
    block_n: int  # output rows a program
    groups: int  # groups (128 k) a step
    num_warps: int

    def name(self) -> str:
        return f"rows n{self.block_n} g{self.groups} w{self.num_warps}"


@dataclass
class RowsWeights:
    words: torch.Tensor  # int32 [N, K / 8]
    meta: torch.Tensor  # int32 [N, K / 128]: fp16 scale bits | zero << 16

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.words, self.meta))


def repack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> RowsWeights:
    """AWQ's qweight [K, N / 8], qzeros [G, N / 8], scales [G, N] -> RowsWeights."""
    from jupyter_qwen.model.quant.awq import unpack_awq

    q = unpack_awq(qweight).T.to(torch.int64)  # [N, K]
    n, k = q.shape
    if k % GROUP:
        raise ValueError(f"the rows layout takes whole groups of {GROUP}, not K = {k}")
    groups = k // GROUP
    # k in a group = 32 p + 2 j + h -> nibble p + 4 h of word j
    slots = q.reshape(n, groups, 4, WORDS, 2).permute(0, 1, 3, 4, 2).reshape(n, groups,
                                                                             WORDS, 8)
    shifts = 4 * torch.arange(8, device=q.device)
    words = (slots << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    zeros = unpack_awq(qzeros).T.to(torch.int32)  # [N, G]
    scale_bits = scales.T.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    return RowsWeights(words.reshape(n, groups * WORDS).contiguous(),
                       (scale_bits | (zeros << 16)).contiguous())


def dequantize_rows(weights: RowsWeights) -> torch.Tensor:
    """float32 [N, K] (q - z) * scale from the rows layout (the inverse of `repack`)."""
    n, groups = weights.meta.shape
    shifts = 4 * torch.arange(8, device=weights.words.device, dtype=torch.int32)
    slots = (weights.words.view(n, groups, WORDS, 1) >> shifts) & 0xF  # [N, G, j, p + 4 h]
    q = slots.view(n, groups, WORDS, 2, 4).permute(0, 1, 4, 2, 3).reshape(n, groups, GROUP)
    zeros = (weights.meta >> 16) & 0xF
    scales = (weights.meta & 0xFFFF).to(torch.int16).view(torch.float16).float()
    return ((q - zeros[..., None]).float() * scales[..., None]).reshape(n, groups * GROUP)


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
        low = _f16_diff(w, 0, z_lo) * _half(x0, 0)
        high = _f16_diff(w, 4, z_hi) * _half(x0, 1)
        low, high = _rounded(low), _rounded(high)
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
                 res_out_ptr, M, N, K, G, eps, w_stride, meta_stride, res_out_stride,
                 PROLOGUE: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
                 EVEN_G: tl.constexpr, NORM_BLOCK: tl.constexpr, USE_GDC: tl.constexpr,
                 ASM: tl.constexpr):
    """y[0, n] for one row of x and BLOCK_N rows of W: x_ptr / res_ptr / norm_w_ptr bf16 (the
    norm pass), xi_ptr / ri_ptr / nwi_ptr the same as int32 pairs; G groups of 128 k. Each
    next step's words, meta and operand are requested before this step's arithmetic."""
    pid = tl.program_id(0)
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(ns, N - 1)
    groups = tl.arange(0, GROUPS)[None, :, None]
    columns = tl.arange(0, GROUPS * 16)[None, :]
    w_base = w_ptr + rows[:, None] * w_stride + columns
    m_base = meta_ptr + rows[:, None, None] * meta_stride + groups
    pairs = columns // 16 * 64 + columns % 16

    w_next, m_next = _step_weights(w_base, m_base, 0, G, columns, groups, EVEN_G)
    pdl.after_previous_kernel(USE_GDC)
    one = tl.arange(0, 1)
    inv_rms = tl.sum(_inv_rms(x_ptr, res_ptr, res_out_ptr, one, one[:, None] * 0,
                              one[:, None] * 0, res_out_stride, M, K, eps, pid == 0,
                              PROLOGUE, 1, NORM_BLOCK), 0)
    x0, x1, x2, x3 = _step_operands(xi_ptr, ri_ptr, nwi_ptr, pairs, 0, G, inv_rms, K,
                                    PROLOGUE, EVEN_G, ASM)
    acc = tl.zeros([BLOCK_N, GROUPS, 16], tl.float32)
    last = (G - 1) // GROUPS * GROUPS
    for g0 in range(0, G, GROUPS):
        w, meta = w_next, m_next
        a0, a1, a2, a3 = x0, x1, x2, x3
        ahead = tl.minimum(g0 + GROUPS, last)  # the last step re-reads itself
        w_next, m_next = _step_weights(w_base, m_base, ahead, G, columns, groups, EVEN_G)
        x0, x1, x2, x3 = _step_operands(xi_ptr, ri_ptr, nwi_ptr, pairs, ahead, G, inv_rms,
                                        K, PROLOGUE, EVEN_G, ASM)
        zero_even, zero_odd = _zeros_of(meta)
        low, high = _word_sums(w, zero_even, zero_odd, a0, a1, a2, a3, ASM)
        scale = (meta & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        acc += (low + high) * scale
    y = tl.sum(tl.sum(acc, 2), 1) * HALF2_X
    tl.store(y_ptr + ns, y.to(y_ptr.dtype.element_ty), mask=ns < N)


def rows_product(prologue: str, weights: RowsWeights, x: torch.Tensor, *,
                 residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
                 eps: float = 1e-6, tiling: RowsTiling = RowsTiling(8, 4, 1),
                 launch_pdl: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """One row of x ([1, K], or [1, 2K] gate | up for "silu") times the rows-layout weights,
    with the prologue; returns y [1, N] (bf16)."""
    code = PROLOGUES[prologue]
    n, groups = weights.meta.shape
    k = groups * GROUP
    if x.shape[0] != 1 or x.dtype != torch.bfloat16 or not x.is_contiguous():
        raise ValueError("the rows prototype takes one contiguous bf16 row of x")
    y = out if out is not None else torch.empty(1, n, device=x.device, dtype=x.dtype)
    res = residual if residual is not None else x
    nw = norm_weight if norm_weight is not None else x
    res_out = torch.empty_like(x) if code == ADD_RMS_NORM else y
    _rows_kernel[(triton.cdiv(n, tiling.block_n),)](
        x, res, nw, x.view(torch.int32), res.view(torch.int32), nw.view(torch.int32),
        weights.words, weights.meta, y, res_out, 1, n, k, groups, eps, weights.words.stride(0),
        weights.meta.stride(0), res_out.stride(0), PROLOGUE=code, BLOCK_N=tiling.block_n,
        GROUPS=tiling.groups, EVEN_G=groups % tiling.groups == 0,
        NORM_BLOCK=min(triton.next_power_of_2(k), 4096), USE_GDC=launch_pdl,
        ASM=x.device.type == "cuda", num_warps=tiling.num_warps, num_stages=1,
        launch_pdl=launch_pdl)
    return y


# (block_n, groups, warps), the fastest of runs 81-82 and two neighbours: with 8 groups a
# step all 32 lanes of a warp lie along a row's words, so x's pair tiles ([1, 128 words])
# take the words' layout (each warp computes them) and no step converts a tile through
# shared memory; with 4 groups only one warp does (run 81's tilings of 4 groups and 2-4
# warps converted every step's words)
CANDIDATES = [RowsTiling(n, g, w) for n, g, w in
              [(4, 8, 1), (8, 8, 2), (16, 8, 4), (4, 4, 1), (8, 4, 1)]]


# down again with a plain operand: what it would take if gate_up's epilogue made SiLU·mul
# (its gate and up rows of the same index in one tile; run 82: level with today's down)
EXTRA = {"4B": {"down_plain": (2560, 9728, [2560], "plain")},
         "0.6B": {"down_plain": (1024, 3072, [1024], "plain")}}


def products(model: str) -> dict:
    """quant_decode's products of the model's layer, then EXTRA's."""
    return {**_quant_decode().MODELS[model], **EXTRA.get(model, {})}


def _quant_decode():
    from benchmarks import quant_decode

    return quant_decode


def rows_call(prologue: str, weights: RowsWeights, inputs, tiling: RowsTiling):
    from benchmarks.kernel_setup import launch_pdl

    if prologue == "silu":
        return rows_product("silu", weights, inputs.gate_up, tiling=tiling,
                            launch_pdl=launch_pdl())
    residual = inputs.residual if prologue == "add_norm" else None
    norm_weight = inputs.norm_weight if prologue != "plain" else None
    return rows_product(prologue, weights, inputs.x, residual=residual,
                        norm_weight=norm_weight, eps=_quant_decode().EPS, tiling=tiling,
                        launch_pdl=launch_pdl())


def precompile_job(job: tuple) -> str:
    prologue, k, tiling = job
    try:
        qd = _quant_decode()
        layer = qd.random_layer("awq", 256, k, [256])
        rows_call(prologue, repack(layer.qweight, layer.qzeros, layer.scales),
                  qd.Inputs(1, k), tiling)
        torch.cuda.synchronize()
    except Exception as error:
        return f"{job}: {type(error).__name__}: {error}"[:300]
    return ""


def sweep_rows(model: str, results: list[dict]) -> dict:
    """Each product: checked, then every candidate timed; the fastest tiling of each."""
    from benchmarks.kernel_setup import relative_error
    from benchmarks.kernels import graph_micros_per_call, say

    qd = _quant_decode()
    best = {}
    for name, (n, k, shards, prologue) in products(model).items():
        layers = [qd.random_layer("awq", n, k, shards)]
        rows = [repack(layers[0].qweight, layers[0].qzeros, layers[0].scales)]
        for _ in range(qd.copies_for(rows[0].nbytes) - 1):
            layer = qd.random_layer("awq", n, k, shards)
            rows.append(repack(layer.qweight, layer.qzeros, layer.scales))
        inputs = qd.Inputs(1, k)
        ref = qd.reference(prologue, layers[0], inputs).float()
        timed = []
        for tiling in CANDIDATES:
            row = dict(model=model, product=name, tiling=tiling.name())
            try:
                error = relative_error(rows_call(prologue, rows[0], inputs, tiling).float(),
                                       ref)
                row["error"] = error
                if not error < 2e-2:
                    raise AssertionError(f"relative error {error:.2e}")
                calls = [lambda w=w, t=tiling, x=inputs, p=prologue: rows_call(p, w, x, t)
                         for w in rows]
                micros = graph_micros_per_call(calls, qd.REPLAYS)
                row.update(micros=micros, gbps=rows[0].nbytes / micros / 1e3)
                timed.append((micros, tiling))
            except Exception as error:
                row["failed"] = f"{type(error).__name__}: {error}"[:300]
                say(f"SKIPPED {model} {name} {tiling.name()}: {row['failed']}")
            results.append(row)
            say(f"{model} {name} {tiling.name()}: " + (
                f"{row['micros']:.2f} us, {row['gbps']:.0f} GB/s, error {row['error']:.1e}"
                if "micros" in row else row["failed"]))
        best[name] = min(timed, key=lambda t: t[0])[1] if timed else None
        del layers, rows
        torch.cuda.empty_cache()
    return best


def today_micros(model: str, fmt: str) -> dict:
    """Each product as the model runs it today (default tilings: TUNED), us a call."""
    from benchmarks.kernels import graph_micros_per_call

    qd = _quant_decode()
    out = {}
    for name, (n, k, shards, prologue) in products(model).items():
        layers = [qd.random_layer(fmt, n, k, shards)]
        layers += [qd.random_layer(fmt, n, k, shards)
                   for _ in range(qd.copies_for(qd.weight_bytes(layers[0])) - 1)]
        inputs = qd.Inputs(1, k)
        calls = [lambda w=w, x=inputs, p=prologue: qd.product(p, w, x, None) for w in layers]
        out[name] = round(graph_micros_per_call(calls, qd.REPLAYS), 2)
        del layers
        torch.cuda.empty_cache()
    return out


def mixed_layer_micros(model: str, tilings: dict) -> float:
    """One decoder layer's four products, each in the rows layout on its tiling or (None)
    in AWQ's layout on today's kernel (TUNED), replayed over rotated layers."""
    from benchmarks.kernels import graph_micros_per_call

    qd = _quant_decode()
    shapes = qd.MODELS[model]

    def one_layer():
        out = {}
        for name, (n, k, shards, _) in shapes.items():
            layer = qd.random_layer("awq", n, k, shards)
            if tilings[name] is not None:
                layer = repack(layer.qweight, layer.qzeros, layer.scales)
            out[name] = layer
        return out

    def call(name, weights, inputs):
        prologue = shapes[name][3]
        if tilings[name] is None:
            return qd.product(prologue, weights, inputs, None)
        return rows_call(prologue, weights, inputs, tilings[name])

    first = one_layer()
    nbytes = sum(w.nbytes if isinstance(w, RowsWeights) else qd.weight_bytes(w)
                 for w in first.values())
    layers = [first] + [one_layer() for _ in range(qd.copies_for(nbytes, most=32) - 1)]
    inputs = {name: qd.Inputs(1, k) for name, (_, k, _, _) in shapes.items()}
    calls = [lambda w=w, name=name: call(name, w[name], inputs[name])
             for w in layers for name in shapes]
    micros = graph_micros_per_call(calls, qd.REPLAYS) * len(shapes)
    del layers
    torch.cuda.empty_cache()
    return micros


def main(argv: list[str] | None = None) -> int:
    from benchmarks.kernel_setup import compile_in_workers, launch_pdl
    from benchmarks.kernels import LOG, measure_copy_gbps, say

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="4B", help="comma-separated, of 0.6B, 4B")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    qd = _quant_decode()
    began = time.perf_counter()
    say(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; pdl {launch_pdl()}")
    say(f"copy bandwidth {measure_copy_gbps():.0f} GB/s (read + write)")
    jobs = sorted({(prologue, k, t) for model in models
                   for _, k, _, prologue in products(model).values() for t in CANDIDATES},
                  key=str)
    say(compile_in_workers(precompile_job, jobs, most=14))
    results, layers = [], []
    for model in models:
        best = sweep_rows(model, results)
        chosen = {name: t for name, t in best.items() if t is not None}
        entry = dict(model=model, best={name: t.name() for name, t in chosen.items()})
        for fmt in ("bf16", "awq"):  # the model's products today (TUNED), same call
            entry[f"{fmt}_products"] = today_micros(model, fmt)
            entry[f"{fmt}_us"] = qd.layer_micros(model, fmt, 1, {})
            say(f"{model} {fmt} today, us a product: {entry[f'{fmt}_products']}")
        fastest = {}  # each product's fastest rows tiling alone, us
        for r in results:
            if r["model"] == model and "micros" in r:
                fastest[r["product"]] = min(fastest.get(r["product"], math.inf), r["micros"])
        if len(chosen) == len(best):
            entry["rows_us"] = mixed_layer_micros(model, chosen)
            # each product in the layout whose kernel was faster alone
            mixed = {name: (t if fastest.get(name, math.inf) < entry["awq_products"][name]
                            else None) for name, t in chosen.items()}
            entry["mixed"] = {name: t.name() if t else "AWQ today" for name, t in mixed.items()}
            entry["mixed_us"] = mixed_layer_micros(model, mixed)
        layers.append(entry)
        say(f"{model} layer at M = 1: bf16 {entry['bf16_us']:.1f} us, AWQ today "
            f"{entry['awq_us']:.1f} us ({entry['bf16_us'] / entry['awq_us']:.2f}x), rows "
            f"{entry.get('rows_us', math.nan):.1f} us "
            f"({entry['bf16_us'] / entry.get('rows_us', math.nan):.2f}x); best {entry['best']}")
        say(f"{model} mixed layer {entry.get('mixed_us', math.nan):.1f} us "
            f"({entry['bf16_us'] / entry.get('mixed_us', math.nan):.2f}x): "
            f"{entry.get('mixed')}")
    say(f"total {time.perf_counter() - began:.0f} s")
    out = os.environ.get("OUT")
    if out:
        Path(out, "awq_rows.json").write_text(json.dumps(
            dict(products=results, layers=layers, log=LOG), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
