"""Time the sampler's top-W kernel (jupyter_qwen/engine/topk_kernel.py) against torch.topk.

    python benchmarks/topk_kernel.py     # ~1-2 min on an H100; table on stdout, JSON in $OUT

The sampler's window: the W largest of each row of float32 logits over Qwen3's vocabulary
(151,936), W = 64 (top-k) and 256 (top-p), at 1, 2, 4, 8 and 16 rows. Every tiling of SWEEP
(stage-1 chunk and warps, stage-2 slab and warps) is compiled first in parallel worker
processes, checked against torch.topk on bf16-rounded logits (many ties; values equal,
indices point at them) and timed only if right. Every figure is the median replay of one CUDA
graph of LAUNCHES calls divided by the launch count, as inside a captured draw; the logits
stay in L2 (600 KB a row), as after the lm_head product that writes them. The floor: one read
of the logits at copy bandwidth (~0.2 us a row on an H100) is far below either kernel, so the
gap is latency (launches, the single merge program) and the selection's arithmetic.
Printed last: per width the sweep, a table of torch vs the current TILINGS vs the best
tiling, and the TILINGS / TOPK_KERNEL_MAX_ROWS lines to paste.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernel_setup import compile_in_workers
from benchmarks.kernels import LOG, graph_micros_per_call, say
from jupyter_qwen.engine.sampler import TOPK_KERNEL_MAX_ROWS
from jupyter_qwen.engine.topk_kernel import TILINGS, TopkTiling, many_program_topk

VOCAB = 151_936
WIDTHS = (64, 256)
ROWS = (1, 2, 4, 8, 16)
LAUNCHES = 20
SWEEP = {  # width: tilings tried beside TILINGS[width]
    64: [TopkTiling(chunk, warps, slab, merge_warps)
         for chunk in (1024, 2048, 4096) for warps in (4, 8)
         for slab, merge_warps in ((2048, 4), (4096, 8), (8192, 16))],
    256: [TopkTiling(chunk, warps, slab, merge_warps)
          for chunk in (2048, 4096, 8192) for warps in (4, 8)
          for slab, merge_warps in ((2048, 4), (4096, 8), (8192, 16))],
}


def tilings(width: int) -> list[TopkTiling]:
    return list(dict.fromkeys([TILINGS[width], *SWEEP[width]]))


def name(tiling: TopkTiling) -> str:
    return f"c{tiling.chunk}w{tiling.chunk_warps}/s{tiling.slab}w{tiling.merge_warps}"


def precompile_job(job: tuple[int, TopkTiling]) -> str:
    """In a worker process: one launch, so that both stages land in Triton's disk cache."""
    width, tiling = job
    try:
        many_program_topk(torch.randn(1, VOCAB, device="cuda"), width, tiling)
        torch.cuda.synchronize()
    except Exception:
        return f"{width} {name(tiling)}: {traceback.format_exc(limit=1)}"
    return ""


def precompile() -> None:
    jobs = [(width, tiling) for width in WIDTHS for tiling in tilings(width)]
    say(compile_in_workers(precompile_job, jobs))


def logits_for(rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, VOCAB, generator=generator) * 3).bfloat16().float().cuda()


def check(logits: torch.Tensor, width: int, tiling: TopkTiling) -> str:
    """"" when the kernel's window is torch.topk's (values equal, indices pointing at
    them), else what is wrong."""
    values, indices = many_program_topk(logits, width, tiling)
    expected = logits.topk(width, dim=-1).values
    if not torch.equal(values, expected):
        return "values differ from torch.topk"
    if not torch.equal(logits.gather(1, indices), values):
        return "indices do not point at the values"
    return ""


def time_width(width: int) -> dict:
    results: dict = {"torch": {}, "variants": {}}
    for rows in ROWS:
        logits = logits_for(rows, seed=rows * 1000 + width)
        results["torch"][rows] = graph_micros_per_call(
            [lambda x=logits: x.topk(width, dim=-1)] * LAUNCHES)
        for tiling in tilings(width):
            timings = results["variants"].setdefault(name(tiling), {})
            try:
                problem = check(logits, width, tiling) or check(
                    logits_for(rows, seed=rows), width, tiling)
            except Exception as error:
                problem = f"{type(error).__name__}: {error}"
            if problem:
                say(f"SKIPPED W{width} rows {rows} {name(tiling)}: {problem}")
                timings[rows] = None
                continue
            timings[rows] = graph_micros_per_call(
                [lambda t=tiling, x=logits: many_program_topk(x, width, t)] * LAUNCHES)
    return results


def best_tiling(results: dict, rows_considered: tuple[int, ...]) -> str:
    """The tiling with the least summed time over these row counts (every one timed)."""
    timed = {key: sum(t[rows] for rows in rows_considered)
             for key, t in results["variants"].items()
             if all(t.get(rows) is not None for rows in rows_considered)}
    return min(timed, key=timed.get)


def report(width: int, results: dict) -> tuple[str, int]:
    """Print the sweep and the comparison; the best tiling, and the most rows up to which it
    beats torch.topk at every row count."""
    small = tuple(rows for rows in ROWS if rows <= 8)
    best = best_tiling(results, small)
    current = name(TILINGS[width])
    say(f"\nW {width}: sweep (us per call; rows {', '.join(map(str, ROWS))})")
    for key, timings in sorted(results["variants"].items()):
        cells = " ".join("   -  " if timings[r] is None else f"{timings[r]:6.1f}" for r in ROWS)
        say(f"  {key:<22} {cells}")
    say(f"W {width}: rows | torch.topk | TILINGS {current} | best {best} | torch / best")
    faster_up_to, still_faster = 0, True
    for rows in ROWS:
        torch_us = results["torch"][rows]
        best_us = results["variants"][best][rows]
        current_us = results["variants"][current][rows]
        if best_us is None:
            say(f"  {rows:>4} | {torch_us:10.1f} | best tiling skipped here")
            still_faster = False
            continue
        cur = "-" if current_us is None else f"{current_us:.1f}"
        say(f"  {rows:>4} | {torch_us:10.1f} | {cur:>10} | {best_us:8.1f} | "
            f"{torch_us / best_us:.2f}x")
        still_faster &= best_us < torch_us
        faster_up_to = rows if still_faster else faster_up_to
    return best, faster_up_to


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    say(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; vocab {VOCAB}, "
        f"{LAUNCHES} launches per graph; TOPK_KERNEL_MAX_ROWS {TOPK_KERNEL_MAX_ROWS}")
    precompile()
    out: dict = {"device": torch.cuda.get_device_name(), "vocab": VOCAB, "widths": {}}
    lines = []
    max_rows = []
    for width in WIDTHS:
        results = time_width(width)
        best, faster_up_to = report(width, results)
        out["widths"][width] = {**results, "best": best}
        tiling = next(t for t in tilings(width) if name(t) == best)
        lines.append(f"           {width}: TopkTiling(chunk={tiling.chunk}, "
                     f"chunk_warps={tiling.chunk_warps}, slab={tiling.slab}, "
                     f"merge_warps={tiling.merge_warps}),")
        if faster_up_to:
            max_rows.append(f"{width}: {faster_up_to}")
    say("\nTILINGS = {  # topk_kernel.py, best summed over rows 1-8")
    for line in lines:
        say(line)
    say("}")
    say(f"TOPK_KERNEL_MAX_ROWS = {{{', '.join(max_rows)}}}  # sampler.py: per width, the kernel "
        "beats torch.topk up to this many rows")
    if os.environ.get("OUT"):
        folder = Path(os.environ["OUT"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "topk_kernel.json").write_text(json.dumps(out, indent=1))
        (folder / "topk_kernel.txt").write_text("\n".join(LOG) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
