"""Per-request changes to the logits before penalties and sampling: allowed_token_ids,
min_tokens (end-of-sequence and stop token ids masked), logit_bias, then the token bitmask of
constrained rows (structured output, a forced end of reasoning), in that order."""

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
    token_bitmask: tuple[torch.Tensor, list[int]] | None = None  # (packed bits, rows)

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
                            device: torch.device,
                            vocab_size: int | None = None) -> LogitAdjustments | None:
    if not any(seq.params.adjusts_logits for seq in seqs):
        return None
    adjustments = _token_adjustments(seqs, eos_token_ids, device)
    if vocab_size is not None and any(seq.constraint is not None for seq in seqs):
        adjustments.token_bitmask = build_token_bitmask(seqs, vocab_size, device)
    return adjustments


def build_token_bitmask(seqs: list[Sequence], vocab_size: int,
                        device: torch.device) -> tuple[torch.Tensor, list[int]] | None:
    """The constrained rows' allowed tokens, filled on the host and copied without waiting;
    None when no row is constrained this step (reasoning is free)."""
    bitmask = new_token_bitmask(len(seqs), vocab_size)
    rows = [row for row, seq in enumerate(seqs)
            if seq.constraint is not None and seq.constraint.fill(bitmask, row)]
    if not rows:
        return None
    return host_to_device(bitmask, device), rows


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
