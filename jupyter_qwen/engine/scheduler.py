"""Continuous batching under a per-step token budget, with chunked prefill.

Each step first continues the running sequences, oldest first (a decode
needs one token, an unfinished prefill its next chunk), then admits waiting
sequences in arrival order while budget, `max_num_seqs` and free blocks allow.
When blocks run out, the newest running sequence is preempted: its blocks are
freed and it goes back to the front of the queue to be recomputed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from jupyter_qwen.engine.block_manager import BlockManager
from jupyter_qwen.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def completes_context(self) -> bool:
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int,
                 max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.reclaim_memory: Callable[[int], bool] = lambda num_blocks: False
        self.on_preempt: Callable[[Sequence], None] = lambda seq: None
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.max_num_batched_tokens
        scheduled = self._continue_running(budget)
        budget -= sum(item.num_new_tokens for item in scheduled)
        scheduled += self._admit_waiting(budget)
        return scheduled

    def remove(self, seq: Sequence) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)

    def _continue_running(self, budget: int) -> list[ScheduledSeq]:
        scheduled = []
        queue = deque(self.running)
        self.running = []
        while queue and budget > 0:
            seq = queue.popleft()
            num_new = min(seq.num_uncomputed_tokens, budget)
            if self._make_room(seq, num_new, queue):
                scheduled.append(self._scheduled(seq, num_new))
                self.running.append(seq)
                budget -= num_new
        self.running.extend(queue)
        return scheduled

    def _scheduled(self, seq: Sequence, num_new: int) -> ScheduledSeq:
        """Publish the blocks this step fills, so later admissions in the same step share them.

        Sharing within a step is sound because every layer stores the whole
        step's keys and values before any of its attention reads them.
        """
        target = seq.num_computed_tokens + num_new
        if target // self.block_manager.block_size > seq.num_hashed_blocks:
            self.block_manager.cache_full_blocks(seq, target)
        return ScheduledSeq(seq, num_new)

    def _make_room(self, seq: Sequence, num_new: int, queue: deque[Sequence]) -> bool:
        target = seq.num_computed_tokens + num_new
        if target <= len(seq.block_table) * self.block_manager.block_size:
            return True
        while not self.block_manager.allocate(seq, target):
            if self.reclaim_memory(self.block_manager.blocks_needed(seq, target)):
                continue
            self._preempt(queue.pop() if queue else seq)
            if seq.status is SequenceStatus.WAITING:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        self.on_preempt(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _admit_waiting(self, budget: int) -> list[ScheduledSeq]:
        scheduled = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            cached = self.block_manager.find_cached_prefix(seq)
            num_new = min(seq.num_tokens - len(cached) * self.block_manager.block_size, budget)
            target = len(cached) * self.block_manager.block_size + num_new
            if not self._can_admit(seq, cached, target):
                break
            self.waiting.popleft()
            self.block_manager.admit(seq, cached)
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = seq.num_computed_tokens
            assert self.block_manager.allocate(seq, target)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(self._scheduled(seq, num_new))
            budget -= num_new
        return scheduled

    def _can_admit(self, seq: Sequence, cached: list[int], target: int) -> bool:
        while not self.block_manager.can_admit(seq, cached, target):
            if not self.reclaim_memory(self.block_manager.blocks_needed(seq, target)):
                return False
        return True
