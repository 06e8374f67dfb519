"""The AWQ decode model of KERNEL_NOTES.md ("AWQ decode: what limits the kernels we have"):
each measured AWQ product of a quant_decode.json, predicted from its sm_90 build (no device).

    python benchmarks/awq_model.py /path/to/quant_decode.json [--m 1]
    python benchmarks/awq_model.py --lop3 [--m 1]   # the lop3 kernel's predicted products
                                                    # (its f16x2 kinds as well)

Per K step a program costs max(pipes, chain, L) cycles:
- pipes: the SM's issue slots and pipes shared by the P programs resident on it,
  P x warps x max(I / 4, INT / 2, SHFL + LDS + STS + LDL + STL) (I: SASS instructions per
  thread in the K loop; INT: integer-pipe ops, half rate; shuffles, shared and local memory
  share one pipe of a warp instruction a clock; sm_90 per-SM rates);
- chain: one program alone, L_step + I x CPI_WARP + BAR x BAR_CYCLES, L_step = L when the
  step waits on global loads it issued itself (the scales and zeros: every kernel today);
- L: the weight tile is requested one step ahead, so a step is never shorter than the
  memory latency.
Programs fill the SMs in rounds of 132 x P_max (the last round with fewer per SM); a launch
adds T0 (one more for the K-split's sum).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from awq_sm90_build import Spec, build

CLOCK_GHZ = 1.755  # H100 SXM under load
SMS = 132
LATENCY = 1150  # cycles, ~650 ns: DRAM under a light load
CPI_WARP = 1.5  # cycles per instruction of a warp alone on its scheduler
CPI_SHARED = 1.4  # cycles per instruction of a scheduler shared by several warps
PROGRAM_CYCLES = LATENCY + 2 * 600 + 1500  # first tile, norm pass / operand from L2, epilogue
L2_TBPS = 5.5  # L2 -> SM bandwidth: what sector-wasting loads (< 32 bytes a row) are bound by
BAR_CYCLES = 40  # a barrier with the shared-memory round trip around it
T0_US = 3.0  # launch in a graph with PDL, first tile, norm pass
SHAPES = {"4B": {"qkv": (6144, 2560, "norm"), "o": (2560, 4096, "plain"),
                 "gate_up": (19456, 2560, "add_norm"), "down": (2560, 9728, "silu")},
          "0.6B": {"qkv": (4096, 1024, "norm"), "o": (1024, 2048, "plain"),
                   "gate_up": (6144, 1024, "add_norm"), "down": (1024, 3072, "silu")}}
# kernels whose steps wait on loads they issued themselves (lop3 loads everything a step ahead)
IN_STEP_LOADS = {"interleave": True, "planes": True, "split": True, "lop3": False,
                 "lop3_one": False, "half2": False, "half2_one": False}
TWO_LAUNCHES = ("split", "lop3", "half2")  # a second launch sums the K splits


def parse(name: str, m: int, prologue: str) -> tuple[Spec, int]:
    """(Spec, split_k) of a tiling name as quant_decode.py prints it."""
    found = re.match(r"(fma|planes|split|lop3_one|lop3|half2_one|half2) n(\d+) k(\d+)"
                     r"(?: s(\d+))? w(\d+)", name)
    kind, n, k, splits, warps = found.groups()
    kernel = "interleave" if kind == "fma" else kind
    return Spec(kernel, int(n), int(k), int(warps), m, prologue), int(splits or 1)


@cache
def facts(spec: Spec):
    return build(spec, None)


def step_cycles(spec: Spec, per_sm: int) -> tuple[float, str]:
    b = facts(spec)
    loop = b.loop
    instructions = b.loop_length
    memory_io = loop["shfl"] + loop["lds"] + loop["sts"] + loop["local"]
    pipes = per_sm * spec.num_warps * max(instructions / 4, loop["int"] / 2, memory_io)
    exposed = LATENCY if IN_STEP_LOADS[spec.kernel] else 0
    warps_per_scheduler = per_sm * spec.num_warps / 4
    chain = (exposed + max(instructions * CPI_WARP, warps_per_scheduler * instructions * CPI_SHARED)
             + loop["bar"] * BAR_CYCLES)
    bounds = {"pipes": pipes, "chain": chain, "latency": LATENCY}
    name = max(bounds, key=bounds.get)
    return bounds[name], name


def predict_us(spec: Spec, n: int, k: int, split_k: int) -> tuple[float, str]:
    tiles = math.ceil(n / spec.block_n)
    steps = math.ceil(k / spec.block_k)
    if spec.kernel in ("split", "lop3", "lop3_one", "half2", "half2_one"):
        per_split = math.ceil(steps / max(1, min(split_k, steps)))
        splits = math.ceil(steps / per_split)
        programs, steps = tiles * splits, per_split
        # lop3: no sum launch if unsplit; lop3_one: never (the last split sums)
        launches = 2 if spec.kernel == "split" or (
            splits > 1 and spec.kernel in TWO_LAUNCHES) else 1
    else:
        programs, launches = tiles, 1
    slots = SMS * facts(spec).per_sm
    cycles, bound = 0.0, ""
    while programs > 0:
        this_round = min(programs, slots)
        per_sm = math.ceil(this_round / SMS)
        step, name = step_cycles(spec, per_sm)
        cycles += PROGRAM_CYCLES + steps * step
        bound = bound or f"{name} P{per_sm}"
        programs -= this_round
    micros = cycles / CLOCK_GHZ / 1e3
    row_bytes = spec.block_n // 2
    if row_bytes < 32:  # every program pulls whole 32-byte sectors through L2 for its bytes
        l2_micros = n * k / 2 * (32 / row_bytes) / L2_TBPS / 1e6
        if l2_micros > micros:
            micros, bound = l2_micros, f"L2 sectors x{32 // row_bytes}"
    return T0_US * launches + micros, bound


def predict_lop3(m: int) -> None:
    """The model's figures for quant_decode.py's lop3 candidates (no measurement needed):
    per product each candidate, then the layer on each product's best."""
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    print(f"{'model':<6}{'product':<9}{'tiling':<26}{'pred us':>8}{'pred GB/s':>10}  bound")
    for model, products in SHAPES.items():
        layer = dict.fromkeys(("lop3", "lop3_one", "half2_one"), 0.0)
        for product, (n, k, prologue) in products.items():
            best = dict.fromkeys(layer, math.inf)
            for (block_n, warps), wave, unpack in itertools.product(
                    LOP3_TILES[m == 1], LOP3_WAVES[m == 1], layer):
                tiles, steps = math.ceil(n / block_n), math.ceil(k / 128)
                split_k = max(1, min(steps, round(wave * SMS / tiles)))
                name = DecodeTiling(block_n, 128, warps, unpack=unpack, split_k=split_k).name()
                spec, _ = parse(name, m, prologue)
                micros, bound = predict_us(spec, n, k, split_k)
                best[unpack] = min(best[unpack], micros)
                print(f"{model:<6}{product:<9}{name:<26}{micros:>8.1f}"
                      f"{n * k / 2 / micros / 1e3:>10.0f}  {bound}", flush=True)
            for unpack in layer:
                layer[unpack] += best[unpack]
        for unpack, micros in layer.items():
            print(f"{model:<6}{'layer':<9}{'best ' + unpack:<26}{micros:>8.1f}")


# quant_decode.py's AWQ_LOP3 tiles ([M > 1], [M = 1]) and a wider choice of programs per SM
LOP3_TILES = ([(128, 4), (256, 8)], [(128, 4), (64, 2)])
LOP3_WAVES = ((1, 2), (1, 1.5, 3, 6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?")
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--lop3", action="store_true",
                        help="predict the lop3 kernel's candidates (no results file)")
    args = parser.parse_args()
    if args.lop3:
        predict_lop3(args.m)
        return
    rows = json.loads(args.results.read_text())["products"]
    print(f"{'model':<6}{'product':<9}{'tiling':<24}{'meas us':>8}{'pred us':>8}{'meas GB/s':>10}"
          f"{'pred GB/s':>10}{'pred/meas':>10}  bound")
    for row in rows:
        if row["fmt"] != "awq" or row["m"] != args.m or "micros" not in row:
            continue
        n, k, prologue = SHAPES[row["model"]][row["product"]]
        spec, split_k = parse(row["tiling"], args.m, prologue)
        micros, bound = predict_us(spec, n, k, split_k)
        nbytes = row["gbps"] * row["micros"] * 1e3
        print(f"{row['model']:<6}{row['product']:<9}{row['tiling']:<24}{row['micros']:>8.1f}"
              f"{micros:>8.1f}{row['gbps']:>10.0f}{nbytes / micros / 1e3:>10.0f}"
              f"{row['micros'] / micros:>10.2f}  {bound}", flush=True)


if __name__ == "__main__":
    main()
