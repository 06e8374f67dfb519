"""Request bodies of the OpenAI-compatible routes, with the Qwen3 extras."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jupyter_qwen.sampling_params import MAX_SEED
from jupyter_qwen.server.errors import APIError

QWEN_EXTRAS = ("enable_thinking", "return_reasoning", "session_id", "top_k", "min_p",
               "repetition_penalty", "ignore_eos", "thinking_token_budget")
MAX_STOP_STRINGS = 16


class TextPart(BaseModel):
    """A content part. Any type parses, so that a part this text-only model cannot read
    (an image, audio) gets a 400 naming its place (`check_messages`)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text or "" for part in self.content)
        return self.content or ""


def check_messages(messages: list[ChatMessage]) -> None:
    """400 for a content part that is not text, with `param` naming it."""
    for index, message in enumerate(messages):
        for part_index, part in enumerate(message.content if isinstance(
                message.content, list) else ()):
            param = f"messages.{index}.content.{part_index}"
            if part.type != "text":
                raise APIError(400, f"content parts of type {part.type!r} are not supported: "
                               "this model reads text only", param=param)
            if part.text is None:
                raise APIError(400, "a text content part needs its text", param=f"{param}.text")


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str = Field(min_length=1)


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


def check_tools(tools: list[Tool] | None, choice) -> None:
    """vLLM's rules: no empty `tools`; a `tool_choice` other than "none" needs tools, and a
    named one must name one of them."""
    if tools is not None and not tools:
        raise APIError(400, "tools must not be an empty list: give at least one tool or leave "
                       "the field out", param="tools")
    if choice is None or choice == "none":
        return
    if not tools:
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {
            tool.function.name for tool in tools}:
        raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not one of "
                       "the tools", param="tool_choice.function.name")


def check_generation_prompt(body) -> None:
    """Both may not be true; continue_final_message alone turns the generation prompt off."""
    if not body.continue_final_message:
        return
    if "add_generation_prompt" in body.model_fields_set and body.add_generation_prompt:
        raise APIError(400, "continue_final_message and add_generation_prompt cannot both be "
                       "true", param="continue_final_message")
    body.add_generation_prompt = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


Seed = Annotated[int, Field(ge=-1, le=MAX_SEED)]
"""-1 asks for a random seed, as no seed does."""
NULL_IS_DEFAULT = ("n", "stream", "presence_penalty", "frequency_penalty", "logprobs", "echo",
                   "max_tokens", "include_reasoning")
"""Fields whose `null` means their default (as vLLM reads them), not an error."""


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    user: str | None = None
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool | None = None
    session_id: str | None = Field(None, min_length=1, max_length=256)
    logit_bias: dict[str, float] | None = None
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    thinking_token_budget: int | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        if not isinstance(data, dict):
            return data
        return {key: value for key, value in data.items()
                if value is not None or key not in NULL_IS_DEFAULT}

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        options = self.stream_options
        if options is not None and (options.model_fields_set or options.model_extra) \
                and not self.stream:
            raise APIError(400, "stream_options can only be given when stream is true",
                           param="stream_options")
        return self

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS or not all(stops):
            raise ValueError(f"stop takes up to {MAX_STOP_STRINGS} non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def random_seed(self) -> bool:
        return self.seed is None or self.seed == -1


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    enable_thinking: bool | None = None
    return_reasoning: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: ReasoningEffort | None = None
    include_reasoning: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    @model_validator(mode="before")
    @classmethod
    def _lift_template_extras(cls, data):
        """Qwen3 extras given in chat_template_kwargs count as top-level fields (validated as
        such) unless the top level sets them."""
        kwargs = data.get("chat_template_kwargs") if isinstance(data, dict) else None
        if not isinstance(kwargs, dict):
            return data
        lifted = {name: kwargs[name] for name in QWEN_EXTRAS
                  if name in kwargs and data.get(name) is None}
        return data | lifted

    @model_validator(mode="after")
    def _check_fields_together(self):
        check_messages(self.messages)
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
        check_tools(self.tools, self.tool_choice)
        check_generation_prompt(self)
        return self

    def thinking(self, default: bool | None) -> bool | None:
        """Whether the chat template opens a think block: enable_thinking (top level or in
        chat_template_kwargs), else reasoning_effort ("none" is off), else the default."""
        if self.enable_thinking is not None:
            return self.enable_thinking
        if self.reasoning_effort is not None:
            return self.reasoning_effort != "none"
        return default

    @property
    def keep_reasoning(self) -> bool:
        return self.include_reasoning and self.return_reasoning is not False


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False

    @model_validator(mode="after")
    def _echo_only_without_tokens(self):
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens must be at least 1 (0 only with echo, which returns "
                           "the prompt)", param="max_tokens")
        return self

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt):
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be empty")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(item, int) for item in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)
