"""Build the FP8 small-M decode kernels (quant_gemv.py `_fp8_kernel`, fp8_words.py) for sm_90
on a machine with no GPU and count what their K loop issues (no device time).

    PYTHONPATH=DIR python benchmarks/fp8_words_build.py   # DIR: the GPU's Triton (3.6) unpacked

As benchmarks/awq_sm90_build.py does for the AWQ kernels (its counting categories, its K-loop
finder, the same hints: pointers, strides, N and K divisible by 16): per tiling registers,
stack (spills), shared memory, the K loop's length and its instructions per weight word
(four e4m3 values), by category, per thread per step. bf16 x, M = 1 unless named.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from awq_sm90_build import CATEGORIES, PROLOGUES, compile_sm90, loop_counts

TYPES = dict(x_ptr="*bf16", res_ptr="*bf16", norm_w_ptr="*bf16", xq_ptr="*i64",
             resq_ptr="*i64", normq_ptr="*i64", w_ptr="*fp8e4nv", s_ptr="*fp32",
             srow_ptr="*i32", y_ptr="*bf16", res_out_ptr="*bf16", M="i32", N="i32", K="i32",
             eps="fp32", x_stride="i32", res_stride="i32", xq_stride="i32",
             resq_stride="i32", w_stride="i32", s_stride="i32", y_stride="i32",
             res_out_stride="i32")
HINTED = ("N", "K", "x_stride", "res_stride", "xq_stride", "resq_stride", "w_stride",
          "s_stride", "y_stride")
# (kernel, block_n, block_k, warps, prologue, M): the first kernel's tuned 4B tilings, then
# the words kernel's sweep tiles (benchmarks/quant_decode.py FP8_WORDS)
SPECS = (
    ("fma", 16, 512, 4, "plain", 1), ("fma", 8, 1024, 4, "plain", 1),
    ("fma", 8, 1024, 4, "silu", 1),
    ("words", 8, 1024, 4, "plain", 1), ("words", 8, 1024, 4, "norm", 1),
    ("words", 8, 1024, 4, "add_norm", 1), ("words", 8, 1024, 4, "silu", 1),
    ("words", 4, 1024, 4, "silu", 1), ("words", 16, 1024, 4, "plain", 1),
    ("words", 16, 512, 2, "plain", 1), ("words", 8, 2048, 8, "plain", 1),
    ("words", 32, 512, 2, "plain", 1), ("words", 16, 512, 2, "plain", 2),
)


def build(kernel_name: str, block_n: int, block_k: int, warps: int, prologue: str, m: int):
    from jupyter_qwen.model.kernels import fp8_words, quant_gemv

    constants = dict(PROLOGUE=PROLOGUES[prologue], BLOCK_M=m, BLOCK_N=block_n,
                     BLOCK_K=block_k, USE_DOT=m > 1, EVEN_N=True, EVEN_K=True, FOLD=True,
                     PRECISION="tf32", NORM_BLOCK=2048, USE_GDC=True,
                     LANES=32 * warps, VEC=fp8_words.VEC, ASM=True)
    types = dict(TYPES)
    if kernel_name == "words":
        kernel, types["w_ptr"] = fp8_words._fp8_words_kernel, "*i32"
    else:
        kernel = quant_gemv._fp8_kernel
    constants = {k: v for k, v in constants.items() if k in kernel.arg_names}
    types = {k: v for k, v in types.items() if k in kernel.arg_names}
    hinted = [a for a in types if a.endswith("_ptr") or a in HINTED]
    compiled, registers, stack, sass = compile_sm90(
        kernel, types, constants, hinted, warps, Path("/tmp/fp8_decode_build.cubin"))
    counts, length = loop_counts(sass)
    words = block_n * block_k / (4 * 32 * warps)  # weight words a thread takes a step
    return registers, stack, compiled.metadata.shared, length, words, counts


def main() -> None:
    import triton

    print(f"Triton {triton.__version__}, sm_90")
    print(f"{'tiling':<34}{'regs':>5}{'stack':>6}{'smem':>6}{'loop':>6}{'w/thr':>6}"
          f"{'ins/w':>7}  " + " ".join(f"{c:>6}" for c in CATEGORIES))
    for kernel, block_n, block_k, warps, prologue, m in SPECS:
        regs, stack, shared, length, words, counts = build(kernel, block_n, block_k, warps,
                                                            prologue, m)
        label = f"{kernel} n{block_n} k{block_k} w{warps} M{m} {prologue}"
        print(f"{label:<34}{regs:>5}{stack:>6}{shared:>6}{length:>6}{words:>6.0f}"
              f"{length / words:>7.1f}  " + " ".join(f"{counts[c]:>6}" for c in CATEGORIES),
              flush=True)


if __name__ == "__main__":
    main()
