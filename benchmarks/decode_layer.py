"""A one-sequence decode step's layers: five kernels a layer against one persistent launch.

    python benchmarks/decode_layer.py [--shape 0.6B] [--formats bf16,fp8] [--layers 28]
                                      [--context 600] [--rows 1] [--warps 4,8]
                                      [--prefetch 0,1,2]

For each format, --layers decoder layers of random weights of the shape (each its own
weights, as a model's are: nothing stays in L2 from one layer to the next) over a paged KV
cache of --context tokens a sequence; one step through all of them captured in a CUDA graph
two ways, the median replay reported per layer (us):

- `five`: the small-batch path as the engine runs it (`gemv` / `quant_gemv` with their
  default tilings, `decode_step_attention`; programmatic dependent launches where the GPU
  has them);
- `persistent w<N>`: `decode_layer.decode_layer` with N warps a program (one cooperative
  launch a layer, as many programs as the GPU holds at once), `... p1` / `... p2` with its
  L2 prefetch of the next product's tiles (the first / all of a program's), and for the
  first --warps `... x1` with one program an SM and `... plain` in an ordinary launch (no
  cooperative attribute).

Also printed: each layer's floor (its weight bytes and KV bytes over the device-to-device
copy rate measured here), and the largest relative error of the persistent layers' last
output against the five kernels'. Needs a CUDA GPU; writes decode_layer.json to $OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernels import graph_micros_per_call, measure_copy_gbps

SHAPES = {  # hidden, q heads, kv heads, head_dim, intermediate
    "0.6B": (1024, 16, 8, 128, 3072),
    "4B": (2560, 32, 8, 128, 9728),
}
BLOCK_SIZE = 16


def make_layer(shape, fmt: str, device: torch.device):
    from jupyter_qwen.model.kernels.decode_layer import LayerWeights
    from jupyter_qwen.model.quant.linear import Fp8Linear

    hidden, q_heads, kv_heads, head_dim, inner = shape

    def product(sizes: list[int], k: int):
        weight = torch.randn(sum(sizes), k, device=device, dtype=torch.bfloat16) * k ** -0.5
        if fmt == "bf16":
            return weight
        layer = Fp8Linear(k, sizes, online=True).to(device)
        for index, part in enumerate(weight.split(sizes)):
            layer.load("weight", index, part)
        return layer

    def norm(size: int) -> torch.Tensor:
        return 1 + 0.2 * torch.randn(size, device=device, dtype=torch.bfloat16)

    return LayerWeights(
        input_norm=norm(hidden), post_attention_norm=norm(hidden), q_norm=norm(head_dim),
        k_norm=norm(head_dim), eps=1e-6,
        qkv=product([q_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], hidden),
        o=product([hidden], q_heads * head_dim), gate_up=product([inner, inner], hidden),
        down=product([hidden], inner))


def weight_bytes(weights) -> int:
    total = 0
    for product in weights.products():
        tensors = [product] if isinstance(product, torch.Tensor) else list(product.buffers())
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="0.6B", choices=sorted(SHAPES))
    parser.add_argument("--formats", default="bf16,fp8")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--context", type=int, default=600)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--warps", default="4,8")
    parser.add_argument("--prefetch", default="0,1,2")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("decode_layer.py times GPU kernels: it needs a CUDA GPU")
    from jupyter_qwen.model.kernels import gemv, pdl, quant_gemv
    from jupyter_qwen.model.kernels.decode_attention import decode_num_splits
    from jupyter_qwen.model.kernels.decode_layer import LayerBuffers, LayerShape, decode_layer
    from jupyter_qwen.model.kernels.decode_step import (
        DecodeStepWorkspace,
        decode_step_attention,
    )
    from jupyter_qwen.model.qwen3 import RotaryEmbedding

    device = torch.device("cuda")
    torch.manual_seed(0)
    shape = LayerShape(*SHAPES[args.shape])
    rows, layers = args.rows, args.layers
    blocks_per_seq = -(-args.context // BLOCK_SIZE) + 1
    num_blocks = rows * blocks_per_seq
    cache_shape = (num_blocks, BLOCK_SIZE, shape.kv_heads, shape.head_dim)
    caches = [(torch.randn(cache_shape, device=device, dtype=torch.bfloat16),
               torch.randn(cache_shape, device=device, dtype=torch.bfloat16))
              for _ in range(layers)]
    block_tables = torch.arange(num_blocks, device=device, dtype=torch.int32).view(rows, -1)
    seq_lens = torch.full((rows,), args.context, device=device, dtype=torch.int32)
    positions = (seq_lens - 1).long()
    slots = (block_tables[:, (args.context - 1) // BLOCK_SIZE].long() * BLOCK_SIZE
             + (args.context - 1) % BLOCK_SIZE)
    rotary = RotaryEmbedding(shape.head_dim, 4096, 1_000_000.0)
    rotary.build(device)
    scale = shape.head_dim ** -0.5
    num_splits = decode_num_splits(rows, shape.kv_heads, block_tables.shape[1] * BLOCK_SIZE,
                                   device)
    workspace = DecodeStepWorkspace.allocate(rows, shape.q_heads, shape.kv_heads,
                                             shape.head_dim, device, num_splits=num_splits)
    buffers = LayerBuffers.allocate(rows, shape, torch.bfloat16, device)
    hidden = torch.randn(rows, shape.hidden, device=device, dtype=torch.bfloat16)
    use_pdl = pdl.supported(device)
    rate = measure_copy_gbps() * 1e9
    kv_bytes = 2 * rows * args.context * shape.kv_heads * shape.head_dim * 2
    results = {"device": torch.cuda.get_device_name(), "shape": args.shape, "rows": rows,
               "context": args.context, "layers": layers, "copy_rate_gbs": rate / 1e9,
               "formats": {}}
    for fmt in args.formats.split(","):
        weights = [make_layer(SHAPES[args.shape], fmt, device) for _ in range(layers)]
        kernels = quant_gemv if fmt == "fp8" else gemv
        outputs: dict[str, torch.Tensor] = {}

        def five(weights=weights, kernels=kernels, outputs=outputs):
            x, residual = hidden, None
            for w, (k_cache, v_cache) in zip(weights, caches, strict=True):
                qkv, mid = kernels.rms_norm_linear(x, w.input_norm, w.eps, w.qkv, residual,
                                                   launch_pdl=use_pdl)
                attn = decode_step_attention(
                    qkv, positions, slots, w.q_norm, w.k_norm, w.eps, rotary.cos_cache,
                    rotary.sin_cache, k_cache, v_cache, block_tables, seq_lens, scale,
                    workspace=workspace, num_splits=num_splits, launch_pdl=use_pdl)
                o = kernels.linear_small_m(attn.reshape(rows, -1), w.o, launch_pdl=use_pdl)
                gate_up, residual = kernels.rms_norm_linear(
                    o, w.post_attention_norm, w.eps, w.gate_up, mid, launch_pdl=use_pdl)
                x = kernels.silu_mul_linear(gate_up, w.down, launch_pdl=use_pdl)
            outputs["five"] = x

        def persistent(warps: int, programs: int | None, label: str, cooperative: bool,
                       prefetch: int, weights=weights, outputs=outputs):
            def run():
                x, residual = hidden, None
                for w, (k_cache, v_cache) in zip(weights, caches, strict=True):
                    x, residual = decode_layer(
                        x, residual, w, shape, positions, slots, block_tables, seq_lens,
                        k_cache, v_cache, rotary.cos_cache, rotary.sin_cache, scale,
                        buffers=buffers, workspace=workspace, num_splits=num_splits,
                        num_warps=warps, programs=programs, cooperative=cooperative,
                        prefetch=prefetch)
                outputs[label] = x
            return run

        floor_us = (weight_bytes(weights[0]) + kv_bytes) / rate * 1e6
        timings = {"five": graph_micros_per_call([five]) / layers}
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        variants = [(warps, None, f"persistent w{warps}{f' p{fetch}' if fetch else ''}", True,
                     fetch)
                    for warps in (int(w) for w in args.warps.split(","))
                    for fetch in (int(p) for p in args.prefetch.split(","))]
        first = int(args.warps.split(",")[0])
        variants += [(first, sms, f"persistent w{first} x1", True, 0),
                     (first, None, f"persistent w{first} plain", False, 0)]
        for variant in variants:
            try:
                timings[variant[2]] = graph_micros_per_call([persistent(*variant)]) / layers
            except Exception as error:  # reported, and the other variants still run
                print(f"  {variant[2]}: {type(error).__name__}: {error}"[:300])
                torch.cuda.synchronize()
        reference = outputs["five"].float()
        errors = {label: float((out.float() - reference).norm() / reference.norm())
                  for label, out in outputs.items() if label != "five"}
        results["formats"][fmt] = {"floor_us": floor_us, "us_per_layer": timings,
                                   "relative_error": errors}
        print(f"{args.shape} {fmt} rows {rows}: floor {floor_us:.1f} us a layer")
        for label, us in timings.items():
            error = f"  error {errors[label]:.1e}" if label in errors else ""
            print(f"  {label:22s} {us:7.2f} us a layer  {timings['five'] / us:5.2f}x{error}")
        del weights
        torch.cuda.empty_cache()
    print(json.dumps(results, indent=1))
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "decode_layer.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
