"""Incremental detokenization with stop strings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenizers.decoders import DecodeStream


@dataclass(slots=True)
class OutputDetokenizer:
    """Turns a sequence's output tokens into text as they arrive, and finds stop strings.

    The tokenizer's streaming decoder releases text only once it forms whole UTF-8
    characters, so the pieces add up to decoding all output tokens at once. Text that
    could still turn into a stop string is not released until it cannot.
    """

    backend: Any
    stream: DecodeStream
    stop: list[str] = field(default_factory=list)
    include_stop: bool = False
    text: str = ""
    released: int = 0
    matched: str | None = None

    @classmethod
    def for_output(cls, tokenizer, stop: list[str], include_stop: bool = False,
                   skip_special_tokens: bool = True):
        stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        return cls(tokenizer.backend_tokenizer, stream, list(stop), include_stop)

    @property
    def holdback(self) -> int:
        return max(map(len, self.stop), default=1) - 1

    def push(self, token_ids: list[int]) -> bool:
        """Add output tokens; True once a stop string has appeared."""
        for token_id in token_ids:
            piece = self.stream.step(self.backend, token_id)
            if piece and self._append(piece):
                return True
        return False

    def take_delta(self, final: bool = False) -> str:
        end = len(self.text)
        if not (final or self.matched is not None):
            end = max(self.released, end - self.holdback)
        delta, self.released = self.text[self.released:end], end
        return delta

    def _append(self, piece: str) -> bool:
        if self.matched is not None:
            return True
        start = max(0, len(self.text) - self.holdback)
        self.text += piece
        return bool(self.stop) and self._find_stop(start)

    def _find_stop(self, start: int) -> bool:
        hits = [(index, stop) for stop in self.stop
                if (index := self.text.find(stop, start)) >= 0]
        if not hits:
            return False
        index, stop = min(hits)
        self.matched = stop
        self.text = self.text[:index + (len(stop) if self.include_stop else 0)]
        self.released = min(self.released, len(self.text))
        return True
