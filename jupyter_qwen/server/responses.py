"""The Responses API, in part: `POST /v1/responses` (not streamed), stored responses
(`GET` / `DELETE /v1/responses/{id}`), and `previous_response_id` continuing a stored
conversation on the KV blocks its session pinned.

Input is a string or message / function_call / function_call_output items; `instructions`,
`max_output_tokens`, `temperature`, `top_p`, `reasoning.effort`, function `tools`. Qwen3's
thinking comes back as a `reasoning` output item. What is not supported yet (streaming,
background runs, structured `text.format`, tools other than functions) is a 400.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jupyter_qwen.server.errors import APIError
from jupyter_qwen.server.fields import check_extra_fields
from jupyter_qwen.server.protocol import ChatCompletionRequest

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
                 seconds: float = STORED_RESPONSE_SECONDS):
        self.limit, self.seconds = limit, seconds
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, response_id: str, item: StoredResponse) -> None:
        self._expire()
        self._items[response_id] = item
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
        deadline = time.time() - self.seconds
        for key in [key for key, item in self._items.items() if item.stored_at < deadline]:
            del self._items[key]


def check_supported(body: ResponsesRequest) -> None:
    if body.stream:
        raise APIError(400, "streamed responses are not supported yet", param="stream")
    if body.background:
        raise APIError(400, "background responses are not supported", param="background")
    text_format = (body.text or {}).get("format") or {"type": "text"}
    if text_format.get("type") != "text":
        raise APIError(400, "only text.format {'type': 'text'} is supported: structured output "
                       "is not supported yet", param="text.format")
    for index, tool in enumerate(body.tools or []):
        if tool.get("type") != "function":
            raise APIError(400, f"tools of type {tool.get('type')!r} are not supported: "
                           "function tools only", param=f"tools.{index}.type")


def input_messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as chat messages."""
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}]
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(body.input):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": _item_text(item, index)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function", "function": {
                "name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": item.get("output")})
        elif kind != "reasoning":
            raise APIError(400, f"input items of type {kind!r} are not supported",
                           param=f"input.{index}.type")
    return messages


def _item_text(item: dict[str, Any], index: int) -> Any:
    content = item.get("content")
    if not isinstance(content, list):
        return content
    parts = []
    for part_index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text",
                                                                  "text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise APIError(400, f"content parts of type {kind!r} are not supported: this "
                           "model reads text only", param=f"input.{index}.content.{part_index}")
        parts.append({"type": "text", "text": part.get("text")})
    return parts


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    return [{"type": "function", "function": {
        key: tool[key] for key in ("name", "description", "parameters") if key in tool}}
        for tool in tools]


async def create_response(handler: CompletionHandler, store: ResponseStore,
                          body: ResponsesRequest, request: Request):
    """The response (a dict), or a JSONResponse naming the ignored fields in its header."""
    from jupyter_qwen.server.completions import _collect, _whole, _with_ignored

    check_supported(body)
    ignored = check_extra_fields(body)
    previous = store.get(body.previous_response_id) if body.previous_response_id else None
    history = list(previous.messages) if previous else []
    if body.instructions is not None:
        history = [m for m in history if m["role"] != "system"]
        history.insert(0, {"role": "system", "content": body.instructions})
    messages = history + input_messages(body)
    response_id = f"resp_{secrets.token_hex(16)}"
    session_id = previous.session_id if previous else f"responses/{response_id}"
    chat = _chat_request(body, messages, session_id)
    engine, _ = handler._prepare(chat)
    thinking = chat.thinking(handler.ctx.default_enable_thinking)
    prompt_ids = handler._chat_prompt(engine, chat, thinking)
    try:
        max_tokens = handler._max_tokens(engine, chat.max_tokens, len(prompt_ids), "input")
    except APIError as error:
        if error.param == "max_tokens":
            error.param = "max_output_tokens"
        raise
    [choice] = handler._submit(engine, chat, [prompt_ids], max_tokens, None, session_id)
    await _collect(request, [choice])
    parsed = _whole(handler._parser(engine, chat, prompt_ids, thinking), choice.text)
    output = _output_items(parsed)
    result = _response_body(body, response_id, output, choice)
    if body.store:
        assistant = {"role": "assistant", "content": parsed.content}
        if parsed.tool_calls:
            assistant["tool_calls"] = [
                {"id": call["id"], "type": "function", "function": call["function"]}
                for call in parsed.tool_calls]
        store.put(response_id, StoredResponse(body=result, messages=[*messages, assistant],
                                              session_id=session_id, stored_at=time.time()))
    return _with_ignored(result, ignored)


def _chat_request(body: ResponsesRequest, messages: list[dict[str, Any]],
                  session_id: str) -> ChatCompletionRequest:
    fields: dict[str, Any] = {
        "model": body.model, "messages": messages, "max_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "tools": chat_tools(body.tools),
        "session_id": session_id}
    if body.reasoning and body.reasoning.effort:
        fields["reasoning_effort"] = body.reasoning.effort
    if isinstance(body.tool_choice, str) and body.tools:
        fields["tool_choice"] = body.tool_choice
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        raise APIError(400, f"invalid input: {first.get('msg')}", param="input") from None


def _output_items(parsed) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if parsed.reasoning:
        items.append({"type": "reasoning", "id": f"rs_{secrets.token_hex(12)}", "summary": [],
                      "content": [{"type": "reasoning_text", "text": parsed.reasoning}]})
    if parsed.content or not parsed.tool_calls:
        items.append({"type": "message", "id": f"msg_{secrets.token_hex(12)}",
                      "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": parsed.content,
                                   "annotations": [], "logprobs": []}]})
    for call in parsed.tool_calls:
        items.append({"type": "function_call", "id": f"fc_{secrets.token_hex(12)}",
                      "call_id": call["id"], "name": call["function"]["name"],
                      "arguments": call["function"]["arguments"], "status": "completed"})
    return items


def _response_body(body: ResponsesRequest, response_id: str, output: list[dict[str, Any]],
                   choice) -> dict[str, Any]:
    truncated = choice.finish_reason == "length"
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "error": None, "model": body.model or "", "output": output,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "previous_response_id": body.previous_response_id, "store": body.store,
        "temperature": body.temperature, "top_p": body.top_p,
        "tools": body.tools or [], "tool_choice": body.tool_choice or "auto",
        "parallel_tool_calls": True, "text": {"format": {"type": "text"}},
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                      "summary": None},
        "metadata": body.metadata or {}, "truncation": "disabled",
        "usage": {"input_tokens": choice.num_prompt_tokens,
                  "input_tokens_details": {"cached_tokens": choice.num_cached_tokens},
                  "output_tokens": choice.num_tokens,
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": choice.num_prompt_tokens + choice.num_tokens}}
