"""Paged KV-cache blocks: allocation, ref counts and the prefix cache.

Every full block whose keys and values are computed gets a chain hash
(hash of its parent's hash and its own tokens). A later sequence whose prompt
starts with the same full blocks reuses them instead of recomputing. Freed
blocks keep their hash and stay reusable until they are handed out again,
least recently freed first.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from jupyter_qwen.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None


def chain_hash(parent: bytes, token_ids: list[int]) -> bytes:
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block_id: dict[bytes, int] = {}
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Ids of cached blocks holding the longest computed prefix of `seq`.

        The last token is never served from cache: the model must see it to
        produce logits.
        """
        if not self.enable_prefix_caching:
            return []
        self._hash_full_blocks(seq, (seq.num_tokens - 1) // self.block_size)
        cached = []
        for block_hash in seq.block_hashes[:(seq.num_tokens - 1) // self.block_size]:
            block_id = self.hash_to_block_id.get(block_hash)
            if block_id is None:
                break
            cached.append(block_id)
        return cached

    def can_admit(self, seq: Sequence, cached: list[int], num_tokens: int) -> bool:
        cached_but_free = sum(1 for block_id in cached if block_id in self.free_block_ids)
        needed = -(-num_tokens // self.block_size) - len(cached)
        return needed + cached_but_free <= self.num_free_blocks

    def admit(self, seq: Sequence, cached: list[int]) -> None:
        assert not seq.block_table
        for block_id in cached:
            self._take(block_id)
        seq.block_table = list(cached)
        seq.num_hashed_blocks = len(cached)
        seq.num_computed_tokens = len(cached) * self.block_size
        if self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += seq.num_computed_tokens

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the block table of `seq` to hold `num_tokens` tokens."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > self.num_free_blocks:
            return False
        for _ in range(needed):
            seq.block_table.append(self._take_free_block())
        return True

    def cache_full_blocks(self, seq: Sequence, num_computed_tokens: int) -> None:
        """Publish the blocks that are full once `num_computed_tokens` are computed."""
        if not self.enable_prefix_caching:
            return
        num_full = num_computed_tokens // self.block_size
        self._hash_full_blocks(seq, num_full)
        for index in range(seq.num_hashed_blocks, num_full):
            block = self.blocks[seq.block_table[index]]
            block_hash = seq.block_hashes[index]
            if block.hash is None and block_hash not in self.hash_to_block_id:
                block.hash = block_hash
                self.hash_to_block_id[block_hash] = block.block_id
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        self.release(reversed(seq.block_table))
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def pin(self, block_ids: list[int]) -> None:
        for block_id in block_ids:
            self._take(block_id)

    def release(self, block_ids) -> None:
        for block_id in block_ids:
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"block {block_id} released more often than taken"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None
                if block.hash is None:
                    self.free_block_ids.move_to_end(block_id, last=False)

    def reset_prefix_cache(self) -> None:
        for block_id in self.free_block_ids:
            self._forget_hash(self.blocks[block_id])

    def _hash_full_blocks(self, seq: Sequence, num_full: int) -> None:
        for index in range(len(seq.block_hashes), num_full):
            parent = seq.block_hashes[-1] if seq.block_hashes else b""
            seq.block_hashes.append(chain_hash(parent, seq.block_tokens(index, self.block_size)))

    def _take(self, block_id: int) -> None:
        self.blocks[block_id].ref_count += 1
        self.free_block_ids.pop(block_id, None)

    def _take_free_block(self) -> int:
        block_id, _ = self.free_block_ids.popitem(last=False)
        block = self.blocks[block_id]
        self._forget_hash(block)
        block.ref_count = 1
        return block_id

    def _forget_hash(self, block: Block) -> None:
        if block.hash is not None and self.hash_to_block_id.get(block.hash) == block.block_id:
            del self.hash_to_block_id[block.hash]
        block.hash = None
