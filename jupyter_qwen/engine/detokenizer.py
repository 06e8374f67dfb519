"""Incremental detokenization with stop strings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPLACEMENT_CHAR = "\ufffd"
CONTEXT_TOKENS = 6


@dataclass(slots=True)
class OutputDetokenizer:
    """Turns a sequence's output tokens into text as they arrive, and finds stop strings.

    A decoded piece is kept back while it ends in a partial UTF-8 character; a
    few tokens before it are decoded along with it so that the tokenizer sees
    the neighbours it would see decoding everything at once. Text that could
    still turn into a stop string is not released until it cannot.
    """

    tokenizer: Any
    stop: list[str] = field(default_factory=list)
    include_stop: bool = False
    skip_special_tokens: bool = True
    token_ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0
    text: str = ""
    released: int = 0
    matched: str | None = None

    @classmethod
    def for_prompt(cls, tokenizer, prompt_ids: list[int], stop: list[str],
                   include_stop: bool = False, skip_special_tokens: bool = True):
        context = list(prompt_ids[-CONTEXT_TOKENS:])
        return cls(tokenizer, list(stop), include_stop, skip_special_tokens, context,
                   0, len(context))

    @property
    def holdback(self) -> int:
        return max(map(len, self.stop), default=1) - 1

    def push(self, token_ids: list[int]) -> bool:
        """Add output tokens; True once a stop string has appeared."""
        self.token_ids.extend(token_ids)
        return self._append(self._decode_new(final=False))

    def finish(self) -> None:
        if self.matched is None:
            self._append(self._decode_new(final=True))

    def take_delta(self, final: bool = False) -> str:
        end = len(self.text)
        if not (final or self.matched is not None):
            end = max(self.released, end - self.holdback)
        delta, self.released = self.text[self.released:end], end
        return delta

    def _decode_new(self, final: bool) -> str:
        decode = self.tokenizer.decode
        seen = decode(self.token_ids[self.prefix_offset:self.read_offset],
                      skip_special_tokens=self.skip_special_tokens)
        full = decode(self.token_ids[self.prefix_offset:],
                      skip_special_tokens=self.skip_special_tokens)
        if not final and (len(full) <= len(seen) or full.endswith(REPLACEMENT_CHAR)):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return full[len(seen):]

    def _append(self, piece: str) -> bool:
        if not piece or self.matched is not None:
            return self.matched is not None
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
