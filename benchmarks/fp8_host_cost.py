"""What one FP8 prefill product costs the host, beside its GPU time (one GPU call, ~20 s).

    python benchmarks/fp8_host_cost.py

For the Qwen3-4B qkv projection (6144 x 2560) at 256 and 2,048 rows, the `tile_scale`
Triton kernel and the `wgmma` Gluon kernel (`model/kernels/fp8_wgmma.py`), each with its
activation-quantizing launch: 200 calls back to back from Python (the per-call time before
the final synchronise is the host's; after it, host and GPU together), then the same
product captured in a CUDA graph and replayed 200 times (GPU only). Where the first exceeds
the last, a product launched eagerly (prefill chunks) is host-bound; decode steps run as
graphs and pay the host cost once, at capture.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_qwen.model.kernels.quant_linear import fp8_linear
from jupyter_qwen.model.kernels.quant_tiles import QuantTiling
from jupyter_qwen.model.quant import fp8

CALLS = 200
TILINGS = {
    "tile_scale": QuantTiling(64, 128, 128, 4, 3, group_m=8, quantize_x=True, tile_scale=True),
    "wgmma": QuantTiling(64, 128, 128, 4, 4, quantize_x=True, wgmma=True),
}


def per_call(run) -> tuple[float, float]:
    """Seconds a call: before the final synchronise, and after it."""
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(CALLS):
        run()
    host = (time.perf_counter() - begin) / CALLS
    torch.cuda.synchronize()
    return host, (time.perf_counter() - begin) / CALLS


def replayed(run) -> float:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    return per_call(graph.replay)[1]


def main() -> None:
    n, k = 6144, 2560
    weight = torch.randn(n, k, device="cuda") * k ** -0.5
    values, scales = fp8.quantize_fp8_blocks(weight)
    rows = fp8.scale_rows_of([n]).cuda()
    print(torch.cuda.get_device_name())
    for m in (256, 2048):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        for name, tiling in TILINGS.items():
            def run(tiling=tiling, x=x):
                return fp8_linear(x, values, scales, rows, tiling=tiling, fp8_dot=True,
                                  shard_sizes=[n])

            for _ in range(5):
                run()
            host, wall = per_call(run)
            graph = replayed(run)
            print(f"M={m} {name}: host {host * 1e6:.1f} us a call, host + GPU "
                  f"{wall * 1e6:.1f} us, graph replay {graph * 1e6:.1f} us")


if __name__ == "__main__":
    main()
