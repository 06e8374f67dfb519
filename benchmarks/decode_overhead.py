"""What a small-batch decode product costs besides its steps: time against K steps a program.

    python benchmarks/decode_overhead.py            # table on stdout; $OUT/decode_overhead.json

At one row, each program of an AWQ product (quant_gemv, the half2 kinds of awq_lop3.py)
runs G steps of one group (128 rows of K) over its N tile, with K split over S programs. With
the programs fixed (N tiles x S about four an SM) and only G varied (K = 128 G S), the time
is about a + b G: `a` is what a product pays once (launch, first loads, the norm pass, the
sums across lanes, the split's partials and the last program's sum), `b` the step. Series:

- `split`: N = 2560 (20 tiles of 128 columns) and S = 26 splits, the last of each tile's
  splits summing them (half2_one), or a second launch summing them (half2);
- `whole`: the same 520 programs as 520 N tiles of one split each (N = 66,560): no partials,
  no sum, so split - whole is what the split's sums cost;
- each with the plain, norm, add + norm and SiLU·mul prologues where asked, and bf16's
  product (gemv.py, its default tiling) on the same shapes for comparison.

Every figure is one CUDA graph's replay over rotated copies of the weights (more than L2),
per launch, with PDL as the engine launches; a least-squares line per series gives a and b.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernels import graph_micros_per_call, say
from benchmarks.quant_decode import (
    REPLAYS,
    Inputs,
    copies_for,
    product,
    random_layer,
    weight_bytes,
)

STEPS = (1, 2, 3, 4, 6, 8)
SPLITS = 26  # 20 tiles x 26 = 520 programs: about four of 4 warps an SM on 132 SMs
TILE_N = 128


def series(fmt: str, kind: str, shape: str, prologue: str) -> list[dict]:
    """Time per launch for each G of STEPS (one layer shape per G)."""
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    rows = []
    for steps in STEPS:
        if shape == "split":
            n, k, split_k = 20 * TILE_N, 128 * steps * SPLITS, SPLITS
        else:
            n, k, split_k = 20 * TILE_N * SPLITS, 128 * steps, 1
        tiling = None
        if fmt == "awq":
            tiling = DecodeTiling(TILE_N, 128, 4, unpack=kind, split_k=split_k)
        layers = [random_layer(fmt, n, k, [n])]
        layers += [random_layer(fmt, n, k, [n])
                   for _ in range(copies_for(weight_bytes(layers[0])) - 1)]
        inputs = Inputs(1, k)
        calls = [lambda w=w, x=inputs, t=tiling: product(prologue, w, x, t) for w in layers]
        micros = graph_micros_per_call(calls, REPLAYS)
        rows.append(dict(fmt=fmt, kind=kind, shape=shape, prologue=prologue, steps=steps,
                         n=n, k=k, micros=micros,
                         gbps=weight_bytes(layers[0]) / micros / 1e3))
        del layers
        torch.cuda.empty_cache()
    return rows


def line(rows: list[dict]) -> tuple[float, float]:
    """Least-squares (a, b) of micros = a + b steps."""
    xs = [r["steps"] for r in rows]
    ys = [r["micros"] for r in rows]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    b = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
         / sum((x - mean_x) ** 2 for x in xs))
    return mean_y - b * mean_x, b


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="half2_one,half2")
    parser.add_argument("--prologues", default="plain,norm,add_norm,silu")
    parser.add_argument("--no-bf16", action="store_true")
    args = parser.parse_args(argv)
    say(f"{torch.cuda.get_device_name()}; steps {STEPS}, {SPLITS} splits of 20 tiles")
    kinds, prologues = args.kinds.split(","), args.prologues.split(",")
    plan = []
    for prologue in prologues:  # "whole" has no splits to sum: once, on the first kind
        plan += [("awq", kind, "split", prologue) for kind in kinds]
        plan.append(("awq", kinds[0], "whole", prologue))
        if not args.no_bf16:
            plan += [("bf16", "gemv", shape, prologue) for shape in ("split", "whole")]
    results = []
    say(f"{'format':<6}{'kind':<11}{'shape':<7}{'prologue':<10}"
        + "".join(f"{'G=' + str(s):>8}" for s in STEPS) + f"{'a us':>8}{'b us':>8}")
    for fmt, kind, shape, prologue in plan:
        rows = series(fmt, kind, shape, prologue)
        a, b = line(rows)
        results.append(dict(rows=rows, a=a, b=b))
        say(f"{fmt:<6}{kind:<11}{shape:<7}{prologue:<10}"
            + "".join(f"{r['micros']:8.2f}" for r in rows) + f"{a:8.2f}{b:8.2f}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "decode_overhead.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
