"""The sampler's candidate window (the W largest logits of a few rows) over many Triton programs.

`torch.topk` gives each row to one thread block: at batch 1 one block walks all 151,936 logits
while the rest of the GPU waits. Here stage 1 splits each row into chunks, one program per
(row, chunk), each keeping its chunk's W largest; stage 2, one program per row, merges the
chunks' candidates, a slab at a time, into the row's W largest. `sampler.window_draw` uses this
for rows up to `sampler.TOPK_KERNEL_MAX_ROWS` at the widths it names; more rows
fill the GPU through `torch.topk` alone.

Both stages select on one int64 key per logit: the float32 value mapped to an order-preserving
int32 in the high half, the complement of its index in the low half. Keys are distinct, so the
W largest keys are one set whatever the chunking: the W largest values and, among values tied
with the W-th, the lowest indices. Values come out descending, equal values in ascending index
order; -0.0 counts as 0.0 (returned as 0.0) and NaN as larger than +inf, as in `torch.topk`;
padding past a row's end sorts below every logit, -inf included. Selection is Triton's bitonic
`tl.topk` (a partial sort of W-long runs, then halving by pairwise maxima). Imported only where
Triton runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

PADDING = tl.constexpr(-(2**63))  # below every logit's key
LOW_HALF = tl.constexpr(2**32 - 1)
MAGNITUDE = tl.constexpr(2**31 - 1)


@dataclass(frozen=True, slots=True)
class TopkTiling:
    """How one width runs: logits per stage-1 program, candidates per stage-2 step (both
    powers of two, at least the width), and each stage's warps."""

    chunk: int
    chunk_warps: int
    slab: int
    merge_warps: int


# per window width; the fastest of benchmarks/topk_kernel.py's sweep summed over 1-8 rows
# (run 44, H100)
TILINGS = {64: TopkTiling(chunk=4096, chunk_warps=8, slab=4096, merge_warps=8),
           256: TopkTiling(chunk=8192, chunk_warps=8, slab=2048, merge_warps=4)}


@triton.jit
def _sort_keys(values, index):
    """int64 keys ordered as (value, -index): the high half is the value's bits as an
    order-preserving int32 (after -0.0 -> 0.0 and any NaN -> +NaN)."""
    values = tl.where(values == 0.0, 0.0, values)
    values = tl.where(values != values, float("nan"), values)
    bits = values.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ MAGNITUDE, bits)
    return (ordered.to(tl.int64) << 32) | (~index.to(tl.int64) & LOW_HALF)


@triton.jit
def _chunk_top(logits, row_stride, vocab, keys_out, CHUNK: tl.constexpr, WIDTH: tl.constexpr):
    """Stage 1, program (row, chunk): the WIDTH largest keys of CHUNK logits, descending."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    index = chunk * CHUNK + tl.arange(0, CHUNK)
    inside = index < vocab
    values = tl.load(logits + row.to(tl.int64) * row_stride + index, mask=inside, other=0.0)
    keys = tl.where(inside, _sort_keys(values.to(tl.float32), index), PADDING)
    first = (row.to(tl.int64) * tl.num_programs(1) + chunk) * WIDTH
    tl.store(keys_out + first + tl.arange(0, WIDTH), tl.topk(keys, WIDTH))


@triton.jit
def _merge_top(keys_in, candidates, values_out, indices_out, WIDTH: tl.constexpr,
               SLAB: tl.constexpr):
    """Stage 2, program row: the WIDTH largest of the row's `candidates` keys, a SLAB at a
    time (each slab's top merged into the running top by a bitonic merge), decoded."""
    row = tl.program_id(0)
    keys = keys_in + row.to(tl.int64) * candidates
    offs = tl.arange(0, SLAB)
    best = tl.topk(tl.load(keys + offs, mask=offs < candidates, other=PADDING), WIDTH)
    for start in range(SLAB, candidates, SLAB):
        slab = tl.load(keys + start + offs, mask=start + offs < candidates, other=PADDING)
        rising = tl.flip(tl.topk(slab, WIDTH), 0)
        best = tl.bitonic_merge(tl.maximum(best, rising), descending=True)
    high = (best >> 32).to(tl.int32)
    bits = tl.where(high < 0, high ^ MAGNITUDE, high)
    out = row.to(tl.int64) * WIDTH + tl.arange(0, WIDTH)
    tl.store(values_out + out, bits.to(tl.float32, bitcast=True))
    tl.store(indices_out + out, ~best & LOW_HALF)


def many_program_topk(logits: torch.Tensor, width: int, tiling: TopkTiling | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits.topk(width, dim=-1)` for [rows, vocab] logits (vocab >= width): values
    ([rows, width] float32, descending) and indices ([rows, width] int64); among tied values
    the lowest indices, in ascending order. Two launches, no host read: CUDA-graph safe."""
    rows, vocab = logits.shape
    tiling = tiling or TILINGS[width]
    if vocab < width or min(tiling.chunk, tiling.slab) < width:
        raise ValueError(f"top {width} needs at least {width} logits and tiles")
    if logits.stride(-1) != 1 or logits.data_ptr() % 16:
        logits = logits.contiguous() if logits.stride(-1) != 1 else logits.clone()
    chunks = triton.cdiv(vocab, tiling.chunk)
    keys = torch.empty(rows, chunks * width, dtype=torch.int64, device=logits.device)
    values = torch.empty(rows, width, dtype=torch.float32, device=logits.device)
    indices = torch.empty(rows, width, dtype=torch.int64, device=logits.device)
    _chunk_top[(rows, chunks)](logits, logits.stride(0), vocab, keys, CHUNK=tiling.chunk,
                               WIDTH=width, num_warps=tiling.chunk_warps)
    _merge_top[(rows,)](keys, chunks * width, values, indices, WIDTH=width, SLAB=tiling.slab,
                        num_warps=tiling.merge_warps)
    return values, indices
