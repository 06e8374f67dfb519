"""Sessions: a conversation's latest KV blocks stay pinned for a while after each turn."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from jupyter_qwen.engine.block_manager import BlockManager
from jupyter_qwen.engine.sequence import Sequence

DEFAULT_SESSION_TTL = 600.0


@dataclass(slots=True)
class Session:
    session_id: str
    block_ids: list[int]
    num_tokens: int
    expires_at: float
    turns: int = 1

    def to_dict(self, now: float) -> dict:
        return {"id": self.session_id, "num_cached_tokens": self.num_tokens,
                "num_blocks": len(self.block_ids), "turns": self.turns,
                "expires_in": round(max(0.0, self.expires_at - now), 3)}


class SessionStore:
    """Pins each session's computed blocks until its TTL runs out, oldest released first."""

    def __init__(self, block_manager: BlockManager, ttl: float = DEFAULT_SESSION_TTL,
                 clock: Callable[[], float] = time.monotonic):
        self.block_manager = block_manager
        self.ttl = ttl
        self.clock = clock
        self.sessions: OrderedDict[str, Session] = OrderedDict()

    def keep(self, seq: Sequence) -> None:
        """Pin the computed full blocks of a finished turn, replacing the previous pin."""
        block_ids = seq.block_table[:seq.num_hashed_blocks]
        self.block_manager.pin(block_ids)
        previous = self.sessions.pop(seq.session_id, None)
        if previous:
            self.block_manager.release(previous.block_ids)
        self.sessions[seq.session_id] = Session(
            seq.session_id, list(block_ids), len(block_ids) * self.block_manager.block_size,
            self.clock() + self.ttl, previous.turns + 1 if previous else 1)

    def drop(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session:
            self.block_manager.release(session.block_ids)
        return session is not None

    def expire(self) -> int:
        now = self.clock()
        expired = [sid for sid, session in self.sessions.items() if session.expires_at <= now]
        for session_id in expired:
            self.drop(session_id)
        return len(expired)

    def release_oldest(self, num_blocks: int) -> bool:
        """Unpin sessions, oldest first, until `num_blocks` blocks could be freed."""
        freed = 0
        while self.sessions and freed < num_blocks:
            session_id = next(iter(self.sessions))
            freed += len(self.sessions[session_id].block_ids)
            self.drop(session_id)
        return freed > 0

    def clear(self) -> None:
        for session_id in list(self.sessions):
            self.drop(session_id)

    def list(self) -> list[dict]:
        now = self.clock()
        return [session.to_dict(now) for session in self.sessions.values()]
