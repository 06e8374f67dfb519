"""Tilings of the quantized products (`quant_linear.py`) for prefill-sized batches.

`QuantTiling` is one launch configuration; `LARGE_M_TILES` maps (format, M bucket, N, K)
to the tiling measured fastest there by `benchmarks/quant_tiles.py` (which prints this
table's literal, and with --apply writes its measured entries here); `large_m_tiling` looks it up and falls back to `DEFAULT_LARGE_M` for
shapes and buckets the table does not name. M buckets: a batch of M rows takes the first
bucket >= M (past the last, the last), so every batch size of a bucket shares one compile.
Each distinct tiling in the table is one more kernel to compile at start-up: the engine's
start-up steps must reach every bucket the table names (`bucket_rows`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

FP8_BLOCK = 128
AWQ_GROUP = 128
M_BUCKETS = (32, 64, 128, 256, 512, 2048, 8192)
# From this many rows an AWQ projection dequantizes its weights to x's dtype in one pass and
# multiplies with cuBLAS (quant_linear.awq_dequantize): the dequantizing GEMM kernels are
# ~0.3-0.4x bf16 there (run 51), the pass costs about a fifth of a bf16 product's read.
# benchmarks/awq_via_bf16.py measures the crossover.
AWQ_VIA_BF16_MIN_M = 256


@dataclass(frozen=True, slots=True)
class QuantTiling:
    """One launch: the M x N tile and its K step, warps and pipeline stages, and
    - `group_m`: M tiles per group in the program order (1: N tiles fastest, each row of
      programs reading all of W; G > 1: G M tiles share each W tile while it is in L2);
    - `fp8_dot` (FP8 only, on FP8 tensor cores): the product runs in e4m3 with activations
      quantized per row and 128 columns; False: W is upcast to x's dtype for the dot;
    - `quantize_x` (with `fp8_dot`): the activations are quantized once by a separate
      kernel (e4m3 rows and their scales), not again by every N tile in its K loop;
    - `chain` (with `fp8_dot`, BLOCK_N dividing 128): the K loop is one chained FP8 dot
      (`acc = dot(a8, w, acc)`, no scaling per step): the N tile's one weight scale row is
      folded into the activations, which take one e4m3 scale per row over all of K, applied
      once in the epilogue. Where a projection's shards put two scale rows in one N tile,
      the product runs as without `chain`;
    - `promote_k` (with `chain`, 0: Triton's default, no promotion on Hopper): the chain's
      tensor-core sums are added to a full fp32 accumulator every `promote_k` columns of K
      (Triton's `max_num_imprecise_acc`: Hopper's FP8 MMA keeps fewer bits in its sums);
    - `tile_scale` (with `quantize_x`, BLOCK_N dividing 128): where every N tile reads one
      weight scale row (as `chain` needs), each K step scales its dot by one vector,
      a_scale[m] * s (one FMA an accumulator element, no [BLOCK_N] scale vector held in
      registers); elsewhere the product runs as without `tile_scale`;
    - `swap_ab` (FP8, BLOCK_K 128, BLOCK_N dividing 128): where every N tile reads one
      weight scale row, the product runs as y.T = W' @ x.T: the N tile's weights times its
      step's scale, in x's dtype (the reference's dequantization), built in registers as
      the dot's left operand, x's tile the right one from shared memory, and the K loop
      one chained dot on x's dtype's tensor cores (no scaling of the sums, no FP8
      activations; BLOCK_M may be as small as 16); elsewhere the product runs as without
      `swap_ab` (`fp8_dot` and the options above are not read when it runs). AWQ: the
      dequantized tile is the left operand the same way (y.T = W @ x.T), on any tiling;
    - `wgmma` (FP8 with `quantize_x`, BLOCK_K 128, BLOCK_M 64 or 128 on BLOCK_M / 16 warps,
      BLOCK_N 64 or 128, group_m 1): on a Hopper GPU, where every N tile reads one weight
      scale row and K is a multiple of `wgmma_chunk` 128-column steps
      (`quant_linear.runs_wgmma`), the product runs in `fp8_wgmma.py` (Gluon): each step's
      wgmma issued asynchronously and the one before it scaled while it runs, `num_stages`
      TMA slots, K in chunks of `wgmma_chunk` steps of straight-line code (2, 4 or 8; each
      chunk's last scaling runs alone); elsewhere as without `wgmma`;
    - `split_k` (the Triton kernels `_fp8_kernel` and `_awq_kernel`: not with `swap_ab` or
      `wgmma`): K split over about `split_k` programs of each output tile, in whole K
      steps (`chunk_of`); each stores its fp32 partial sums and the last of a tile's
      programs to finish adds them in split order and writes y (the same bits whichever
      finishes last). For products whose output tiles are too few to occupy every SM
      (Qwen3-0.6B's o and down: 1,024 outputs; Qwen3-4B's down: K of 9,728)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 1
    fp8_dot: bool = True
    quantize_x: bool = False
    chain: bool = False
    promote_k: int = 0
    tile_scale: bool = False
    swap_ab: bool = False
    wgmma: bool = False
    wgmma_chunk: int = 4
    split_k: int = 1


DEFAULT_LARGE_M = {"fp8": QuantTiling(64, 128, 128), "awq": QuantTiling(64, 128, 64)}

# (format, M bucket, N, K) -> the fastest tiling of benchmarks/quant_tiles.py's sweep,
# printed by the script and pasted here: FP8 at 32-512 rows from run 61 (H100, 2026-12-07,
# with the split-K tilings), Qwen3-0.6B's at 2,048 and 8,192 rows from run 68 (H100,
# 2026-12-07), Qwen3-4B's at 2,048 from run 58 (H100, with the `wgmma` tilings), the other
# FP8 buckets from run 45 (H100), AWQ from runs 51-52 (H200). AWQ batches of
# AWQ_VIA_BF16_MIN_M rows and more take the dequantized copy, so no AWQ entry names a bucket
# past 256.
LARGE_M_TILES: dict[tuple[str, int, int, int], QuantTiling] = {
    ('awq', 32, 4096, 1024): QuantTiling(32, 64, 128),
    ('awq', 64, 4096, 1024): QuantTiling(64, 64, 128),
    ('awq', 128, 4096, 1024): QuantTiling(128, 64, 64),
    ('awq', 256, 4096, 1024): QuantTiling(128, 64, 64),
    ('awq', 32, 1024, 2048): QuantTiling(32, 64, 64),
    ('awq', 64, 1024, 2048): QuantTiling(64, 128, 64, num_warps=8),
    ('awq', 128, 1024, 2048): QuantTiling(64, 64, 128),
    ('awq', 256, 1024, 2048): QuantTiling(32, 64, 128),
    ('awq', 32, 6144, 1024): QuantTiling(32, 64, 128),
    ('awq', 64, 6144, 1024): QuantTiling(64, 64, 128),
    ('awq', 128, 6144, 1024): QuantTiling(128, 64, 64),
    ('awq', 256, 6144, 1024): QuantTiling(128, 128, 128, num_warps=8),
    ('awq', 32, 1024, 3072): QuantTiling(32, 64, 128),
    ('awq', 64, 1024, 3072): QuantTiling(64, 64, 128),
    ('awq', 128, 1024, 3072): QuantTiling(64, 64, 128),
    ('awq', 256, 1024, 3072): QuantTiling(64, 64, 128),
    ('awq', 32, 6144, 2560): QuantTiling(32, 64, 128),
    ('awq', 64, 6144, 2560): QuantTiling(64, 64, 128),
    ('awq', 128, 6144, 2560): QuantTiling(64, 64, 128),
    ('fp8', 2048, 6144, 2560): QuantTiling(128, 128, 128, num_warps=8, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 8192, 6144, 2560): QuantTiling(64, 128, 128, quantize_x=True),
    ('awq', 32, 2560, 4096): QuantTiling(32, 64, 128),
    ('awq', 64, 2560, 4096): QuantTiling(64, 64, 128),
    ('awq', 128, 2560, 4096): QuantTiling(64, 64, 128),
    ('fp8', 2048, 2560, 4096): QuantTiling(64, 128, 128, quantize_x=True, wgmma=True),
    ('fp8', 8192, 2560, 4096): QuantTiling(64, 128, 128, quantize_x=True),
    ('awq', 32, 19456, 2560): QuantTiling(32, 64, 64),
    ('awq', 64, 19456, 2560): QuantTiling(64, 64, 128),
    ('awq', 128, 19456, 2560): QuantTiling(128, 64, 64),
    ('fp8', 2048, 19456, 2560): QuantTiling(128, 128, 128, num_warps=8, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 8192, 19456, 2560): QuantTiling(64, 128, 128, quantize_x=True),
    ('awq', 32, 2560, 9728): QuantTiling(32, 64, 128),
    ('awq', 64, 2560, 9728): QuantTiling(64, 64, 128),
    ('awq', 128, 2560, 9728): QuantTiling(64, 64, 128),
    ('fp8', 2048, 2560, 9728): QuantTiling(128, 128, 128, num_warps=8, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 8192, 2560, 9728): QuantTiling(64, 128, 128, quantize_x=True),
    ('awq', 256, 6144, 2560): QuantTiling(128, 128, 128, num_warps=8, group_m=8),
    ('awq', 256, 2560, 4096): QuantTiling(64, 64, 128),
    ('awq', 256, 19456, 2560): QuantTiling(128, 64, 64),
    ('awq', 256, 2560, 9728): QuantTiling(64, 64, 128),
    ('fp8', 32, 6144, 2560): QuantTiling(32, 64, 128, num_stages=4, quantize_x=True, tile_scale=True, split_k=2),
    ('fp8', 64, 6144, 2560): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 128, 6144, 2560): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 256, 6144, 2560): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 512, 6144, 2560): QuantTiling(64, 128, 128, quantize_x=True, tile_scale=True),
    ('fp8', 32, 2560, 4096): QuantTiling(32, 64, 128, num_stages=4, quantize_x=True, tile_scale=True, split_k=2),
    ('fp8', 64, 2560, 4096): QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True, split_k=4),
    ('fp8', 128, 2560, 4096): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 256, 2560, 4096): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 512, 2560, 4096): QuantTiling(64, 128, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 32, 19456, 2560): QuantTiling(32, 64, 128, num_stages=4, quantize_x=True),
    ('fp8', 64, 19456, 2560): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True, wgmma_chunk=8),
    ('fp8', 128, 19456, 2560): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 256, 19456, 2560): QuantTiling(64, 128, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 512, 19456, 2560): QuantTiling(128, 128, 128, num_warps=8, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 32, 2560, 9728): QuantTiling(32, 64, 128, num_stages=4, quantize_x=True, tile_scale=True, split_k=2),
    ('fp8', 64, 2560, 9728): QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True, split_k=4),
    ('fp8', 128, 2560, 9728): QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True, split_k=4),
    ('fp8', 256, 2560, 9728): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 512, 2560, 9728): QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True),
    ('fp8', 32, 4096, 1024): QuantTiling(32, 64, 128, num_stages=4, quantize_x=True),
    ('fp8', 64, 4096, 1024): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 128, 4096, 1024): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 256, 4096, 1024): QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True),
    ('fp8', 512, 4096, 1024): QuantTiling(64, 128, 128, group_m=8, quantize_x=True, tile_scale=True),
    ('fp8', 32, 1024, 2048): QuantTiling(32, 64, 128, num_stages=4, quantize_x=True, tile_scale=True, split_k=2),
    ('fp8', 64, 1024, 2048): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 128, 1024, 2048): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 256, 1024, 2048): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 512, 1024, 2048): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 32, 6144, 1024): QuantTiling(32, 64, 128, num_stages=4, quantize_x=True, tile_scale=True),
    ('fp8', 64, 6144, 1024): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 128, 6144, 1024): QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True),
    ('fp8', 256, 6144, 1024): QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True),
    ('fp8', 512, 6144, 1024): QuantTiling(64, 128, 128, quantize_x=True, tile_scale=True),
    ('fp8', 32, 1024, 3072): QuantTiling(32, 64, 128, num_stages=4, quantize_x=True, tile_scale=True, split_k=2),
    ('fp8', 64, 1024, 3072): QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True, split_k=4),
    ('fp8', 128, 1024, 3072): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 256, 1024, 3072): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 512, 1024, 3072): QuantTiling(64, 64, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 2048, 4096, 1024): QuantTiling(64, 128, 128, group_m=8, quantize_x=True, tile_scale=True),
    ('fp8', 8192, 4096, 1024): QuantTiling(64, 128, 128, quantize_x=True, tile_scale=True),
    ('fp8', 2048, 1024, 2048): QuantTiling(64, 128, 128, num_stages=4, quantize_x=True, tile_scale=True),
    ('fp8', 8192, 1024, 2048): QuantTiling(64, 128, 128, group_m=8, quantize_x=True, tile_scale=True),
    ('fp8', 2048, 6144, 1024): QuantTiling(64, 128, 128, quantize_x=True, tile_scale=True),
    ('fp8', 8192, 6144, 1024): QuantTiling(64, 128, 128, group_m=8, quantize_x=True, tile_scale=True),
    ('fp8', 2048, 1024, 3072): QuantTiling(64, 128, 128, num_stages=4, quantize_x=True, wgmma=True),
    ('fp8', 8192, 1024, 3072): QuantTiling(64, 128, 128, group_m=8, quantize_x=True, tile_scale=True),
}


def chunk_of(k: int, block_k: int, split_k: int) -> int:
    """Input rows per split when K is split over about `split_k` programs: whole steps of
    block_k, about k / split_k (uneven splits, never an empty one)."""
    steps = -(-k // block_k)
    return -(-steps // max(1, min(split_k, steps))) * block_k


def m_bucket(m: int) -> int:
    return M_BUCKETS[min(bisect.bisect_left(M_BUCKETS, m), len(M_BUCKETS) - 1)]


def large_m_tiling(fmt: str, m: int, n: int, k: int) -> QuantTiling:
    """The table's tiling for `fmt` ("fp8" or "awq") at M rows of an N x K projection."""
    return LARGE_M_TILES.get((fmt, m_bucket(m), n, k), DEFAULT_LARGE_M[fmt])


def bucket_rows(max_rows: int) -> list[int]:
    """Both ends of each M bucket that the table names and a batch of at most `max_rows`
    rows can fall in (its first row and its top, or `max_rows` inside it: a bucket may
    cross a threshold of its own, as quant_linear's rows for cuBLAS, `block_scaled_from`):
    start-up steps of these sizes compile every tiling a prefill can pick."""
    named = sorted({bucket for _, bucket, _, _ in LARGE_M_TILES})
    below = dict(zip(M_BUCKETS, (0, *M_BUCKETS[:-1]), strict=True))
    ends = (end for bucket in named if below[bucket] < max_rows
            for end in (below[bucket] + 1, min(bucket, max_rows)))
    return sorted(set(ends))


def tiling_problem(fmt: str, tiling: QuantTiling) -> str | None:
    """Why `tiling` cannot run `fmt`'s kernel, or None: the K step stays inside one scale
    block / group, AWQ's N tile holds whole packed words, tiles are powers of two that
    tl.dot takes (>= 16), group_m >= 1, `chain`'s, `tile_scale`'s and `swap_ab`'s N tile
    inside one scale row, `wgmma`'s tiles those its kernel takes, `split_k` on the Triton
    kernels only (not `swap_ab` or `wgmma`)."""
    sizes = (tiling.block_m, tiling.block_n, tiling.block_k)
    if any(size < 16 or size & (size - 1) for size in sizes):
        return f"tile {sizes} must be powers of two >= 16"
    if fmt == "fp8" and FP8_BLOCK % tiling.block_k:
        return f"block_k {tiling.block_k} must divide the scale block {FP8_BLOCK}"
    if fmt == "awq" and (AWQ_GROUP % tiling.block_k or tiling.block_n % 8):
        return f"block_k {tiling.block_k} must divide the group {AWQ_GROUP}, block_n be 8k"
    if fmt == "fp8" and tiling.fp8_dot and tiling.block_k != FP8_BLOCK:
        return f"FP8 tensor cores quantize x per {FP8_BLOCK} columns: block_k must be that"
    if tiling.quantize_x and not (fmt == "fp8" and tiling.fp8_dot):
        return "quantize_x needs the FP8 tensor-core product"
    if tiling.chain and not (fmt == "fp8" and tiling.fp8_dot and not tiling.quantize_x):
        return "chain needs the FP8 tensor-core product, activations quantized in the loop"
    if tiling.chain and FP8_BLOCK % tiling.block_n:
        return f"chain folds one scale row into x: block_n must divide {FP8_BLOCK}"
    if tiling.tile_scale and not (tiling.quantize_x and FP8_BLOCK % tiling.block_n == 0):
        return f"tile_scale needs quantize_x and block_n dividing {FP8_BLOCK}"
    if tiling.swap_ab and fmt == "fp8" and not (tiling.block_k == FP8_BLOCK
                                                and FP8_BLOCK % tiling.block_n == 0):
        return f"FP8 swap_ab takes block_k {FP8_BLOCK} and block_n dividing {FP8_BLOCK}"
    if tiling.swap_ab and (tiling.chain or tiling.quantize_x or tiling.tile_scale):
        return "swap_ab runs without FP8 activations: no chain, quantize_x or tile_scale"
    if tiling.promote_k and not (tiling.chain and 16 <= tiling.promote_k <= tiling.block_k
                                 and not tiling.promote_k & (tiling.promote_k - 1)):
        return f"promote_k {tiling.promote_k}: a power of two in 16 ... block_k, with chain"
    if tiling.wgmma and not (fmt == "fp8" and tiling.quantize_x and tiling.block_k == FP8_BLOCK
                             and tiling.block_m in (64, 128) and tiling.block_n in (64, 128)
                             and tiling.num_warps == tiling.block_m // 16
                             and tiling.group_m == 1 and not tiling.tile_scale
                             and tiling.wgmma_chunk in (2, 4, 8)):
        return ("wgmma takes FP8 with quantize_x, block_k 128, block_m 64 or 128 on "
                "block_m / 16 warps, block_n 64 or 128, group_m 1, wgmma_chunk 2, 4 or 8")
    if tiling.split_k < 1 or (tiling.split_k > 1 and (tiling.swap_ab or tiling.wgmma)):
        return f"split_k {tiling.split_k}: at least 1, and 1 with swap_ab or wgmma"
    if tiling.wgmma_chunk != 4 and not tiling.wgmma:
        return "wgmma_chunk is read by wgmma tilings only"
    if tiling.group_m < 1 or tiling.num_warps not in (1, 2, 4, 8, 16) or tiling.num_stages < 1:
        return f"group_m {tiling.group_m}, num_warps {tiling.num_warps}, stages"
    return None
