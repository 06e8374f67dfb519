"""Counter-based random numbers for sampling: a hash of (row key, token id), no generator state.

A seeded request's row key depends only on its seed and on how many tokens it has drawn, so
its noise is the same whatever else is in the batch, and after preemption. Every operation
is a 64-bit integer op on values below 2**48, so the CPU and the GPU compute the same bits
and nothing overflows.
"""

from __future__ import annotations

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
TOKEN_MULTIPLIER = 0x9E3779B1
ROW_UNIFORM_TOKENS = (0xFFFFFFFF, 0xFFFFFFFE)  # not token ids: the row's own uniforms


def mix32(x: int) -> int:
    """A 32-bit integer hash (two multiply-xorshift rounds), on Python ints."""
    x ^= x >> 16
    x = (x * MIX_MULTIPLIERS[0]) & MASK32
    x ^= x >> 15
    x = (x * MIX_MULTIPLIERS[1]) & MASK32
    return x ^ (x >> 16)


def seeded_row_key(seed: int, draw: int) -> tuple[int, int]:
    """The two 32-bit halves of a seeded row's key for its `draw`-th sampled token."""
    low = mix32((seed & MASK32) ^ 0x243F6A88)
    both = mix32(low ^ (seed >> 32 & MASK32))
    first = mix32(both ^ (draw & MASK32))
    return first, mix32((first + 0x13198A2E) & MASK32 ^ (draw >> 32 & MASK32))


def seeded_row_keys(seeds: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """`seeded_row_key` for a batch on the device: seeds as [rows, 2] 32-bit halves (low,
    high), draws [rows] below 2**32; returns [rows, 2]."""
    low = mix32_tensor(seeds[:, 0] ^ 0x243F6A88)
    both = mix32_tensor(low ^ seeds[:, 1])
    first = mix32_tensor(both ^ draws)
    return torch.stack([first, mix32_tensor(((first + 0x13198A2E) & MASK32) ^ (draws >> 32))],
                       dim=1)


def seeded_row_keys_host(seeds: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """`seeded_row_key` for many rows on the host: seeds and draws as uint64 arrays (below
    2**64 and 2**32); returns [rows, 2] as int64. Products of two 32-bit values fit in 64
    bits, so numpy computes the same bits as the device."""
    low = _mix32_host((seeds & MASK32) ^ 0x243F6A88)
    both = _mix32_host(low ^ (seeds >> np.uint64(32)))
    first = _mix32_host(both ^ draws)
    second = _mix32_host(((first + 0x13198A2E) & MASK32) ^ (draws >> np.uint64(32)))
    return np.stack([first, second], axis=1).astype(np.int64)


def _mix32_host(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(MIX_MULTIPLIERS[0])) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(MIX_MULTIPLIERS[1])) & np.uint64(MASK32)
    return x ^ (x >> np.uint64(16))


def _mul32(x: torch.Tensor, multiplier: int) -> torch.Tensor:
    """(x * multiplier) mod 2**32 for 0 <= x < 2**32, keeping every product below 2**48."""
    high = ((x >> 16) * multiplier) & 0xFFFF
    return ((high << 16) + (x & 0xFFFF) * multiplier) & MASK32


def mix32_tensor(x: torch.Tensor) -> torch.Tensor:
    """`mix32` on an int64 tensor of values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_MULTIPLIERS[1])
    return x ^ (x >> 16)


def token_hash(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """32-bit hashes of each row's key [rows, 2] with its token ids [rows, n]."""
    first = (_mul32(token_ids, TOKEN_MULTIPLIER) + keys[:, :1]) & MASK32
    return mix32_tensor(mix32_tensor(first) ^ keys[:, 1:])


def token_gumbel(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise per (row, token id), float32, from a 24-bit uniform in (0, 1)."""
    uniform = ((token_hash(keys, token_ids) >> 8).to(torch.float32) + 0.5) * 2.0 ** -24
    return -torch.log(-torch.log(uniform))


def row_uniform(keys: torch.Tensor) -> torch.Tensor:
    """One uniform in (0, 1) per row, float64 with 53 random bits."""
    tokens = torch.tensor(ROW_UNIFORM_TOKENS, dtype=torch.int64, device=keys.device)
    bits = token_hash(keys, tokens.expand(keys.shape[0], 2))
    value = (bits[:, 0] << 21) + (bits[:, 1] >> 11)
    return (value.to(torch.float64) + 0.5) * 2.0 ** -53


def random_row_keys(count: int, device: torch.device) -> torch.Tensor:
    """Keys for unseeded rows, from the default generator of `device`."""
    return torch.randint(0, 1 << 32, (count, 2), dtype=torch.int64, device=device)
