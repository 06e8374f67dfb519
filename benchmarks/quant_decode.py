"""Time the small-batch decode products of FP8 and AWQ projections (quant_gemv.py) against
the bf16 ones (gemv.py, the model's path for bf16 checkpoints), one GPU call (<= ~3 min).

    python benchmarks/quant_decode.py       # table on stdout; $OUT/quant_decode.json if OUT
    python benchmarks/quant_decode.py --formats bf16,awq --models 4B   # a part of it
    python benchmarks/quant_decode.py --formats bf16,awq --awq-kernels lop3,lop3_one,split
    python benchmarks/quant_decode.py --formats bf16,awq --models 4B --rows 1 \
        --awq-kernels lop3,lop3_one,mma --awq-cap-warps 12,16   # with and without caps
    python benchmarks/quant_decode.py --formats bf16,awq --models 4B --rows 1 \
        --awq-kernels lop3_one,half2_one --awq-cap-warps 12,16   # f16x2 sums

For Qwen3-0.6B's and Qwen3-4B's decoder layer at M = 1 and 2 rows (bf16 activations), the
four products as the model runs them: qkv with the RMS norm, o plain, gate_up with add +
RMS norm, down with SiLU·mul. Per product, every candidate tiling is checked against the
dequantizing reference (relative 2-norm error; a failing variant is skipped, loudly) and
then timed; then a whole layer (its four products, each on its fastest tiling, and on the
defaults) is timed. Every figure is the replay of one CUDA graph over copies of the
weights in rotation (>= 128 MB, more than the 50 MB L2), divided by the launch count; PDL
as the engine launches. Weights are random bits of each format (FP8 values, AWQ words,
scales and zeros), which is all the kernels' speed depends on. AWQ sweeps its five
decode kernels: interleaving, nibble planes, planes with K split across programs
(tiles x split counts for about 4 and 8 programs an SM, `split_candidates`), nibble pairs
by lop3 with K split (sums in fp32 or f16x2) and the tensor-core kernel
(`lop3_candidates`); FP8 sweeps its first
kernel's tilings and the int32-word kernel's (`FP8_WORDS`, fp8_words.py). Kernels are
compiled first in parallel worker processes (Triton's disk cache). Printed last: the
per-product sweep, TUNED lines for quant_gemv.py, and the layer table with speed-ups over
bf16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernel_setup import (
    compile_in_workers,
    launch_pdl,
    relative_error,
    rewrite_table,
)
from benchmarks.kernels import LOG, graph_micros_per_call, measure_copy_gbps, say

DTYPE = torch.bfloat16
EPS = 1e-6
MODELS = {  # product: (N, K, shards, prologue)
    "0.6B": {"qkv": (4096, 1024, [2048, 1024, 1024], "norm"),
             "o": (1024, 2048, [1024], "plain"),
             "gate_up": (6144, 1024, [3072, 3072], "add_norm"),
             "down": (1024, 3072, [1024], "silu")},
    "1.7B": {"qkv": (4096, 2048, [2048, 1024, 1024], "norm"),
             "o": (2048, 2048, [2048], "plain"),
             "gate_up": (12288, 2048, [6144, 6144], "add_norm"),
             "down": (2048, 6144, [2048], "silu")},
    "4B": {"qkv": (6144, 2560, [4096, 1024, 1024], "norm"),
           "o": (2560, 4096, [2560], "plain"),
           "gate_up": (19456, 2560, [9728, 9728], "add_norm"),
           "down": (2560, 9728, [2560], "silu")},
}
FORMATS = ("bf16", "fp8", "awq")
ROWS = (1, 2)
ROTATION_BYTES = 128 << 20
REPLAYS = 10
BUDGET_S = 170  # past this, sweeps keep only the default tiling
# the AWQ nibble-plane kernel's candidates (block_n, block_k, warps), [M > 1] and [M = 1]:
# 8 words a thread; n128 (63-309 GB/s, never a product's best in runs 47 and 49) and the
# wider ones are left out (KERNEL_NOTES.md "AWQ decode: what limits the kernels we have")
AWQ_PLANES = ([(64, 128, 4)], [(64, 128, 4)])
# the K-split kernel's tiles (block_n, block_k, warps), [M > 1] and [M = 1], each with K
# split for about AWQ_SPLIT_WAVES programs per SM. Left out after run 49: n256 w4 (4.5 KB of
# spills a thread in Triton 3.6's sm_90 build, 10-16 GB/s) and M > 1 n128 w4 (19-68 GB/s)
AWQ_SPLIT = ([(256, 128, 8)], [(128, 128, 4), (256, 128, 8)])
AWQ_SPLIT_WAVES = (4, 8)
# the lop3 kernel's tiles (unpack, block_n, warps, programs per SM wanted; one group a step),
# [M > 1] and [M = 1], K split for about that many programs per SM (its Triton 3.6 sm_90
# build: n128 w4 M = 1 167 registers, 3 programs an SM; n64 w2 6; M = 2 255; KERNEL_NOTES.md
# "AWQ decode by lop3 pairs"); "lop3_one" sums the splits in the product's last program (one
# launch); n64 at 1 leaves 4B gate_up's K unsplit: one launch, no partials. "half2_one" sums
# a thread's four rows of a group in f16x2 (n128 w4 M = 1 128-139 registers, 463-532
# instructions a step against lop3_one's 675-738; KERNEL_NOTES "AWQ decode in f16x2 sums")
AWQ_LOP3 = ([("lop3", 128, 4, (2,)), ("lop3_one", 128, 4, (2,)), ("lop3_one", 256, 8, (2,)),
             ("half2_one", 128, 4, (2, 4)), ("half2_one", 256, 8, (2,))],
            [("lop3", 128, 4, (3,)), ("lop3_one", 128, 4, (2, 3, 4)),
             ("lop3_one", 64, 2, (1, 6, 8)), ("half2_one", 128, 4, (2, 3, 4, 5)),
             ("half2_one", 64, 2, (1, 6, 8))])
# the tensor-core kernel's tiles, the same form (awq_mma.py; KERNEL_NOTES "AWQ decode on the
# tensor cores"): one 16-row dot a group, so M = 1 and 2 take the same tiles
AWQ_MMA = [("mma", 64, 4, (2, 4)), ("mma", 128, 4, (2, 4)), ("mma", 128, 8, (2,)),
           ("mma", 256, 8, (1, 2))]
AWQ_KERNELS_ENV = "QUANT_DECODE_AWQ_KERNELS"
# --awq-cap-warps: the lop3 and mma tilings again with ptxas's registers capped so that
# that many warps fit an SM (`DecodeTiling.max_registers`; 12: 168 registers, 3 programs of
# 4 warps; 16: 128; KERNEL_NOTES "AWQ decode: bytes in flight")
AWQ_CAP_ENV = "QUANT_DECODE_AWQ_CAP"
# the FP8 words kernel's tiles (block_n, block_k, warps), [M > 1] and [M = 1]; two words a
# thread, so block_k = 256 x warps. Its Triton 3.6 sm_90 build (benchmarks/fp8_words_build.py):
# n8 w4 72 registers, n16 w4 168, n16 w2 M = 2 200; n32 spills
FP8_WORDS = ([(8, 512, 2), (16, 512, 2), (8, 1024, 4)],
             [(4, 1024, 4), (8, 1024, 4), (16, 1024, 4), (8, 512, 2), (16, 512, 2),
              (8, 2048, 8)])


def candidates(fmt: str, m: int, n: int, k: int) -> list:
    """The default tiling first, then alternatives (deduplicated)."""
    from jupyter_qwen.model.kernels import gemv, quant_gemv

    if fmt == "bf16":
        return [gemv.default_tiling(m, n, k)]
    tile = quant_gemv.DecodeTiling
    if fmt == "fp8":
        extra = ([tile(4, 1024), tile(16, 1024), tile(8, 2048), tile(16, 512)] if m == 1
                 else [tile(16, 256), tile(32, 256), tile(16, 1024)])
        extra += [tile(n_, k_, w, unpack="words") for n_, k_, w in FP8_WORDS[m == 1]]
    else:
        extra = ([tile(16, 512), tile(8, 512), tile(32, 1024)] if m == 1
                 else [tile(16, 256), tile(32, 256), tile(8, 512)])
        extra += [tile(n_, k_, w, unpack="planes") for n_, k_, w in AWQ_PLANES[m == 1]
                  if n % n_ == 0 and n // n_ >= 8]
        extra += split_candidates(m, n, k)
        extra += lop3_candidates(m, n, k)
        kept = os.environ.get(AWQ_KERNELS_ENV)  # --awq-kernels (set before the workers start)
        if kept:
            extra = [t for t in extra if t.unpack in kept.split(",")]
    out = [quant_gemv.default_tiling(fmt, m, n, k)]
    return out + [t for t in extra if t not in out]


def split_candidates(m: int, n: int, k: int) -> list:
    """The K-split tilings: each tile of AWQ_SPLIT with K split so that about 4 and 8
    programs per SM run (at most one split per step of 128 rows); n64 too where n128
    cannot reach 4 programs per SM."""
    from jupyter_qwen.model.kernels import quant_gemv

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = AWQ_SPLIT[m == 1]
    if m == 1 and math.ceil(n / 128) * math.ceil(k / 128) < 4 * sms:  # Qwen3-0.6B's
        tiles = [(64, 128, 4), *tiles]  # 32 bytes of each row, but 4 programs per SM
    out = []
    for block_n, block_k, warps in tiles:
        tiles, steps = math.ceil(n / block_n), math.ceil(k / block_k)
        for waves in AWQ_SPLIT_WAVES:
            split_k = max(1, min(steps, round(waves * sms / tiles)))
            tiling = quant_gemv.DecodeTiling(block_n, block_k, warps, unpack="split",
                                             split_k=split_k)
            if tiling not in out:
                out.append(tiling)
    return out


def lop3_candidates(m: int, n: int, k: int) -> list:
    """The lop3 and mma tilings: each tile of AWQ_LOP3 and AWQ_MMA with K split for about
    its programs per SM (at most one split per step of 128 rows); with --awq-cap-warps each
    again with registers capped for that many warps an SM."""
    from jupyter_qwen.model.kernels import quant_gemv

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    caps = [0, *(register_cap(int(w)) for w in os.environ.get(AWQ_CAP_ENV, "").split(",")
                 if w)]
    out = []
    for unpack, block_n, warps, waves in AWQ_LOP3[m == 1] + AWQ_MMA:
        tiles, steps = math.ceil(n / block_n), math.ceil(k / 128)
        for wave in waves:
            split_k = max(1, min(steps, round(wave * sms / tiles)))
            for cap in caps:
                tiling = quant_gemv.DecodeTiling(block_n, 128, warps, unpack=unpack,
                                                 split_k=split_k, max_registers=cap)
                if tiling not in out:
                    out.append(tiling)
    return out


def register_cap(warps: int) -> int:
    """The most registers a thread (a multiple of 8) that lets `warps` warps share an SM's
    65,536."""
    return min(255, 65536 // (warps * 32)) // 8 * 8


def random_layer(fmt: str, n: int, k: int, shards: list[int]):
    """A projection of `fmt` on the GPU filled with random bits of its format."""
    from jupyter_qwen.model.quant.linear import AwqLinear, Fp8Linear

    if fmt == "bf16":
        return torch.randn(n, k, device="cuda", dtype=DTYPE) * k**-0.5
    if fmt == "fp8":
        layer = Fp8Linear(k, shards).cuda()
        layer.weight.copy_(torch.randn(n, k, device="cuda").to(layer.weight.dtype))
        layer.weight_scale_inv.copy_(torch.rand_like(layer.weight_scale_inv) * 2e-3 / k**0.5)
        return layer
    layer = AwqLinear(k, shards).cuda()
    for words in (layer.qweight, layer.qzeros):
        words.copy_(torch.randint(-2**31, 2**31 - 1, words.shape, device="cuda",
                                  dtype=torch.int64).to(torch.int32))
    layer.scales.copy_(torch.rand_like(layer.scales, dtype=torch.float32) * 2e-2 / k**0.5)
    return layer


def weight_bytes(layer) -> int:
    if isinstance(layer, torch.Tensor):
        return layer.numel() * layer.element_size()
    return sum(b.numel() * b.element_size() for name, b in layer.named_buffers()
               if name != "scale_rows")


def dequantized(layer) -> torch.Tensor:
    return layer if isinstance(layer, torch.Tensor) else layer.dequantize(DTYPE)


class Inputs:
    def __init__(self, m: int, k: int):
        self.x, self.residual = (torch.randn(m, k, device="cuda", dtype=DTYPE)
                                 for _ in range(2))
        self.norm_weight = 1 + 0.1 * torch.randn(k, device="cuda", dtype=DTYPE)
        self.gate_up = torch.randn(m, 2 * k, device="cuda", dtype=DTYPE)


def product(prologue: str, layer, inputs: Inputs, tiling):
    """One fused product as the model runs it (gemv for a bf16 tensor, else quant_gemv)."""
    from jupyter_qwen.model.kernels import gemv, quant_gemv

    kernels = gemv if isinstance(layer, torch.Tensor) else quant_gemv
    pdl = launch_pdl()
    if prologue == "plain":
        return kernels.linear_small_m(inputs.x, layer, tiling=tiling, launch_pdl=pdl)
    if prologue == "silu":
        return kernels.silu_mul_linear(inputs.gate_up, layer, tiling=tiling, launch_pdl=pdl)
    residual = inputs.residual if prologue == "add_norm" else None
    return kernels.rms_norm_linear(inputs.x, inputs.norm_weight, EPS, layer, residual,
                                   tiling=tiling, launch_pdl=pdl)[0]


def reference(prologue: str, layer, inputs: Inputs) -> torch.Tensor:
    from jupyter_qwen.model.kernels import gemv

    weight = dequantized(layer)
    if prologue == "plain":
        return gemv.linear_reference(inputs.x, weight)
    if prologue == "silu":
        return gemv.silu_mul_linear_reference(inputs.gate_up, weight)
    residual = inputs.residual if prologue == "add_norm" else None
    return gemv.rms_norm_linear_reference(inputs.x, inputs.norm_weight, EPS, weight,
                                          residual)[0]


def precompile_job(job: tuple) -> str:
    """In a worker: launch one (format, prologue, M, K, tiling) once on a 1024-row layer so
    that its kernel lands in Triton's disk cache. Returns "" or the error."""
    fmt, prologue, m, k, tiling = job
    try:
        product(prologue, random_layer(fmt, 1024, k, [1024]), Inputs(m, k), tiling)
        torch.cuda.synchronize()
    except Exception as error:
        return f"{job}: {type(error).__name__}: {error}"[:300]
    return ""


def precompile(models: list[str], formats: list[str], rows: list[int]) -> None:
    jobs = {}
    for model in models:
        for n, k, _, prologue in MODELS[model].values():
            for fmt in formats:
                for m in rows:
                    for tiling in candidates(fmt, m, n, k):
                        jobs.setdefault((fmt, prologue, m, k, tiling),
                                        (fmt, prologue, m, k, tiling))
    say(compile_in_workers(precompile_job, list(jobs.values()), most=14))


def copies_for(nbytes: int, most: int = 64) -> int:
    return max(2, min(most, math.ceil(ROTATION_BYTES / nbytes)))


def sweep(model: str, fmt: str, m: int, began: float, rows: list[dict],
          budget_s: float = BUDGET_S) -> dict:
    """Each product's candidates, checked then timed over rotated copies; the best tiling
    of each product (None where every candidate failed)."""
    best = {}
    for name, (n, k, shards, prologue) in MODELS[model].items():
        layers = [random_layer(fmt, n, k, shards)]
        layers += [random_layer(fmt, n, k, shards)
                   for _ in range(copies_for(weight_bytes(layers[0])) - 1)]
        inputs = Inputs(m, k)
        ref = reference(prologue, layers[0], inputs)
        tilings = candidates(fmt, m, n, k)
        if time.perf_counter() - began > budget_s:
            tilings = tilings[:1]
        timed = []
        for tiling in tilings:
            row = dict(model=model, fmt=fmt, m=m, product=name, tiling=_name(tiling))
            try:
                error = relative_error(product(prologue, layers[0], inputs, tiling).float(),
                                       ref.float())
                row["error"] = error
                if not error < 2e-2:
                    raise AssertionError(f"relative error {error:.2e}")
                calls = [lambda w=w, t=tiling, x=inputs, p=prologue: product(p, w, x, t)
                         for w in layers]
                micros = graph_micros_per_call(calls, REPLAYS)
                row.update(micros=micros, gbps=weight_bytes(layers[0]) / micros / 1e3)
                timed.append((micros, tiling))
            except Exception as error:
                row["failed"] = f"{type(error).__name__}: {error}"[:300]
                say(f"SKIPPED {model} {fmt} M={m} {name} {_name(tiling)}: {row['failed']}")
            rows.append(row)
        best[name] = min(timed, key=lambda t: t[0])[1] if timed else None
        del layers
        torch.cuda.empty_cache()
    return best


def layer_micros(model: str, fmt: str, m: int, tilings: dict) -> float:
    """One decoder layer's four products (the given tilings), replayed over rotated layers."""
    shapes = MODELS[model]
    one = {name: random_layer(fmt, n, k, shards) for name, (n, k, shards, _) in shapes.items()}
    count = copies_for(sum(weight_bytes(w) for w in one.values()), most=32)
    layers = [one] + [{name: random_layer(fmt, n, k, shards)
                       for name, (n, k, shards, _) in shapes.items()} for _ in range(count - 1)]
    inputs = {name: Inputs(m, k) for name, (_, k, _, _) in shapes.items()}
    calls = [lambda w=w, name=name: product(shapes[name][3], w[name], inputs[name],
                                            tilings.get(name))
             for w in layers for name in shapes]
    micros = graph_micros_per_call(calls, REPLAYS) * len(shapes)
    del layers
    torch.cuda.empty_cache()
    return micros


def _name(tiling) -> str:
    return tiling.name() if tiling is not None else "default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="comma-separated, of bf16, fp8, awq (bf16 is always timed: the "
                             "speed-ups are over it)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of "
                        + ", ".join(MODELS))
    parser.add_argument("--awq-kernels", default="",
                        help="comma-separated unpack kinds (interleave, planes, split, lop3, "
                             "lop3_one, half2, half2_one, mma): "
                             "only these AWQ candidates besides the default tiling")
    parser.add_argument("--budget", type=float, default=BUDGET_S,
                        help="seconds from the start past which a product's sweep keeps only "
                             "its default tiling")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)),
                        help="comma-separated rows of x (M) to sweep")
    parser.add_argument("--apply", action="store_true",
                        help="write each swept product's fastest tiling into quant_gemv.py's "
                             "TUNED (other entries kept)")
    parser.add_argument("--awq-cap-warps", default="",
                        help="comma-separated warps per SM: the lop3 and mma candidates "
                             "again with registers capped for each (e.g. 12,16)")
    args = parser.parse_args(argv)
    if args.awq_kernels:
        os.environ[AWQ_KERNELS_ENV] = args.awq_kernels
    os.environ[AWQ_CAP_ENV] = args.awq_cap_warps
    args.rows = [int(m) for m in args.rows.split(",") if m]
    args.formats = ["bf16"] + [f for f in args.formats.split(",") if f and f != "bf16"]
    args.models = [m for m in args.models.split(",") if m]
    for name, known in (("format", FORMATS), ("model", MODELS)):
        wrong = [v for v in getattr(args, name + "s") if v not in known]
        if wrong:
            parser.error(f"unknown {name} {wrong}; known: {list(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    say(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; pdl {launch_pdl()}")
    say(f"copy bandwidth {measure_copy_gbps():.0f} GB/s (read + write)")
    torch.cuda.empty_cache()
    precompile(args.models, args.formats, args.rows)
    rows, layers = [], []
    for model in args.models:
        for m in args.rows:
            for fmt in args.formats:
                try:
                    best = sweep(model, fmt, m, began, rows, args.budget)
                    chosen = {name: t for name, t in best.items() if t is not None}
                    entry = dict(model=model, m=m, fmt=fmt,
                                 best={k: _name(t) for k, t in chosen.items()},
                                 best_code={k: tiling_source(t) for k, t in chosen.items()},
                                 best_us=layer_micros(model, fmt, m, chosen),
                                 default_us=layer_micros(model, fmt, m, {}))
                except Exception:
                    say(f"FAILED {model} {fmt} M={m}:\n{traceback.format_exc()}")
                    entry = dict(model=model, m=m, fmt=fmt, best_us=math.nan,
                                 default_us=math.nan)
                layers.append(entry)
    compiled = compiled_awq_kernels()
    report(rows, layers)
    if args.apply:
        say(f"\n--apply: {apply_tuned(layers)} TUNED entries written to {TUNED_SOURCE}")
    say(f"total {time.perf_counter() - began:.0f} s")
    out = os.environ.get("OUT")
    if out:
        Path(out, "quant_decode.json").write_text(json.dumps(
            dict(products=rows, layers=layers, compiled=compiled, log=LOG), indent=1))
    return 0


TUNED_SOURCE = Path(__file__).resolve().parents[1] / "jupyter_qwen/model/kernels/quant_gemv.py"
LINE_LENGTH = 100  # ruff's, for quant_gemv.py


def tiling_source(tiling) -> str:
    """A DecodeTiling as TUNED writes it: block_n, block_k, warps, then what is set (bf16's
    gemv tilings as repr gives them)."""
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    if not isinstance(tiling, DecodeTiling):
        return repr(tiling)
    extra = [f"dot={tiling.dot}"]
    if tiling.unpack != "interleave":
        extra.append(f"unpack={tiling.unpack!r}")
    if tiling.split_k != 1:
        extra.append(f"split_k={tiling.split_k}")
    if tiling.max_registers:
        extra.append(f"max_registers={tiling.max_registers}")
    return (f"DecodeTiling({tiling.block_n}, {tiling.block_k}, {tiling.num_warps}, "
            f"{', '.join(extra)})")


def tuned_lines(key: tuple, source: str) -> list[str]:
    """One TUNED entry, its arguments wrapped under the first where the line is too long."""
    head = f"    {key!r}: "
    line = f"{head}{source},"
    if len(line) <= LINE_LENGTH:
        return [line]
    cut = source.rindex(", ", 0, LINE_LENGTH - len(head) - 1)
    return [head + source[:cut + 1],
            " " * (len(head) + len("DecodeTiling(")) + source[cut + 2:] + ","]


def apply_tuned(layers: list[dict], path: Path = TUNED_SOURCE) -> int:
    """Write each measured product's fastest tiling into TUNED in `path` (quant_gemv.py),
    replacing that key's entry; other entries are kept. Returns the entries written."""
    entries = {}
    for entry in layers:
        if entry["fmt"] == "bf16":
            continue
        for name, source in entry.get("best_code", {}).items():
            n, k, _, _ = MODELS[entry["model"]][name]
            entries[(entry["fmt"], entry["m"], n, k)] = source
    rewrite_table(path, "TUNED: dict[", set(entries),
                  [line for key, source in entries.items() for line in tuned_lines(key, source)])
    return len(entries)


def compiled_awq_kernels() -> list[dict]:
    """Registers and spills of every AWQ decode kernel this process compiled or loaded (as
    ptxas built them for this GPU; benchmarks/awq_sm90_build.py builds them on a CPU)."""
    from jupyter_qwen.model.kernels import awq_lop3, awq_mma, awq_split, quant_gemv

    found = []
    try:
        for fn in (quant_gemv._awq_kernel, quant_gemv._awq_planes_kernel,
                   awq_split._awq_split_kernel, awq_lop3._awq_lop3_kernel,
                   awq_mma._awq_mma_kernel):
            for caches in getattr(fn, "device_caches", {}).values():
                for kernel in caches[0].values():
                    constants = {key[0] if isinstance(key, tuple) else fn.arg_names.index(key):
                                 value for key, value in kernel.src.constants.items()}
                    entry = {key: constants.get(fn.arg_names.index(key))
                             if key in fn.arg_names else 1
                             for key in ("BLOCK_M", "BLOCK_N", "GROUPS", "PROLOGUE")}
                    entry.update(kernel=fn.__name__, warps=kernel.metadata.num_warps,
                                 registers=getattr(kernel, "n_regs", None),
                                 spills=getattr(kernel, "n_spills", None))
                    found.append(entry)
    except Exception as error:  # a report only: never lose the sweep's figures to it
        say(f"compiled-kernel report failed: {type(error).__name__}: {error}")
    say("\nAWQ kernels as built here (registers, spilled registers)")
    for e in found:
        say(f"  {e['kernel']:20s} M{e['BLOCK_M']} n{e['BLOCK_N']} g{e['GROUPS']} "
            f"w{e['warps']} p{e['PROLOGUE']}: {e['registers']} regs, {e['spills']} spills")
    return found


def report(rows: list[dict], layers: list[dict]) -> None:
    say("\nper product (us per launch, GB/s of its weights; err vs dequantized reference)")
    for row in rows:
        if "micros" in row:
            say(f"  {row['model']:5s} {row['fmt']:4s} M={row['m']} {row['product']:8s} "
                f"{row['tiling']:22s} {row['micros']:7.2f} us {row['gbps']:6.0f} GB/s "
                f"err {row['error']:.1e}")
    say("\nTUNED lines for quant_gemv.py (fastest per product):")
    for entry in layers:
        if entry["fmt"] == "bf16":
            continue
        for name, tiling in entry.get("best_code", {}).items():
            n, k, _, _ = MODELS[entry["model"]][name]
            say(f"    ({entry['fmt']!r}, {entry['m']}, {n}, {k}): {tiling},")
    say("\nwhole layer (4 products; us per layer; speed-up over bf16 at the same M)")
    say(f"  {'model':5s} {'M':>2s} {'format':6s} {'best us':>8s} {'x bf16':>7s} "
        f"{'default us':>10s} {'x bf16':>7s}")
    for entry in layers:
        base = next(e for e in layers if e["model"] == entry["model"] and e["m"] == entry["m"]
                    and e["fmt"] == "bf16")
        say(f"  {entry['model']:5s} {entry['m']:2d} {entry['fmt']:6s} {entry['best_us']:8.1f} "
            f"{base['default_us'] / entry['best_us']:7.2f} {entry['default_us']:10.1f} "
            f"{base['default_us'] / entry['default_us']:7.2f}")


if __name__ == "__main__":
    sys.exit(main())
