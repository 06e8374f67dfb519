"""FP8 prefill products on Hopper's FP8 tensor cores with each K step's scaling taken off
the tensor cores' path (Gluon, sm_90 only).

y = x @ W.T for a Qwen FP8 projection whose every N tile reads one weight scale row
(`quant_linear.one_scale_row`), with x already in e4m3 and its per-row, per-128-column
scales (`quant_linear._quantize_x`). Each 128-column K step's FP8 product must be scaled by
a_scale[m] * s before it joins the fp32 sum, so the Triton-language kernels wait for every
step's wgmma before scaling it and the tensor cores idle meanwhile. Here the wait is
explicit: step i's wgmma is issued asynchronously into one of two register tiles, then the
kernel waits only for step i - 1's (`warpgroup_mma_wait(num_outstanding=1)`), scales that
one into the accumulator while step i's runs, and refills step i - 1's shared-memory slot
with the tiles of step i + STAGES - 1 (TMA, one mbarrier a slot). K runs in chunks of
straight-line steps with nothing in flight between chunks (what ptxas needs to keep the
wgmma asynchronous: `benchmarks/KERNEL_NOTES.md`). The arithmetic is the
`quantize_x` / `tile_scale` kernel's: e4m3 x e4m3 products of one 128-column block summed
by the tensor cores, times a_scale[m] * s in fp32, added in K order.

Tiles: BLOCK_M 64 (4 warps, one warp group) or 128 (8 warps, two warp groups sharing each
W tile), BLOCK_N 64 or 128, BLOCK_K 128; programs ordered M tiles first, so the M tiles of
one W tile run together and W is read from DRAM about once. The TMA descriptors are made
on the host each call (x's rows past M and W's past N read as zeros); launches are CUDA-graph
safe as long as the same buffers are used at replay, as with every other kernel here.
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

K_BLOCK = 128  # one scale block of K a step


@gluon.jit
def _load_step(x_desc, w_desc, x_ring, w_ring, ready, step, steps, off_m, off_n,
               STAGES: gl.constexpr):
    """Start the TMA copies of step `step`'s x and W tiles into its ring slot (none past the
    last step); the slot's barrier completes when both have landed."""
    slot = step % STAGES
    bar = ready.index(slot)
    live = step < steps
    mbarrier.expect(bar, x_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=live)
    k = step * x_desc.block_type.shape[1]
    tma.async_copy_global_to_shared(x_desc, [off_m, k], bar, x_ring.index(slot), pred=live)
    tma.async_copy_global_to_shared(w_desc, [off_n, k], bar, w_ring.index(slot), pred=live)


@gluon.jit
def _step_product(x_ring, w_ring, ready, step, spare, STAGES: gl.constexpr):
    """Wait for step `step`'s tiles and issue their FP8 product into the registers of
    `spare`, a tile no longer needed (its values are not read), asynchronously: the result
    is read only after a `warpgroup_mma_wait`."""
    slot = step % STAGES
    mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
    return warpgroup_mma(x_ring.index(slot), w_ring.index(slot).permute((1, 0)), spare,
                         use_acc=False, is_async=True)


@gluon.jit
def _chunk_scales(xs_ptr, xs_stride, ms, m_ok, scale_at, first, steps, CHUNK: gl.constexpr):
    """The loads of K steps first .. first + CHUNK - 1's scales (none past the last step):
    x's row scales (a [BLOCK_M] vector a step) and the tile's weight scale (one a step),
    issued a chunk before they are used, so their latency hides behind the chunk's products."""
    row_scales = ()
    weight_scales = ()
    for i in gl.static_range(CHUNK):  # tuples grow by + in Gluon (no starred unpacking)
        live = first + i < steps
        row = gl.load(xs_ptr + ms * xs_stride + first + i, mask=m_ok & live, other=0.0)
        row_scales = row_scales + (row,)  # noqa: RUF005
        weight = gl.load(scale_at + first + i, mask=live, other=0.0)
        weight_scales = weight_scales + (weight,)  # noqa: RUF005
    return row_scales, weight_scales


@gluon.jit
def _pinned(values):
    """`values` through an empty asm with side effects: LLVM keeps it in program order with
    the wgmma asm, so what computes `values` happens here, not later."""
    return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [values], dtype=gl.float32,
                                     is_pure=False, pack=1)


@gluon.jit
def _retire(part, scale, acc, outstanding: gl.constexpr):
    """Wait until at most `outstanding` products are in flight (so `part`, the older one,
    is done) and add it, scaled, to the accumulator. Returns the accumulator and the done
    tile, whose registers the next product may take (its input is not read). The sum is
    `_pinned`: otherwise LLVM sinks the FMAs past the next product's issue, the done tile
    stays live there, its registers are copied into the next product's and ptxas
    serialises every wgmma (C7515)."""
    done = warpgroup_mma_wait(num_outstanding=outstanding, deps=(part,))
    return _pinned(acc + done * scale[:, None]), done


@gluon.jit(do_not_specialize=["M"])
def _fp8_wgmma_kernel(x_desc, w_desc, xs_ptr, s_ptr, srow_ptr, y_ptr, M, N, K, xs_stride,
                      s_stride, y_stride, STAGES: gl.constexpr, CHUNK: gl.constexpr,
                      num_warps: gl.constexpr):
    """K runs in chunks of CHUNK steps (K / 128 a multiple of CHUNK: `quant_linear.
    runs_wgmma`). Inside a chunk (straight-line code) two register tiles take the products
    in turn: step i + 1's product is issued, then step i's is waited for and scaled while
    it runs. No product is in flight across the chunk loop's back edge: ptxas cannot follow
    wgmma groups around a loop and would serialise every wgmma (C7514), so each chunk's
    last scaling runs alone."""
    BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32])
    off_m = gl.program_id(0) * BLOCK_M
    off_n = gl.program_id(1) * BLOCK_N
    x_ring = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    w_ring = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
    steps = gl.cdiv(K, BLOCK_K)
    for i in gl.static_range(STAGES):
        _load_step(x_desc, w_desc, x_ring, w_ring, ready, i, steps, off_m, off_n, STAGES)

    ms = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
    m_ok = ms < M
    scale_at = s_ptr + gl.load(srow_ptr + off_n) * s_stride
    acc = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout)
    # the registers the two product tiles are issued into (their values are not read)
    spare_a = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout)
    spare_b = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout)
    row_next, weight_next = _chunk_scales(xs_ptr, xs_stride, ms, m_ok, scale_at, 0, steps, CHUNK)
    for first in range(0, steps, CHUNK):
        row_scales, weight_scales = row_next, weight_next
        row_next, weight_next = _chunk_scales(xs_ptr, xs_stride, ms, m_ok, scale_at,
                                              first + CHUNK, steps, CHUNK)
        part = _step_product(x_ring, w_ring, ready, first, spare_a, STAGES)
        for i in gl.static_range(1, CHUNK):
            following = _step_product(x_ring, w_ring, ready, first + i, spare_b, STAGES)
            acc, spare_b = _retire(part, row_scales[i - 1] * weight_scales[i - 1], acc, 1)
            # step first + i - 1 has read its slot: refill it, STAGES steps on
            _load_step(x_desc, w_desc, x_ring, w_ring, ready, first + i - 1 + STAGES, steps,
                       off_m, off_n, STAGES)
            part = following
        acc, spare_a = _retire(part, row_scales[CHUNK - 1] * weight_scales[CHUNK - 1], acc, 0)
        _load_step(x_desc, w_desc, x_ring, w_ring, ready, first + CHUNK - 1 + STAGES, steps,
                   off_m, off_n, STAGES)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(i))

    ns = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    mask = m_ok[:, None] & (ns < N)[None, :]
    gl.store(y_ptr + ms[:, None] * y_stride + ns[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@functools.cache
def _tile_layout(rows: int) -> gl.NVMMASharedLayout:
    """The shared-memory layout of a [rows, 128] e4m3 tile (128-byte swizzle), as TMA
    writes it and wgmma reads it."""
    return gl.NVMMASharedLayout.get_default_for([rows, K_BLOCK], gl.float8e4nv)


def fp8_wgmma_product(x8: torch.Tensor, x_scales: torch.Tensor, weight: torch.Tensor,
                      scale_inv: torch.Tensor, scale_rows: torch.Tensor, y: torch.Tensor,
                      block_m: int, block_n: int, stages: int, chunk: int) -> None:
    """y [M, N] = (x8 [M, K] e4m3 with its [M, K / 128] scales) @ dequantized(weight).T,
    written in y's dtype. Every N tile of `block_n` rows must read one scale row and K be a
    multiple of `chunk` 128-column steps (`quant_linear.runs_wgmma`)."""
    m, k = x8.shape
    n = weight.shape[0]
    x_desc = TensorDescriptor.from_tensor(x8, [block_m, K_BLOCK], _tile_layout(block_m))
    w_desc = TensorDescriptor.from_tensor(weight, [block_n, K_BLOCK], _tile_layout(block_n))
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _fp8_wgmma_kernel[grid](x_desc, w_desc, x_scales, scale_inv, scale_rows, y, m, n, k,
                            x_scales.stride(0), scale_inv.stride(0), y.stride(0),
                            STAGES=stages, CHUNK=chunk, num_warps=block_m // 16)
