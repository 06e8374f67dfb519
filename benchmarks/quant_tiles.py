"""Sweep the prefill tilings of the FP8 and AWQ products against cuBLAS bf16 (one GPU call).

    python benchmarks/quant_tiles.py                       # ~2-3 min on an H100 / H200
    python benchmarks/quant_tiles.py --quick               # 6 tilings a format, 3 batch sizes
    python benchmarks/quant_tiles.py --formats fp8 --shapes 4B --m 256,2048

For Qwen3-0.6B's and Qwen3-4B's projections (qkv, o, gate_up, down) at M = 32 ... 8192 rows
(bf16 activations): torch F.linear on the bf16 weight (cuBLAS) is the baseline; `fp8_linear`
(FP8 tensor cores where the card has them) and `awq_linear` run over a grid of
`QuantTiling`s (quant_tiles.py): tile sizes, warps, stages, grouped program order
(`group_m`), activations quantized by a separate launch (`quantize_x`), with one weight
scale per N tile and step (`tile_scale`), and FP8 without its tensor cores
(`fp8_dot=False`). Tilings whose M tile is past the batch (or whose grouping
cannot regroup a single M tile) are skipped.

Every variant is first checked at each (shape, M) against the dequantizing reference (a
float32 product of the bf16 activations and the weight dequantized to bf16, fresh random
weights per shape; output memory poisoned with NaN beforehand): relative error under 2e-2
(bf16 output), 5e-2 on FP8 tensor cores (activations in e4m3); a failing variant is skipped
with a FAIL line. Times are triton.testing.do_bench medians, which clears the L2 (256 MB
write) before every timed launch, so weights and activations come from HBM as they do in a
model whose layers each read their own weights. Batches of up to --graph-rows rows (256,
the engine's decode steps, which replay CUDA graphs) are timed as graph replays, the GPU's
time alone; larger ones (prefill, launched from Python) as Python launches: a product whose
launch costs the host more than the L2 clear takes is timed host-bound there, as it runs
(`benchmarks/fp8_host_cost.py`: ~60-110 us for the FP8 paths). As in the engine, the
`quantize_x` tilings take their rows already quantized (the fused norms, the attention
kernels and SiLU·mul make them so, `Fp8Rows`; quantized before the timing).

Every kernel variant is compiled first in parallel worker processes (Triton's disk cache),
and the compile count and time are printed (compiles in this process, too: a kernel its
workers did not reach). Past --budget seconds, the remaining points time only bf16, today's
default and the tilings that have won so far.

Printed last: per (shape, M) the best tiling of each format, its time and speed against bf16
(bf16 time / format time: >= 1 is faster); per model and M the sum over the four
projections (best tilings and today's default); and the `LARGE_M_TILES` literal for
quant_tiles.py (entries whose winner beats the default by more than --min-gain). Full
numbers: $OUT/quant_tiles.json. `--apply` also writes the measured entries into
jupyter_qwen/model/kernels/quant_tiles.py: each measured (format, M bucket, N, K) takes
its winner, or loses its entry where the default stays; entries not measured are kept
(its prose comment, which says where the figures come from, is for the reader to update).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernel_setup import rewrite_table
from jupyter_qwen.model.kernels.quant_tiles import (
    AWQ_VIA_BF16_MIN_M,
    DEFAULT_LARGE_M,
    M_BUCKETS,
    QuantTiling,
    tiling_problem,
)

START = time.perf_counter()
SHAPES = {  # model: projection: (N, K)
    "0.6B": {"qkv": (4096, 1024), "o": (1024, 2048), "gate_up": (6144, 1024),
             "down": (1024, 3072)},
    "1.7B": {"qkv": (4096, 2048), "o": (2048, 2048), "gate_up": (12288, 2048),
             "down": (2048, 6144)},
    "4B": {"qkv": (6144, 2560), "o": (2560, 4096), "gate_up": (19456, 2560),
           "down": (2560, 9728)},
}
ROWS = M_BUCKETS
QUICK_ROWS = (64, 256, 2048)
FORMATS = ("fp8", "awq")
TOLERANCE = 2e-2
FP8_DOT_TOLERANCE = 5e-2
WARMUP_MS, REP_MS = 5, 20

T = QuantTiling


def fp8_grid() -> list[QuantTiling]:
    """Today's default first; then tile / warp / stage variants on FP8 tensor cores,
    separately quantized activations with and without one weight scale a tile
    (`tile_scale`), two without FP8 dot, and W8A16 tilings (`swap_ab`: y.T = W' @ x.T on
    bf16 tensor cores, W' made in registers), and the Gluon kernel's tilings (`wgmma`, last:
    QUICK_PICKS index the list). Dropped after run 47
    (H100): tilings that won no point and came within 5 % of a point's best at most once:
    every `chain` tiling, 128 x 128 and 128 x 256 without `quantize_x`, 128 x 256 with it,
    grouped 64 x 128, upcast 64 x 128 / 128 x 128."""
    dot = [T(64, 128, 128), T(32, 64, 128), T(32, 64, 128, 4, 4), T(64, 64, 128),
           T(64, 128, 128, 4, 4), T(64, 128, 128, 8, 3), T(64, 256, 128, 8, 3)]
    quantized = [T(32, 64, 128, 4, 4, quantize_x=True), T(64, 128, 128, quantize_x=True),
                 T(128, 128, 128, 8, 3, group_m=8, quantize_x=True)]
    one_scale = [T(32, 64, 128, 4, 4, quantize_x=True, tile_scale=True),
                 T(64, 64, 128, quantize_x=True, tile_scale=True),
                 T(64, 128, 128, quantize_x=True, tile_scale=True),
                 T(64, 128, 128, 4, 3, group_m=8, quantize_x=True, tile_scale=True),
                 T(64, 128, 128, 4, 4, quantize_x=True, tile_scale=True),
                 T(128, 128, 128, 8, 3, group_m=8, quantize_x=True, tile_scale=True),
                 T(128, 128, 128, 8, 4, group_m=8, quantize_x=True, tile_scale=True)]
    upcast = [replace(t, fp8_dot=False) for t in (T(32, 64, 128), T(64, 64, 128))]
    swapped = [replace(t, fp8_dot=False, swap_ab=True) for t in (
        T(16, 128, 128, 4, 4), T(32, 128, 128, 4, 4), T(64, 128, 128, 4, 3),
        T(64, 128, 128, 4, 4), T(64, 64, 128, 4, 4), T(128, 128, 128, 8, 3, group_m=8),
        T(128, 128, 128, 4, 3, group_m=8), T(256, 128, 128, 8, 3, group_m=8))]
    # the Gluon kernel (fp8_wgmma.py): each step's scaling while the next step's wgmma runs
    wgmma = [T(64, 128, 128, 4, 4, quantize_x=True, wgmma=True),
             T(64, 128, 128, 4, 3, quantize_x=True, wgmma=True),
             T(64, 64, 128, 4, 4, quantize_x=True, wgmma=True),
             T(128, 128, 128, 8, 4, quantize_x=True, wgmma=True),
             # chunks of 8 steps (K a multiple of 1,024): half as many drains; the 128-wide
             # tiles spill at 8 (eight steps' scales held a chunk ahead), the 64-wide do not
             T(64, 64, 128, 4, 4, quantize_x=True, wgmma=True, wgmma_chunk=8)]
    # K split over programs (not yet measured): products with too few output tiles for
    # every SM, as Qwen3-0.6B's o and down (1,024 outputs: 16 N tiles of 64)
    split = [T(32, 64, 128, 4, 4, quantize_x=True, tile_scale=True, split_k=2),
             T(64, 64, 128, quantize_x=True, tile_scale=True, split_k=2),
             T(64, 64, 128, quantize_x=True, tile_scale=True, split_k=4),
             T(64, 128, 128, quantize_x=True, tile_scale=True, split_k=2),
             T(64, 128, 128, 4, 4, quantize_x=True, tile_scale=True, split_k=4)]
    return [*dot, *quantized, *one_scale, *upcast, *swapped, *wgmma, *split]


def awq_grid() -> list[QuantTiling]:
    return [T(64, 128, 64), T(32, 64, 64), T(32, 128, 64), T(32, 64, 128), T(32, 128, 128, 4, 2),
            T(64, 64, 64), T(64, 64, 128), T(64, 128, 128), T(64, 128, 64, 4, 4),
            T(64, 128, 64, 4, 2), T(64, 128, 64, 8, 3), T(64, 256, 64, 8, 3),
            T(128, 64, 64), T(128, 128, 64), T(128, 128, 64, 8, 3), T(128, 128, 64, 8, 4),
            T(128, 128, 128, 8, 3), T(128, 256, 64, 8, 3), T(64, 128, 64, group_m=8),
            T(128, 128, 64, 8, 3, group_m=8), T(128, 128, 128, 8, 3, group_m=8),
            T(128, 256, 64, 8, 3, group_m=8),
            # the tile as the dot's left operand (not yet measured)
            *(replace(t, swap_ab=True) for t in (
                T(16, 128, 64), T(32, 128, 64), T(64, 128, 64), T(64, 64, 128, 4, 4),
                T(128, 128, 64, 8, 3, group_m=8), T(64, 128, 64, 4, 4, group_m=8))),
            # K split over programs (not yet measured): few output tiles, long K
            T(32, 64, 128, split_k=4), T(64, 64, 128, split_k=2), T(64, 64, 128, split_k=4)]


QUICK_PICKS = {"fp8": (0, 1, 8, 12, 15, 17, 21, 24), "awq": (0, 1, 13, 14, 19, 18, 24, 26)}


def grid(fmt: str, quick: bool) -> list[QuantTiling]:
    tilings = fp8_grid() if fmt == "fp8" else awq_grid()
    return [tilings[i] for i in QUICK_PICKS[fmt]] if quick else tilings


def fits(tiling: QuantTiling, m: int) -> bool:
    """Worth timing at M rows: the M tile is not past the batch (32 always runs), and a
    grouped order has more than one M tile to regroup."""
    if tiling.block_m > max(32, m):
        return False
    return tiling.group_m == 1 or -(-m // tiling.block_m) > 1


def say(text: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {text}", flush=True)


def label(tiling: QuantTiling) -> str:
    text = (f"{tiling.block_m}x{tiling.block_n}x{tiling.block_k} "
            f"w{tiling.num_warps}s{tiling.num_stages}")
    if tiling.group_m > 1:
        text += f" g{tiling.group_m}"
    if tiling.swap_ab:
        text += " swap"
    elif not tiling.fp8_dot:
        text += " upcast"
    if tiling.quantize_x:
        text += " qx"
    if tiling.chain:
        text += " chain"
    if tiling.promote_k:
        text += f" p{tiling.promote_k}"
    if tiling.tile_scale:
        text += " ts"
    if tiling.wgmma:
        text += " wgmma" if tiling.wgmma_chunk == 4 else f" wgmma c{tiling.wgmma_chunk}"
    if tiling.split_k > 1:
        text += f" k{tiling.split_k}"
    return text


# ---------------------------------------------------------------- operands and launches


@dataclass(slots=True)
class Projection:
    """One N x K projection on the GPU: the bf16 weight, its FP8 and AWQ packings and the
    weights each format dequantizes to (in bf16, the reference's operands)."""

    weight: torch.Tensor
    fp8: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    awq: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    dequantized: dict[str, torch.Tensor]


def make_projection(n: int, k: int, generator: torch.Generator) -> Projection:
    from jupyter_qwen.model.quant import awq, fp8

    w = torch.randn(n, k, generator=generator, device="cuda") * k ** -0.5
    values, scales = fp8.quantize_fp8_blocks(w)
    rows = fp8.scale_rows_of([n]).cuda()
    packed = awq.quantize_awq(w)
    return Projection(
        weight=w.to(torch.bfloat16), fp8=(values, scales, rows), awq=packed,
        dequantized={"fp8": fp8.dequantize_fp8_blocks(values, scales, rows).to(torch.bfloat16),
                     "awq": awq.dequantize_awq(*packed).to(torch.bfloat16)})


def launcher(fmt: str, projection: Projection, tiling: QuantTiling, fp8_dot: bool,
             handed: dict | None = None):
    """run(x) for one candidate. `handed` (id(x) -> `Fp8Rows`, for the projections whose
    rows a fused norm or SiLU·mul makes): a tiling that quantizes its rows in a launch of
    its own takes them quantized beforehand, as the engine runs it."""
    from jupyter_qwen.model.kernels.quant_linear import awq_linear, fp8_linear, quantizes_x

    if fmt == "fp8":  # one shard: every N tile of a chain tiling reads one scale row
        n = projection.weight.shape[0]
        shards = (n,)
        counts = None  # a split_k tiling's counters, kept across calls as a layer keeps them
        if tiling.split_k > 1:
            tiles = -(-M_BUCKETS[-1] // tiling.block_m) * -(-n // tiling.block_n)
            counts = torch.zeros(tiles, dtype=torch.int32, device=projection.weight.device)
        if handed and quantizes_x(tiling, shards, fp8_dot):
            return lambda x: fp8_linear(handed[id(x)], *projection.fp8, tiling=tiling,
                                        fp8_dot=fp8_dot, shard_sizes=shards,
                                        split_counts=counts)
        return lambda x: fp8_linear(x, *projection.fp8, tiling=tiling, fp8_dot=fp8_dot,
                                    shard_sizes=shards, split_counts=counts)
    return lambda x: awq_linear(x, *projection.awq, tiling=tiling)


# the projections whose rows the engine's fused norms, attention and SiLU·mul hand over
# quantized: all four
HANDED_ROWS = ("qkv", "o", "gate_up", "down")


def handed_rows(xs: list[torch.Tensor]) -> dict:
    """id(x) -> x quantized as the fused kernels hand it to an FP8 product (`Fp8Rows`)."""
    from jupyter_qwen.model.kernels.quant_linear import _quantize_x
    from jupyter_qwen.model.quant.fp8 import Fp8Rows

    return {id(x): Fp8Rows(*_quantize_x(x), x.dtype) for x in xs}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()


def poisoned_call(run, x: torch.Tensor, n: int) -> torch.Tensor:
    """run(x) after a NaN-filled block of the output's size was freed: the caching allocator
    hands that block out again, so an element the kernel does not write stays NaN."""
    poison = torch.full((x.shape[0], n), float("nan"), dtype=x.dtype, device=x.device)
    del poison
    return run(x)


# ---------------------------------------------------------------- compiles


def precompile_job(job: tuple[str, int, int]) -> tuple[str, int, float]:
    """In a worker process: launch (format, tiling index, K) once on a 256-row W so that its
    kernel lands in Triton's disk cache. Returns (error or "", compiles, compile seconds)."""
    fmt, index, k = job
    compiles = count_compiles()
    try:
        projection = make_projection(256, k, torch.Generator("cuda").manual_seed(index))
        x = torch.randn(64, k, device="cuda", dtype=torch.bfloat16)
        launcher(fmt, projection, grid(fmt, False)[index], fp8_dot=fp8_tensor_cores())(x)
        torch.cuda.synchronize()
    except Exception as error:
        return f"{fmt} {label(grid(fmt, False)[index])}: {type(error).__name__}: {error}"[:300], \
            compiles[0], compiles[1]
    return "", compiles[0], compiles[1]


def count_compiles() -> list:
    """[compiles, seconds] of this process from now on (Triton's compile hooks)."""
    from triton import knobs

    tally: list = [0, 0.0]
    began: list[float] = []

    def before(**_) -> bool:
        began.append(time.perf_counter())
        return False

    def after(**_) -> None:
        tally[0] += 1
        tally[1] += time.perf_counter() - began.pop() if began else 0.0

    knobs.runtime.jit_cache_hook = before
    knobs.runtime.jit_post_compile_hook = after
    return tally


def precompile(formats: list[str], quick: bool, ks: set[int]) -> dict:
    """One job per (format, tiling, K's specialisation): FP8's scale stride is K / 128, which
    Triton specialises on when it is a multiple of 16; nothing else of SHAPES differs."""
    jobs: dict[tuple, tuple[str, int, int]] = {}
    for fmt in formats:
        picks = QUICK_PICKS[fmt] if quick else range(len(grid(fmt, False)))
        for index in picks:
            for k in sorted(ks):
                key = (fmt, index, fmt == "fp8" and (k // 128) % 16 == 0)
                jobs.setdefault(key, (fmt, index, k))
    workers = max(1, min(12, (os.cpu_count() or 2) - 2, len(jobs)))
    began = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(precompile_job, jobs.values()))
    for error, _, _ in results:
        if error:
            say(f"COMPILE FAIL {error}")
    summary = {"jobs": len(jobs), "workers": workers,
               "compiles": sum(r[1] for r in results),
               "compile_s": sum(r[2] for r in results),
               "wall_s": time.perf_counter() - began}
    say(f"precompiled {summary['jobs']} jobs in {workers} processes: {summary['compiles']} "
        f"kernels, {summary['compile_s']:.0f} s of compiles, {summary['wall_s']:.0f} s wall")
    return summary


def fp8_tensor_cores() -> bool:
    from jupyter_qwen.model.kernels.quant_linear import fp8_tensor_cores as has

    return has(torch.device("cuda"))


# ---------------------------------------------------------------- the sweep


def bench_ms(run, xs: list[torch.Tensor], graphs: bool = False) -> float:
    """Median ms of run(x), x taking each of `xs` in turn. `graphs`: each run(x) captured in
    a CUDA graph once and replayed, as decode steps run (the GPU's time alone); else
    launched from Python, as prefill runs (a product whose launch costs the host more than
    the L2 clear before it takes is timed host-bound)."""
    import triton.testing

    calls = [lambda x=x: run(x) for x in xs]
    if graphs:
        replays = []
        for call in calls:
            call()  # compiled before the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                call()
            replays.append(graph.replay)
        calls = replays
    turn = [0]

    def once():
        turn[0] += 1
        calls[turn[0] % len(calls)]()

    return triton.testing.do_bench(once, warmup=WARMUP_MS, rep=REP_MS, return_mode="median")


def sweep_point(fmt: str, projection: Projection, m: int, xs, candidates, fp8_dot: bool,
                failed: set, graphs: bool, handed: dict | None = None) -> list[dict]:
    """Check then time each candidate at M rows; returns one record per candidate timed."""
    x = xs[0]
    n = projection.weight.shape[0]
    ref = x.float() @ projection.dequantized[fmt].float().T
    records = []
    for tiling in candidates:
        run = launcher(fmt, projection, tiling, fp8_dot, handed)
        tolerance = FP8_DOT_TOLERANCE if fmt == "fp8" and fp8_dot and tiling.fp8_dot \
            else TOLERANCE
        try:
            error = relative_error(poisoned_call(run, x, n), ref)
        except Exception as exc:  # a tiling past the shared memory, say
            failed.add((fmt, tiling))
            say(f"FAIL {fmt} {label(tiling)} M={m}: {type(exc).__name__}: {str(exc)[:160]}")
            continue
        if not error < tolerance:
            failed.add((fmt, tiling))
            say(f"FAIL {fmt} {label(tiling)} M={m} N={n}: relative error {error:.2e}")
            continue
        try:
            ms = bench_ms(run, xs, graphs)
        except Exception as exc:  # a launch that cannot be captured, say
            failed.add((fmt, tiling))
            say(f"FAIL {fmt} {label(tiling)} M={m} timing: {type(exc).__name__}: "
                f"{str(exc)[:160]}")
            continue
        records.append({"tiling": asdict(tiling), "label": label(tiling), "error": error,
                        "ms": ms})
    return records


def sweep(args) -> dict:
    fp8_dot = fp8_tensor_cores()
    say(f"{torch.cuda.get_device_name()}: FP8 tensor cores {'on' if fp8_dot else 'off'}")
    generator = torch.Generator("cuda").manual_seed(args.seed)
    points: list[dict] = []
    failed: set = set()
    winners: dict[str, set] = {fmt: set() for fmt in args.formats}
    for model, projections in args.shapes.items():
        for name, (n, k) in projections.items():
            projection = make_projection(n, k, generator)
            for m in args.m:
                points.append(sweep_rows(args, projection, m, generator, fp8_dot, failed,
                                         winners, name in HANDED_ROWS)
                              | {"model": model, "projection": name})
                say(progress(points[-1]))
            projection = None
            torch.cuda.empty_cache()
    return {"points": points, "failed": [[fmt, asdict(t)] for fmt, t in failed]}


def sweep_rows(args, projection: Projection, m: int, generator, fp8_dot: bool, failed: set,
               winners: dict[str, set], fused_input: bool) -> dict:
    """bf16 and every format's candidates at M rows of one projection (`fused_input`: its
    rows come from a fused norm or SiLU·mul, quantized there for FP8 products)."""
    n, k = projection.weight.shape
    xs = [torch.randn(m, k, generator=generator, device="cuda", dtype=torch.bfloat16)
          for _ in range(2)]
    weight = projection.weight
    graphs = m <= args.graph_rows
    point = {"n": n, "k": k, "m": m, "formats": {}, "graphs": graphs,
             "bf16_ms": bench_ms(lambda x: torch.nn.functional.linear(x, weight), xs, graphs)}
    late = time.perf_counter() - START > args.budget
    point["late"] = late
    for fmt in args.formats:
        default = DEFAULT_LARGE_M[fmt]
        candidates = [t for t in grid(fmt, args.quick) if fits(t, m) and (fmt, t) not in failed
                      and (not late or t == default or t in winners[fmt])]
        handed = handed_rows(xs) if fmt == "fp8" and fused_input and fp8_dot else None
        records = sweep_point(fmt, projection, m, xs, candidates, fp8_dot, failed, graphs,
                              handed)
        point["formats"][fmt] = records
        if records:
            winners[fmt].add(T(**min(records, key=lambda r: r["ms"])["tiling"]))
    return point


def progress(point: dict) -> str:
    text = f"{point['model']} {point['projection']} M={point['m']}: " \
           f"bf16 {point['bf16_ms'] * 1e3:.1f} us"
    for fmt, records in point["formats"].items():
        if records:
            best = min(records, key=lambda r: r["ms"])
            text += f", {fmt} {best['ms'] * 1e3:.1f} us {best['label']} ({len(records)} timed)"
    return text + (" [past the budget]" if point["late"] else "")


# ---------------------------------------------------------------- reports


def best_of(point: dict, fmt: str) -> dict | None:
    records = point["formats"].get(fmt) or []
    return min(records, key=lambda r: r["ms"]) if records else None


def default_of(point: dict, fmt: str) -> dict | None:
    default = asdict(DEFAULT_LARGE_M[fmt])
    return next((r for r in point["formats"].get(fmt, []) if r["tiling"] == default), None)


def point_table(points: list[dict], formats: list[str]) -> list[str]:
    lines = [f"{'shape':<14}{'M':>6}{'bf16 us':>10}" + "".join(
        f"{fmt + ' us':>10}{'x bf16':>8}{'default x':>10}  {fmt + ' tiling':<28}"
        for fmt in formats)]
    for point in points:
        line = f"{point['model'] + ' ' + point['projection']:<14}{point['m']:>6}" \
               f"{point['bf16_ms'] * 1e3:>10.1f}"
        for fmt in formats:
            best, default = best_of(point, fmt), default_of(point, fmt)
            if best is None:
                line += f"{'-':>10}{'-':>8}{'-':>10}  {'(none passed)':<28}"
                continue
            speed = point["bf16_ms"] / best["ms"]
            was = f"{point['bf16_ms'] / default['ms']:.2f}" if default else "-"
            line += f"{best['ms'] * 1e3:>10.1f}{speed:>8.2f}{was:>10}  {best['label']:<28}"
        lines.append(line)
    return lines


def layer_table(points: list[dict], formats: list[str]) -> list[str]:
    """Per model and M: the four projections summed (bf16, best tilings, today's default)."""
    lines = [f"{'layer':<8}{'M':>6}{'bf16 us':>10}" + "".join(
        f"{fmt + ' us':>10}{'x bf16':>8}{'default x':>10}" for fmt in formats)]
    layers: dict[tuple[str, int], list[dict]] = {}
    for point in points:
        layers.setdefault((point["model"], point["m"]), []).append(point)
    for (model, m), group in layers.items():
        bf16 = sum(p["bf16_ms"] for p in group)
        line = f"{model:<8}{m:>6}{bf16 * 1e3:>10.1f}"
        for fmt in formats:
            best = [best_of(p, fmt) for p in group]
            default = [default_of(p, fmt) for p in group]
            if None in best:
                line += f"{'-':>10}{'-':>8}{'-':>10}"
                continue
            total = sum(r["ms"] for r in best)
            was = f"{bf16 / sum(r['ms'] for r in default):.2f}" if None not in default else "-"
            line += f"{total * 1e3:>10.1f}{bf16 / total:>8.2f}{was:>10}"
        lines.append(line)
    return lines


def table_entries(points: list[dict], formats: list[str], min_gain: float,
                  ) -> tuple[dict[tuple, str], set[tuple]]:
    """(LARGE_M_TILES entries, key -> source line: each point's winner where it beats
    today's default by more than min_gain, else none and the default stays, one compile
    fewer; the keys measured). AWQ points whose bucket serves only batches of
    AWQ_VIA_BF16_MIN_M rows or more are left out: those batches multiply a dequantized
    copy and never read the table."""
    entries, measured = {}, set()
    for point in points:
        for fmt in formats:
            if fmt == "awq" and point["m"] > AWQ_VIA_BF16_MIN_M:
                continue
            key = (fmt, point["m"], point["n"], point["k"])
            best, default = best_of(point, fmt), default_of(point, fmt)
            if best is None:
                continue
            measured.add(key)
            tiling = T(**best["tiling"])
            beats = not default or best["ms"] * (1 + min_gain) < default["ms"]
            if beats and tiling_problem(fmt, tiling) is None:
                entries[key] = f"    {key!r}: {tiling_source(tiling)},"
    return entries, measured


def table_literal(points: list[dict], formats: list[str], min_gain: float) -> list[str]:
    """The `LARGE_M_TILES` literal of `table_entries`."""
    entries = list(table_entries(points, formats, min_gain)[0].values())
    distinct = {line.split(": ", 1)[1] for line in entries}
    return ["LARGE_M_TILES: dict[tuple[str, int, int, int], QuantTiling] = {", *entries, "}",
            f"# {len(entries)} entries, {len(distinct)} distinct tilings beside the defaults"]


TABLE_SOURCE = Path(__file__).resolve().parents[1] / "jupyter_qwen/model/kernels/quant_tiles.py"


def apply_table(points: list[dict], formats: list[str], min_gain: float,
                path: Path = TABLE_SOURCE) -> tuple[int, int]:
    """Write the measured entries into `LARGE_M_TILES` in `path` (quant_tiles.py): each
    measured key takes its winner's line, or loses its line where the default stays; other
    lines are kept. Returns (entries written, entries dropped for the default)."""
    entries, measured = table_entries(points, formats, min_gain)
    if any(key[1] not in M_BUCKETS for key in measured):
        raise SystemExit(f"--apply writes whole M buckets: --m must be among {M_BUCKETS}")
    replaced = rewrite_table(path, "LARGE_M_TILES: dict[", measured, [*entries.values()])
    return len(entries), len(replaced - entries.keys())


def tiling_source(tiling: QuantTiling) -> str:
    base = T(tiling.block_m, tiling.block_n, tiling.block_k)
    extra = [f"{key}={value!r}" for key, value in asdict(tiling).items()
             if key not in ("block_m", "block_n", "block_k") and value != getattr(base, key)]
    return f"QuantTiling({', '.join([str(tiling.block_m), str(tiling.block_n), str(tiling.block_k), *extra])})"  # noqa: E501


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="models (0.6B, 1.7B, 4B) or model:projection, comma-separated")
    parser.add_argument("--m", default=None, help="batch sizes, comma-separated")
    parser.add_argument("--quick", action="store_true",
                        help="6-8 tilings a format (QUICK_PICKS), 3 sizes")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="seconds after which only bf16, defaults and winners are timed")
    parser.add_argument("--min-gain", type=float, default=0.03)
    parser.add_argument("--graph-rows", type=int, default=256,
                        help="time batches up to this many rows as CUDA graph replays (the "
                             "engine's decode steps); larger ones launched from Python")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-precompile", action="store_true")
    parser.add_argument("--apply", action="store_true",
                        help="write the measured entries into quant_tiles.py's LARGE_M_TILES")
    args = parser.parse_args(argv)
    args.formats = [f for f in args.formats.split(",") if f]
    if set(args.formats) - set(FORMATS):
        parser.error(f"formats are {', '.join(FORMATS)}")
    args.shapes = select_shapes(parser, args.shapes)
    rows = args.m.split(",") if args.m else (QUICK_ROWS if args.quick else ROWS)
    args.m = [int(m) for m in rows]
    return args


def select_shapes(parser: argparse.ArgumentParser, spec: str) -> dict:
    chosen: dict[str, dict] = {}
    for item in filter(None, spec.split(",")):
        model, _, name = item.partition(":")
        if model not in SHAPES or (name and name not in SHAPES[model]):
            parser.error(f"unknown shape {item!r}; models {', '.join(SHAPES)}, projections "
                         f"{', '.join(SHAPES['4B'])}")
        picked = {name: SHAPES[model][name]} if name else SHAPES[model]
        chosen.setdefault(model, {}).update(picked)
    return chosen


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("quant_tiles.py times Triton kernels: it needs a CUDA GPU")
    ks = {k for projections in args.shapes.values() for _, k in projections.values()}
    compiles = {} if args.no_precompile else precompile(args.formats, args.quick, ks)
    here = count_compiles()
    results = sweep(args)
    compiles |= {"compiles_here": here[0], "compile_here_s": here[1]}
    say(f"kernels built: {compiles.get('compiles', 0)} in worker processes "
        f"({compiles.get('compile_s', 0):.0f} s), {here[0]} built or loaded from the disk "
        f"cache in this one ({here[1]:.0f} s)")
    results |= {"compiles": compiles, "device": torch.cuda.get_device_name(),
                "argv": sys.argv[1:] if argv is None else argv,
                "wall_s": time.perf_counter() - START}
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "quant_tiles.json").write_text(json.dumps(results, indent=1))
    for line in [*table_literal(results["points"], args.formats, args.min_gain), "",
                 *point_table(results["points"], args.formats), "",
                 *layer_table(results["points"], args.formats)]:
        print(line)
    if args.apply:
        written, dropped = apply_table(results["points"], args.formats, args.min_gain)
        say(f"LARGE_M_TILES: {written} entries written, {dropped} measured ones dropped "
            f"(the default stays there), in {TABLE_SOURCE}")
    say("done")
    return results


if __name__ == "__main__":
    main()
