"""The model's quantized projections. Each holds its checkpoint tensors as buffers (so the
model's parameters and buffers add up to the weights' real size), packs the shards of a
fused projection (q/k/v, gate/up) side by side, and multiplies either through the Triton
kernels it was handed (`kernels`, from `ModelOps.quant`) or through the reference: the
weight dequantized to the activations' dtype, then `F.linear` (CPU, and the GPU oracle)."""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from jupyter_qwen.model.quant.awq import PACK, quantize_awq
from jupyter_qwen.model.quant.fp8 import (
    FP8_DTYPE,
    Fp8Rows,
    blocks,
    dequantize_fp8_blocks,
    quantize_fp8_blocks,
    scale_rows_of,
)


class QuantKernels(Protocol):
    """Products of quantized projections on the GPU (`kernels.quant_linear`)."""

    def linear(self, x: torch.Tensor | Fp8Rows, layer: QuantLinear) -> torch.Tensor: ...

    def takes_fp8_rows(self, layer: QuantLinear, m: int) -> bool:
        """Whether `linear` takes m rows for this projection as `Fp8Rows`."""

    def prepare(self, layer: QuantLinear) -> None:
        """Put the loaded projection's weights in the layout these kernels read fastest
        (once, when the model takes them; the values stay the same)."""


class QuantLinear(nn.Module):
    """y = x @ W.T for a W of `shard_sizes` output rows per shard and `in_features` columns,
    stored quantized. `bias` is always None (Qwen3's projections have none)."""

    suffixes: ClassVar[tuple[str, ...]] = ()
    """The checkpoint tensors it reads (`<name>.<suffix>`)."""
    tensors: ClassVar[tuple[str, ...]] = ()
    """The buffers those fill."""

    def __init__(self, in_features: int, shard_sizes: list[int]):
        super().__init__()
        self.in_features = in_features
        self.shard_sizes = list(shard_sizes)
        self.out_features = sum(shard_sizes)
        self.bias = None
        self.kernels: QuantKernels | None = None

    def forward(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        if self.kernels is not None:
            return self.kernels.linear(x, self)
        return F.linear(x, self.dequantize(x.dtype))

    def takes_fp8_rows(self, m: int) -> bool:
        """Whether its product of m rows takes them quantized to e4m3 by the kernel that
        makes them (`Fp8Rows`: a fused norm or SiLU·mul) instead of quantizing them in a
        launch of its own; only its kernels do (never the reference)."""
        return self.kernels is not None and self.kernels.takes_fp8_rows(self, m)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """W [out_features, in_features] in `dtype` (rounded once from float32)."""
        raise NotImplementedError

    def load(self, suffix: str, shard: int, tensor: torch.Tensor) -> list[str]:
        """Copy the checkpoint tensor `<name>.<suffix>` of shard `shard` into place; returns
        the suffixes it filled."""
        raise NotImplementedError

    def _row_offset(self, shard: int) -> int:
        return sum(self.shard_sizes[:shard])

    def _check_shape(self, suffix: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(tensor.shape) != shape:
            raise ValueError(f"checkpoint tensor {suffix} has shape {tuple(tensor.shape)}, "
                             f"expected {shape}")


class Fp8Linear(QuantLinear):
    """`weight` float8_e4m3fn [N, K]; `weight_scale_inv` float32, one row of ceil(K / 128)
    scales per 128 rows of each shard; `scale_rows` int32 [N]: the scale row of each output
    row. `online`: the checkpoint holds bf16 weights, quantized here as they load."""

    tensors = ("weight", "weight_scale_inv")

    def __init__(self, in_features: int, shard_sizes: list[int], online: bool = False):
        super().__init__(in_features, shard_sizes)
        self.online = online
        self.suffixes = ("weight",) if online else ("weight", "weight_scale_inv")
        scale_rows = sum(blocks(size, 128) for size in shard_sizes)
        self.register_buffer("weight", torch.empty(self.out_features, in_features,
                                                   dtype=FP8_DTYPE))
        self.register_buffer("weight_scale_inv", torch.empty(
            scale_rows, blocks(in_features, 128), dtype=torch.float32))
        self.register_buffer("scale_rows", scale_rows_of(shard_sizes))

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_fp8_blocks(self.weight, self.weight_scale_inv, self.scale_rows,
                                     ).to(dtype)

    def _scale_offset(self, shard: int) -> int:
        return sum(blocks(size, 128) for size in self.shard_sizes[:shard])

    def load(self, suffix: str, shard: int, tensor: torch.Tensor) -> list[str]:
        rows, first = self.shard_sizes[shard], self._row_offset(shard)
        scale_shape = (blocks(rows, 128), blocks(self.in_features, 128))
        if suffix == "weight" and tensor.dtype != FP8_DTYPE:
            if not self.online:
                raise ValueError(f"an FP8 checkpoint's weight is {tensor.dtype}, not float8_e4m3fn")
            self._check_shape(suffix, tensor, (rows, self.in_features))
            values, scale = quantize_fp8_blocks(tensor.to(self.weight.device))
            self._copy_scale(shard, scale)
            self.weight[first:first + rows].copy_(values)
            return ["weight", "weight_scale_inv"]
        if suffix == "weight":
            self._check_shape(suffix, tensor, (rows, self.in_features))
            self.weight[first:first + rows].copy_(tensor)
            return ["weight"]
        if suffix == "weight_scale_inv":
            self._check_shape(suffix, tensor, scale_shape)
            self._copy_scale(shard, tensor)
            return ["weight_scale_inv"]
        raise ValueError(f"unexpected FP8 tensor {suffix!r}")

    def _copy_scale(self, shard: int, scale: torch.Tensor) -> None:
        first = self._scale_offset(shard)
        self.weight_scale_inv[first:first + scale.shape[0]].copy_(scale)


class AwqLinear(QuantLinear):
    """`qweight` int32 [K, N / 8], `qzeros` int32 [ceil(K / 128), N / 8], `scales` fp16
    [ceil(K / 128), N]: the shards' packed columns side by side, as loaded. `to_rows`
    repacks them once loaded into the rows layout (`words` int32 [N, K / 8], `meta` int32
    [N, K / 128]; model/quant/awq.py), which replaces them (`rows`: whether it did)."""

    suffixes = tensors = ("qweight", "qzeros", "scales")
    group_size = 128
    rows = False

    def __init__(self, in_features: int, shard_sizes: list[int]):
        super().__init__(in_features, shard_sizes)
        if any(size % PACK for size in shard_sizes):
            raise ValueError(f"AWQ needs output sizes that are multiples of 8, not {shard_sizes}")
        groups, n = blocks(in_features, self.group_size), self.out_features
        self.register_buffer("qweight", torch.empty(in_features, n // PACK, dtype=torch.int32))
        self.register_buffer("qzeros", torch.empty(groups, n // PACK, dtype=torch.int32))
        self.register_buffer("scales", torch.empty(groups, n, dtype=torch.float16))

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        from jupyter_qwen.model.quant.awq import dequantize_awq, dequantize_rows

        if self.rows:
            return dequantize_rows(self.words, self.meta).to(dtype)
        return dequantize_awq(self.qweight, self.qzeros, self.scales, self.group_size).to(dtype)

    def to_rows(self) -> None:
        """Repack the loaded weights into the rows layout, in place of AWQ's (once; the
        same values, so every product computes what it did)."""
        from jupyter_qwen.model.quant.awq import repack_rows

        if self.rows:
            return
        words, meta = repack_rows(self.qweight, self.qzeros, self.scales)
        for name in self.tensors:
            delattr(self, name)
        self.register_buffer("words", words)
        self.register_buffer("meta", meta)
        self.rows = True

    def load(self, suffix: str, shard: int, tensor: torch.Tensor) -> list[str]:
        if self.rows:
            raise ValueError("this AWQ projection was repacked into the rows layout; "
                             "load checkpoint tensors before `to_rows`")
        columns, first = self.shard_sizes[shard], self._row_offset(shard)
        target = getattr(self, suffix, None) if suffix in self.suffixes else None
        if target is None:
            raise ValueError(f"unexpected AWQ tensor {suffix!r}")
        per_column = 1 if suffix == "scales" else PACK
        self._check_shape(suffix, tensor, (target.shape[0], columns // per_column))
        if tensor.dtype != target.dtype:
            raise ValueError(f"AWQ tensor {suffix} is {tensor.dtype}, expected {target.dtype}")
        target[:, first // per_column:(first + columns) // per_column].copy_(tensor)
        return [suffix]


def quantized_tensors(method: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A bf16 weight [N, K] as a checkpoint of `method` stores it, by suffix."""
    if method == "fp8":
        values, scale = quantize_fp8_blocks(weight)
        return {"weight": values, "weight_scale_inv": scale}
    qweight, qzeros, scales = quantize_awq(weight)
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales}
