"""What the kernel benchmarks share with the tests and the engine: the tests' kernel cases
(tests/kernel_cases.py) and the engine's choice of programmatic dependent launch.

    from benchmarks.kernel_setup import launch_pdl, random_paged_case, relative_error
"""

from __future__ import annotations

import multiprocessing
import os
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

__all__ = ["PagedCase", "launch_pdl", "random_paged_case", "relative_error"]


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
