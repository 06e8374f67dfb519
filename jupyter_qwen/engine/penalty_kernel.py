"""Repetition, presence and frequency penalties in one Triton pass (GPU; the interpreter in
tests).

The torch path (`PenaltyState.gather`, then `sampler.apply_penalties`) copies each row's
token counts and prompt marks out of the penalty state, compares, ORs, casts, and then
divides, multiplies, selects and subtracts: about eight passes over [rows, vocab]. This
kernel reads each row's logits, its slot's count row and prompt row in place, and writes the
penalised logits once: 13 bytes per vocabulary entry instead of about 120.

The arithmetic is `apply_penalties`', in its order and rounding: a correctly rounded
division (`div_rn`, not the approximate one Triton emits for `/`) and no fused multiply-add,
so the result equals torch's bit for bit. A row whose slot is negative has no penalty row
and is copied unchanged. Imported only where Triton runs (penalised sampling on a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # vocabulary entries per program
NUM_WARPS = 4
SLOT_DTYPES = (torch.int64, torch.int32)


# the per-row parameters are often rows of a larger buffer (the captured draws' static
# parameters): their alignment must not pick a variant
@triton.jit(do_not_specialize_on_alignment=["slots", "repetition", "presence", "frequency"])
def _penalise(logits, out, slots, repetition, presence, frequency, counts, in_prompt,
              vocab_size, logits_stride, out_stride, state_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < vocab_size
    values = tl.load(logits + row.to(tl.int64) * logits_stride + offsets, mask=inside)
    slot = tl.load(slots + row).to(tl.int64)
    has_row = slot >= 0
    state_at = tl.maximum(slot, 0) * state_stride + offsets
    in_state = offsets < tl.where(has_row, vocab_size, 0)  # nothing read without a row
    count = tl.load(counts + state_at, mask=in_state, other=0)
    prompt = tl.load(in_prompt + state_at, mask=in_state, other=0)
    in_output = count > 0
    seen = (prompt != 0) | in_output
    factor = tl.load(repetition + row)
    penalised = tl.where(values > 0, tl.math.div_rn(values, factor), values * factor)
    penalised = tl.where(seen, penalised, values)
    penalised = penalised - tl.load(presence + row) * in_output.to(tl.float32)
    penalised = penalised - tl.load(frequency + row) * count.to(tl.float32)
    tl.store(out + row.to(tl.int64) * out_stride + offsets,
             tl.where(has_row, penalised, values), mask=inside)


def penalise_in_one_kernel(logits: torch.Tensor, slots: torch.Tensor, repetition: torch.Tensor,
                           presence: torch.Tensor, frequency: torch.Tensor,
                           output_counts: torch.Tensor, in_prompt: torch.Tensor,
                           out: torch.Tensor | None = None, block: int = BLOCK,
                           ) -> torch.Tensor:
    """The penalised logits ([rows, vocab] float32) into `out` (may be `logits` itself) or a
    new tensor. `slots` ([rows], int64 or int32): each row's row of `output_counts`
    ([capacity, vocab] int32) and `in_prompt` ([capacity, vocab] bool), -1 for none;
    `repetition`, `presence`, `frequency`: [rows] float32."""
    rows, vocab_size = logits.shape
    if out is None:
        out = torch.empty_like(logits)
    _check(logits, out, slots, output_counts, in_prompt, (repetition, presence, frequency))
    if rows == 0:
        return out
    grid = (rows, triton.cdiv(vocab_size, block))
    _penalise[grid](logits, out, slots, repetition, presence, frequency, output_counts,
                    in_prompt.view(torch.uint8), vocab_size, logits.stride(0), out.stride(0),
                    output_counts.stride(0), BLOCK=block, num_warps=NUM_WARPS,
                    enable_fp_fusion=False)
    return out


def _check(logits: torch.Tensor, out: torch.Tensor, slots: torch.Tensor,
           output_counts: torch.Tensor, in_prompt: torch.Tensor,
           parameters: tuple[torch.Tensor, ...]) -> None:
    rows, vocab_size = logits.shape
    if logits.dtype != torch.float32 or out.dtype != torch.float32 or out.shape != logits.shape:
        raise ValueError("penalties take and give [rows, vocab] float32 logits")
    if logits.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError("the logits' rows must be contiguous")
    if slots.dtype not in SLOT_DTYPES or not _one_per_row(slots, rows):
        raise ValueError("slots must be one contiguous int64 or int32 entry per row")
    if any(p.dtype != torch.float32 or not _one_per_row(p, rows) for p in parameters):
        raise ValueError("penalty parameters must be one contiguous float32 entry per row")
    state_shape = (output_counts.shape[0], vocab_size)
    if (output_counts.dtype != torch.int32 or in_prompt.dtype != torch.bool
            or output_counts.shape != state_shape or in_prompt.shape != state_shape
            or output_counts.stride() != in_prompt.stride() or output_counts.stride(1) != 1):
        raise ValueError("the penalty state must be int32 counts and bool prompt marks of "
                         "the logits' vocabulary, laid out alike")


def _one_per_row(values: torch.Tensor, rows: int) -> bool:
    return values.shape == (rows,) and (rows <= 1 or values.stride(0) == 1)


def compile_penalty_kernels(vocab_size: int, device: torch.device) -> None:
    """Run the kernel once per slot dtype, at start-up, so that none compiles while
    serving."""
    rows = 2
    logits = torch.randn(rows, vocab_size, device=device)
    counts = torch.ones(rows, vocab_size, dtype=torch.int32, device=device)
    in_prompt = torch.ones(rows, vocab_size, dtype=torch.bool, device=device)
    ones = torch.ones(rows, device=device)
    for dtype in SLOT_DTYPES:
        slots = torch.tensor([1, -1], dtype=dtype, device=device)
        penalise_in_one_kernel(logits, slots, ones * 1.1, ones, ones * 0, counts, in_prompt)
