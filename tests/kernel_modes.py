"""What the Triton kernel tests share: two modes that run the same test bodies, `cuda`
(marked gpu; larger shapes) and `interpreter` (small shapes on CPU; only when
TRITON_INTERPRET=1 was set before triton was imported). The `mode` and `generator`
fixtures are in conftest.py."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_TRITON = triton_imports()
HAVE_CUDA = torch.cuda.is_available()
COMPILED_ONLY = pytest.mark.skipif(not HAVE_CUDA or not HAVE_TRITON or INTERPRET,
                                   reason="needs a CUDA GPU and compiled triton")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@dataclass(frozen=True)
class Mode:
    device: str
    large: bool

    def pick(self, small, large):
        return large if self.large else small


MODES = [
    pytest.param(Mode("cuda", large=True), id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU"),
        pytest.mark.skipif(not HAVE_TRITON, reason="needs triton"),
        pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1 runs kernels on the CPU"),
    ]),
    pytest.param(Mode("cpu", large=False), id="interpreter", marks=[
        pytest.mark.skipif(not INTERPRET, reason="set TRITON_INTERPRET=1 to run kernels on CPU"),
        pytest.mark.skipif(not HAVE_TRITON, reason="needs triton"),
    ]),
]

