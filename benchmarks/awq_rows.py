"""AWQ projections in the rows layout (model/kernels/awq_rows.py: the 4-bit words repacked
along K, so that a decode product streams each output row's K as the bf16 products do)
against AWQ's own layout and bf16, one GPU call (<= ~5 min):

    python benchmarks/awq_rows.py                       # Qwen3-4B's layer
    python benchmarks/awq_rows.py --models 0.6B,1.7B,4B

1. M = 1: each product of the layer in the rows layout on every tiling of CANDIDATES
   (checked against the dequantizing reference, then timed: CUDA graph over rotated copies,
   PDL as the engine launches), beside the bf16 product and AWQ's (quant_gemv, TUNED);
   `ROWS_TUNED` takes the shapes whose rows product is the faster.
2. M = 2..4 through the small-batch products (quant_gemv, where gemv.use_small_m sends a
   decode batch): `_rows_kernel` one program row per row of x, against `rows_linear`'s
   tensor-core kernel after fused_ops' prologue, against AWQ's layout (`GRID_ROWS_MAX_M`).
3. M = 2..512 through `TritonQuantKernels.linear` (larger decode batches and prefill: the
   tensor-core kernel, and from 256 rows the dequantize-then-F.linear path) against AWQ's
   layout.
4. A layer's four products in one graph at M = 1: each product in the layout whose product
   was faster alone (one copy of the weights), against AWQ's layout and bf16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_qwen.model.kernels import awq_rows
from jupyter_qwen.model.kernels.awq_rows import RowsTiling

SMALL_ROWS = (2, 3, 4)
BATCH_ROWS = (2, 4, 8, 16, 64, 200, 512)
# (block_n, groups, warps), the fastest of runs 81-82 and two neighbours: with 8 groups a
# step all 32 lanes of a warp lie along a row's words, so x's pair tiles ([1, 128 words])
# take the words' layout (each warp computes them) and no step converts a tile through
# shared memory; with 4 groups only one warp does (run 81's tilings of 4 groups and 2-4
# warps converted every step's words)
CANDIDATES = [RowsTiling(n, g, w) for n, g, w in
              [(4, 8, 1), (8, 8, 2), (16, 8, 4), (4, 4, 1), (8, 4, 1)]]




def _quant_decode():
    from benchmarks import quant_decode

    return quant_decode


def rows_layer(n: int, k: int, shards: list[int]):
    """quant_decode's random AWQ projection, repacked into the rows layout."""
    layer = _quant_decode().random_layer("awq", n, k, shards)
    layer.to_rows()
    return layer


def layers_of(make, n: int, k: int, shards: list[int]) -> list:
    """Copies enough to rotate through more than L2 holds."""
    qd = _quant_decode()
    first = make(n, k, shards)
    return [first] + [make(n, k, shards) for _ in range(qd.copies_for(qd.weight_bytes(first)) - 1)]


def awq_layer(n: int, k: int, shards: list[int]):
    return _quant_decode().random_layer("awq", n, k, shards)


def checked_micros(prologue: str, layers: list, inputs, tiling, call=None) -> dict:
    """The product (quant_gemv as the model runs it, or `call`) checked against the
    dequantizing reference, then timed over the rotated layers."""
    from benchmarks.kernel_setup import relative_error
    from benchmarks.kernels import graph_micros_per_call

    qd = _quant_decode()
    call = call or (lambda w, x: qd.product(prologue, w, x, tiling))
    row = {}
    try:
        ref = qd.reference(prologue, layers[0], inputs).float()
        row["error"] = relative_error(call(layers[0], inputs).float(), ref)
        if not row["error"] < 2e-2:
            raise AssertionError(f"relative error {row['error']:.2e}")
        row["micros"] = graph_micros_per_call([lambda w=w: call(w, inputs) for w in layers],
                                              qd.REPLAYS)
    except Exception as error:
        row["failed"] = f"{type(error).__name__}: {error}"[:300]
    return row


def precompile_job(job: tuple) -> str:
    prologue, k, tiling = job
    try:
        qd = _quant_decode()
        qd.product(prologue, rows_layer(256, k, [256]), qd.Inputs(1, k), tiling)
        torch.cuda.synchronize()
    except Exception as error:
        return f"{job}: {type(error).__name__}: {error}"[:300]
    return ""


def sweep_one_row(model: str, results: list[dict]) -> dict:
    """1. Every product at M = 1: each rows tiling, bf16 and AWQ's layout; returns
    {product: (best rows tiling, its us, AWQ's us, bf16's us)}."""
    from benchmarks.kernels import say

    qd = _quant_decode()
    out = {}
    for name, (n, k, shards, prologue) in qd.MODELS[model].items():
        inputs = qd.Inputs(1, k)
        layers = layers_of(rows_layer, n, k, shards)
        timed = []
        for tiling in CANDIDATES:
            row = dict(model=model, product=name, m=1, kernel=tiling.name(),
                       **checked_micros(prologue, layers, inputs, tiling))
            results.append(row)
            say(f"{model} {name} M=1 {tiling.name()}: {row.get('micros', row.get('failed'))}")
            if "micros" in row:
                timed.append((row["micros"], tiling))
        del layers
        base = {}
        for fmt, make in (("awq", awq_layer),
                          ("bf16", lambda n, k, s: qd.random_layer("bf16", n, k, s))):
            layers = layers_of(make, n, k, shards)
            base[fmt] = checked_micros(prologue, layers, inputs, None).get("micros", math.nan)
            del layers
        torch.cuda.empty_cache()
        best = min(timed, key=lambda t: t[0]) if timed else (math.nan, None)
        out[name] = (best[1], best[0], base["awq"], base["bf16"])
        say(f"{model} {name} M=1: rows {best[0]:.2f} us ({best[1] and best[1].name()}), "
            f"AWQ {base['awq']:.2f}, bf16 {base['bf16']:.2f}")
    return out


def sweep_small_rows(model: str, name: str, tiling: RowsTiling, results: list[dict]) -> None:
    """2. M = 2..4 of one product through quant_gemv (the model's small-batch path, where
    gemv.use_small_m takes them): rows kernel, dot kernel, AWQ's layout."""
    from benchmarks.kernels import say

    qd = _quant_decode()
    n, k, shards, prologue = qd.MODELS[model][name]
    rows, awq = layers_of(rows_layer, n, k, shards), layers_of(awq_layer, n, k, shards)
    keep = awq_rows.GRID_ROWS_MAX_M
    try:
        for m in SMALL_ROWS:
            inputs = qd.Inputs(m, k)
            line = {}
            for kernel, grid_max, layers, t in (("rows", 16, rows, tiling), ("dot", 0, rows, None),
                                               ("awq", keep, awq, None)):
                awq_rows.GRID_ROWS_MAX_M = grid_max
                row = dict(model=model, product=name, m=m, kernel=kernel,
                           **checked_micros(prologue, layers, inputs, t))
                results.append(row)
                line[kernel] = row.get("micros", math.nan)
            say(f"{model} {name} M={m}: " + ", ".join(f"{key} {v:.2f}" for key, v in line.items()))
    finally:
        awq_rows.GRID_ROWS_MAX_M = keep
    del rows, awq
    torch.cuda.empty_cache()


def sweep_batches(model: str, name: str, results: list[dict]) -> None:
    """3. Batches outside the small-batch path (decode batches above gemv.use_small_m's
    cutoff, prefill): `rows_linear` against AWQ's `awq_linear`, as TritonQuantKernels
    runs them."""
    from benchmarks.kernels import say
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels

    qd = _quant_decode()
    n, k, shards, _ = qd.MODELS[model][name]
    kernels = TritonQuantKernels(torch.device("cuda"))
    rows, awq = layers_of(rows_layer, n, k, shards), layers_of(awq_layer, n, k, shards)
    for m in BATCH_ROWS:
        inputs = qd.Inputs(m, k)
        line = {}
        for kernel, layers in (("rows", rows), ("awq", awq)):
            row = dict(model=model, product=name, m=m, kernel=kernel, **checked_micros(
                "plain", layers, inputs, None, call=lambda w, x: kernels.linear(x.x, w)))
            results.append(row)
            line[kernel] = row.get("micros", math.nan)
        say(f"{model} {name} linear M={m}: " + ", ".join(f"{key} {v:.1f}"
                                                          for key, v in line.items()))
    del rows, awq
    torch.cuda.empty_cache()


def mixed_layer_micros(model: str, tilings: dict) -> float:
    """4. One layer's four products at M = 1, each in the rows layout on its tiling or (None)
    in AWQ's layout on today's kernel (TUNED), replayed over rotated layers."""
    from benchmarks.kernels import graph_micros_per_call

    qd = _quant_decode()
    shapes = qd.MODELS[model]

    def one_layer():
        return {name: (rows_layer if tilings[name] else awq_layer)(n, k, shards)
                for name, (n, k, shards, _) in shapes.items()}

    first = one_layer()
    nbytes = sum(qd.weight_bytes(w) for w in first.values())
    layers = [first] + [one_layer() for _ in range(qd.copies_for(nbytes, most=32) - 1)]
    inputs = {name: qd.Inputs(1, k) for name, (_, k, _, _) in shapes.items()}
    calls = [lambda w=w, name=name: qd.product(shapes[name][3], w[name], inputs[name],
                                               tilings[name])
             for w in layers for name in shapes]
    micros = graph_micros_per_call(calls, qd.REPLAYS) * len(shapes)
    del layers
    torch.cuda.empty_cache()
    return micros


def main(argv: list[str] | None = None) -> int:
    from benchmarks.kernel_setup import compile_in_workers, launch_pdl
    from benchmarks.kernels import LOG, measure_copy_gbps, say

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="4B", help="comma-separated, of 0.6B, 1.7B, 4B")
    parser.add_argument("--no-batches", action="store_true", help="M = 1 and the layer only")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    qd = _quant_decode()
    began = time.perf_counter()
    say(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; pdl {launch_pdl()}")
    say(f"copy bandwidth {measure_copy_gbps():.0f} GB/s (read + write)")
    jobs = sorted({(prologue, k, t) for model in models
                   for _, k, _, prologue in qd.MODELS[model].values() for t in CANDIDATES},
                  key=str)
    say(compile_in_workers(precompile_job, jobs, most=14))
    results, layers = [], []
    for model in models:
        one_row = sweep_one_row(model, results)
        faster = {name: tiling for name, (tiling, rows_us, awq_us, _) in one_row.items()
                  if tiling is not None and rows_us < awq_us}
        entry = dict(model=model, one_row={name: dict(
            tiling=t and t.name(), rows_us=r, awq_us=a, bf16_us=b)
            for name, (t, r, a, b) in one_row.items()})
        entry["rows_products"] = {name: t.name() for name, t in faster.items()}
        if not args.no_batches:
            for name, (tiling, *_) in one_row.items():
                sweep_small_rows(model, name, tiling, results)
                sweep_batches(model, name, results)
        mixed = {name: faster.get(name) for name in qd.MODELS[model]}
        entry["bf16_us"] = qd.layer_micros(model, "bf16", 1, {})
        entry["awq_us"] = qd.layer_micros(model, "awq", 1, {})
        entry["mixed_us"] = mixed_layer_micros(model, mixed)
        layers.append(entry)
        say(f"{model} layer at M = 1: bf16 {entry['bf16_us']:.1f} us, AWQ's layout "
            f"{entry['awq_us']:.1f} ({entry['bf16_us'] / entry['awq_us']:.2f}x), rows for "
            f"{sorted(faster)} {entry['mixed_us']:.1f} "
            f"({entry['bf16_us'] / entry['mixed_us']:.2f}x)")
    say(f"total {time.perf_counter() - began:.0f} s")
    out = os.environ.get("OUT")
    if out:
        Path(out, "awq_rows.json").write_text(json.dumps(
            dict(products=results, layers=layers, log=LOG), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
