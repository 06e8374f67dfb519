"""The kernels a model runs, chosen once from the engine's options and handed to the model.

`build_ops` picks the torch reference (any device) or the Triton kernels (CUDA), with the
kernel options applied (the one-launch decode step and its largest batch, programmatic
dependent launch). The model reads nothing else to choose a kernel: `ModelOps.attention`
stores and attends over the paged KV cache, `ModelOps.layers` (Triton only) runs the fused
norms, RoPE with the KV store, SiLU·mul and the small-batch products, and `ModelOps.quant`
(Triton only) the products of FP8 and AWQ projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from jupyter_qwen.model.attention import AttentionBackend, TorchAttention
from jupyter_qwen.model.quant.fp8 import Fp8Rows
from jupyter_qwen.model.quant.linear import QuantKernels, QuantLinear


class KernelChoices(Protocol):
    """What `build_ops` reads of the engine's kernel options (`config.KernelOptions`)."""

    @property
    def decode_step_max_batch(self) -> int: ...

    @property
    def pdl(self) -> bool: ...

    @property
    def decode_step_min_chunk(self) -> int | None: ...


class LayerKernels(Protocol):
    """Fused kernels for the decoder layers (`kernels.layer_ops.TritonLayerKernels`)."""

    # fp8: the normalised rows (or SiLU·mul's) come quantized for an FP8 product (`Fp8Rows`)
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, *,
                 fp8: bool = False) -> torch.Tensor | Fp8Rows: ...

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float, *, fp8: bool = False,
                     ) -> tuple[torch.Tensor | Fp8Rows, torch.Tensor]: ...

    def qk_norm_rope_store(self, qkv: torch.Tensor, positions: torch.Tensor,
                           slot_mapping: torch.Tensor, q_weight: torch.Tensor,
                           k_weight: torch.Tensor, eps: float, cos_cache: torch.Tensor,
                           sin_cache: torch.Tensor, k_cache: torch.Tensor,
                           v_cache: torch.Tensor) -> torch.Tensor: ...

    def silu_and_mul(self, gate_up: torch.Tensor, *, fp8: bool = False,
                     ) -> torch.Tensor | Fp8Rows: ...

    def use_small_m(self, m: int, n: int, k: int) -> bool: ...

    def takes(self, projection: torch.nn.Module) -> bool:
        """Whether the small-batch products below run this projection (plain or quantized)."""

    # `weight`: a plain projection's weight tensor, or a quantized projection (`QuantLinear`)
    def linear_small_m(self, x: torch.Tensor, weight: torch.Tensor | QuantLinear,
                       ) -> torch.Tensor: ...

    def rms_norm_linear(self, x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                        weight: torch.Tensor | QuantLinear, residual: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def silu_mul_linear(self, gate_up: torch.Tensor, weight: torch.Tensor | QuantLinear,
                        ) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelOps:
    """The kernels of one model, fixed when the engine starts.

    `compiled`: the kernels compile on first use (the engine compiles every variant before
    serving) and read nothing on the host, so CUDA graphs can capture decode steps.
    """

    attention: AttentionBackend
    layers: LayerKernels | None = None
    compiled: bool = False
    quant: QuantKernels | None = None
    """Products of quantized projections (FP8, AWQ); None: the dequantizing reference."""


def reference_ops() -> ModelOps:
    """Plain torch, one sequence at a time: runs on CPU and GPU."""
    return ModelOps(attention=TorchAttention())


def build_ops(backend: str, device: torch.device, options: KernelChoices) -> ModelOps:
    """`backend` is auto, torch or triton; auto takes Triton on CUDA where it imports."""
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "torch":
        return reference_ops()
    if backend == "triton":
        if device.type != "cuda":
            raise ValueError("attention_backend='triton' needs a CUDA device")
        return triton_ops(device, options)
    raise ValueError(f"unknown attention backend {backend!r}; use auto, torch or triton")


def triton_ops(device: torch.device, options: KernelChoices) -> ModelOps:
    """The Triton kernels; programmatic dependent launch where asked for and `device` has it."""
    from jupyter_qwen.model.kernels.backend import TritonAttention
    from jupyter_qwen.model.kernels.layer_ops import TritonLayerKernels
    from jupyter_qwen.model.kernels.pdl import supported
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels

    pdl = options.pdl and supported(device)
    attention = TritonAttention(decode_step_max_batch=options.decode_step_max_batch, pdl=pdl,
                                min_chunk=options.decode_step_min_chunk)
    return ModelOps(attention=attention, layers=TritonLayerKernels(pdl=pdl), compiled=True,
                    quant=TritonQuantKernels(device))


def triton_available() -> bool:
    try:
        from jupyter_qwen.model.kernels import backend  # noqa: F401
    except ImportError:
        return False
    return True
