"""How ``%%qwen`` shows an answer: reasoning folded and muted, the answer, and a footer.

The answer streams into ONE display (``update_display``), so the saved notebook holds one
output per cell. The footer says how many tokens came, the time to the first one and the
rate; an empty answer says why (reasoning only, or the token limit reached).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

from jupyter_qwen.format import format_latency, format_number

REASONING_STYLE = "color: var(--jp-ui-font-color2, #6a6a6a); font-size: 0.92em"
"""The reasoning reads as a muted aside, not as the answer (where styles are kept)."""
FOOTER_STYLE = "color: var(--jp-ui-font-color2, #6a6a6a)"


@dataclass(slots=True)
class ChatReply:
    """One streamed answer as it arrives: its text, timing and token counts."""

    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    max_tokens: int | None = None
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    ended_at: float | None = None

    def add(self, reasoning: str, content: str, finish_reason: str | None = None) -> None:
        if (reasoning or content) and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.reasoning += reasoning
        self.content += content
        self.finish_reason = finish_reason or self.finish_reason

    def finish(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.ended_at = time.monotonic()
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def tokens_per_s(self) -> float | None:
        if self.completion_tokens is None or self.first_token_at is None or self.ended_at is None:
            return None
        span = self.ended_at - self.first_token_at
        return self.completion_tokens / span if span > 0 else None

    def empty_reason(self) -> str:
        """Why the answer is empty ("" when it is not)."""
        if self.content.strip():
            return ""
        limit = f" ({format_number(self.max_tokens, 0)})" if self.max_tokens else ""
        if self.finish_reason == "length":
            where = "while reasoning" if self.reasoning else "before answering"
            return f"no answer: the token limit{limit} was reached {where}"
        if self.reasoning:
            return "no answer: the model reasoned and ended without answering"
        return "no answer: the model returned nothing"

    def footer(self) -> str:
        tokens = format_number(self.completion_tokens, 0)
        parts = [f"{tokens} tokens", f"first token {format_latency(self.time_to_first_token)}",
                 f"{format_number(self.tokens_per_s)} tok/s"]
        if self.finish_reason == "length":
            parts.append("stopped at the token limit")
        return " · ".join(parts)

    def markdown(self, done: bool = False) -> str:
        """The reply as Markdown: the reasoning folded, the answer, and once done a footer."""
        pieces = []
        if self.reasoning:
            pieces.append(f"<details><summary>Reasoning</summary>\n\n"
                          f'<blockquote style="{REASONING_STYLE}">\n\n'
                          f"{html.escape(self.reasoning)}\n\n</blockquote>\n\n</details>")
        if self.content:
            pieces.append(self.content)
        if done:
            reason = self.empty_reason()
            if reason:
                pieces.append(f"*{reason}*")
            pieces.append(f'<sub style="{FOOTER_STYLE}">{self.footer()}</sub>')
        return "\n\n".join(pieces)

    def text(self, done: bool = False) -> str:
        """The reply as plain text (what a saved notebook shows without Markdown)."""
        pieces = [f"[reasoning]\n{self.reasoning.strip()}\n[/reasoning]"] if self.reasoning else []
        pieces += [self.content] if self.content else []
        if done:
            pieces += [f"({reason})" for reason in [self.empty_reason()] if reason]
            pieces.append(f"({self.footer()})")
        return "\n\n".join(pieces)

    def bundle(self, done: bool = False) -> dict[str, str]:
        return {"text/markdown": self.markdown(done), "text/plain": self.text(done)}
