"""A response's output items, built from Qwen3's parsed output, and the stream events that
announce them in OpenAI's order.

Reasoning becomes a `reasoning` item (one `reasoning_text` part), content a `message` item
(one `output_text` part), each tool call a `function_call` item. Streamed or not, a response
is built the same way: the whole answer is one piece of parsed output, a stream many.
"""

from __future__ import annotations

import secrets
from typing import Any

from jupyter_qwen.server.chat import ParsedDelta

TEXT_ITEMS = {
    "reasoning": ("rs", "reasoning_text", "response.reasoning_text"),
    "message": ("msg", "output_text", "response.output_text"),
}
"""Item type -> (id prefix, its content part's type, the prefix of its text events)."""


class ResponseOutput:
    """Output items, and the numbered events that built them (`event` numbers every event of
    a stream, the response's own lifecycle events included)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.next_sequence = 0
        self._open: dict[str, Any] | None = None
        self._open_text = ""

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.next_sequence, **fields}
        self.next_sequence += 1
        return event

    def add(self, parsed: ParsedDelta) -> list[dict[str, Any]]:
        """The events for one piece of parsed output: reasoning, then content, then calls."""
        events: list[dict[str, Any]] = []
        if parsed.reasoning:
            events += self._text("reasoning", parsed.reasoning)
        if parsed.content:
            events += self._text("message", parsed.content)
        for call in parsed.tool_calls:
            events += self._function_call(call)
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close the open item. An answer with neither content nor tool calls still gets its
        (empty) message."""
        events = self._close()
        if not any(item["type"] in ("message", "function_call") for item in self.items):
            events += self._text("message", "") + self._close()
        return events

    def assistant_message(self) -> dict[str, Any]:
        """The answer as a chat message, for the stored conversation."""
        texts = [item["content"][0]["text"] for item in self.items if item["type"] == "message"]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        calls = [{"id": item["call_id"], "type": "function",
                  "function": {"name": item["name"], "arguments": item["arguments"]}}
                 for item in self.items if item["type"] == "function_call"]
        if calls:
            message["tool_calls"] = calls
        return message

    def _text(self, kind: str, text: str) -> list[dict[str, Any]]:
        events = []
        if self._open is None or self._open["type"] != kind:
            events += self._close() + self._start(kind)
        self._open_text += text
        if text:
            events.append(self.event(f"{TEXT_ITEMS[kind][2]}.delta", **self._where(),
                                     content_index=0, delta=text,
                                     **({"logprobs": []} if kind == "message" else {})))
        return events

    def _start(self, kind: str) -> list[dict[str, Any]]:
        prefix = TEXT_ITEMS[kind][0]
        item: dict[str, Any] = {"type": kind, "id": f"{prefix}_{secrets.token_hex(12)}"}
        if kind == "message":
            item |= {"status": "in_progress", "role": "assistant", "content": []}
        else:
            item |= {"summary": [], "content": []}
        self._open, self._open_text = item, ""
        self.items.append(item)
        return [self.event("response.output_item.added", output_index=len(self.items) - 1,
                           item=_copy(item)),
                self.event("response.content_part.added", **self._where(), content_index=0,
                           part=self._part(kind, ""))]

    def _close(self) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        kind, text = item["type"], self._open_text
        part = self._part(kind, text)
        item["content"] = [part]
        if kind == "message":
            item["status"] = "completed"
        extra = {"logprobs": []} if kind == "message" else {}
        events = [self.event(f"{TEXT_ITEMS[kind][2]}.done", **self._where(), content_index=0,
                             text=text, **extra),
                  self.event("response.content_part.done", **self._where(), content_index=0,
                             part=_copy(part)),
                  self.event("response.output_item.done", output_index=len(self.items) - 1,
                             item=_copy(item))]
        self._open = None
        return events

    def _function_call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        arguments = call["function"]["arguments"]
        item = {"type": "function_call", "id": f"fc_{secrets.token_hex(12)}",
                "call_id": call["id"], "name": call["function"]["name"], "arguments": "",
                "status": "in_progress"}
        self.items.append(item)
        where = {"output_index": len(self.items) - 1, "item_id": item["id"]}
        events.append(self.event("response.output_item.added", output_index=where[
            "output_index"], item=_copy(item)))
        item |= {"arguments": arguments, "status": "completed"}
        return [*events,
                self.event("response.function_call_arguments.delta", **where, delta=arguments),
                self.event("response.function_call_arguments.done", **where,
                           arguments=arguments),
                self.event("response.output_item.done", output_index=where["output_index"],
                           item=_copy(item))]

    def _where(self) -> dict[str, Any]:
        return {"output_index": len(self.items) - 1, "item_id": self.items[-1]["id"]}

    @staticmethod
    def _part(kind: str, text: str) -> dict[str, Any]:
        if kind == "message":
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": text}


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of an item as it is now (events must not change as the item grows)."""
    return {key: list(item) if isinstance(item, list) else item
            for key, item in value.items()}
