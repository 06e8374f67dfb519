"""AWQ's 4-bit GEMM format in torch, as AutoAWQ writes it and Qwen publishes it.

For a projection y = x @ W.T with W [N, K] (out, in), the checkpoint holds the transpose's
integers: `qweight` int32 [K, N / 8], `qzeros` int32 [ceil(K / g), N / 8] (eight 4-bit
values per int32) and `scales` fp16 [ceil(K / g), N], for groups of g = 128 input rows.
The weight is W.T[k, n] = (q[k, n] - z[k // g, n]) * s[k // g, n]. Within each int32 the
eight values are not in column order: nibble i (bits 4i .. 4i + 3) holds column
AWQ_PACK_ORDER[i] of its eight, so column j sits in nibble AWQ_NIBBLE_OF_COLUMN[j].
"""

from __future__ import annotations

import torch

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_NIBBLE_OF_COLUMN = tuple(AWQ_PACK_ORDER.index(column) for column in range(8))
PACK = 8
MAX_Q = 15


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """int [R, C] in 0..15 (C a multiple of 8) -> int32 [R, C / 8] in AWQ's nibble order."""
    rows, columns = values.shape
    if columns % PACK:
        raise ValueError(f"AWQ packs eight columns per int32; {columns} is not a multiple of 8")
    grouped = values.to(torch.int64).view(rows, columns // PACK, PACK)
    packed = torch.zeros(rows, columns // PACK, dtype=torch.int64, device=values.device)
    for nibble, column in enumerate(AWQ_PACK_ORDER):
        packed |= grouped[..., column] << (4 * nibble)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C / 8] -> int32 [R, C] in 0..15 (the inverse of pack_awq)."""
    shifts = torch.tensor([4 * n for n in AWQ_NIBBLE_OF_COLUMN], dtype=torch.int32,
                          device=packed.device)
    return ((packed[..., None] >> shifts) & MAX_Q).flatten(-2)


def quantize_awq(weight: torch.Tensor, group_size: int = 128,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, K] weight -> (qweight, qzeros, scales): per output column and group of input rows,
    min-max asymmetric 4-bit (the scale rounded to fp16 first, so the integers fit it)."""
    w = weight.float().T  # [K, N]
    k, n = w.shape
    groups = -(-k // group_size)
    padded = torch.zeros(groups * group_size, n, dtype=torch.float32, device=w.device)
    padded[:k] = w
    padded[k:] = w[-1:] if k % group_size else 0.0  # a partial group: its rows repeat the last
    tiles = padded.view(groups, group_size, n)
    low = tiles.amin(dim=1).clamp_max(0.0)
    high = tiles.amax(dim=1).clamp_min(0.0)
    scales = ((high - low) / MAX_Q).clamp_min(1e-5).half()
    zeros = (-low / scales.float()).round().clamp(0, MAX_Q)
    q = (tiles / scales.float()[:, None] + zeros[:, None]).round().clamp(0, MAX_Q)
    q = q.view(groups * group_size, n)[:k].to(torch.int32)
    return pack_awq(q), pack_awq(zeros.to(torch.int32)), scales


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                   group_size: int = 128) -> torch.Tensor:
    """float32 W [N, K] (out, in) from the packed transpose, contiguous (so that products
    with it take the same kernels, and sum in the same order, as with a plain weight)."""
    q = unpack_awq(qweight)
    group = torch.arange(q.shape[0], device=q.device) // group_size
    zeros = unpack_awq(qzeros)[group]
    return ((q - zeros).float() * scales.float()[group]).T.contiguous()
