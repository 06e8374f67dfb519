"""The Triton kernels of a decoder layer, as the model calls them (`ops.LayerKernels`)."""

from __future__ import annotations

import torch

from jupyter_qwen.model.kernels import fused_ops, gemv, quant_gemv


class TritonLayerKernels:
    """Fused norms, q/k norm with RoPE and the KV store, SiLU·mul, and the small-batch
    products of decode steps (norms and SiLU·mul fused in); `pdl`: the products launch as
    programmatic dependent kernels. A product's weight is a tensor (bf16, `gemv`) or a
    quantized projection (`Fp8Linear`, `AwqLinear`: `quant_gemv`)."""

    rms_norm = staticmethod(fused_ops.rms_norm)
    add_rms_norm = staticmethod(fused_ops.add_rms_norm)
    qk_norm_rope_store = staticmethod(fused_ops.qk_norm_rope_store)
    silu_and_mul = staticmethod(fused_ops.silu_and_mul)
    use_small_m = staticmethod(gemv.use_small_m)

    def __init__(self, *, pdl: bool = False) -> None:
        self.pdl = pdl

    def takes(self, projection: torch.nn.Module) -> bool:
        """Whether the small-batch products run this projection: any plain one; a quantized
        one where its format's kernels run on its device (`quant_gemv.takes`)."""
        if isinstance(projection, torch.nn.Linear):
            return True
        return quant_gemv.takes(projection, next(projection.buffers()).device)

    def linear_small_m(self, x: torch.Tensor, weight) -> torch.Tensor:
        if isinstance(weight, torch.Tensor):
            return gemv.linear_small_m(x, weight, launch_pdl=self.pdl)
        return quant_gemv.linear_small_m(x, weight, launch_pdl=self.pdl)

    def rms_norm_linear(self, x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                        weight, residual: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(weight, torch.Tensor):
            return gemv.rms_norm_linear(x, norm_weight, eps, weight, residual,
                                        launch_pdl=self.pdl)
        return quant_gemv.rms_norm_linear(x, norm_weight, eps, weight, residual,
                                          launch_pdl=self.pdl)

    def silu_mul_linear(self, gate_up: torch.Tensor, weight) -> torch.Tensor:
        if isinstance(weight, torch.Tensor):
            return gemv.silu_mul_linear(gate_up, weight, launch_pdl=self.pdl)
        return quant_gemv.silu_mul_linear(gate_up, weight, launch_pdl=self.pdl)
