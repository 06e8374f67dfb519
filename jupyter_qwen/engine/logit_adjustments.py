"""Per-request changes to the logits before penalties and sampling: allowed_token_ids,
min_tokens (end-of-sequence and stop token ids masked), logit_bias, then the token bitmask of
constrained rows (structured output, a forced end of reasoning), in that order.

The bitmask lives in `TokenBitmasks`, kept from step to step: the constrained rows are filled
in place on the host (pinned memory on a GPU) while the GPU runs the step's forward pass, and
copied on a side stream, so the copy overlaps the forward pass instead of queueing behind it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from jupyter_qwen.engine.constraints import apply_token_bitmask, new_token_bitmask
from jupyter_qwen.engine.host_copy import host_to_device, long_tensor
from jupyter_qwen.engine.sequence import Sequence


@dataclass(slots=True)
class LogitAdjustments:
    allowed_rows: torch.Tensor | None  # rows restricted to allowed tokens
    allowed: tuple[torch.Tensor, torch.Tensor] | None  # (row, token) pairs they allow
    masked: tuple[torch.Tensor, torch.Tensor] | None  # (row, token) pairs set to -inf
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # (row, token, value)
    token_bitmask: tuple[torch.Tensor, torch.Tensor] | None = None  # (packed bits, rows)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Adjust `logits` in place and return them."""
        if self.allowed is not None:
            keep = torch.ones_like(logits, dtype=torch.bool)
            keep[self.allowed_rows] = False
            keep[self.allowed] = True
            logits.masked_fill_(~keep, float("-inf"))
        if self.masked is not None:
            logits[self.masked] = float("-inf")
        if self.bias is not None:
            rows, tokens, values = self.bias
            logits.index_put_((rows, tokens), values, accumulate=True)
        if self.token_bitmask is not None:
            apply_token_bitmask(logits, *self.token_bitmask)
        return logits


def build_logit_adjustments(seqs: list[Sequence], eos_token_ids: Collection[int],
                            device: torch.device, vocab_size: int | None = None,
                            bitmasks: TokenBitmasks | None = None) -> LogitAdjustments | None:
    """The step's adjustments, None when no row has any. Constrained rows get their bitmask
    from `bitmasks` (or, given only `vocab_size`, from a buffer made for this step)."""
    if not any(seq.params.adjusts_logits for seq in seqs):
        return None
    adjustments = _token_adjustments(seqs, eos_token_ids, device)
    if any(seq.constraint is not None for seq in seqs):
        if bitmasks is None and vocab_size is not None:
            bitmasks = TokenBitmasks(vocab_size, device, len(seqs))
        if bitmasks is not None:
            adjustments.token_bitmask = bitmasks.fill(seqs)
    return adjustments


class TokenBitmasks:
    """Packed allowed-token bits for up to `max_rows` rows, allocated once (grown when a
    step has more rows). Row r belongs to the step's row r; rows a step does not constrain
    keep stale bits and are left out of its `rows`."""

    def __init__(self, vocab_size: int, device: torch.device, max_rows: int = 1):
        self.vocab_size = vocab_size
        self.device = device
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._allocate(max_rows)

    def _allocate(self, max_rows: int) -> None:
        pinned = self.copy_stream is not None
        self.host = new_token_bitmask(max_rows, self.vocab_size, pin_memory=pinned)
        self.host_rows = torch.zeros(max_rows, dtype=torch.int32, pin_memory=pinned)
        self.on_device, self.device_rows = self.host, self.host_rows
        if pinned:
            self.on_device = torch.empty_like(self.host, device=self.device)
            self.device_rows = torch.empty_like(self.host_rows, device=self.device)

    def fill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(bits on the device, the constrained rows' numbers there) for this step; None when
        no row is constrained (reasoning is free). Only the rows up to the last constrained
        one travel, on the side stream, which the current stream then waits for. The previous
        step's copies and reads of these buffers are done: its tokens were read back."""
        if len(seqs) > self.host.shape[0]:
            self._allocate(len(seqs))
        rows = [row for row, seq in enumerate(seqs)
                if seq.constraint is not None and seq.constraint.fill(self.host, row)]
        if not rows:
            return None
        count, used = len(rows), rows[-1] + 1
        self.host_rows.numpy()[:count] = rows
        if self.copy_stream is None:
            return self.host, self.host_rows[:count]
        with torch.cuda.stream(self.copy_stream):
            self.on_device[:used].copy_(self.host[:used], non_blocking=True)
            self.device_rows[:count].copy_(self.host_rows[:count], non_blocking=True)
        torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        return self.on_device, self.device_rows[:count]


def _token_adjustments(seqs: list[Sequence], eos_token_ids: Collection[int],
                       device: torch.device) -> LogitAdjustments:
    allowed_rows, allowed, masked, bias = [], ([], []), ([], []), ([], [], [])
    for row, seq in enumerate(seqs):
        params = seq.params
        if params.allowed_token_ids is not None:
            allowed_rows.append(row)
            _extend(allowed, row, params.allowed_token_ids)
        if seq.num_output_tokens < params.min_tokens:
            stops = set(params.stop_token_ids) | (set() if params.ignore_eos
                                                  else set(eos_token_ids))
            _extend(masked, row, sorted(stops))
        if params.logit_bias:
            _extend(bias[:2], row, list(params.logit_bias))
            bias[2].extend(float(value) for value in params.logit_bias.values())
    as_long = lambda values: long_tensor(values, device)  # noqa: E731
    return LogitAdjustments(
        allowed_rows=as_long(allowed_rows) if allowed_rows else None,
        allowed=tuple(map(as_long, allowed)) if allowed_rows else None,
        masked=tuple(map(as_long, masked)) if masked[0] else None,
        bias=(as_long(bias[0]), as_long(bias[1]),
              host_to_device(torch.tensor(bias[2], dtype=torch.float32), device))
        if bias[0] else None)


def _extend(pairs: tuple[list, ...], row: int, token_ids: list[int]) -> None:
    pairs[0].extend([row] * len(token_ids))
    pairs[1].extend(token_ids)
