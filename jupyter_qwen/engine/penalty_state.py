"""Token counts for repetition, presence and frequency penalties, kept on the device.

Each running sequence that uses penalties owns one row (a slot) of two buffers: how many times
each token appears in its output, and which tokens its prompt holds. A row is built once from
the sequence's tokens when it is first sampled (or after preemption freed it), then each step
adds the step's sampled tokens in one scatter; nothing is rebuilt from token lists per step.
The buffers are allocated when the first such sequence arrives and grow by doubling, or all at
once by `reserve` (with CUDA graphs, for `max_num_seqs` sequences, before the KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jupyter_qwen.engine.host_copy import long_tensor
from jupyter_qwen.engine.sequence import Sequence


@dataclass(slots=True)
class SlotState:
    slot: int
    num_counted_tokens: int  # how many of the sequence's tokens the row holds


class PenaltyState:
    def __init__(self, vocab_size: int, device: torch.device):
        self.vocab_size = vocab_size
        self.device = device
        self.output_counts: torch.Tensor | None = None  # [capacity, vocab] int32
        self.in_prompt: torch.Tensor | None = None  # [capacity, vocab] bool
        self.owners: dict[Sequence, SlotState] = {}
        self.free_slots: list[int] = []

    @property
    def capacity(self) -> int:
        return 0 if self.output_counts is None else self.output_counts.shape[0]

    @property
    def nbytes(self) -> int:
        """What the buffers hold on the device now."""
        if self.output_counts is None:
            return 0
        return self.output_counts.nbytes + self.in_prompt.nbytes

    def slots(self, seqs: list[Sequence]) -> torch.Tensor:
        """The slot of each sequence, its row brought up to date with the sequence's tokens."""
        return long_tensor(self.slot_numbers(seqs), self.device)

    def slot_numbers(self, seqs: list[Sequence]) -> list[int]:
        """`slots` on the host."""
        slots = []
        for seq in seqs:
            state = self.owners.get(seq)
            if state is None or state.num_counted_tokens != seq.num_tokens:
                state = self._build(seq, state)
            slots.append(state.slot)
        return slots

    def gather(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output counts as float32, seen in prompt or output) for the given slots."""
        counts = self.output_counts.index_select(0, slots)
        seen = self.in_prompt.index_select(0, slots) | (counts > 0)
        return counts.to(torch.float32), seen

    def record(self, seqs: list[Sequence], slots: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Count each sequence's newly sampled token (which the engine appends next)."""
        ones = torch.ones_like(token_ids, dtype=torch.int32)
        self.output_counts.index_put_((slots, token_ids), ones, accumulate=True)
        self.mark_recorded(seqs)

    def mark_recorded(self, seqs: list[Sequence]) -> None:
        """The rows of these sequences now count the token each is about to append."""
        for seq in seqs:
            self.owners[seq].num_counted_tokens = seq.num_tokens + 1

    def release(self, seq: Sequence) -> None:
        state = self.owners.pop(seq, None)
        if state is not None:
            self.free_slots.append(state.slot)

    def _build(self, seq: Sequence, state: SlotState | None) -> SlotState:
        if state is None:
            state = SlotState(self._take_slot(), 0)
            self.owners[seq] = state
        row = state.slot
        self.output_counts[row].zero_()
        self.in_prompt[row].zero_()
        prompt = long_tensor(seq.prompt_token_ids, self.device)
        self.in_prompt[row].index_fill_(0, prompt, True)
        outputs = long_tensor(seq.output_token_ids, self.device)
        self.output_counts[row].index_add_(0, outputs, torch.ones_like(outputs,
                                                                       dtype=torch.int32))
        state.num_counted_tokens = seq.num_tokens
        return state

    def reserve(self, capacity: int) -> None:
        """Allocate rows for `capacity` sequences now, so that the buffers never move while
        at most that many sequences hold a row (captured CUDA graphs read them in place)."""
        if self.capacity < capacity:
            self._grow(capacity)

    def _take_slot(self) -> int:
        if not self.free_slots:
            self._grow()
        return self.free_slots.pop()

    def _grow(self, capacity: int | None = None) -> None:
        old = self.capacity
        new = capacity or max(4, 2 * old)
        counts = torch.zeros(new, self.vocab_size, dtype=torch.int32, device=self.device)
        in_prompt = torch.zeros(new, self.vocab_size, dtype=torch.bool, device=self.device)
        if old:
            counts[:old].copy_(self.output_counts)
            in_prompt[:old].copy_(self.in_prompt)
        self.output_counts, self.in_prompt = counts, in_prompt
        self.free_slots.extend(range(new - 1, old - 1, -1))

    def close(self) -> None:
        self.output_counts = self.in_prompt = None
        self.owners.clear()
        self.free_slots.clear()
