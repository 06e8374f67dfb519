"""The Triton kernels of a decoder layer, as the model calls them (`ops.LayerKernels`)."""

from __future__ import annotations

import torch

from jupyter_qwen.model.attention import AttentionMetadata
from jupyter_qwen.model.kernels import decode_layer, fused_ops, gemv, quant_gemv
from jupyter_qwen.model.layer_weights import LayerShape, LayerWeights


class TritonLayerKernels:
    """Fused norms, q/k norm with RoPE and the KV store, SiLU·mul, and the small-batch
    products of decode steps (norms and SiLU·mul fused in); `pdl`: the products launch as
    programmatic dependent kernels; `persistent`: whole layers of one-launch-attention
    steps run as one persistent launch each (`decode_layer`). A product's weight is a
    tensor (bf16, `gemv`) or a quantized projection (`Fp8Linear`, `AwqLinear`:
    `quant_gemv`)."""

    rms_norm = staticmethod(fused_ops.rms_norm)
    add_rms_norm = staticmethod(fused_ops.add_rms_norm)
    qk_norm_rope_store = staticmethod(fused_ops.qk_norm_rope_store)
    silu_and_mul = staticmethod(fused_ops.silu_and_mul)
    use_small_m = staticmethod(gemv.use_small_m)

    def __init__(self, *, pdl: bool = False, persistent: bool = False) -> None:
        self.pdl = pdl
        self.persistent = persistent
        self.layer_buffers: dict[tuple, decode_layer.LayerBuffers] = {}

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

    def takes_whole_layer(self, weights: LayerWeights, shape: LayerShape) -> bool:
        if not self.persistent:
            return False
        try:
            decode_layer.check_layer(weights, shape, 1)
        except ValueError:
            return False
        return True

    def decode_layer(self, hidden: torch.Tensor, residual: torch.Tensor | None,
                     weights: LayerWeights, shape: LayerShape, positions: torch.Tensor,
                     meta: AttentionMetadata, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cos_cache: torch.Tensor, sin_cache: torch.Tensor, scale: float,
                     workspace, min_chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_layer.decode_layer(
            hidden, residual, weights, shape, positions, meta.slot_mapping, meta.block_tables,
            meta.seq_lens, k_cache, v_cache, cos_cache, sin_cache, scale,
            buffers=self._buffers(shape, hidden.dtype, hidden.device), workspace=workspace,
            min_chunk=min_chunk)

    def _buffers(self, shape: LayerShape, dtype: torch.dtype,
                 device: torch.device) -> decode_layer.LayerBuffers:
        """One set for every layer of that shape, for up to gemv.MAX_M rows; made outside
        CUDA-graph capture (the engine runs each batch eagerly before capturing it)."""
        key = (shape, dtype, device)
        if key not in self.layer_buffers:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("the persistent layer's buffers must be made before "
                                   "CUDA-graph capture")
            self.layer_buffers[key] = decode_layer.LayerBuffers.allocate(gemv.MAX_M, shape,
                                                                         dtype, device)
        return self.layer_buffers[key]
