"""The window draw after `topk` in one Triton program per row (GPU; the interpreter in tests).

`sampler.window_draw` in torch is about fifty small kernels after the `topk`: scaling, the
top-k cut, the normaliser, the top-p cut with its tie floor, min-p, the counter-based Gumbel
noise of each candidate and the race. On a GPU those launches, not the arithmetic, are the
sampled step's cost at small batches. This kernel does the same steps, in the same order, for
one row per program, on the `width` candidates `topk` gave (width a power of two).

The noise is bit-identical to `sampling_noise.token_gumbel` up to the last step (the hash is
integer arithmetic); the logarithms and sums may differ from torch's in the last bit, so a
draw matches torch's except where that bit decides a cut or the race. Imported only where
Triton runs (`sampler.window_draw` on a GPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jupyter_qwen.engine.sampling_noise import MASK32, MIX_MULTIPLIERS, TOKEN_MULTIPLIER
from jupyter_qwen.engine.topk_kernel import (
    THRESHOLD_TILINGS,
    ThresholdTiling,
    decode_keys,
    threshold_candidates,
    top_of_candidates,
)

MASK = tl.constexpr(MASK32)
MIX0 = tl.constexpr(MIX_MULTIPLIERS[0])
MIX1 = tl.constexpr(MIX_MULTIPLIERS[1])
TOKEN = tl.constexpr(TOKEN_MULTIPLIER)
UNIFORM_STEP = tl.constexpr(2.0 ** -24)


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = (x * MIX0) & MASK
    x = x ^ (x >> 15)
    x = (x * MIX1) & MASK
    return x ^ (x >> 16)


@triton.jit
def _draw_row(values, token_ids, temperature, k, p, min_p, key_low, key_high, full_log_norm,
              WIDTH: tl.constexpr, NARROWED: tl.constexpr, FULL: tl.constexpr):
    """One row's token and whether the window cannot settle it, from its WIDTH largest
    logits (`values`, descending) and their `token_ids`."""
    offs = tl.arange(0, WIDTH)
    scaled = values / temperature
    uses_k = k > 0
    kth = tl.sum(tl.where(offs == tl.minimum(tl.maximum(k - 1, 0), WIDTH - 1), scaled, 0.0))
    last = tl.sum(tl.where(offs == WIDTH - 1, scaled, 0.0))
    keep = (k <= 0) | (scaled >= kth)
    unsettled = NARROWED & uses_k & (last >= kth)
    top = tl.max(tl.where(keep, scaled, float("-inf")))
    log_norm = top + tl.log(tl.sum(tl.where(keep, tl.exp(scaled - top), 0.0)))
    if FULL:
        log_norm = tl.where(uses_k, log_norm, full_log_norm)
    probs = tl.where(keep, tl.exp(scaled - log_norm), 0.0)
    cumulative = tl.cumsum(probs, 0)
    within = keep & ((cumulative - probs < p) | (p >= 1.0))
    floor = tl.min(tl.where(within, scaled, float("inf")))
    keep = keep & (scaled >= floor)
    if NARROWED:
        mass = tl.sum(tl.where(offs == WIDTH - 1, cumulative, 0.0))
        unsettled = unsettled | ((k <= 0) & (mass < p) & (p < 1.0)) | (last >= floor)
    first = tl.sum(tl.where(offs == 0, probs, 0.0))
    keep = keep & (probs >= first * min_p)
    hashed = (((token_ids.to(tl.uint64) * TOKEN) & MASK) + key_low.to(tl.uint64)) & MASK
    hashed = _mix32(_mix32(hashed) ^ key_high.to(tl.uint64))
    uniform = ((hashed >> 8).to(tl.float32) + 0.5) * UNIFORM_STEP
    scores = tl.where(keep, scaled - tl.log(-tl.log(uniform)), float("-inf"))
    best = tl.argmax(scores, 0)
    return tl.sum(tl.where(offs == best, token_ids, 0)), unsettled


@triton.jit
def _window_draw(values, candidates, floats, ints, full_log_norm, tokens_out, unsettled_out,
                 WIDTH: tl.constexpr, NARROWED: tl.constexpr, FULL: tl.constexpr):
    # floats: [rows, 3] temperature, top_p, min_p; ints: [rows, 3] top_k, key low, key high
    row = tl.program_id(0)
    offs = tl.arange(0, WIDTH)
    log_norm = tl.load(full_log_norm + row) if FULL else 0.0
    token, unsettled = _draw_row(
        tl.load(values + row * WIDTH + offs), tl.load(candidates + row * WIDTH + offs),
        tl.load(floats + row * 3), tl.load(ints + row * 3), tl.load(floats + row * 3 + 1),
        tl.load(floats + row * 3 + 2), tl.load(ints + row * 3 + 1),
        tl.load(ints + row * 3 + 2), log_norm, WIDTH, NARROWED, FULL)
    tl.store(tokens_out + row, token)
    tl.store(unsettled_out + row, unsettled.to(tl.int8))


PARAMETER_ROWS = ("temperature", "top_p", "min_p", "top_k", "greedy", "key_low", "key_high",
                  "slots")


# the parameters are rows of the captured draws' static buffers: their alignment must not
# pick a variant
@triton.jit(do_not_specialize_on_alignment=list(PARAMETER_ROWS))
def _graph_draw(values, candidates, keys, counts, temperature, top_p, min_p, top_k, greedy,
                key_low, key_high, slots, full_log_norm, greedy_tokens, output_counts,
                count_stride, out, out_stride, WIDTH: tl.constexpr, NARROWED: tl.constexpr,
                FULL: tl.constexpr, FROM_KEYS: tl.constexpr, CAPACITY: tl.constexpr,
                COUNT: tl.constexpr):
    """`_window_draw` for one row of a captured draw, with what the torch steps around it
    did: the window from a dense top-W or from a threshold candidate list, greedy rows
    taking `greedy_tokens`, the tokens and unsettled rows written as one [2, rows] result,
    and (COUNT) each row's token counted in its penalty row (slot -1: none)."""
    row = tl.program_id(0)
    offs = tl.arange(0, WIDTH)
    if FROM_KEYS:
        best, lost = top_of_candidates(keys, counts, row, WIDTH, CAPACITY)
        window, token_ids = decode_keys(best)
    else:
        lost = tl.load(greedy + row) < 0  # never: a boolean of the same kind
        window = tl.load(values + row * WIDTH + offs).to(tl.float32)
        token_ids = tl.load(candidates + row * WIDTH + offs)
    log_norm = tl.load(full_log_norm + row) if FULL else 0.0
    token, unsettled = _draw_row(
        window, token_ids, tl.load(temperature + row), tl.load(top_k + row),
        tl.load(top_p + row), tl.load(min_p + row), tl.load(key_low + row),
        tl.load(key_high + row), log_norm, WIDTH, NARROWED, FULL)
    is_greedy = tl.load(greedy + row) != 0
    token = tl.where(is_greedy, tl.load(greedy_tokens + row), token)
    unsettled = (unsettled | lost) & ~is_greedy
    tl.store(out + row, token)
    tl.store(out + out_stride + row, unsettled.to(tl.int64))
    if COUNT:
        slot = tl.load(slots + row)
        tl.atomic_add(output_counts + tl.maximum(slot, 0) * count_stride + token, 1,
                      mask=slot >= 0)


def compile_window_kernels(vocab_size: int, device: torch.device,
                           variants: Iterable[tuple[int, bool]],
                           topk_widths: Iterable[int] = ()) -> None:
    """Run each (width, whole-vocabulary normaliser) variant once, and the top-W kernel
    (`topk_kernel`) at each of `topk_widths`, at start-up, so that none compiles while
    serving."""
    from jupyter_qwen.engine.topk_kernel import many_program_topk

    rows = 2
    logits = torch.randn(rows, vocab_size, device=device)
    ones = torch.ones(rows, device=device)
    top_k = torch.tensor([20, 0], device=device)
    keys = torch.zeros(rows, 2, dtype=torch.int64, device=device)
    for width in sorted(width for width in set(topk_widths) if width <= vocab_size):
        many_program_topk(logits, width)
    for width, full in variants:
        values, candidates = logits.topk(min(width, vocab_size), dim=-1)
        log_norm = torch.logsumexp(logits, dim=-1) if full else None
        if values.shape[1] == width:
            window_draw_in_one_kernel(values, candidates, ones, top_k, ones * 0.9, ones * 0,
                                      keys, log_norm, vocab_size)


def window_draw_in_one_kernel(values: torch.Tensor, candidates: torch.Tensor,
                              temperatures: torch.Tensor, top_k: torch.Tensor,
                              top_p: torch.Tensor, min_p: torch.Tensor, row_keys: torch.Tensor,
                              full_log_norm: torch.Tensor | None, vocab_size: int,
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens and the rows the window cannot settle, from `topk`'s values and
    candidates ([rows, width] each, width a power of two)."""
    rows, width = values.shape
    tokens = torch.empty(rows, dtype=torch.int64, device=values.device)
    unsettled = torch.empty(rows, dtype=torch.int8, device=values.device)
    # fresh tensors: Triton specialises on pointer alignment, and rows of the callers'
    # parameter buffers start wherever their row does
    floats = torch.stack([temperatures, top_p, min_p], dim=1)
    ints = torch.cat([top_k[:, None], row_keys], dim=1)
    _window_draw[(rows,)](
        values.float().contiguous(), candidates.contiguous(), floats, ints,
        full_log_norm if full_log_norm is not None else values, tokens, unsettled,
        WIDTH=width, NARROWED=width < vocab_size, FULL=full_log_norm is not None)
    return tokens, unsettled.bool()


@dataclass(slots=True)
class GraphDrawRows:
    """A captured draw's per-row inputs, each [rows] and contiguous (rows of its static
    buffers): filters, greedy flags (nonzero: take `greedy_tokens`), noise keys and penalty
    slots (-1: none)."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    top_k: torch.Tensor
    greedy: torch.Tensor
    key_low: torch.Tensor
    key_high: torch.Tensor
    slots: torch.Tensor


def graph_window_draw(logits: torch.Tensor, rows: GraphDrawRows, width: int,
                      full_normaliser: bool, greedy_tokens: torch.Tensor,
                      output_counts: torch.Tensor | None = None,
                      window: tuple[torch.Tensor, torch.Tensor] | None = None,
                      tiling: ThresholdTiling | None = None) -> torch.Tensor:
    """[2, rows] int64: each row's token and whether the window cannot settle it (greedy
    rows take `greedy_tokens` and are settled). The window: `window` (the `width` largest
    values and their token ids, as `sampler.top_window` gives them), or when None
    `topk_kernel`'s threshold candidate lists (`threshold_fits` must hold). With
    `output_counts`, each row's token is counted in its slot's row. No host read:
    CUDA-graph safe."""
    count, vocab = logits.shape
    out = torch.empty(2, count, dtype=torch.int64, device=logits.device)
    full = (torch.logsumexp(logits / rows.temperature[:, None], dim=-1)
            if full_normaliser else None)
    width = min(width, vocab)
    if window is None:
        tiling = tiling or THRESHOLD_TILINGS[width]
        candidates = threshold_candidates(logits, width, tiling)
        values = indices = None
        keys, counts, capacity = candidates.keys, candidates.counts, tiling.capacity
    else:
        values, indices = window
        keys = counts = None
        capacity = width
    placeholder = logits
    _graph_draw[(count,)](
        placeholder if values is None else values.contiguous(),
        placeholder if indices is None else indices.contiguous(),
        placeholder if keys is None else keys, placeholder if counts is None else counts,
        *(getattr(rows, name) for name in PARAMETER_ROWS),
        placeholder if full is None else full, greedy_tokens,
        placeholder if output_counts is None else output_counts,
        0 if output_counts is None else output_counts.stride(0), out, out.stride(0),
        WIDTH=width, NARROWED=width < vocab, FULL=full is not None, FROM_KEYS=keys is not None,
        CAPACITY=capacity, COUNT=output_counts is not None)
    return out
