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


# The rows layout: the same 4-bit values repacked along K for small-batch decode kernels
# that stream each output row's K (model/kernels/awq_rows.py). Word j (0..15) of row n and
# group g holds q[n, 128 g + 32 p + 2 j + h] in nibble p + 4 h (p = 0..3, h = 0..1): the
# nibble pairs (p, p + 4) are two consecutive k, one int32 of bf16 x. `meta` holds each
# row's group as one int32: the fp16 scale's bits, the zero << 16.
ROWS_GROUP = 128
ROWS_WORDS = ROWS_GROUP // PACK  # words a row and group


def repack_rows(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ's qweight [K, N / 8], qzeros [K / 128, N / 8], scales [K / 128, N] (groups of
    128, K a multiple of 128) -> (words int32 [N, K / 8], meta int32 [N, K / 128])."""
    q = unpack_awq(qweight).T.to(torch.int64)  # [N, K]
    n, k = q.shape
    if k % ROWS_GROUP or scales.shape != (k // ROWS_GROUP, n):
        raise ValueError(f"the rows layout takes whole groups of {ROWS_GROUP} inputs, not "
                         f"K = {k} with scales {tuple(scales.shape)}")
    groups = k // ROWS_GROUP
    slots = q.reshape(n, groups, 4, ROWS_WORDS, 2).permute(0, 1, 3, 4, 2).reshape(
        n, groups, ROWS_WORDS, PACK)  # [N, G, j, p + 4 h]
    words = (slots << (4 * torch.arange(PACK, device=q.device))).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    zeros = unpack_awq(qzeros).T.to(torch.int32)  # [N, G]
    scale_bits = scales.T.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    return (words.reshape(n, groups * ROWS_WORDS).contiguous(),
            (scale_bits | (zeros << 16)).contiguous())


def unpack_rows(words: torch.Tensor) -> torch.Tensor:
    """int32 q [N, K] in k order from the rows layout's words [N, K / 8]."""
    n, groups = words.shape[0], words.shape[1] // ROWS_WORDS
    shifts = 4 * torch.arange(PACK, device=words.device, dtype=torch.int32)
    slots = (words.view(n, groups, ROWS_WORDS, 1) >> shifts) & MAX_Q  # [N, G, j, p + 4 h]
    return slots.view(n, groups, ROWS_WORDS, 2, 4).permute(0, 1, 4, 2, 3).reshape(
        n, groups * ROWS_GROUP)


def dequantize_rows(words: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """float32 W [N, K] (out, in) from the rows layout: the same values as `dequantize_awq`
    of the tensors `repack_rows` took."""
    n, groups = meta.shape
    q = unpack_rows(words).view(n, groups, ROWS_GROUP)
    zeros = (meta >> 16) & MAX_Q
    scales = (meta & 0xFFFF).to(torch.int16).view(torch.float16).float()
    return ((q - zeros[..., None]).float() * scales[..., None]).view(n, groups * ROWS_GROUP)
