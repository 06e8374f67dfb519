"""Build the FP8 prefill kernel (quant_linear.py `_fp8_kernel`) for sm_90 on a machine with
no GPU and report what each tiling compiles to (no device time).

    python benchmarks/fp8_sm90_build.py                  # the FP8 sweep grid
    python benchmarks/fp8_sm90_build.py --out /tmp/sm90  # also writes each PTX / TTGIR

Per tiling: registers and stack (cuobjdump of the cubin; a stack frame means spills),
shared memory, how many programs fit on one SM (registers, shared memory), the wgmma
instructions and their element type, the wgmma waits (`wait_group N`: 0 is a full wait
after the dot), and the fp32 FMAs / multiplies per thread in the K loop's scaling. Pointers,
strides and N / K carry the divisibility-by-16 hints they get at run time; one scale row
per N tile (`tile_scale`, `swap_ab`) as on a projection whose shards fold. `swap_ab` tilings
build `_fp8_swap_kernel` (y.T = W' @ x.T on bf16 tensor cores, W' made in registers).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_qwen.model.kernels.quant_tiles import QuantTiling

REGISTERS_PER_SM = 65536
SHARED_PER_SM = 227 * 1024
POINTERS = ("x_ptr", "xs_ptr", "w_ptr", "s_ptr", "srow_ptr", "y_ptr", "part_ptr", "count_ptr")
HINTED = (*POINTERS, "N", "K", "K_CHUNK", "x_stride", "w_stride", "y_stride")


@dataclass(slots=True)
class Build:
    registers: int
    stack: int
    shared: int
    per_sm: int
    wgmma: list[str]
    waits: list[str]
    fma: int
    mul: int


def signature(tiling: QuantTiling) -> tuple[dict, dict]:
    if tiling.swap_ab:  # quant_linear._fp8_swap_kernel
        types = {"x_ptr": "*bf16", "w_ptr": "*fp8e4nv", "s_ptr": "*fp32", "srow_ptr": "*i32",
                 "y_ptr": "*bf16"}
        types |= {name: "i32" for name in ("M", "N", "K", "x_stride", "w_stride", "s_stride",
                                           "y_stride")}
        constants = dict(BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n,
                         GROUP_M=tiling.group_m, PRECISION="tf32")
        return types | dict.fromkeys(constants, "constexpr"), constants
    x_fp8 = tiling.fp8_dot and tiling.quantize_x
    types = {"x_ptr": "*fp8e4nv" if x_fp8 else "*bf16", "xs_ptr": "*fp32",
             "w_ptr": "*fp8e4nv", "s_ptr": "*fp32", "srow_ptr": "*i32", "y_ptr": "*bf16",
             "part_ptr": "*fp32", "count_ptr": "*i32"}
    types |= {name: "i32" for name in ("M", "N", "K", "K_CHUNK", "SPLITS", "x_stride",
                                       "xs_stride", "w_stride", "s_stride", "y_stride")}
    constants = dict(BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k,
                     GROUP_M=tiling.group_m, FP8_DOT=tiling.fp8_dot, X_FP8=x_fp8,
                     CHAIN=tiling.chain, PROMOTE_K=tiling.promote_k,
                     TILE_SCALE=x_fp8 and tiling.tile_scale, SPLIT=tiling.split_k > 1,
                     PRECISION="tf32")
    return types | dict.fromkeys(constants, "constexpr"), constants


def build(tiling: QuantTiling, out: Path | None, name: str) -> Build:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from jupyter_qwen.model.kernels.quant_linear import _fp8_kernel, _fp8_swap_kernel

    source = _fp8_swap_kernel if tiling.swap_ab else _fp8_kernel
    types, constants = signature(tiling)
    hints = {(source.arg_names.index(arg),): [["tt.divisibility", 16]] for arg in HINTED
             if arg in source.arg_names}
    kernel = compile(ASTSource(source, types, constexprs=constants, attrs=hints),
                     target=GPUTarget("cuda", 90, 32),
                     options={"num_warps": tiling.num_warps, "num_stages": tiling.num_stages})
    ptx = kernel.asm["ptx"]
    cubin = (out or Path("/tmp")) / f"{name}.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    if out:
        (out / f"{name}.ptx").write_text(ptx)
        (out / f"{name}.ttgir").write_text(kernel.asm["ttgir"])
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True,
                           text=True, check=True).stdout
    registers, stack = map(int, re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    threads = 32 * tiling.num_warps
    shared = kernel.metadata.shared
    per_sm = min(REGISTERS_PER_SM // (-(-registers // 8) * 8 * threads),
                 SHARED_PER_SM // max(shared, 1), 2048 // threads)
    return Build(registers, stack, shared, per_sm,
                 sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(\S+?)\s", ptx))),
                 re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+)", ptx),
                 ptx.count("fma.rn.f32"), len(re.findall(r"\bmul(?:\.rn)?\.f32", ptx)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from quant_tiles import fp8_grid, label

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'tiling':<30}{'regs':>5}{'stack':>6}{'smem KB':>8}{'per SM':>7}  "
          f"{'wait':<6}{'fma':>5}{'mul':>5}  wgmma")
    for tiling in fp8_grid():
        name = label(tiling).replace(" ", "_")
        b = build(tiling, args.out, name)
        print(f"{label(tiling):<30}{b.registers:>5}{b.stack:>6}{b.shared // 1024:>8}"
              f"{b.per_sm:>7}  {','.join(b.waits) or '-':<6}{b.fma:>5}{b.mul:>5}  "
              f"{' '.join(b.wgmma) or 'none (mma.sync)'}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
