"""Chat prompts in, and Qwen3 output split into reasoning, content and tool calls."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

from jupyter_qwen.server.errors import APIError
from jupyter_qwen.server.protocol import ChatMessage, Tool

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """OpenAI messages as the chat template expects them."""
    rendered = []
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        item: dict = {"role": role, "content": message.text()}
        if message.tool_calls:
            item["tool_calls"] = [{"type": "function", "id": call.id, "function": {
                "name": call.function.name, "arguments": _as_object(call.function.arguments)}}
                for call in message.tool_calls]
        if message.reasoning_content:
            item["reasoning_content"] = message.reasoning_content
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        if message.name:
            item["name"] = message.name
        rendered.append(item)
    return rendered


def render_chat(tokenizer, messages: list[ChatMessage], tools: list[Tool] | None, *,
                add_generation_prompt: bool = True, continue_final_message: bool = False,
                enable_thinking: bool = True) -> list[int]:
    """The prompt's token ids, from the model's chat template. With continue_final_message
    the last message stays open (a prefilled assistant turn the model continues)."""
    try:
        ids = tokenizer.apply_chat_template(
            template_messages(messages), tools=template_tools(tools),
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, tokenize=True, return_dict=False,
            enable_thinking=enable_thinking)
    except Exception as error:
        raise APIError(400, f"could not apply the chat template: {error}",
                       param="messages") from None
    return list(ids)


def template_tools(tools: list[Tool] | None) -> list[dict] | None:
    if not tools:
        return None
    return [tool.model_dump(exclude_none=True) for tool in tools]


def _as_object(arguments):
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except (ValueError, RecursionError):
            return arguments
    return arguments


@dataclass(slots=True)
class ParsedDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


@dataclass(slots=True)
class OutputParser:
    """Splits streamed model text into reasoning, content and tool calls.

    Output that opens with `<think>` is reasoning until `</think>`; with `thinking=False`
    (the prompt closed the think block, as Qwen3's template does when thinking is off) all
    of it is content, tags included, as vLLM's Qwen3 reasoning parser has it. In content,
    `<tool_call>{json}</tool_call>` becomes a tool call when tools are enabled
    and the JSON names a function; anything malformed stays plain content.
    A parser made with `state="reasoning"` starts inside the think block, for a prompt that
    opened it (Thinking-2507's generation prompt): its output is reasoning until `</think>`.
    A piece that might be the start of a tag is held back until it is not.
    White space around the content is trimmed, as a whole response would be.
    With `forced_tools` (a grammar forced the calls: `tool_choice` required or named), a call
    cut short by the token limit is still a tool call, its arguments the JSON text written so
    far, as OpenAI reports a call that `max_tokens` ended: the client sees an unparseable
    call and the "length" finish, never the grammar's markup as content.
    """

    parse_tools: bool = False
    thinking: bool = True
    max_tool_calls: int | None = None  # 1 with parallel_tool_calls false: later calls dropped
    forced_tools: bool = False
    close_search_from: int = 0  # where in a tool block to look for its `</tool_call>`
    state: str = "start"
    pending: str = ""
    held_space: str = ""
    content_started: bool = False
    reasoning_started: bool = False
    num_tool_calls: int = 0

    def feed(self, text: str) -> ParsedDelta:
        self.pending += text
        out = ParsedDelta()
        while self._advance(out, final=False):
            pass
        return out

    def finish(self) -> ParsedDelta:
        out = ParsedDelta()
        while self._advance(out, final=True):
            pass
        cut_call = unfinished_tool_call(self.pending) if self.state == "tool" and \
            self.forced_tools else None
        if cut_call is not None:
            self._add_call(out, cut_call)
        elif self.state == "tool":
            self._emit_content(out, self.pending)
        elif self.state == "reasoning":
            out.reasoning += self.pending
        elif self.pending.strip():
            self._emit_content(out, self.pending)
        self.pending = ""
        return out

    def _advance(self, out: ParsedDelta, final: bool) -> bool:
        return getattr(self, f"_in_{self.state}")(out, final)

    def _in_start(self, out: ParsedDelta, final: bool) -> bool:
        if not self.thinking:
            self.state = "content"
            return True
        stripped = self.pending.lstrip()
        if stripped.startswith(THINK_OPEN):
            self.pending, self.state = stripped[len(THINK_OPEN):], "reasoning"
            return True
        if not final and THINK_OPEN.startswith(stripped):
            return False
        self.state = "content"
        return True

    def _in_reasoning(self, out: ParsedDelta, final: bool) -> bool:
        if not self.reasoning_started:
            self.pending = self.pending.lstrip("\n")
            self.reasoning_started = bool(self.pending)
        index = self.pending.find(THINK_CLOSE)
        if index >= 0:
            out.reasoning += self.pending[:index].rstrip("\n")
            self.pending, self.state = self.pending[index + len(THINK_CLOSE):], "content"
            return True
        safe = len(self.pending) - _partial_tag_length(self.pending, THINK_CLOSE)
        safe = len(self.pending[:safe].rstrip("\n")) if not final else safe
        out.reasoning += self.pending[:safe]
        self.pending = self.pending[safe:]
        return False

    def _in_content(self, out: ParsedDelta, final: bool) -> bool:
        index = self.pending.find(TOOL_OPEN) if self.parse_tools else -1
        if index >= 0:
            self._emit_content(out, self.pending[:index], hold_trailing=True)
            self.pending, self.state = self.pending[index:], "tool"
            return True
        held = _partial_tag_length(self.pending, TOOL_OPEN) if self.parse_tools else 0
        safe = len(self.pending) - held
        self._emit_content(out, self.pending[:safe], hold_trailing=True)
        self.pending = self.pending[safe:]
        return False

    def _in_tool(self, out: ParsedDelta, final: bool) -> bool:
        index = self.pending.find(TOOL_CLOSE, self.close_search_from)
        if index < 0:
            return False
        block = self.pending[:index + len(TOOL_CLOSE)]
        call = parse_tool_call(block[len(TOOL_OPEN):-len(TOOL_CLOSE)])
        if call is None and self.forced_tools:  # the tag inside a JSON string: read on
            self.close_search_from = index + len(TOOL_CLOSE)
            return True
        self.pending, self.state = self.pending[index + len(TOOL_CLOSE):], "content"
        self.close_search_from = 0
        if call is None:
            self._emit_content(out, block, hold_trailing=True)
        else:
            self._add_call(out, call)
        return True

    def _add_call(self, out: ParsedDelta, call: dict) -> None:
        self.held_space = ""
        if self.max_tool_calls is not None and self.num_tool_calls >= self.max_tool_calls:
            return
        call["index"] = self.num_tool_calls
        self.num_tool_calls += 1
        out.tool_calls.append(call)

    def _emit_content(self, out: ParsedDelta, text: str, hold_trailing: bool = False) -> None:
        if not self.content_started:
            text = text.lstrip()
            self.content_started = bool(text)
        if not text:
            return
        body = text.rstrip() if hold_trailing else text
        if body:
            out.content += self.held_space + body
            self.held_space = ""
        self.held_space += text[len(body):]


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


def parse_tool_call(body: str) -> dict | None:
    """The OpenAI tool call in a `<tool_call>` block, or None unless it is JSON naming a
    function whose arguments serialise as strict JSON in UTF-8."""
    try:
        payload = json.loads(body.strip())
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            return None
        arguments = payload.get("arguments", payload.get("parameters", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
        (payload["name"] + arguments).encode()
    except (ValueError, RecursionError):
        return None
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": payload["name"], "arguments": arguments}}


def unfinished_tool_call(block: str) -> dict | None:
    """The call in a `<tool_call>` block that the output ended inside: the name the tool-call
    grammar wrote first, and the arguments' text so far (not JSON); None if no name yet."""
    match = _CALL_HEAD.match(block[len(TOOL_OPEN):])
    if match is None:
        return None
    try:
        name = json.loads(match.group(1))
    except ValueError:
        return None
    arguments = block[len(TOOL_OPEN) + match.end():]
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


_CALL_HEAD = re.compile(r'\s*\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ')


def parse_whole(text: str, parse_tools: bool, thinking: bool = True) -> ParsedDelta:
    parser = OutputParser(parse_tools=parse_tools, thinking=thinking)
    first, last = parser.feed(text), parser.finish()
    return ParsedDelta(first.reasoning + last.reasoning, first.content + last.content,
                       first.tool_calls + last.tool_calls)
