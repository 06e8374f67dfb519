"""/tokenize and /detokenize, in vLLM's shapes: a prompt or chat messages to token ids (and
back), with the server's `max_model_len`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jupyter_qwen.server.chat import render_chat
from jupyter_qwen.server.errors import APIError
from jupyter_qwen.server.protocol import (
    ChatMessage,
    ReasoningEffort,
    Tool,
    check_generation_prompt,
    check_messages,
    check_tools,
)


class TokenizeRequest(BaseModel):
    """vLLM's two tokenize bodies in one: `prompt` (a completion prompt), or `messages` (a
    chat rendered by the model's template, as /v1/chat/completions renders it)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool | None = None
    return_token_strs: bool | None = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[Tool] | None = None
    enable_thinking: bool | None = None
    reasoning_effort: ReasoningEffort | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self):
        if (self.prompt is None) == (self.messages is None):
            raise APIError(400, "give either prompt or messages", param="prompt"
                           if self.prompt is None else "messages")
        if self.messages is not None:
            check_messages(self.messages)
            check_tools(self.tools, None)
            check_generation_prompt(self)
        return self

    def thinking(self, default: bool) -> bool:
        kwargs = self.chat_template_kwargs or {}
        enabled = self.enable_thinking
        if enabled is None and isinstance(kwargs.get("enable_thinking"), bool):
            enabled = kwargs["enable_thinking"]
        if enabled is None and self.reasoning_effort is not None:
            enabled = self.reasoning_effort != "none"
        return default if enabled is None else enabled


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int] = Field(max_length=1 << 20)


def tokenize(tokenizer, body: TokenizeRequest, max_model_len: int,
             default_thinking: bool) -> dict[str, Any]:
    if body.messages is not None:
        ids = render_chat(tokenizer, body.messages, body.tools,
                          add_generation_prompt=body.add_generation_prompt,
                          continue_final_message=body.continue_final_message,
                          enable_thinking=body.thinking(default_thinking))
        if body.add_special_tokens:
            ids = tokenizer.build_inputs_with_special_tokens(ids)
    else:
        add_special = body.add_special_tokens is not False
        ids = tokenizer.encode(body.prompt, add_special_tokens=add_special)
    ids = [int(token) for token in ids]
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids,
            "token_strs": tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs
            else None}


def detokenize(tokenizer, body: DetokenizeRequest) -> dict[str, str]:
    vocab_size = len(tokenizer)
    for index, token in enumerate(body.tokens):
        if not 0 <= token < vocab_size:
            raise APIError(400, f"token id {token} is outside the vocabulary (0 to "
                           f"{vocab_size - 1})", param=f"tokens.{index}")
    return {"prompt": tokenizer.decode(body.tokens)}
