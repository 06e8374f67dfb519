"""Programmatic dependent launch (Hopper and later) for the decode kernels.

A kernel launched with `launch_pdl=True` may start while the kernel before it in the stream is
still running, and `gdc_wait` holds it until that kernel has finished and its writes are
visible. Kernels that take part (`gemv`, `decode_step`) keep one rule:

- before `after_previous_kernel` a program reads only weights and step inputs (positions,
  slots, block tables, sequence lengths, RoPE tables, the KV cache of earlier tokens), which
  no kernel of the step writes, and writes nothing;
- right after it the program lets the next kernel launch (`gdc_launch_dependents`).

So the next kernel's blocks load their weights while this one computes, and whenever a
kernel starts, every kernel two launches back has finished. The wrappers take `pdl=True` to
launch this way; the model's ops (`model/ops.py`) pass it where the kernel options ask for it
(`KernelOptions.pdl`; `JUPYTER_QWEN_PDL=0` turns it off) and `supported` says yes.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl


def supported(device: torch.device) -> bool:
    """Whether kernels on `device` can launch with programmatic dependent launch."""
    return device.type == "cuda" and _hopper_or_later(device)


@lru_cache
def _hopper_or_later(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


@triton.jit
def after_previous_kernel(USE_GDC: tl.constexpr):
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
