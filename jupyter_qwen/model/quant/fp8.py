"""Qwen's FP8 weights in torch: float8_e4m3fn values with one float32 `weight_scale_inv` per
128 x 128 block (the weight is `value * scale_inv`, as transformers' fine-grained FP8 reads
it). Partial blocks at the edges have a scale of their own. Quantizing here is what the
checkpoint writer and the online `quantization="fp8"` option both use."""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
TINIEST_SCALE = 1e-12


def blocks(size: int, block: int) -> int:
    return -(-size // block)


def quantize_fp8_blocks(weight: torch.Tensor, block: tuple[int, int] = (128, 128),
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] weight -> (float8_e4m3fn [N, K], float32 scale_inv [ceil(N/bn), ceil(K/bk)]):
    each block's largest magnitude maps to 448."""
    rows, columns = weight.shape
    bn, bk = block
    nb, kb = blocks(rows, bn), blocks(columns, bk)
    padded = torch.zeros(nb * bn, kb * bk, dtype=torch.float32, device=weight.device)
    padded[:rows, :columns] = weight.float()
    tiles = padded.view(nb, bn, kb, bk)
    # the divisor is a tensor on the weight's device: CUDA divides by a Python number as a
    # multiply by its float32 reciprocal (one ulp off for about half the values), and the
    # scales must be the same wherever the weights are quantized (a checkpoint written on
    # the CPU, `quantization="fp8"` on the GPU)
    largest = torch.full((), FP8_MAX, dtype=torch.float32, device=weight.device)
    scale = (tiles.abs().amax(dim=(1, 3)) / largest).clamp_min(TINIEST_SCALE)
    values = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return values.view(nb * bn, kb * bk)[:rows, :columns].contiguous(), scale


def scale_rows_of(shard_sizes: list[int], block_rows: int = 128) -> torch.Tensor:
    """For a projection packed from shards (q, k, v), the row of the packed scale grid that
    each output row reads: each shard's blocks start at a fresh row of the grid."""
    rows, first = [], 0
    for size in shard_sizes:
        rows.append(first + torch.arange(size) // block_rows)
        first += blocks(size, block_rows)
    return torch.cat(rows).to(torch.int32)


def dequantize_fp8_blocks(values: torch.Tensor, scale_inv: torch.Tensor,
                          scale_rows: torch.Tensor | None = None, block_columns: int = 128,
                          ) -> torch.Tensor:
    """float32 [N, K]: each value times its block's scale. `scale_rows` (see scale_rows_of)
    says which scale row each output row reads; by default row // 128."""
    rows, columns = values.shape
    if scale_rows is None:
        scale_rows = torch.arange(rows, device=values.device) // 128
    per_row = scale_inv[scale_rows.long()]
    per_value = per_row.repeat_interleave(block_columns, dim=1)[:, :columns]
    return values.float() * per_value


ROW_GROUP = 128  # the columns one activation scale of `Fp8Rows` covers (Qwen's FP8 block)


@dataclass(frozen=True, slots=True)
class Fp8Rows:
    """Activation rows already quantized for an FP8 product by the kernel that made them (a
    fused RMS norm, SiLU·mul or the attention kernels): `values` e4m3 [M, K], `scales`
    float32 [M, ceil(K / 128)] (each row's 128 columns divided by their largest magnitude /
    448, that magnitude taken after rounding to `dtype`), and `dtype`, the rows' own dtype,
    which the product's output takes. What the FP8 product would otherwise make from the
    rows in a launch of its own."""

    values: torch.Tensor
    scales: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.values.shape
