"""Build the AWQ small-M decode kernels (quant_gemv.py, awq_split.py) for sm_90 on a machine
with no GPU and count what their K loop issues (no device time).

    python benchmarks/awq_sm90_build.py                  # the tilings KERNEL_NOTES.md models
    python benchmarks/awq_sm90_build.py --out /tmp/awq   # also writes each PTX / SASS

Build with the GPU's Triton, not the local one: the GPU runs 3.6, and 3.6 lays the plane
kernels' tiles out differently from 3.9 (KERNEL_NOTES.md). The 3.6 wheel unpacked anywhere
and put first on PYTHONPATH is enough (`pip download triton==3.6.0 --no-deps`, unzip it to
DIR, `PYTHONPATH=DIR python benchmarks/awq_sm90_build.py`); it brings its own ptxas.

Per tiling: registers and stack (cuobjdump of the cubin; a stack frame means spills),
shared memory, programs per SM (registers, shared memory, threads), the qweight words one
thread loads per K step, and the SASS of the K loop (the longest backward branch) counted by
category, per thread per step: global loads by width, shared-memory loads / stores,
barriers, shuffles, integer-pipe ops (LOP3, shifts, IADD3, PRMT, ISETP, SEL, ...), IMAD,
converts, FP32 FFMA / FADD / FMUL, packed half FMA / add / mul, moves and the rest. Pointers,
strides, N and K carry the divisibility-by-16 hints they get at run time (Qwen3's shapes).
The "model" columns are KERNEL_NOTES.md's ("AWQ decode: what limits the kernels we have").
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGISTERS_PER_SM = 65536
SHARED_PER_SM = 227 * 1024
THREADS_PER_SM = 2048
PROGRAMS_PER_SM = 32
PROLOGUES = {"plain": 0, "norm": 1, "add_norm": 2, "silu": 3}
CATEGORIES = ("ldg128", "ldg64", "ldg32", "ldg16", "local", "lds", "sts", "bar", "shfl", "int",
              "imad", "cvt", "ffma", "fadd", "fmul", "half2", "mov", "other")


@dataclass(frozen=True, slots=True)
class Spec:
    kernel: str  # "interleave", "planes", "split", "mma" or awq_lop3.KINDS
    block_n: int
    block_k: int
    num_warps: int
    m: int = 1
    prologue: str = "plain"
    max_registers: int = 0  # ptxas's cap (DecodeTiling.max_registers; 0: none)

    def label(self) -> str:
        cap = f" r{self.max_registers}" if self.max_registers else ""
        return (f"{self.kernel} n{self.block_n} k{self.block_k} w{self.num_warps} M{self.m} "
                f"{self.prologue}{cap}")


@dataclass(slots=True)
class Build:
    registers: int
    stack: int
    shared: int
    per_sm: int
    words_per_thread: int  # qweight words a thread loads per K step
    loop: Counter = field(default_factory=Counter)  # SASS of the K loop, per thread per step
    loop_length: int = 0


def _types(spec: Spec) -> dict:
    types = dict(x_ptr="*bf16", res_ptr="*bf16", norm_w_ptr="*bf16", qw_ptr="*i32",
                 qz_ptr="*i32", sc_ptr="*fp16", y_ptr="*bf16", res_out_ptr="*bf16", M="i32",
                 N="i32", K="i32", eps="fp32", x_stride="i32", res_stride="i32",
                 qw_stride="i32", qz_stride="i32", sc_stride="i32", y_stride="i32",
                 res_out_stride="i32")
    if spec.kernel == "split":
        del types["y_ptr"], types["y_stride"]
        types = {**types, "part_ptr": "*fp32", "K_CHUNK": "i32"}
    if spec.kernel.startswith(("lop3", "half2")):  # scales as int32 pairs; partials, counts
        types = {**types, "sc_ptr": "*i32", "part_ptr": "*fp32", "K_CHUNK": "i32",
                 "part_stride": "i32", "count_ptr": "*i32", "SPLITS": "i32"}
    if spec.kernel == "mma":  # partials, split counts
        types = {**types, "part_ptr": "*fp32", "K_CHUNK": "i32", "part_stride": "i32",
                 "count_ptr": "*i32", "SPLITS": "i32"}
    return types


def _kernel_and_constants(spec: Spec):
    from jupyter_qwen.model.kernels import awq_lop3, awq_mma, awq_split, quant_gemv

    groups = spec.block_k // 128
    constants = dict(PROLOGUE=PROLOGUES[spec.prologue], BLOCK_M=spec.m, BLOCK_N=spec.block_n,
                     GROUPS=groups, NORM_BLOCK=2048, USE_GDC=True)
    words = spec.block_n // 8
    if spec.kernel == "interleave":
        return quant_gemv._awq_kernel, constants | dict(EVEN_K=True)
    if spec.kernel == "planes":
        lanes = quant_gemv.planes_lanes(words, spec.num_warps)
        return quant_gemv._awq_planes_kernel, constants | dict(LANES=lanes, EVEN_N=True,
                                                                EVEN_K=True)
    if spec.kernel in awq_lop3.KINDS:  # the ONE_LAUNCH kinds: the last split sums (16 splits)
        del constants["GROUPS"]
        one = spec.kernel in awq_lop3.ONE_LAUNCH
        return awq_lop3._awq_lop3_kernel, constants | dict(
            EVEN_N=True, ASM=True, LAST_SUMS=one, SPLITS_P2=16 if one else 1,
            HALF2=spec.kernel.startswith("half2"), EVEN_K=True)
    if spec.kernel == "mma":  # the last split sums (16 splits); 16 rows in the dot
        del constants["GROUPS"]
        return awq_mma._awq_mma_kernel, constants | dict(
            BLOCK_M=awq_mma.prologue_rows(spec.m), ASM=True, LAST_SUMS=True, SPLITS_P2=16,
            PRECISION="tf32")
    lanes = awq_split.split_lanes(words, spec.num_warps)
    return awq_split._awq_split_kernel, constants | dict(LANES=lanes, EVEN_N=True)


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def category(opcode: str) -> str:
    """The counting category of one SASS opcode (with its modifiers)."""
    base = opcode.split(".")[0]
    if base == "LDG":
        for width in ("128", "64"):
            if f".{width}" in opcode:
                return f"ldg{width}"
        return "ldg16" if (".U16" in opcode or ".S16" in opcode) else "ldg32"
    table = {"LDL": "local", "STL": "local", "LDS": "lds", "STS": "sts", "BAR": "bar",
             "SHFL": "shfl", "IMAD": "imad", "FFMA": "ffma", "FADD": "fadd", "FMUL": "fmul",
             "HFMA2": "half2",
             "HADD2": "half2", "HMUL2": "half2", "MOV": "mov", "UMOV": "other"}
    if base in table:
        return table[base]
    if base in ("I2F", "I2FP", "F2F", "F2FP", "F2I", "FRND"):
        return "cvt"
    if base in ("LOP3", "LOP", "SHF", "SHL", "SHR", "IADD3", "PRMT", "ISETP", "SEL", "LEA",
                "IMNMX", "VIMNMX", "FSEL", "FSETP", "IABS", "BMSK", "SGXT", "PLOP3", "P2R",
                "R2P", "FMNMX"):
        return "int"
    return "other"


def loop_counts(sass: str) -> tuple[Counter, int]:
    """SASS instructions of the longest backward branch's range, by category."""
    lines = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)([^;]*);", sass)
    at = [(int(address, 16), opcode, rest) for address, _, opcode, rest in lines]
    best = (0, 0)
    for address, opcode, rest in at:
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", rest)
            if target and int(target.group(1), 16) < address:
                start = int(target.group(1), 16)
                if address - start > best[1] - best[0]:
                    best = (start, address)
    body = [opcode for address, opcode, _ in at if best[0] <= address <= best[1]]
    return Counter(category(opcode) for opcode in body), len(body)


def compile_sm90(kernel, types: dict, constants: dict, hinted: list[str], num_warps: int,
                 cubin: Path, num_stages: int = 1, max_registers: int = 0):
    """`kernel` compiled for sm_90 with `hinted` arguments divisible by 16 (as at run time),
    its cubin written to `cubin`: (the compiled kernel, registers, stack bytes, SASS)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    hints = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in hinted}
    compiled = compile(ASTSource(kernel, types | dict.fromkeys(constants, "constexpr"),
                                 constexprs=constants, attrs=hints),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps, "num_stages": num_stages,
                                **({"maxnreg": max_registers} if max_registers else {})})
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True,
                           text=True, check=True).stdout
    sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True,
                          text=True, check=True).stdout
    registers, stack = map(int, re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    return compiled, registers, stack, sass


def build(spec: Spec, out: Path | None) -> Build:
    kernel, constants = _kernel_and_constants(spec)
    types = _types(spec)
    hinted = [a for a in types if a.endswith("_ptr")] + [
        a for a in ("N", "K", "qw_stride", "qz_stride", "sc_stride", "x_stride", "y_stride",
                    "res_stride", "K_CHUNK", "part_stride") if a in types]
    name = spec.label().replace(" ", "_")
    compiled, registers, stack, sass = compile_sm90(
        kernel, types, constants, hinted, spec.num_warps, (out or Path("/tmp")) / f"{name}.cubin",
        max_registers=spec.max_registers)
    if out:
        (out / f"{name}.ptx").write_text(compiled.asm["ptx"])
        (out / f"{name}.sass").write_text(sass)
    threads = 32 * spec.num_warps
    shared = compiled.metadata.shared
    warp_registers = -(-registers * 32 // 256) * 256
    per_sm = min(REGISTERS_PER_SM // (warp_registers * spec.num_warps),
                 SHARED_PER_SM // max(shared, 1), THREADS_PER_SM // threads, PROGRAMS_PER_SM)
    words = spec.block_n // 8 * spec.block_k // threads
    counts, length = loop_counts(sass)
    return Build(registers, stack, shared, per_sm, words, counts, length)


# the tilings KERNEL_NOTES.md models (M = 1, the products' prologues where they matter)
SPECS = (
    Spec("interleave", 8, 512, 4), Spec("interleave", 32, 1024, 4),
    Spec("interleave", 8, 512, 4, prologue="silu"), Spec("planes", 64, 128, 4),
    Spec("planes", 64, 128, 4, prologue="add_norm"), Spec("split", 128, 128, 4),
    Spec("split", 128, 128, 4, prologue="silu"), Spec("split", 256, 128, 8),
    Spec("split", 256, 128, 4), Spec("interleave", 8, 512, 4, m=2),
    Spec("planes", 64, 128, 4, m=2), Spec("split", 256, 128, 8, m=2),
    Spec("lop3", 128, 128, 4), Spec("lop3", 128, 128, 4, prologue="silu"),
    Spec("lop3", 128, 128, 4, prologue="norm"), Spec("lop3", 128, 128, 4, prologue="add_norm"),
    Spec("lop3", 256, 128, 8), Spec("lop3", 64, 128, 2), Spec("lop3", 128, 128, 4, m=2),
    Spec("lop3", 256, 128, 8, m=2), Spec("lop3", 128, 128, 4, m=4),
    Spec("lop3_one", 128, 128, 4), Spec("lop3_one", 64, 128, 2),
    Spec("lop3_one", 128, 128, 4, prologue="silu"), Spec("lop3_one", 256, 128, 8, m=2),
    Spec("mma", 64, 128, 4), Spec("mma", 128, 128, 4), Spec("mma", 128, 128, 8),
    Spec("mma", 256, 128, 8), Spec("mma", 128, 128, 4, prologue="silu"),
    Spec("mma", 128, 128, 4, prologue="add_norm"),
    Spec("lop3_one", 128, 128, 4, prologue="add_norm"),
    Spec("lop3_one", 128, 128, 4, prologue="add_norm", max_registers=168),
    Spec("lop3_one", 128, 128, 4, prologue="silu", max_registers=168),
    Spec("lop3_one", 64, 128, 2, prologue="add_norm"),
    Spec("lop3_one", 64, 128, 2, prologue="add_norm", max_registers=168),
    Spec("half2_one", 128, 128, 4), Spec("half2_one", 128, 128, 4, prologue="norm"),
    Spec("half2_one", 128, 128, 4, prologue="add_norm"),
    Spec("half2_one", 128, 128, 4, prologue="silu"), Spec("half2_one", 64, 128, 2),
    Spec("half2_one", 128, 128, 4, m=2), Spec("half2_one", 256, 128, 8, m=2),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--kernel", default=None, help="only this kernel's tilings (e.g. lop3)")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    import triton

    print(f"Triton {triton.__version__}, sm_90")
    print(f"{'tiling':<36}{'regs':>5}{'stack':>6}{'smem':>6}{'/SM':>4}{'w/thr':>6}{'loop':>6}  "
          + " ".join(f"{c:>6}" for c in CATEGORIES))
    for spec in SPECS:
        if args.kernel and not spec.kernel.startswith(args.kernel):
            continue
        b = build(spec, args.out)
        print(f"{spec.label():<36}{b.registers:>5}{b.stack:>6}{b.shared:>6}{b.per_sm:>4}"
              f"{b.words_per_thread:>6}{b.loop_length:>6}  "
              + " ".join(f"{b.loop[c]:>6}" for c in CATEGORIES), flush=True)


if __name__ == "__main__":
    main()
