"""What the kernel benchmarks share with the tests and the engine: the tests' kernel cases
(tests/kernel_cases.py) and the engine's choice of programmatic dependent launch.

    from benchmarks.kernel_setup import launch_pdl, random_paged_case, relative_error
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))

from kernel_cases import PagedCase, random_paged_case, relative_error  # noqa: E402

__all__ = ["PagedCase", "launch_pdl", "random_paged_case", "relative_error", "rewrite_table"]

TABLE_KEY = re.compile(r"^    (\('\w+', \d+, \d+, \d+\)): ")  # a table entry's first line


def rewrite_table(path: Path, header: str, measured: set, new_lines: list[str]) -> set:
    """Rewrite the dict literal of `path` that opens on the line starting with `header`
    (TUNED in quant_gemv.py, LARGE_M_TILES in quant_tiles.py): the entries of `measured`
    keys go, with their continuation lines; the other lines stay, in order, and `new_lines`
    follow them. Returns the measured keys that had an entry."""
    lines = path.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = lines.index("}", start)
    kept, replaced, dropping = [], set(), False
    for line in lines[start + 1:end]:
        match = TABLE_KEY.match(line)
        if match:  # an entry's first line; its continuation lines follow it
            key = ast.literal_eval(match.group(1))
            dropping = key in measured
            if dropping:
                replaced.add(key)
        if not dropping:
            kept.append(line)
    lines[start + 1:end] = [*kept, *new_lines]
    path.write_text("\n".join(lines))
    return replaced


@lru_cache
def launch_pdl() -> bool:
    """Whether the engine, with its default kernel options, launches the small-batch products
    and the one-launch decode step as programmatic dependent kernels on this GPU."""
    import torch

    from jupyter_qwen.config import KernelOptions
    from jupyter_qwen.model.kernels.pdl import supported

    return KernelOptions().pdl and supported(torch.device("cuda"))


def compile_in_workers(job: Callable, jobs: list, most: int = 16) -> str:
    """Run `job` (compile one kernel variant; "" or the error's text) over `jobs` in spawned
    worker processes: a process compiles one Triton kernel at a time, and what they compile
    lands in the on-disk cache the timing process then reads. Returns the line to print."""
    workers = max(1, min(most, (os.cpu_count() or 2) - 2, len(jobs)))
    began = time.perf_counter()
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            errors = [error for error in pool.map(job, jobs) if error]
    except Exception as error:
        return f"precompile failed ({type(error).__name__}: {error}); compiling on first use"
    return (f"precompiled {len(jobs)} kernels in {workers} processes in "
            f"{time.perf_counter() - began:.0f} s" + (f"; errors: {errors}" if errors else ""))
