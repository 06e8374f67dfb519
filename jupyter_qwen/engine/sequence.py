"""The state of one request as it moves through the engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from jupyter_qwen.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(slots=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]
    params: SamplingParams
    num_prompt_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    num_hashed_blocks: int = 0
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    finish_reason: str | None = None
    output_text: str = ""
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    generator: Any = None  # unused: seeded draws are keyed by the seed and num_draws
    num_draws: int = 0
    detokenizer: Any = None
    constraint: Any = None  # a SequenceConstraint (structured output, thinking budget)
    session_id: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def block_tokens(self, index: int, block_size: int) -> list[int]:
        return self.token_ids[index * block_size:(index + 1) * block_size]

    def running_figures(self, now: float) -> dict[str, Any]:
        """One row of `engine["running"]` in `/health`, `now` on `time.monotonic()`'s clock."""
        return {"request_id": self.request_id,
                "state": "running" if self.status is SequenceStatus.RUNNING else "waiting",
                "age_s": round(max(0.0, now - self.arrival_time), 3),
                "prompt_tokens": self.num_prompt_tokens,
                "cached_tokens": self.num_cached_tokens,
                "generated_tokens": self.num_output_tokens, "session": self.session_id}

    def reset_for_recompute(self) -> None:
        self.block_table = []
        self.num_hashed_blocks = 0
        self.num_computed_tokens = 0
        self.num_preemptions += 1
        self.status = SequenceStatus.WAITING
