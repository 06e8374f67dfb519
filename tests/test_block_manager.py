"""Block manager and scheduler, driven directly (no model)."""

import pytest

from jupyter_qwen.engine.block_manager import BlockManager
from jupyter_qwen.engine.scheduler import Scheduler
from jupyter_qwen.engine.sequence import Sequence, SequenceStatus
from jupyter_qwen.sampling_params import SamplingParams

BLOCK = 4


def make_seq(tokens, request_id="r"):
    return Sequence(request_id, list(tokens), SamplingParams())


def compute(bm: BlockManager, seq: Sequence, upto: int | None = None) -> None:
    """Pretend the model computed `seq` up to `upto` tokens."""
    upto = seq.num_tokens if upto is None else upto
    assert bm.allocate(seq, upto)
    bm.cache_full_blocks(seq, upto)
    seq.num_computed_tokens = upto


def admit(bm: BlockManager, seq: Sequence) -> list[int]:
    cached = bm.find_cached_prefix(seq)
    bm.admit(seq, cached)
    return cached


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, BLOCK)
    seq = make_seq(range(10))
    admit(bm, seq)
    compute(bm, seq)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    assert all(bm.blocks[b].ref_count == 1 for b in seq.block_table)
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == []


def test_shared_prefix_reuses_computed_blocks_and_never_the_last_token():
    bm = BlockManager(16, BLOCK)
    first = make_seq(range(12), "a")
    admit(bm, first)
    compute(bm, first)
    second = make_seq([*range(12), 99], "b")
    assert admit(bm, second) == first.block_table[:3]
    assert second.num_computed_tokens == 12
    assert all(bm.blocks[b].ref_count == 2 for b in first.block_table)
    same = make_seq(range(12), "c")
    assert admit(bm, same) == first.block_table[:2], "the last token must be recomputed"
    assert bm.prefix_cache_queries == 12 + 13 + 12 and bm.prefix_cache_hits == 0 + 12 + 8


def test_different_parent_breaks_the_chain():
    bm = BlockManager(16, BLOCK)
    first = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    admit(bm, first)
    compute(bm, first)
    other = make_seq([0, 2, 3, 4, 5, 6, 7, 8, 9], "b")
    assert admit(bm, other) == []


def test_partially_computed_blocks_are_not_published():
    bm = BlockManager(16, BLOCK)
    first = make_seq(range(12), "a")
    admit(bm, first)
    compute(bm, first, upto=6)
    second = make_seq(range(13), "b")
    assert admit(bm, second) == first.block_table[:1]


def test_freed_blocks_stay_cached_and_are_evicted_least_recently_freed_first():
    bm = BlockManager(6, BLOCK)
    old, new = make_seq(range(8), "old"), make_seq(range(100, 108), "new")
    for seq in (old, new):
        admit(bm, seq)
        compute(bm, seq)
    old_blocks, new_blocks = list(old.block_table), list(new.block_table)
    bm.free(old)
    bm.free(new)
    hungry = make_seq(range(200, 216), "hungry")
    admit(bm, hungry)
    assert bm.allocate(hungry, 12)
    assert hungry.block_table[2] == old_blocks[1], "a sequence's tail is evicted before its head"
    assert bm.allocate(hungry, 16)
    assert set(hungry.block_table) == set(range(6)) - set(new_blocks)
    again = make_seq([*range(100, 108), 1], "again")
    assert admit(bm, again) == new_blocks


def test_uncached_free_blocks_are_handed_out_before_cached_ones():
    bm = BlockManager(4, BLOCK)
    cached = make_seq(range(8), "cached")
    admit(bm, cached)
    compute(bm, cached)
    bm.free(cached)
    seq = make_seq(range(50, 58), "x")
    admit(bm, seq)
    assert bm.allocate(seq, 8)
    assert not set(seq.block_table) & set(cached.block_table)


def test_pin_keeps_blocks_out_of_the_free_pool():
    bm = BlockManager(4, BLOCK)
    seq = make_seq(range(8))
    admit(bm, seq)
    compute(bm, seq)
    pinned = list(seq.block_table)
    bm.pin(pinned)
    bm.free(seq)
    assert bm.num_free_blocks == 2
    again = make_seq([*range(8), 5], "again")
    assert admit(bm, again) == pinned
    bm.free(again)
    bm.release(pinned)
    assert bm.num_free_blocks == 4
    with pytest.raises(AssertionError):
        bm.release(pinned)


def test_can_admit_counts_cached_free_blocks_as_used():
    bm = BlockManager(3, BLOCK)
    seq = make_seq(range(8))
    admit(bm, seq)
    compute(bm, seq)
    bm.free(seq)
    again = make_seq([*range(8), 1, 2, 3, 4, 5], "again")
    cached = bm.find_cached_prefix(again)
    assert len(cached) == 2
    assert bm.can_admit(again, cached, 12)
    assert not bm.can_admit(again, cached, 13)


def test_disabled_prefix_cache_never_hits():
    bm = BlockManager(8, BLOCK, enable_prefix_caching=False)
    first = make_seq(range(12), "a")
    admit(bm, first)
    compute(bm, first)
    assert admit(bm, make_seq(range(13), "b")) == []
    assert bm.hash_to_block_id == {}


def run_schedule(scheduler: Scheduler):
    scheduled = scheduler.schedule()
    for item in scheduled:
        item.seq.num_computed_tokens += item.num_new_tokens
        if item.seq.num_computed_tokens == item.seq.num_tokens:
            item.seq.token_ids.append(1)
    return scheduled


def test_scheduler_respects_budget_and_max_num_seqs():
    bm = BlockManager(100, BLOCK)
    scheduler = Scheduler(bm, max_num_seqs=3, max_num_batched_tokens=10)
    seqs = [make_seq(range(i * 100, i * 100 + 7), str(i)) for i in range(5)]
    for seq in seqs:
        scheduler.add(seq)
    first = run_schedule(scheduler)
    assert [(i.seq.request_id, i.num_new_tokens) for i in first] == [("0", 7), ("1", 3)]
    second = run_schedule(scheduler)
    assert [(i.seq.request_id, i.num_new_tokens) for i in second] == [
        ("0", 1), ("1", 4), ("2", 5)]
    assert len(scheduler.running) == 3 and [s.request_id for s in scheduler.waiting] == ["3", "4"]


def test_scheduler_is_fifo_and_does_not_let_small_requests_jump_the_queue():
    bm = BlockManager(6, BLOCK)
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    running = make_seq(range(12), "running")
    big = make_seq(range(100, 116), "big")
    small = make_seq(range(200, 202), "small")
    for seq in (running, big, small):
        scheduler.add(seq)
    scheduled = run_schedule(scheduler)
    assert [i.seq.request_id for i in scheduled] == ["running"]
    assert [s.request_id for s in scheduler.waiting] == ["big", "small"]


def test_scheduler_preempts_the_newest_and_requeues_it_first():
    bm = BlockManager(4, BLOCK)
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    older, newer = make_seq(range(8), "older"), make_seq(range(100, 107), "newer")
    scheduler.add(older)
    scheduler.add(newer)
    run_schedule(scheduler)
    assert bm.num_free_blocks == 0
    reclaim_calls = []
    scheduler.reclaim_memory = lambda n: reclaim_calls.append(n) or False
    scheduled = run_schedule(scheduler)
    assert [i.seq.request_id for i in scheduled] == ["older"]
    assert reclaim_calls[0] == 1, "memory is reclaimed before anyone is preempted"
    assert newer.status is SequenceStatus.WAITING and newer.num_computed_tokens == 0
    assert scheduler.waiting[0] is newer and scheduler.num_preemptions == 1


def test_scheduler_uses_reclaimed_memory_before_preempting():
    bm = BlockManager(4, BLOCK)
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    pinned_owner = make_seq(range(50, 58), "pinned")
    admit(bm, pinned_owner)
    compute(bm, pinned_owner)
    pinned = list(pinned_owner.block_table)
    bm.pin(pinned)
    bm.free(pinned_owner)
    seq = make_seq(range(8), "seq")
    scheduler.add(seq)
    run_schedule(scheduler)

    def reclaim(num_blocks):
        if not pinned:
            return False
        bm.release(pinned)
        pinned.clear()
        return True

    scheduler.reclaim_memory = reclaim
    scheduled = run_schedule(scheduler)
    assert [i.seq.request_id for i in scheduled] == ["seq"] and scheduler.num_preemptions == 0
