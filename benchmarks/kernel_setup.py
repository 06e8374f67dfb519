"""What the kernel benchmarks share with the tests and the engine: the tests' kernel cases
(tests/kernel_cases.py) and the engine's choice of programmatic dependent launch.

    from benchmarks.kernel_setup import launch_pdl, random_paged_case, relative_error
"""

from __future__ import annotations

import sys
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
