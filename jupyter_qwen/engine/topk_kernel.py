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
def decode_keys(keys):
    """(float32 values, int64 token ids) of sort keys."""
    high = (keys >> 32).to(tl.int32)
    bits = tl.where(high < 0, high ^ MAGNITUDE, high)
    return bits.to(tl.float32, bitcast=True), ~keys & LOW_HALF


@triton.jit
def _chunk_keys(logits, row, chunk, row_stride, vocab, CHUNK: tl.constexpr):
    """The sort keys of one chunk of a row's logits (PADDING past the vocabulary)."""
    index = chunk * CHUNK + tl.arange(0, CHUNK)
    inside = index < vocab
    values = tl.load(logits + row.to(tl.int64) * row_stride + index, mask=inside, other=0.0)
    return tl.where(inside, _sort_keys(values.to(tl.float32), index), PADDING)


@triton.jit
def _chunk_top(logits, row_stride, vocab, keys_out, CHUNK: tl.constexpr, WIDTH: tl.constexpr):
    """Stage 1, program (row, chunk): the WIDTH largest keys of CHUNK logits, descending."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    keys = _chunk_keys(logits, row, chunk, row_stride, vocab, CHUNK)
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
    values, indices = decode_keys(best)
    out = row.to(tl.int64) * WIDTH + tl.arange(0, WIDTH)
    tl.store(values_out + out, values)
    tl.store(indices_out + out, indices)


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


# --------------------------------------------------------------------------- threshold top-W
#
# The bitonic stages above cost most of their time in the partial sorts of 4096-long runs.
# `threshold_candidates` selects less: stage 1 keeps only each chunk's largest key; stage 2
# (every (row, chunk) again) takes the W-th largest of the row's chunk maxima as a threshold
# (W chunk maxima are at least it, so it is at most the row's W-th largest key: every one of
# the W largest keys passes) and appends its chunk's keys at or above it to the row's list,
# at a place taken by an atomic add. For i.i.d. logits about W * 1.5 keys pass; the consumer
# (`window_kernel.graph_window_draw`) takes the W largest of the list with one `tl.topk`. A
# list longer than its capacity (long tie runs, -inf rows) loses keys: the consumer then
# marks the row unsettled, and the sampler redoes it by the full sort. The list's order
# depends on the atomics; its set, and so the W largest, does not.


@dataclass(frozen=True, slots=True)
class ThresholdTiling:
    """Logits per program (the row then has at least `width` chunks), and how many keys a
    row's candidate list holds (a power of two, at least the width)."""

    chunk: int
    capacity: int


THRESHOLD_TILINGS = {64: ThresholdTiling(chunk=1024, capacity=512),
                     256: ThresholdTiling(chunk=512, capacity=1024)}


@dataclass(slots=True)
class Candidates:
    """Each row's keys at or above its threshold ([rows, capacity] int64, `counts` of them
    written, in any order; a count above the capacity means keys were lost)."""

    keys: torch.Tensor
    counts: torch.Tensor  # [rows] int32


@triton.jit
def _chunk_max(logits, row_stride, vocab, maxima, CHUNK: tl.constexpr):
    """Stage 1, program (row, chunk): the chunk's largest key."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    keys = _chunk_keys(logits, row, chunk, row_stride, vocab, CHUNK)
    tl.store(maxima + row.to(tl.int64) * tl.num_programs(1) + chunk, tl.max(keys, 0))


@triton.jit
def _gather_above(logits, row_stride, vocab, maxima, keys_out, counts, CHUNK: tl.constexpr,
                  WIDTH: tl.constexpr, MAXIMA: tl.constexpr, CAPACITY: tl.constexpr):
    """Stage 2, program (row, chunk): the chunk's keys at or above the W-th largest chunk
    maximum, appended to the row's list."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    chunks = tl.num_programs(1)
    offs = tl.arange(0, MAXIMA)
    best = tl.load(maxima + row.to(tl.int64) * chunks + offs, mask=offs < chunks,
                   other=PADDING)
    threshold = tl.min(tl.topk(best, WIDTH), 0)
    keys = _chunk_keys(logits, row, chunk, row_stride, vocab, CHUNK)
    above = (keys >= threshold).to(tl.int32)
    count = tl.sum(above, 0)
    if count > 0:
        start = tl.atomic_add(counts + row, count)
        place = start + tl.cumsum(above, 0) - 1
        tl.store(keys_out + row.to(tl.int64) * CAPACITY + place, keys,
                 mask=(above > 0) & (place < CAPACITY))


def threshold_fits(vocab: int, width: int, tiling: ThresholdTiling | None = None) -> bool:
    """Whether a row of `vocab` logits has the `width` chunks the threshold needs."""
    tiling = tiling or THRESHOLD_TILINGS.get(width)
    return tiling is not None and triton.cdiv(vocab, tiling.chunk) >= width


def threshold_candidates(logits: torch.Tensor, width: int,
                         tiling: ThresholdTiling | None = None) -> Candidates:
    """Lists holding each row's `width` largest keys (see above). Two launches and one
    memset, no host read: CUDA-graph safe. `decode_keys` turns keys back into values and
    token ids."""
    rows, vocab = logits.shape
    tiling = tiling or THRESHOLD_TILINGS[width]
    if not threshold_fits(vocab, width, tiling) or tiling.capacity < width:
        raise ValueError(f"a threshold top {width} needs {width} chunks of {tiling.chunk} "
                         f"logits and a list of at least {width}")
    if logits.stride(-1) != 1 or logits.data_ptr() % 16:
        logits = logits.contiguous() if logits.stride(-1) != 1 else logits.clone()
    chunks = triton.cdiv(vocab, tiling.chunk)
    maxima = torch.empty(rows, chunks, dtype=torch.int64, device=logits.device)
    keys = torch.empty(rows, tiling.capacity, dtype=torch.int64, device=logits.device)
    counts = torch.zeros(rows, dtype=torch.int32, device=logits.device)
    _chunk_max[(rows, chunks)](logits, logits.stride(0), vocab, maxima, CHUNK=tiling.chunk)
    _gather_above[(rows, chunks)](logits, logits.stride(0), vocab, maxima, keys, counts,
                                  CHUNK=tiling.chunk, WIDTH=width,
                                  MAXIMA=triton.next_power_of_2(chunks),
                                  CAPACITY=tiling.capacity)
    return Candidates(keys, counts)


@triton.jit
def top_of_candidates(keys, counts, row, WIDTH: tl.constexpr, CAPACITY: tl.constexpr):
    """The WIDTH largest keys of row `row`'s list, descending, and whether the list lost
    keys (then they may not be the row's largest)."""
    count = tl.load(counts + row)
    offs = tl.arange(0, CAPACITY)
    listed = tl.load(keys + row.to(tl.int64) * CAPACITY + offs, mask=offs < count,
                     other=PADDING)
    return tl.topk(listed, WIDTH), count > CAPACITY

