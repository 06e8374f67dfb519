"""The Responses API's input, tools and tool_choice as a chat completion request.

Each input item becomes a chat message; an error in one names its place in the request
(`input.N.field`), including errors the chat request finds in the messages made of it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jupyter_qwen.server.errors import APIError

TEXT_PART_TYPES = ("input_text", "output_text", "text")


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant", "system", "developer"]
    content: Any = None


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = "{}"


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    call_id: str = Field(min_length=1)
    output: Any


ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": MessageItem, "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem}
SKIPPED_ITEMS = ("reasoning",)
"""Input items read and left out: Qwen3's earlier thinking is not part of later prompts."""


class ChatInput:
    """Chat messages, each with the request path it came from (`input.3`, `instructions`)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.origins: list[str] = []

    def add(self, message: dict[str, Any], origin: str) -> None:
        self.messages.append(message)
        self.origins.append(origin)

    def param(self, chat_param: str | None) -> str | None:
        """The request path of a chat error's `param` (`messages.N...` -> `input.M...`)."""
        parts = (chat_param or "").split(".")
        if parts[0] != "messages" or len(parts) < 2 or not parts[1].isdigit():
            return chat_param
        index = int(parts[1])
        if index >= len(self.origins):
            return "input"
        if self.origins[index].startswith("input."):
            return ".".join([self.origins[index], *parts[2:]])
        return self.origins[index]


def read_input(items: str | list[dict[str, Any]], into: ChatInput) -> None:
    """Add the request's input to `into` as chat messages."""
    if isinstance(items, str):
        into.add({"role": "user", "content": items}, "input")
        return
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        if kind in SKIPPED_ITEMS:
            continue
        model = ITEM_MODELS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise APIError(400, f"input items of type {kind!r} are not supported: message, "
                           "function_call, function_call_output and reasoning items only",
                           param=f"input.{index}.type")
        _add_item(_validated(model, item, f"input.{index}"), into, f"input.{index}")


def _validated(model: type[BaseModel], item: dict[str, Any], path: str) -> BaseModel:
    try:
        return model.model_validate(item)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first.get("loc", ()))
        param = f"{path}.{location}" if location else path
        raise APIError(400, f"invalid input item {param}: {first.get('msg')}",
                       param=param) from None


def _add_item(item: BaseModel, into: ChatInput, path: str) -> None:
    if isinstance(item, MessageItem):
        into.add({"role": item.role, "content": _content(item.content, f"{path}.content")}, path)
    elif isinstance(item, FunctionCallItem):
        call = {"id": item.call_id, "type": "function",
                "function": {"name": item.name, "arguments": item.arguments}}
        last = into.messages[-1] if into.messages else None
        if last and last["role"] == "assistant" and not last["content"]:
            into.messages[-1] = {**last, "tool_calls": [*last.get("tool_calls", []), call]}
        else:
            into.add({"role": "assistant", "content": "", "tool_calls": [call]}, path)
    elif isinstance(item, FunctionCallOutputItem):
        into.add({"role": "tool", "tool_call_id": item.call_id,
                  "content": _output_text(item.output, f"{path}.output")}, path)


def _content(content: Any, path: str) -> Any:
    """A message's content as chat content: a string, or text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError(400, "content must be a string or a list of text parts", param=path)
    return [{"type": "text", "text": _part_text(part, f"{path}.{index}")}
            for index, part in enumerate(content)]


def _output_text(output: Any, path: str) -> str:
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise APIError(400, "a function_call_output's output must be a string or a list of "
                       "text parts", param=path)
    return "".join(_part_text(part, f"{path}.{index}") for index, part in enumerate(output))


def _part_text(part: Any, path: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
    if kind not in TEXT_PART_TYPES:
        raise APIError(400, f"content parts of type {kind!r} are not supported: this model "
                       "reads text only", param=path)
    if not isinstance(part.get("text"), str):
        raise APIError(400, "a text content part needs its text", param=f"{path}.text")
    return part["text"]


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Function tools in the chat shape (none for an empty list); any other kind of tool is
    a 400."""
    if not tools:
        return None
    for index, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise APIError(400, f"tools of type {tool.get('type')!r} are not supported: "
                           "function tools only", param=f"tools.{index}.type")
    return [{"type": "function", "function": {
        key: tool[key] for key in ("name", "description", "parameters") if key in tool}}
        for tool in tools]


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """`auto`, `none`, `required` as they are; a named function (`{"type": "function",
    "name": ...}`) in the chat shape; other kinds (allowed_tools, hosted tools) are a 400."""
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") != "function":
        raise APIError(400, f"tool_choice of type {choice.get('type')!r} is not supported: "
                       "'auto', 'none', 'required' or a function", param="tool_choice.type")
    if not isinstance(choice.get("name"), str):
        raise APIError(400, "a function tool_choice needs the function's name",
                       param="tool_choice.name")
    return {"type": "function", "function": {"name": choice["name"]}}


CHAT_TO_RESPONSES_PARAMS = {"tool_choice.function.name": "tool_choice.name",
                            "max_tokens": "max_output_tokens",
                            "response_format": "text.format",
                            "response_format.json_schema": "text.format.schema"}


def responses_param(chat_param: str | None, chat_input: ChatInput) -> str | None:
    """The Responses request path of a chat request's error `param`."""
    if chat_param in CHAT_TO_RESPONSES_PARAMS:
        return CHAT_TO_RESPONSES_PARAMS[chat_param]
    return chat_input.param(chat_param)
