"""The Responses API: `POST /v1/responses`, streamed or not, stored responses (`GET` /
`DELETE /v1/responses/{id}`), and `previous_response_id` continuing a stored conversation on
the KV blocks its session pinned.

A request becomes a chat completion request (response_input.py) and goes through the chat
machinery: the same prompt, sampling, tool_choice rules and output parser. Qwen3's thinking
comes back as a `reasoning` output item (response_output.py). What is not supported
(background runs, structured `text.format`, tools other than functions) is a 400.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jupyter_qwen.server.completions import (
    Choice,
    _abort,
    _collect,
    _stream_error,
    _whole,
    _with_ignored,
)
from jupyter_qwen.server.errors import APIError
from jupyter_qwen.server.fields import check_extra_fields
from jupyter_qwen.server.protocol import ChatCompletionRequest
from jupyter_qwen.server.response_input import (
    ChatInput,
    chat_tool_choice,
    chat_tools,
    read_input,
    responses_param,
)
from jupyter_qwen.server.response_output import ResponseOutput
from jupyter_qwen.server.streaming import streaming_response

if TYPE_CHECKING:
    from starlette.requests import Request

    from jupyter_qwen.server.completions import CompletionHandler

MAX_STORED_RESPONSES = 256
STORED_RESPONSE_SECONDS = 3600.0


class ReasoningOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    background: bool = False
    reasoning: ReasoningOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None


class StoredResponse(BaseModel):
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    session_id: str
    stored_at: float


class ResponseStore:
    """The stored responses of one server: at most MAX_STORED_RESPONSES, each for
    STORED_RESPONSE_SECONDS."""

    def __init__(self, limit: int = MAX_STORED_RESPONSES,
                 seconds: float = STORED_RESPONSE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.seconds, self.clock = limit, seconds, clock
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def put(self, response_id: str, body: dict[str, Any], messages: list[dict[str, Any]],
            session_id: str) -> None:
        self._expire()
        self._items[response_id] = StoredResponse(body=body, messages=messages,
                                                  session_id=session_id, stored_at=self.clock())
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse:
        self._expire()
        item = self._items.get(response_id)
        if item is None:
            raise APIError(404, f"no stored response {response_id!r}", "invalid_request_error",
                           "response_id", code="response_not_found")
        return item

    def delete(self, response_id: str) -> None:
        self.get(response_id)
        del self._items[response_id]

    def _expire(self) -> None:
        deadline = self.clock() - self.seconds
        for key in [key for key, item in self._items.items() if item.stored_at < deadline]:
            del self._items[key]




REFUSED_EXTRAS = {
    "conversation": "conversations are not supported: continue with previous_response_id",
    "prompt": "stored prompt templates are not supported: send the input itself"}
"""Undeclared Responses fields that change the input, refused (400) unless null rather than
ignored: an answer without them would answer another question."""


def check_supported(body: ResponsesRequest) -> None:
    for name, reason in REFUSED_EXTRAS.items():
        if (body.model_extra or {}).get(name) is not None:
            raise APIError(400, f"{reason} ({name})", param=name)
    if body.background:
        raise APIError(400, "background responses are not supported", param="background")


def chat_response_format(text: dict[str, Any] | None) -> dict[str, Any]:
    """`text.format` as chat's `response_format`: the same structured output (a JSON object,
    or a JSON schema the answer must follow)."""
    format_ = (text or {}).get("format") or {"type": "text"}
    kind = format_.get("type") if isinstance(format_, dict) else None
    if kind == "json_schema":
        schema = {key: format_[key] for key in ("name", "schema", "strict", "description")
                  if key in format_}
        return {"type": "json_schema", "json_schema": schema}
    if kind in ("text", "json_object"):
        return {"type": kind}
    raise APIError(400, f"text.format.type must be text, json_object or json_schema; got "
                   f"{kind!r}", param="text.format.type")


@dataclass(slots=True)
class Turn:
    """One response being made: its request, the chat request it became, and its choice."""

    body: ResponsesRequest
    response_id: str
    created_at: int
    model: str
    chat_input: ChatInput
    session_id: str | None
    choice: Choice

    def response(self, output: list[dict[str, Any]], status: str) -> dict[str, Any]:
        """The response object, `in_progress` (no usage yet) or finished."""
        body, choice = self.body, self.choice
        finished = status != "in_progress"
        usage = {"input_tokens": choice.num_prompt_tokens,
                 "input_tokens_details": {"cached_tokens": choice.num_cached_tokens,
                                          "cache_write_tokens": 0},
                 "output_tokens": choice.num_tokens,
                 "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": choice.num_prompt_tokens + choice.num_tokens}
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at,
            "status": status,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete" else None,
            "error": None, "model": self.model, "output": output,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "previous_response_id": body.previous_response_id, "store": body.store,
            "temperature": body.temperature, "top_p": body.top_p,
            "tools": body.tools or [], "tool_choice": body.tool_choice or "auto",
            "parallel_tool_calls": True, "text": {"format": {"type": "text"}},
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                          "summary": None},
            "metadata": body.metadata or {}, "truncation": "disabled",
            "usage": usage if finished else None}

    def finish(self, output: ResponseOutput, store: ResponseStore) -> dict[str, Any]:
        """The finished response, stored with its conversation when the request asks."""
        status = "incomplete" if self.choice.finish_reason == "length" else "completed"
        result = self.response(output.items, status)
        if self.body.store:
            store.put(self.response_id, result,
                      [*self.chat_input.messages, output.assistant_message()], self.session_id)
        return result


async def create_response(handler: CompletionHandler, store: ResponseStore,
                          body: ResponsesRequest, request: Request):
    """The response (a dict, or an event stream), with the ignored fields in a header."""
    check_supported(body)
    ignored = check_extra_fields(body)
    turn = await _start(handler, store, body)
    if body.stream:
        return _with_ignored(streaming_response(_events(turn, store), named=True), ignored)
    await _collect(request, [turn.choice])
    output = ResponseOutput()
    output.add(_whole(turn.choice.parser, turn.choice.text))
    output.finish()
    return _with_ignored(turn.finish(output, store), ignored)


async def _start(handler: CompletionHandler, store: ResponseStore,
                 body: ResponsesRequest) -> Turn:
    """Read the request as a chat request and submit it."""
    previous = store.get(body.previous_response_id) if body.previous_response_id else None
    chat_input = ChatInput()
    for message in previous.messages if previous else []:
        if body.instructions is None or message["role"] != "system":
            chat_input.add(dict(message), "previous_response_id")
    if body.instructions is not None:
        chat_input.messages.insert(0, {"role": "system", "content": body.instructions})
        chat_input.origins.insert(0, "instructions")
    read_input(body.input, chat_input)
    response_id = f"resp_{secrets.token_hex(16)}"
    session_id = previous.session_id if previous else (
        f"responses/{response_id}" if body.store else None)
    chat = _chat_request(body, chat_input, session_id)
    try:
        engine, _ = handler._prepare(chat)
        thinking = chat.thinking(handler.ctx.default_enable_thinking)
        prompt_ids = handler._chat_prompt(engine, chat, thinking)
        max_tokens = handler._max_tokens(engine, chat.max_tokens, len(prompt_ids), "input")
        [choice] = await handler.submit_chat(engine, chat, prompt_ids, max_tokens, None,
                                             session_id, thinking)
    except APIError as error:
        error.param = responses_param(error.param, chat_input)
        raise
    return Turn(body, response_id, int(time.time()), body.model or handler.ctx.served_model_name,
                chat_input, session_id, choice)


def _chat_request(body: ResponsesRequest, chat_input: ChatInput,
                  session_id: str | None) -> ChatCompletionRequest:
    fields: dict[str, Any] = {
        "model": body.model, "messages": chat_input.messages,
        "max_tokens": body.max_output_tokens, "temperature": body.temperature,
        "top_p": body.top_p, "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice), "session_id": session_id,
        "response_format": chat_response_format(body.text)}
    if body.reasoning and body.reasoning.effort:
        fields["reasoning_effort"] = body.reasoning.effort
    try:
        return ChatCompletionRequest.model_validate(fields)
    except APIError as error:
        error.param = responses_param(error.param, chat_input)
        raise
    except ValidationError as error:
        if any(str(part) == "response_format" for part in error.errors()[0].get("loc", ())):
            raise APIError(400, f"invalid text.format: {error.errors()[0].get('msg')}",
                           param="text.format") from None
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ())]
        param = responses_param(".".join(location[:2]), chat_input) if location else "input"
        raise APIError(400, f"invalid input: {first.get('msg')}", param=param) from None


async def _events(turn: Turn, store: ResponseStore) -> AsyncIterator[dict[str, Any]]:
    """The response's stream: created, in_progress, the output's events, then completed (or
    incomplete, when max_output_tokens cut it short); an `error` event if it fails."""
    output, choice = ResponseOutput(), turn.choice
    try:
        for kind in ("response.created", "response.in_progress"):
            yield output.event(kind, response=turn.response([], "in_progress"))
        async for piece in choice.stream:
            choice.add(piece)
            for event in output.add(choice.parser.feed(piece.new_text)):
                yield event
            if piece.finished:
                for event in output.add(choice.parser.finish()):
                    yield event
        for event in output.finish():
            yield event
        result = turn.finish(output, store)
        yield output.event(f"response.{result['status']}", response=result)
    except Exception as error:
        failure = _stream_error(error)["error"]
        yield output.event("error", code=str(failure["code"]), message=failure["message"],
                           param=failure["param"])
    finally:
        _abort([choice])
