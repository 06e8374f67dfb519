"""Time the small-M products of jupyter_qwen/model/kernels/gemv.py against cuBLAS (one call).

    python benchmarks/gemv.py        # ~1-2 min on an H200; table on stdout, also $OUT/gemv.txt

For Qwen3-0.6B's and Qwen3-4B's projections at M = 1, 2, 4, 8, 16 rows (bf16):
- plain: torch `F.linear` against `linear_small_m` under 4 tilings (the fastest is kept);
- norm (qkv, gate_up): `fused_ops.add_rms_norm` + `F.linear` (today's model path) against
  `rms_norm_linear` with a residual;
- silu (down): `fused_ops.silu_and_mul` + `F.linear` against `silu_mul_linear`.
Every figure is the replay of one CUDA graph of >= 20 launches divided by the launch count
(as in a decode graph: no CPU launch overhead, the gaps between kernels included); each
launch reads its own copy of W, with >= 256 MB of copies in rotation so that W comes from
HBM, not from the 60 MB L2. Copy bandwidth (a 2 GiB device copy, read + write) and the cost
of one near-empty graph node are measured first; every kernel is compiled beforehand in
parallel worker processes (Triton's disk cache), so the run fits in about 1-2 minutes.
Errors are relative (2-norm) against a float32 product of the upcast inputs; "det" says
whether the graph's output equals an eager launch bitwise. Printed in order: the tiling
sweep, TUNED / SMALL_M_CUTOFFS lines for gemv.py, the table, a per-token estimate for 0.6B
decode (28 layers).
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernel_setup import compile_in_workers, launch_pdl, relative_error
from benchmarks.kernels import LOG, graph_micros_per_call, measure_copy_gbps, say

DTYPE = torch.bfloat16
DEVICE = "cuda"
EPS = 1e-6
SHAPES = {  # name: (N, K, fused prologue measured beside the plain product)
    "0.6B qkv": (4096, 1024, "norm"),
    "0.6B o": (1024, 2048, None),
    "0.6B gate_up": (6144, 1024, "norm"),
    "0.6B down": (1024, 3072, "silu"),
    "4B qkv": (6144, 2560, "norm"),
    "4B o": (2560, 4096, None),
    "4B gate_up": (19456, 2560, "norm"),
    "4B down": (2560, 9728, "silu"),
}
ROWS = (1, 2, 4, 8, 16)
LAUNCHES = 20
ROTATION_BYTES = 256 << 20
REPLAYS = 10
BUDGET_S = 90  # past this (from start), sweeps stop at their first tiling (the run must stay
# under 2 min)
LAYERS_06B = 28

START = time.perf_counter()


def candidates(m: int) -> list:
    from jupyter_qwen.model.kernels.gemv import Tiling

    if m == 1:
        return [Tiling(8, 1024, 4, dot=False), Tiling(4, 1024, 4, dot=False),
                Tiling(16, 512, 8, dot=False), Tiling(8, 512, 4, 3, dot=True)]
    return [Tiling(8, 512, 4, 3), Tiling(16, 256, 4, 4), Tiling(8, 512, 4, 1),
            Tiling(16, 256, 4, 1)]


def precompile_job(job: tuple[str, int, int, int]) -> str:
    """In a worker process: launch (kind, M, K, candidate index) once on a 1024-row W, so
    that its kernel lands in Triton's on-disk cache. Returns "" or the error."""
    from jupyter_qwen.model.kernels import gemv

    kind, m, k, index = job
    tiling = candidates(m)[index]
    try:
        weight = torch.zeros(1024, k, device="cuda", dtype=DTYPE)
        x, residual = (torch.randn(m, k, device="cuda", dtype=DTYPE) for _ in range(2))
        if kind == "plain":
            gemv.linear_small_m(x, weight, tiling=tiling, launch_pdl=launch_pdl())
        elif kind == "norm":
            gemv.rms_norm_linear(x, torch.ones(k, device="cuda", dtype=DTYPE), EPS, weight,
                                 residual, tiling=tiling, launch_pdl=launch_pdl())
        else:
            gate_up = torch.randn(m, 2 * k, device="cuda", dtype=DTYPE)
            gemv.silu_mul_linear(gate_up, weight, tiling=tiling, launch_pdl=launch_pdl())
        torch.cuda.synchronize()
    except Exception as error:
        return f"{job}: {type(error).__name__}: {error}"[:200]
    return ""


def precompile() -> None:
    """Compile every kernel the sweep launches, in parallel worker processes (a process
    compiles one Triton kernel at a time, ~0.5-1 s each, and the sweep needs ~90). Jobs are
    deduplicated by what the kernel specialises on: N never matters here (every N of SHAPES
    is a multiple of 32), K only through the K tile's fit and, for the norm, its power of 2."""
    jobs: dict[tuple, tuple[str, int, int, int]] = {}
    for _, k, fused in SHAPES.values():
        for m in ROWS:
            for index, tiling in enumerate(candidates(m)):
                block_k = min(tiling.block_k, 1 << (k - 1).bit_length())
                for kind in ("plain", fused) if fused else ("plain",):
                    key = (kind, m, index, k % block_k == 0,
                           1 << (k - 1).bit_length() if kind == "norm" else 0)
                    jobs.setdefault(key, (kind, m, k, index))
    say(compile_in_workers(precompile_job, list(jobs.values()), most=12))


def graph_output_equals_eager(call: Callable[[], torch.Tensor]) -> bool:
    eager = call().clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    same = torch.equal(out, eager)
    del graph
    return same


def measure_node_us() -> float:
    """One near-empty kernel per graph node: the floor any launch pays inside a graph."""
    tiny = torch.zeros(1, device="cuda")
    return graph_micros_per_call([lambda: tiny.add_(1.0)] * LAUNCHES, REPLAYS)


@dataclass
class Case:
    shape: str
    m: int
    kind: str  # plain | norm | silu
    torch_us: float = math.nan
    ours_us: float = math.nan
    tiling: str = ""
    gbps: float = math.nan
    err: float = math.nan
    det: str = "-"
    sweep: dict[str, float] = field(default_factory=dict)
    note: str = ""
    best: object = None  # the fastest Tiling of the sweep

    @property
    def ratio(self) -> float:
        return self.torch_us / self.ours_us


class Weights:
    """Copies of one random W [N, K] in rotation: >= 256 MB in all, so W comes from HBM."""

    def __init__(self, n: int, k: int):
        self.n, self.k, self.bytes = n, k, n * k * 2
        copies = max(1, min(64, math.ceil(ROTATION_BYTES / self.bytes)))
        self.copies = [torch.randn(n, k, device=DEVICE, dtype=DTYPE) * k**-0.5
                       for _ in range(copies)]
        self.launches = max(LAUNCHES, copies)


class Problem:
    """One (shape, M): the weights in rotation and fresh x, residual, norm weight, gate_up."""

    def __init__(self, weights: Weights, m: int):
        self.w, self.m, self.n, self.k = weights, m, weights.n, weights.k
        self.weights = weights.copies
        self.weight_bytes = weights.bytes
        self.x = torch.randn(m, self.k, device=DEVICE, dtype=DTYPE)
        self.residual = torch.randn(m, self.k, device=DEVICE, dtype=DTYPE)
        self.norm_weight = 1 + 0.1 * torch.randn(self.k, device=DEVICE, dtype=DTYPE)
        self.gate_up = torch.randn(m, 2 * self.k, device=DEVICE, dtype=DTYPE)

    def time(self, call: Callable[[torch.Tensor], object]) -> float:
        order = [self.weights[i % len(self.weights)] for i in range(self.w.launches)]
        return graph_micros_per_call([lambda w=w: call(w) for w in order], REPLAYS)


def plain_case(name: str, p: Problem, tilings: list, began: float) -> Case:
    from jupyter_qwen.model.kernels import gemv

    case = Case(name, p.m, "plain")
    pdl = launch_pdl()
    case.torch_us = p.time(lambda w: F.linear(p.x, w))
    reference = gemv.linear_reference(p.x, p.weights[0])
    for tiling in tilings:
        if time.perf_counter() - began > BUDGET_S and case.sweep:
            case.note = "sweep cut (time budget)"
            break
        try:
            case.sweep[tiling.name()] = p.time(
                lambda w, t=tiling: gemv.linear_small_m(p.x, w, tiling=t, launch_pdl=pdl))
        except Exception as error:
            case.sweep[tiling.name()] = math.nan
            case.note = f"{tiling.name()}: {type(error).__name__}"
            traceback.print_exc()
    timed = {k: v for k, v in case.sweep.items() if not math.isnan(v)}
    best = min(timed, key=timed.get)
    tiling = next(t for t in tilings if t.name() == best)
    case.tiling, case.ours_us = best, timed[best]
    case.err = relative_error(
        gemv.linear_small_m(p.x, p.weights[0], tiling=tiling, launch_pdl=pdl), reference)
    case.det = "yes" if graph_output_equals_eager(
        lambda: gemv.linear_small_m(p.x, p.weights[0], tiling=tiling, launch_pdl=pdl)) else "NO"
    moved = p.weight_bytes + 2 * p.m * (p.k + p.n)
    case.gbps = moved / (case.ours_us * 1e-6) / 1e9
    case.best = tiling
    return case


def fused_case(name: str, p: Problem, kind: str, tiling) -> Case:
    from jupyter_qwen.model.kernels import fused_ops, gemv

    case = Case(name, p.m, kind, tiling=tiling.name())
    pdl = launch_pdl()
    if kind == "norm":
        def torch_path(w):
            normed, summed = fused_ops.add_rms_norm(p.x, p.residual, p.norm_weight, EPS)
            return F.linear(normed, w), summed

        def ours(w):
            return gemv.rms_norm_linear(p.x, p.norm_weight, EPS, w, p.residual, tiling=tiling,
                                        launch_pdl=pdl)

        reference = gemv.rms_norm_linear_reference(p.x, p.norm_weight, EPS, p.weights[0],
                                                   p.residual)[0]
        moved = p.weight_bytes + 2 * p.m * (3 * p.k + p.n)
    else:
        def torch_path(w):
            return F.linear(fused_ops.silu_and_mul(p.gate_up), w)

        def ours(w):
            return gemv.silu_mul_linear(p.gate_up, w, tiling=tiling, launch_pdl=pdl)

        reference = gemv.silu_mul_linear_reference(p.gate_up, p.weights[0])
        moved = p.weight_bytes + 2 * p.m * (2 * p.k + p.n)
    case.torch_us = p.time(torch_path)
    case.ours_us = p.time(ours)
    first = ours(p.weights[0])
    case.err = relative_error(first[0] if kind == "norm" else first, reference)
    if kind == "norm":
        torch_summed = p.x + p.residual
        if not torch.equal(first[1], torch_summed):
            case.note = "new_residual differs from x + residual"
    case.det = "yes" if graph_output_equals_eager(
        lambda: (ours(p.weights[0])[0] if kind == "norm" else ours(p.weights[0]))) else "NO"
    case.gbps = moved / (case.ours_us * 1e-6) / 1e9
    return case


def table(cases: list[Case], copy_gbps: float) -> list[str]:
    lines = [f"{'shape':13s} {'M':>2s} {'kind':5s} {'torch us':>8s} {'ours us':>7s} "
             f"{'ratio':>5s} {'GB/s':>5s} {'bw%':>4s} {'rel err':>7s} det tiling / note"]
    for c in cases:
        lines.append(f"{c.shape:13s} {c.m:2d} {c.kind:5s} {c.torch_us:8.2f} {c.ours_us:7.2f} "
                     f"{c.ratio:5.2f} {c.gbps:5.0f} {100 * c.gbps / copy_gbps:4.0f} "
                     f"{c.err:7.1e} {c.det:3s} {c.tiling} {c.note}")
    return lines


def sweep_lines(cases: list[Case]) -> list[str]:
    lines = ["tiling sweep (plain, us per launch):"]
    for c in cases:
        if c.sweep:
            cells = "  ".join(f"{k} {v:6.2f}" for k, v in c.sweep.items())
            lines.append(f"{c.shape:13s} M={c.m:<2d} {cells}")
    return lines


def tuned_lines(cases: list[Case]) -> list[str]:
    from jupyter_qwen.model.kernels.gemv import m_bucket

    lines = ["# for jupyter_qwen/model/kernels/gemv.py:", "TUNED = {"]
    for c in cases:
        if c.kind == "plain" and c.best is not None:
            n, k, _ = SHAPES[c.shape]
            t = c.best
            lines.append(f"    ({m_bucket(c.m)}, {n}, {k}): Tiling({t.block_n}, {t.block_k}, "
                         f"{t.num_warps}, {t.num_stages}, dot={t.dot}),")
    lines.append("}")
    # Cutoffs compare the form the model would call: fused where the shape has a prologue.
    def wins(shape: str, m: int) -> bool:
        used = [c for c in cases if c.shape == shape and c.m == m
                and (c.kind != "plain" or SHAPES[shape][2] is None)]
        return bool(used) and all(c.ratio > 1.0 for c in used)

    lines.append("SMALL_M_CUTOFFS = {")
    cutoffs = {}
    for shape, (n, k, _) in SHAPES.items():
        cutoffs[shape] = 0
        for m in ROWS:
            if not wins(shape, m):
                break
            cutoffs[shape] = m
        lines.append(f"    ({n}, {k}): {cutoffs[shape]},  # {shape}")
    lines.append("}")
    lines.append(f"SMALL_M_CUTOFF = {min(v for s, v in cutoffs.items() if s.startswith('0.6B'))}")
    return lines


def decode_estimate(cases: list[Case]) -> list[str]:
    lines = []
    for m in ROWS:
        used = {c.shape: c for c in cases if c.m == m and c.shape.startswith("0.6B")
                and (c.kind != "plain" or SHAPES[c.shape][2] is None)}
        if len(used) != 4:
            continue
        torch_us = sum(c.torch_us for c in used.values()) * LAYERS_06B
        ours_us = sum(c.ours_us for c in used.values()) * LAYERS_06B
        lines.append(f"0.6B decode M={m:<2d}: projections + norms + silu per token "
                     f"{torch_us:6.0f} us (torch) -> {ours_us:6.0f} us (ours), "
                     f"saves {torch_us - ours_us:5.0f} us")
    return lines


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    say(f"{torch.cuda.get_device_name()} SMs {props.multi_processor_count}")
    precompile()
    run()
    return 0


def run() -> None:
    import triton

    began = START
    say(f"torch {torch.__version__} triton {triton.__version__}")
    copy_gbps = measure_copy_gbps()
    torch.cuda.empty_cache()
    node_us = measure_node_us()
    say(f"copy bandwidth {copy_gbps:.0f} GB/s (2 GiB bf16 copy, read + write); "
        f"near-empty graph node {node_us:.2f} us")
    for name, (n, k, _) in SHAPES.items():
        say(f"  floor {name:13s} W {n * k * 2 / 2**20:6.1f} MiB: "
            f"{n * k * 2 / (copy_gbps * 1e3):6.2f} us at copy bandwidth")
    cases: list[Case] = []
    for name, (n, k, fused) in SHAPES.items():
        weights = Weights(n, k)
        for m in ROWS:
            try:
                p = Problem(weights, m)
                plain = plain_case(name, p, candidates(m), began)
                cases.append(plain)
                if fused:
                    cases.append(fused_case(name, p, fused, plain.best))
            except Exception as error:
                traceback.print_exc()
                cases.append(Case(name, m, "?", note=f"{type(error).__name__}: {error}"[:80]))
        del weights
        torch.cuda.empty_cache()
        say(f"{name} done at {time.perf_counter() - began:.0f} s")
    lines = [*sweep_lines(cases), "", *tuned_lines(cases), "", *table(cases, copy_gbps), "",
             *decode_estimate(cases), f"total {time.perf_counter() - began:.0f} s"]
    say("\n".join(lines))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gemv.txt").write_text("\n".join(LOG) + "\n")


if __name__ == "__main__":
    sys.exit(main())
