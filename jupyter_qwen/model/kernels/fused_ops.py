"""Fused elementwise kernels for the Qwen3 layer, each beside its torch reference.

- `rms_norm(x, weight, eps)` and `add_rms_norm(x, residual, weight, eps)` (the sum
  x + residual is returned too, as the next residual);
- `apply_rope_(positions, q, k, cos_cache, sin_cache)`: rotates q and k in place
  (caches as in `RotaryEmbedding`: [max_positions, head_dim], halves repeated);
- `silu_and_mul(gate_up)`: silu(gate) * up for gate_up = [gate | up].
All arithmetic is fp32 inside, rounded once to the input dtype. The norms and SiLU·mul
take `fp8=True` for rows an FP8 product will read: they then return them quantized
(`Fp8Rows`: e4m3 values and one scale per row and 128 columns, from the rounded rows,
exactly what the product's own quantizing launch would make) instead of in the dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from jupyter_qwen.model.quant.fp8 import ROW_GROUP, Fp8Rows

ELEMENTS_PER_PROGRAM = 4096
FP8_GROUP = ROW_GROUP


@triton.jit
def e4m3_rows(values):
    """values [R, C] fp32 -> (e4m3 values, fp32 scales [R]): each row divided by its largest
    magnitude / 448 (at least 1e-12 / 448). The one home of FP8 activation quantization
    (per token and 128 columns, as Qwen's FP8 checkpoints run): quant_linear's quantizing
    launch and K loop, and the fused kernels below."""
    a_scale = tl.maximum(tl.max(tl.abs(values), 1), 1e-12) / 448.0
    return (values / a_scale[:, None]).to(tl.float8e4nv), a_scale


@triton.jit
def store_rows(out_ptr, scale_ptr, rows, out_at, scale_at, row_ok, ROWS_DTYPE: tl.constexpr,
               FP8: tl.constexpr):
    """Store fp32 rows [R, C] at out_at in out_ptr's dtype, or FP8 (C = 128, one scale group
    a row, as an attention head's output is): rounded to the rows' dtype, then e4m3 with
    each row's scale at scale_at (`e4m3_rows`), the bits a quantizing launch would make."""
    if FP8:
        values, scales = e4m3_rows(rows.to(ROWS_DTYPE).to(tl.float32))
        tl.store(out_ptr + out_at, values, mask=row_ok[:, None])
        tl.store(scale_ptr + scale_at, scales, mask=row_ok)
    else:
        tl.store(out_ptr + out_at, rows.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def fp8_head_outputs(num_rows: int, num_heads: int, head_dim: int, dtype: torch.dtype,
                     device: torch.device) -> Fp8Rows:
    """Where an attention kernel writes its output quantized for an FP8 o projection: e4m3
    values [num_rows, num_heads * head_dim] and one scale a head (head_dim must be the FP8
    group, 128: Qwen3's)."""
    if head_dim != FP8_GROUP:
        raise ValueError(f"attention output of head_dim {head_dim} is not quantized per head: "
                         f"FP8 groups are {FP8_GROUP} columns")
    values, scales = _fp8_outputs(num_rows, num_heads * head_dim, head_dim, device)
    return Fp8Rows(values, scales, dtype)


@triton.jit
def _fp8_groups(values, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """values [ROWS, BLOCK] (fp32, each already rounded to the rows' dtype) -> (e4m3 values,
    fp32 scales [ROWS, BLOCK / 128]): `e4m3_rows` of each row's 128-column groups."""
    quantized, a_scale = e4m3_rows(tl.reshape(values, (ROWS * (BLOCK // 128), 128)))
    return (tl.reshape(quantized, (ROWS, BLOCK)),
            tl.reshape(a_scale, (ROWS, BLOCK // 128)))


@triton.jit(do_not_specialize=["num_rows"])
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, scale_ptr, num_rows,
                     eps, x_stride, residual_stride, out_stride, sum_stride,
                     N: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
                     ADD: tl.constexpr, FP8: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < num_rows) & (cols[None, :] < N)
    rows = rows.to(tl.int64)
    x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask, other=0.0)
    if ADD:
        residual = tl.load(residual_ptr + rows[:, None] * residual_stride + cols[None, :],
                           mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + rows[:, None] * sum_stride + cols[None, :], x, mask=mask)
    x = x.to(tl.float32)
    inverse_rms = tl.rsqrt(tl.sum(x * x, 1) / N + eps)
    weight = tl.load(weight_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    out = x * inverse_rms[:, None] * weight[None, :]
    if FP8:  # out_ptr: e4m3 [num_rows, N]; scale_ptr: fp32 [num_rows, cdiv(N, 128)]
        rounded = out.to(x_ptr.dtype.element_ty).to(tl.float32)
        quantized, a_scale = _fp8_groups(rounded, ROWS, BLOCK)
        tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], quantized, mask=mask)
        groups = tl.arange(0, BLOCK // 128)
        tl.store(scale_ptr + rows[:, None] * tl.cdiv(N, 128) + groups[None, :], a_scale,
                 mask=(rows[:, None] < num_rows) & (groups[None, :] < tl.cdiv(N, 128)))
    else:
        tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, fp8: bool = False,
             ) -> torch.Tensor | Fp8Rows:
    """rms_norm(x); `fp8`: returned quantized for an FP8 product (`Fp8Rows`)."""
    return _launch_rms_norm(x, None, weight, eps, fp8)[0]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float, *, fp8: bool = False,
                 ) -> tuple[torch.Tensor | Fp8Rows, torch.Tensor]:
    """(rms_norm(x + residual), x + residual); `fp8`: the first quantized (`Fp8Rows`)."""
    return _launch_rms_norm(x, residual, weight, eps, fp8)


def _launch_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                     eps: float, fp8: bool = False,
                     ) -> tuple[torch.Tensor | Fp8Rows, torch.Tensor]:
    size = x.shape[-1]
    rows_in = x.reshape(-1, size)
    if rows_in.stride(-1) != 1:
        rows_in = rows_in.contiguous()
    num_rows = rows_in.shape[0]
    block = triton.next_power_of_2(size)
    if fp8:
        out, scales = _fp8_outputs(num_rows, size, block, x.device)
    else:
        out = scales = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    # without a residual there is no sum: the kernel writes none (rms_norm returns [0] only)
    summed = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None \
        else rows_in
    result = Fp8Rows(out, scales, x.dtype) if fp8 else out
    if num_rows == 0:
        return result, summed
    residual_rows = rows_in if residual is None else residual.reshape(-1, size)
    if residual_rows.stride(-1) != 1:
        residual_rows = residual_rows.contiguous()
    rows = max(1, min(64, ELEMENTS_PER_PROGRAM // block))
    _rms_norm_kernel[(triton.cdiv(num_rows, rows),)](
        rows_in, residual_rows, weight, out, summed, scales, num_rows, eps,
        rows_in.stride(0), residual_rows.stride(0), size, size,
        N=size, BLOCK=block, ROWS=rows, ADD=residual is not None, FP8=fp8,
        num_warps=4 if rows * block <= 4096 else 8,
    )
    return result, summed


def _fp8_outputs(num_rows: int, size: int, block: int, device: torch.device,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The e4m3 values [num_rows, size] and fp32 scales [num_rows, cdiv(size, 128)] a fused
    kernel quantizes its rows into (`block`: its columns a program, 128 of them at least)."""
    if block < FP8_GROUP:
        raise ValueError(f"rows of {size} columns are too narrow to quantize per "
                         f"{FP8_GROUP} columns")
    return (torch.empty((num_rows, size), dtype=torch.float8_e4m3fn, device=device),
            torch.empty((num_rows, triton.cdiv(size, FP8_GROUP)), dtype=torch.float32,
                        device=device))


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def add_rms_norm_reference(x, residual, weight, eps) -> tuple[torch.Tensor, torch.Tensor]:
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed


@triton.jit
def _rope_heads(x_ptr, token, cos, sin, stride_t, stride_h, num_heads,
                HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HALF)[None, :]
    mask = heads < num_heads
    first = x_ptr + token * stride_t + heads * stride_h + dims
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(first, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(first + HALF, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(positions_ptr, q_ptr, k_ptr, cos_ptr, sin_ptr, q_stride_t, q_stride_h,
                 k_stride_t, k_stride_h, cache_stride, num_q_heads, num_k_heads,
                 HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF)[None, :]
    cos = tl.load(cos_ptr + position * cache_stride + dims).to(tl.float32)
    sin = tl.load(sin_ptr + position * cache_stride + dims).to(tl.float32)
    _rope_heads(q_ptr, token, cos, sin, q_stride_t, q_stride_h, num_q_heads, HALF, BLOCK_QH)
    _rope_heads(k_ptr, token, cos, sin, k_stride_t, k_stride_h, num_k_heads, HALF, BLOCK_KH)


def apply_rope_(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                cos_cache: torch.Tensor, sin_cache: torch.Tensor) -> None:
    """Rotate q [T, q_heads, head_dim] and k [T, k_heads, head_dim] in place."""
    num_tokens, num_q_heads, head_dim = q.shape
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("apply_rope_ needs q and k with a contiguous head_dim axis")
    if num_tokens == 0:
        return
    half = head_dim // 2
    cos_cache, sin_cache = cos_cache.contiguous(), sin_cache.contiguous()
    _rope_kernel[(num_tokens,)](
        positions, q, k, cos_cache, sin_cache, q.stride(0), q.stride(1), k.stride(0),
        k.stride(1), cos_cache.stride(0), num_q_heads, k.shape[1],
        HALF=half, BLOCK_QH=triton.next_power_of_2(num_q_heads),
        BLOCK_KH=triton.next_power_of_2(k.shape[1]), num_warps=4,
    )


def rope_reference(positions, q, k, cos_cache, sin_cache) -> tuple[torch.Tensor, torch.Tensor]:
    cos = cos_cache[positions].to(q.dtype).unsqueeze(1)
    sin = sin_cache[positions].to(q.dtype).unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@triton.jit
def _silu_and_mul_kernel(gate_up_ptr, out_ptr, scale_ptr, width, in_stride, out_stride,
                         BLOCK: tl.constexpr, FP8: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(gate_up_ptr + row * in_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * in_stride + width + cols, mask=mask,
                 other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    if FP8:  # out_ptr: e4m3 [rows, width]; scale_ptr: fp32 [rows, cdiv(width, 128)]
        rounded = out.to(gate_up_ptr.dtype.element_ty).to(tl.float32)
        quantized, a_scale = _fp8_groups(rounded[None, :], 1, BLOCK)
        tl.store(out_ptr + row * out_stride + cols[None, :], quantized, mask=mask[None, :])
        groups = tl.program_id(1) * (BLOCK // 128) + tl.arange(0, BLOCK // 128)
        tl.store(scale_ptr + row * tl.cdiv(width, 128) + groups[None, :], a_scale,
                 mask=groups[None, :] < tl.cdiv(width, 128))
    else:
        tl.store(out_ptr + row * out_stride + cols, out.to(out_ptr.dtype.element_ty),
                 mask=mask)


def silu_and_mul(gate_up: torch.Tensor, *, fp8: bool = False) -> torch.Tensor | Fp8Rows:
    """gate_up [..., 2 * width] -> silu(gate) * up, [..., width]; `fp8`: quantized for an
    FP8 product (`Fp8Rows` of [rows, width])."""
    width = gate_up.shape[-1] // 2
    rows_in = gate_up.reshape(-1, 2 * width)
    if rows_in.stride(-1) != 1:
        rows_in = rows_in.contiguous()
    block = min(2048, triton.next_power_of_2(width))
    if fp8:
        out, scales = _fp8_outputs(rows_in.shape[0], width, block, gate_up.device)
    else:
        out = scales = torch.empty((*gate_up.shape[:-1], width), dtype=gate_up.dtype,
                                   device=gate_up.device)
    result = Fp8Rows(out, scales, gate_up.dtype) if fp8 else out
    if rows_in.shape[0] == 0:
        return result
    _silu_and_mul_kernel[(rows_in.shape[0], triton.cdiv(width, block))](
        rows_in, out, scales, width, rows_in.stride(0), width, BLOCK=block, FP8=fp8,
        num_warps=4,
    )
    return result


def silu_and_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _norm_rope_heads(base_ptr, weight_ptr, cos, sin, num_heads, eps,
                     HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HALF)[None, :]
    mask = heads < num_heads
    first = base_ptr + heads * HEAD_DIM + dims
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    inverse_rms = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / HEAD_DIM + eps)
    w1 = tl.load(weight_ptr + dims).to(tl.float32)
    w2 = tl.load(weight_ptr + HALF + dims).to(tl.float32)
    x1 = x1 * inverse_rms[:, None] * w1
    x2 = x2 * inverse_rms[:, None] * w2
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin, heads, dims, mask


@triton.jit
def _qk_norm_rope_store_kernel(qkv_ptr, positions_ptr, slots_ptr, q_weight_ptr, k_weight_ptr,
                               cos_ptr, sin_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
                               qkv_stride, cache_stride, num_q_heads, num_kv_heads, eps,
                               HEAD_DIM: tl.constexpr, HALF: tl.constexpr,
                               BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF)[None, :]
    cos = tl.load(cos_ptr + position * cache_stride + dims).to(tl.float32)
    sin = tl.load(sin_ptr + position * cache_stride + dims).to(tl.float32)
    row = qkv_ptr + token * qkv_stride
    q1, q2, heads, q_dims, q_mask = _norm_rope_heads(row, q_weight_ptr, cos, sin, num_q_heads,
                                                     eps, HEAD_DIM, HALF, BLOCK_QH)
    out = q_out_ptr + token * num_q_heads * HEAD_DIM + heads * HEAD_DIM + q_dims
    tl.store(out, q1.to(q_out_ptr.dtype.element_ty), mask=q_mask)
    tl.store(out + HALF, q2.to(q_out_ptr.dtype.element_ty), mask=q_mask)
    if slot >= 0:
        k_row = row + num_q_heads * HEAD_DIM
        k1, k2, kv_heads, k_dims, k_mask = _norm_rope_heads(
            k_row, k_weight_ptr, cos, sin, num_kv_heads, eps, HEAD_DIM, HALF, BLOCK_KH)
        at = slot * num_kv_heads * HEAD_DIM + kv_heads * HEAD_DIM + k_dims
        tl.store(k_cache_ptr + at, k1.to(k_cache_ptr.dtype.element_ty), mask=k_mask)
        tl.store(k_cache_ptr + at + HALF, k2.to(k_cache_ptr.dtype.element_ty), mask=k_mask)
        v_row = k_row + num_kv_heads * HEAD_DIM + kv_heads * HEAD_DIM + k_dims
        v1 = tl.load(v_row, mask=k_mask, other=0.0)
        v2 = tl.load(v_row + HALF, mask=k_mask, other=0.0)
        tl.store(v_cache_ptr + at, v1.to(v_cache_ptr.dtype.element_ty), mask=k_mask)
        tl.store(v_cache_ptr + at + HALF, v2.to(v_cache_ptr.dtype.element_ty), mask=k_mask)


def qk_norm_rope_store(qkv: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
                       q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
                       cos_cache: torch.Tensor, sin_cache: torch.Tensor,
                       k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """One pass over a qkv projection [T, (Hq + 2 Hkv) * D]: RMS-normalise q and k per head,
    rotate them, write k and v to their cache slots (-1: not written); return q [T, Hq, D]."""
    num_tokens = qkv.shape[0]
    _, _, num_kv_heads, head_dim = k_cache.shape
    num_q_heads = qkv.shape[1] // head_dim - 2 * num_kv_heads
    if qkv.stride(-1) != 1:
        raise ValueError("qk_norm_rope_store needs a qkv projection with contiguous rows")
    q = torch.empty(num_tokens, num_q_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if num_tokens == 0:
        return q
    _qk_norm_rope_store_kernel[(num_tokens,)](
        qkv, positions, slot_mapping, q_weight, k_weight, cos_cache, sin_cache, q, k_cache,
        v_cache, qkv.stride(0), cos_cache.stride(0), num_q_heads, num_kv_heads, eps,
        HEAD_DIM=head_dim, HALF=head_dim // 2, BLOCK_QH=triton.next_power_of_2(num_q_heads),
        BLOCK_KH=triton.next_power_of_2(num_kv_heads), num_warps=4,
    )
    return q


def qk_norm_rope_store_reference(qkv, positions, slot_mapping, q_weight, k_weight, eps,
                                 cos_cache, sin_cache, k_cache, v_cache) -> torch.Tensor:
    from jupyter_qwen.model.attention import store_kv_reference

    _, _, num_kv_heads, head_dim = k_cache.shape
    num_q_heads = qkv.shape[1] // head_dim - 2 * num_kv_heads
    q, k, v = qkv.split([num_q_heads * head_dim, num_kv_heads * head_dim,
                         num_kv_heads * head_dim], dim=-1)
    q = rms_norm_reference(q.reshape(-1, num_q_heads, head_dim), q_weight, eps)
    k = rms_norm_reference(k.reshape(-1, num_kv_heads, head_dim), k_weight, eps)
    q, k = rope_reference(positions, q, k, cos_cache, sin_cache)
    store_kv_reference(k, v.reshape(-1, num_kv_heads, head_dim), k_cache, v_cache, slot_mapping)
    return q
