"""Probe: Qwen's FP8 block format through torch._scaled_mm's block-wise recipe (activations
1 x 128, weights 128 x 128: cuBLASLt 12.9+ on sm_90) against cuBLAS bf16 and the Triton
kernel's `tile_scale` tiling, one GPU call (~30-60 s).

    python benchmarks/fp8_scaled_mm.py [--m 256,2048,8192] [--shapes 4B]

Activations are quantized by the kernel's own launch (`_quantize_x`: e4m3 and one fp32
scale per row and 128 columns); the weight is the e4m3 values with `weight_scale_inv`
(one scale per 128 x 128 block, a single shard: scale row n // 128). The scale layouts
torch wants are not documented in one place, so each candidate layout is tried and the
first whose product matches the dequantizing reference (relative error < 5e-2, output
poisoned with NaN first) is timed; none: the line says why. Times: triton.testing.do_bench
medians (L2 cleared before each launch), quantizing x included in both FP8 times. Printed
last: a table per (shape, M); $OUT/fp8_scaled_mm.json holds it.
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

from jupyter_qwen.model.kernels.quant_tiles import QuantTiling

TOLERANCE = 5e-2
TRITON = QuantTiling(64, 128, 128, quantize_x=True, tile_scale=True)


def scale_layouts(a_scale: torch.Tensor, w_scale: torch.Tensor):
    """(name, scale_a, scale_b) candidates: row- or column-major [M, K/128] for x, the
    weight's [N/128, K/128] as stored, transposed, or transposed and made contiguous."""
    column_major_a = a_scale.t().contiguous().t()
    for a_name, a in (("a rows", a_scale), ("a cols", column_major_a)):
        for b_name, b in (("w", w_scale), ("w.t", w_scale.t()),
                          ("w.t contiguous", w_scale.t().contiguous()),
                          ("w cols", w_scale.t().contiguous().t())):
            yield f"{a_name}, {b_name}", a, b


def scaled_mm_runner(projection, x: torch.Tensor, ref: torch.Tensor):
    """The first scale layout whose product matches the reference, as (name, run), or
    (reasons, None)."""
    from jupyter_qwen.model.kernels.quant_linear import _quantize_x

    values, w_scale, _ = projection.fp8
    reasons = []
    _, a_scale = _quantize_x(x)
    for name, a, b in scale_layouts(a_scale, w_scale):
        def run(x, a_layout=a is not a_scale, b=b):
            x8, a_scale = _quantize_x(x)
            if a_layout:
                a_scale = a_scale.t().contiguous().t()
            return torch._scaled_mm(x8, values.t(), scale_a=a_scale, scale_b=b,
                                    out_dtype=torch.bfloat16)
        try:
            poison = torch.full_like(ref, float("nan"), dtype=torch.bfloat16)
            del poison
            error = relative_error(run(x), ref)
        except Exception as exc:  # a layout torch refuses
            reasons.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        if error < TOLERANCE:
            return name, run, error
        reasons.append(f"{name}: relative error {error:.2e}")
    return "; ".join(reasons), None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="256,2048,8192")
    parser.add_argument("--shapes", default="4B")
    args = parser.parse_args()
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear

    rows = [int(m) for m in args.m.split(",")]
    generator = torch.Generator("cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}", flush=True)
    results = []
    for model in args.shapes.split(","):
        for name, (n, k) in SHAPES[model].items():
            projection = make_projection(n, k, generator)
            for m in rows:
                xs = [torch.randn(m, k, generator=generator, device="cuda",
                                  dtype=torch.bfloat16) for _ in range(2)]
                ref = xs[0].float() @ projection.dequantized["fp8"].float().T
                row = {"shape": f"{model} {name}", "m": m,
                       "bf16_ms": bench_ms(lambda x, w=projection.weight:
                                           torch.nn.functional.linear(x, w), xs)}
                triton_run = lambda x, p=projection, n=n: fp8_linear(  # noqa: E731
                    x, *p.fp8, tiling=TRITON, fp8_dot=True, shard_sizes=[n])
                row["triton_error"] = relative_error(triton_run(xs[0]), ref)
                row["triton_ms"] = bench_ms(triton_run, xs) \
                    if row["triton_error"] < TOLERANCE else None
                layout, run, error = scaled_mm_runner(projection, xs[0], ref)
                row |= {"layout": layout, "scaled_mm_error": error,
                        "scaled_mm_ms": bench_ms(run, xs) if run else None}
                print(row, flush=True)
                results.append(row)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "fp8_scaled_mm.json").write_text(json.dumps(results, indent=1))
    print(f"{'shape':<14}{'M':>6}{'bf16 us':>9}{'triton ts':>10}{'x bf16':>7}"
          f"{'scaled_mm':>10}{'x bf16':>7}  layout")
    for r in results:
        cells = ""
        for key in ("triton_ms", "scaled_mm_ms"):
            ms = r[key]
            cells += f"{ms * 1e3:>10.1f}{r['bf16_ms'] / ms:>7.2f}" if ms else f"{'-':>10}{'-':>7}"
        print(f"{r['shape']:<14}{r['m']:>6}{r['bf16_ms'] * 1e3:>9.1f}{cells}  "
              f"{r['layout'][:60] if r['scaled_mm_ms'] else 'none: see its line above'}")


if __name__ == "__main__":
    main()
