"""Where AWQ's large-batch products should leave the dequantizing GEMM (one GPU call, ~1 min).

    python benchmarks/awq_via_bf16.py
    python benchmarks/awq_via_bf16.py --models 4B --m 128,256,512

For Qwen3-0.6B's and Qwen3-4B's projections at each M: cuBLAS bf16 on the bf16 weight (the
baseline), `awq_linear` forced onto its dequantizing GEMM with the tiling the engine's table
gives that M (`quant_tiling`), and the large-batch path (`awq_dequantize` into a fresh bf16
W, then F.linear: what `awq_linear` runs from AWQ_VIA_BF16_MIN_M rows). Each path is first
checked against the reference (relative error under 2e-2; the large-batch path must equal
F.linear on the reference's weights bit for bit). Times are triton.testing.do_bench medians
(L2 cleared before each launch). Printed: per projection and M the three times; per model
and M the layer sums with each path's speed against bf16; and the smallest M bucket from
which the large-batch path is faster for every model's layer (AWQ_VIA_BF16_MIN_M's value).
Full numbers: $OUT/awq_via_bf16.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quant_tiles import SHAPES, bench_ms, make_projection, relative_error

from jupyter_qwen.model.kernels.quant_tiles import AWQ_VIA_BF16_MIN_M

ROWS = (64, 128, 256, 512, 2048)
TOLERANCE = 2e-2


def paths(projection, m: int, k: int) -> dict:
    from jupyter_qwen.model.kernels.quant_linear import awq_dequantize, awq_linear, quant_tiling

    n = projection.weight.shape[0]
    tiling = quant_tiling(m, n, awq=True, k=k)
    return {
        "bf16": lambda x: torch.nn.functional.linear(x, projection.weight),
        "gemm": lambda x: awq_linear(x, *projection.awq, tiling=tiling),
        "via_bf16": lambda x: torch.nn.functional.linear(
            x, awq_dequantize(*projection.awq, dtype=x.dtype)),
    }


def check(runs: dict, projection, x: torch.Tensor) -> None:
    reference = x.float() @ projection.dequantized["awq"].float().t()
    for name in ("gemm", "via_bf16"):
        error = relative_error(runs[name](x), reference)
        if not error < TOLERANCE:
            raise SystemExit(f"{name} relative error {error:.2e}")
    expected = torch.nn.functional.linear(x, projection.dequantized["awq"].contiguous())
    if not torch.equal(runs["via_bf16"](x), expected):
        raise SystemExit("the large-batch path differs from F.linear on the reference weights")


def measure(models: list[str], rows: list[int]) -> list[dict]:
    generator = torch.Generator(device="cuda").manual_seed(0)
    points = []
    for model in models:
        for name, (n, k) in SHAPES[model].items():
            projection = make_projection(n, k, generator)
            for m in rows:
                xs = [torch.randn(m, k, generator=generator, device="cuda").to(torch.bfloat16)
                      for _ in range(4)]
                runs = paths(projection, m, k)
                check(runs, projection, xs[0])
                times = {path: bench_ms(run, xs) * 1e3 for path, run in runs.items()}
                points.append({"model": model, "projection": name, "m": m, **times})
                print(f"{model:5} {name:8} M={m:<5} bf16 {times['bf16']:7.1f} us  "
                      f"gemm {times['gemm']:7.1f}  via bf16 {times['via_bf16']:7.1f}",
                      flush=True)
            del projection
            torch.cuda.empty_cache()
    return points


def layer_rows(points: list[dict]) -> list[tuple[str, int, dict]]:
    layers: dict[tuple[str, int], dict] = {}
    for point in points:
        layer = layers.setdefault((point["model"], point["m"]), dict.fromkeys(
            ("bf16", "gemm", "via_bf16"), 0.0))
        for path in layer:
            layer[path] += point[path]
    return [(model, m, layer) for (model, m), layer in layers.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--m", default=",".join(map(str, ROWS)))
    args = parser.parse_args(argv)
    models = args.models.split(",")
    rows = [int(m) for m in args.m.split(",")]
    print(torch.cuda.get_device_name(), f"AWQ_VIA_BF16_MIN_M today: {AWQ_VIA_BF16_MIN_M}")
    points = measure(models, rows)
    print(f"\n{'model':6}{'M':>6}{'bf16 us':>10}{'gemm us':>10}{'x bf16':>8}"
          f"{'via us':>10}{'x bf16':>8}")
    faster = []
    for model, m, layer in layer_rows(points):
        bf16 = layer["bf16"]
        print(f"{model:6}{m:>6}{bf16:>10.1f}{layer['gemm']:>10.1f}{bf16 / layer['gemm']:>8.2f}"
              f"{layer['via_bf16']:>10.1f}{bf16 / layer['via_bf16']:>8.2f}")
        faster.append((m, layer["via_bf16"] < layer["gemm"]))
    crossover = next((m for m in rows if all(ok for size, ok in faster if size >= m)), None)
    print(f"\nthe large-batch path wins from M = {crossover} in every layer measured")
    out = Path(os.environ.get("OUT", "."))
    (out / "awq_via_bf16.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "points": points, "crossover": crossover},
        indent=1))


if __name__ == "__main__":
    main()
