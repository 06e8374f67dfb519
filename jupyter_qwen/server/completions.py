"""Chat and text completions: requests to engine streams, engine outputs to OpenAI responses."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse, Response

from jupyter_qwen.engine.async_engine import AsyncEngine, RequestStream
from jupyter_qwen.engine.llm_engine import RequestOutput
from jupyter_qwen.engine.sequence import TokenLogprobs
from jupyter_qwen.sampling_params import SamplingParams, StructuredOutputs
from jupyter_qwen.server.chat import OutputParser, ParsedDelta, render_chat
from jupyter_qwen.server.errors import APIError, engine_error
from jupyter_qwen.server.fields import (
    IGNORED_FIELDS_HEADER,
    check_extra_fields,
    ignored_fields_header,
)
from jupyter_qwen.server.metrics import RequestTimer
from jupyter_qwen.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from jupyter_qwen.server.streaming import streaming_response
from jupyter_qwen.server.structured import (
    compile_constraint,
    constraint_param,
    request_constraint,
)
from jupyter_qwen.server.variants import (
    WARNING_HEADER,
    output_parser,
    reply_start,
    thinking_warning,
)

if TYPE_CHECKING:
    from starlette.requests import Request

    from jupyter_qwen.server.context import ServerContext

log = logging.getLogger("jupyter_qwen.server")
DISCONNECT_POLL_SECONDS = 0.25


@dataclass(slots=True)
class Choice:
    """One choice of a response, as its engine outputs arrive."""

    index: int
    stream: RequestStream
    timer: RequestTimer
    parser: OutputParser | None = None
    text: str = ""
    num_tokens: int = 0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, output: RequestOutput) -> None:
        self.text += output.new_text
        self.num_tokens += len(output.new_token_ids)
        self.num_prompt_tokens = output.num_prompt_tokens
        self.num_cached_tokens = output.num_cached_tokens
        self.logprobs += output.new_logprobs
        self.timer.tokens(len(output.new_token_ids))
        if output.finished:
            self.finish_reason = output.finish_reason
            self.timer.done(output.finish_reason)


class CompletionHandler:
    def __init__(self, ctx: ServerContext):
        self.ctx = ctx
        self._token_texts: dict[int, str] = {}

    async def chat(self, body: ChatCompletionRequest, request: Request):
        engine, ignored = self._prepare(body)
        thinking = body.thinking(self.ctx.default_enable_thinking)
        prompt_ids = self._chat_prompt(engine, body, thinking)
        max_tokens = self._max_tokens(engine, body.max_completion_tokens or body.max_tokens,
                                      len(prompt_ids), "messages")
        num_top = (body.top_logprobs or 0) if body.logprobs else None
        warning = thinking_warning(self.ctx.chat_variant, body.thinking(None))
        choices = await self.submit_chat(engine, body, prompt_ids, max_tokens, num_top,
                                         body.session_id, thinking)
        keep_reasoning = body.keep_reasoning
        if body.stream:
            return _with_ignored(streaming_response(
                self._chat_events(body, choices, keep_reasoning)), ignored, warning)
        await _collect(request, choices)
        return _with_ignored(self._chat_response(body, choices, keep_reasoning), ignored,
                             warning)

    async def submit_chat(self, engine: AsyncEngine, body: ChatCompletionRequest,
                          prompt_ids: list[int], max_tokens: int, num_top: int | None,
                          session_id: str | None, thinking: bool) -> list[Choice]:
        """Submit a chat prompt with its constraint (structured output, tool_choice, the
        thinking budget) and give each choice the parser that starts where the prompt left
        off: chat completions and the Responses API both answer through here."""
        start = reply_start(engine.engine.tokenizer, prompt_ids, self.ctx.chat_variant, thinking)
        constraint = request_constraint(body, body.tools, body.tool_choice,
                                        body.parallel_tool_calls)
        await compile_constraint(engine, constraint, constraint_param(body))
        choices = self._submit(engine, body, [prompt_ids], max_tokens, num_top, session_id,
                               Constraint(constraint, start != "content", start == "inside"))
        max_calls = 1 if body.parallel_tool_calls is False else None
        for choice in choices:
            choice.parser = self._parser(engine, body, prompt_ids, thinking, max_calls)
        return choices

    async def completion(self, body: CompletionRequest, request: Request):
        engine, ignored = self._prepare(body)
        prompts = [engine.engine.tokenize(p) for p in body.prompts()]
        if body.max_tokens == 0:
            return _with_ignored(self._echo_only(body, prompts), ignored)
        max_tokens = min(self._max_tokens(engine, body.max_tokens, len(p), "prompt")
                         for p in prompts)
        constraint = request_constraint(body)
        await compile_constraint(engine, constraint, constraint_param(body))
        choices = self._submit(engine, body, prompts, max_tokens, body.logprobs,
                               body.session_id, Constraint(constraint, False))
        if body.stream:
            return _with_ignored(streaming_response(
                self._completion_events(body, prompts, choices)), ignored)
        await _collect(request, choices)
        return _with_ignored(self._completion_response(body, prompts, choices), ignored)

    def _echo_only(self, body: CompletionRequest, prompts: list[list[int]]):
        """echo with max_tokens 0: the prompts back, nothing generated."""
        vocab_size = self.ctx.engine.engine.vocab_size
        for prompt in prompts:
            if any(not 0 <= token < vocab_size for token in prompt):
                raise APIError(400, f"prompt token ids must be integers in [0, {vocab_size})",
                               param="prompt")
        base = {"id": _new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
                "model": self.ctx.served_model_name}
        logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} \
            if body.logprobs is not None else None
        choices = [{"index": index * body.n + n, "text": self._decode(prompt),
                    "logprobs": logprobs, "finish_reason": "length"}
                   for index, prompt in enumerate(prompts) for n in range(body.n)]
        prompt_tokens = sum(len(prompt) for prompt in prompts)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                 "total_tokens": prompt_tokens, "prompt_tokens_details": {"cached_tokens": 0}}
        if not body.stream:
            return base | {"choices": choices, "usage": usage}

        async def events() -> AsyncIterator[dict]:
            for choice in choices:
                yield base | {"choices": [choice]}
            if body.include_usage:
                yield base | {"choices": [], "usage": usage}

        return streaming_response(events())

    def _prepare(self, body: SamplingFields) -> tuple[AsyncEngine, list[str]]:
        engine = self.ctx.ready_engine()
        self.ctx.check_model(body.model, "not_found")
        return engine, check_extra_fields(body)

    def _chat_prompt(self, engine: AsyncEngine, body: ChatCompletionRequest,
                     thinking: bool) -> list[int]:
        return render_chat(engine.engine.tokenizer, body.messages, body.tools,
                           add_generation_prompt=body.add_generation_prompt,
                           continue_final_message=body.continue_final_message,
                           enable_thinking=thinking)

    def _parser(self, engine: AsyncEngine, body: ChatCompletionRequest, prompt_ids: list[int],
                thinking: bool, max_tool_calls: int | None = None) -> OutputParser:
        """The reply's parser, starting from what the prompt leaves open."""
        return output_parser(engine.engine.tokenizer, prompt_ids, self.ctx.chat_variant,
                             thinking, parse_tools=bool(body.tools) and body.tool_choice != "none",
                             max_tool_calls=max_tool_calls,
                             forced_tools=bool(body.tools) and body.tool_choice not in
                             (None, "auto", "none"))

    def _max_tokens(self, engine: AsyncEngine, requested: int | None, prompt_len: int,
                    prompt_param: str) -> int:
        limit = engine.engine.max_model_len
        if prompt_len >= limit:
            raise APIError(400, f"the prompt has {prompt_len} tokens, which leaves no room to "
                           f"generate within max_model_len={limit}", param=prompt_param,
                           code="context_length_exceeded")
        if requested is None:
            return limit - prompt_len
        if prompt_len + requested > limit:
            raise APIError(400, f"the prompt ({prompt_len} tokens) plus max_tokens "
                           f"({requested}) exceeds max_model_len={limit}", param="max_tokens",
                           code="context_length_exceeded")
        return requested

    def _sampling(self, body: SamplingFields, max_tokens: int, index: int,
                  num_logprobs: int | None, constraint: Constraint | None = None,
                  ) -> SamplingParams:
        defaults = self.ctx.default_sampling
        pick = lambda name: _first(getattr(body, name), defaults.get(name))  # noqa: E731
        seed = None if body.random_seed else body.seed + index
        try:
            params = SamplingParams(
                temperature=_first(pick("temperature"), 1.0), top_p=_first(pick("top_p"), 1.0),
                top_k=_first(pick("top_k"), 0), min_p=_first(pick("min_p"), 0.0),
                repetition_penalty=_first(pick("repetition_penalty"), 1.0),
                presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty, max_tokens=max_tokens,
                stop=list(body.stop or []), seed=seed, logprobs=num_logprobs,
                ignore_eos=bool(body.ignore_eos), logit_bias=body.logit_bias,
                min_tokens=body.min_tokens, stop_token_ids=body.stop_token_ids,
                allowed_token_ids=body.allowed_token_ids,
                **(constraint or Constraint()).fields(body, self.ctx))
            params.check_token_ids(self.ctx.ready_engine().engine.vocab_size)
            return params
        except ValueError as error:
            raise APIError(400, str(error), param=str(error).split(" ", 1)[0]) from None

    def _submit(self, engine: AsyncEngine, body: SamplingFields, prompts: list[list[int]],
                max_tokens: int, num_logprobs: int | None, session_id: str | None,
                constraint: Constraint | None = None) -> list[Choice]:
        choices: list[Choice] = []
        try:
            for prompt_ids in prompts:
                for n in range(body.n):
                    params = self._sampling(body, max_tokens, n, num_logprobs, constraint)
                    session = session_id if not choices else None
                    stream = engine.submit(prompt_ids, params, session_id=session)
                    choices.append(Choice(len(choices), stream, self.ctx.metrics.timer(),
                                          num_prompt_tokens=len(prompt_ids)))
        except APIError:
            _abort(choices)
            raise
        except Exception as error:
            _abort(choices)
            raise engine_error(error) from None
        return choices

    def _chat_response(self, body: ChatCompletionRequest, choices: list[Choice],
                       keep_reasoning: bool) -> dict:
        out = []
        for choice in choices:
            parsed = _whole(choice.parser, choice.text)
            message: dict[str, Any] = {"role": "assistant",
                                       "content": parsed.content or
                                       (None if parsed.tool_calls else "")}
            if keep_reasoning and parsed.reasoning:
                message["reasoning_content"] = message["reasoning"] = parsed.reasoning
            if parsed.tool_calls:
                message["tool_calls"] = [_without_index(call) for call in parsed.tool_calls]
            out.append({"index": choice.index, "message": message,
                        "logprobs": self._chat_logprobs(choice.logprobs) if body.logprobs
                        else None,
                        "finish_reason": _finish_reason(choice.finish_reason, parsed)})
        return {"id": _new_id("chatcmpl"), "object": "chat.completion",
                "created": int(time.time()), "model": self.ctx.served_model_name,
                "choices": out, "usage": _usage(choices, body.n)}

    async def _chat_events(self, body: ChatCompletionRequest, choices: list[Choice],
                           keep_reasoning: bool) -> AsyncIterator[dict | str]:
        base = {"id": _new_id("chatcmpl"), "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.ctx.served_model_name}
        chunk = lambda index, delta, **extra: {**base, "choices": [  # noqa: E731
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": None} | extra]}
        content_chunk = ChunkTemplate(base, '"delta":{"content":', "}")
        tool_calls_seen = [0] * len(choices)
        try:
            for choice in choices:
                yield chunk(choice.index, {"role": "assistant", "content": ""})
            async for choice, output in _merged(choices):
                choice.add(output)
                parsed = choice.parser.feed(output.new_text)
                if output.finished:
                    tail = choice.parser.finish()
                    parsed = ParsedDelta(parsed.reasoning + tail.reasoning,
                                         parsed.content + tail.content,
                                         parsed.tool_calls + tail.tool_calls)
                tool_calls_seen[choice.index] += len(parsed.tool_calls)
                logprobs = self._chat_logprobs(output.new_logprobs) if body.logprobs else None
                if logprobs is None and parsed.content and not (parsed.reasoning
                                                                or parsed.tool_calls):
                    yield content_chunk(choice.index, parsed.content)
                    parsed.content = ""
                for delta in _chat_deltas(parsed, keep_reasoning):
                    yield chunk(choice.index, delta, logprobs=logprobs)
                    logprobs = None
                if output.finished:
                    reason = choice.finish_reason
                    if tool_calls_seen[choice.index] and reason == "stop":
                        reason = "tool_calls"
                    yield chunk(choice.index, {}, logprobs=logprobs, finish_reason=reason)
            if body.include_usage:
                yield {**base, "choices": [], "usage": _usage(choices, body.n)}
        except Exception as error:
            yield _stream_error(error)
        finally:
            _abort(choices)

    def _completion_response(self, body: CompletionRequest, prompts: list[list[int]],
                             choices: list[Choice]) -> dict:
        out = []
        for choice in choices:
            prompt_ids = prompts[choice.index // body.n]
            prefix = self._decode(prompt_ids) if body.echo else ""
            out.append({"index": choice.index, "text": prefix + choice.text,
                        "logprobs": self._completion_logprobs(choice.logprobs, len(prefix))
                        if body.logprobs is not None else None,
                        "finish_reason": choice.finish_reason})
        return {"id": _new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
                "model": self.ctx.served_model_name, "choices": out,
                "usage": _usage(choices, body.n)}

    async def _completion_events(self, body: CompletionRequest, prompts: list[list[int]],
                                 choices: list[Choice]) -> AsyncIterator[dict | str]:
        base = {"id": _new_id("cmpl"), "object": "text_completion",
                "created": int(time.time()), "model": self.ctx.served_model_name}
        offsets = [0] * len(choices)
        text_chunk = ChunkTemplate(base, '"text":', "")
        try:
            if body.echo:
                for choice in choices:
                    text = self._decode(prompts[choice.index // body.n])
                    offsets[choice.index] = len(text)
                    yield {**base, "choices": [{"index": choice.index, "text": text,
                                                "logprobs": None, "finish_reason": None}]}
            async for choice, output in _merged(choices):
                choice.add(output)
                logprobs = None
                if body.logprobs is not None and output.new_logprobs:
                    logprobs = self._completion_logprobs(output.new_logprobs,
                                                         offsets[choice.index])
                offsets[choice.index] += len(output.new_text)
                if output.new_text and not (logprobs or output.finished):
                    yield text_chunk(choice.index, output.new_text)
                elif output.new_text or logprobs or output.finished:
                    yield {**base, "choices": [{
                        "index": choice.index, "text": output.new_text, "logprobs": logprobs,
                        "finish_reason": choice.finish_reason if output.finished else None}]}
            if body.include_usage:
                yield {**base, "choices": [],
                       "usage": _usage(choices, body.n)}
        except Exception as error:
            yield _stream_error(error)
        finally:
            _abort(choices)

    def _decode(self, token_ids: list[int]) -> str:
        return self.ctx.engine.engine.tokenizer.decode(token_ids, skip_special_tokens=False)

    def _token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self._decode([token_id])
        return text

    def _chat_logprobs(self, entries: list[TokenLogprobs]) -> dict:
        def item(token_id: int, logprob: float) -> dict:
            text = self._token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return {"content": [item(e.token_id, e.logprob) | {
            "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries]}

    def _completion_logprobs(self, entries: list[TokenLogprobs], offset: int) -> dict:
        tokens = [self._token_text(e.token_id) for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self._token_text(t): lp for t, lp in e.top} for e in entries],
                "text_offset": offsets}


@dataclass(slots=True)
class Constraint:
    """What a request asks of the engine's constraint: its structured output (shared by its
    n choices, so compiled once), whether its output opens with reasoning, and whether the
    prompt opened that reasoning already."""

    structured: StructuredOutputs | None = None
    thinking: bool = False
    reasoning_open: bool = False  # the prompt already opened the think block (Thinking-2507)

    def fields(self, body: SamplingFields, ctx: ServerContext) -> dict:
        # a chat field; on a text completion a field of that name is an ignored extra, and
        # may be anything
        effort = body.reasoning_effort if isinstance(body, ChatCompletionRequest) else None
        budget = _first(body.thinking_token_budget, ctx.effort_budgets.get(effort),
                        ctx.default_thinking_token_budget)
        return {"structured_outputs": self.structured, "thinking": self.thinking,
                "reasoning_open": self.reasoning_open,
                "thinking_token_budget": budget if self.thinking else None}


class ChunkTemplate:
    """A stream chunk with one text field, serialised around the text only (the hot path)."""

    def __init__(self, base: dict, text_key: str, text_end: str):
        head = json.dumps(base, separators=(",", ":"))[:-1]
        self.head = f'{head},"choices":[{{"index":'
        self.middle = f",{text_key}"
        self.tail = f'{text_end},"logprobs":null,"finish_reason":null}}]}}'

    def __call__(self, index: int, text: str) -> str:
        return (f"{self.head}{index}{self.middle}"
                f"{json.dumps(text, ensure_ascii=False)}{self.tail}")


def _with_ignored(result, ignored: list[str], warning: str | None = None):
    """The response, with the names of the request fields it ignored in a header, and a
    warning about the request (WARNING_HEADER) when there is one."""
    if not ignored and not warning:
        return result
    response = result if isinstance(result, Response) else JSONResponse(result)
    if ignored:
        response.headers[IGNORED_FIELDS_HEADER] = ignored_fields_header(ignored)
    if warning:
        response.headers[WARNING_HEADER] = warning
    return response


def _first(*values):
    return next((value for value in values if value is not None), None)


async def _merged(choices: list[Choice]) -> AsyncIterator[tuple[Choice, RequestOutput]]:
    if len(choices) == 1:
        async for output in choices[0].stream:
            yield choices[0], output
        return
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        try:
            async for output in choice.stream:
                await merged.put((choice, output))
        except Exception as error:
            await merged.put(error)

    tasks = [asyncio.ensure_future(pump(choice)) for choice in choices]
    remaining = len(choices)
    try:
        while remaining:
            item = await merged.get()
            if isinstance(item, Exception):
                raise item
            yield item
            remaining -= item[1].finished
    finally:
        for task in tasks:
            task.cancel()


async def _collect(request: Request, choices: list[Choice]) -> None:
    async def gather() -> None:
        async for choice, output in _merged(choices):
            choice.add(output)

    task = asyncio.ensure_future(gather())
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if not done and await request.is_disconnected():
                task.cancel()
                raise APIError(499, "the client disconnected", "client_closed_request")
        task.result()
    except APIError:
        raise
    except Exception as error:
        raise engine_error(error) from None
    finally:
        if not task.done():
            task.cancel()
        _abort(choices)


def _abort(choices: list[Choice]) -> None:
    for choice in choices:
        if not choice.stream.finished:
            choice.stream.abort()
            choice.timer.done("abort")


def _whole(parser: OutputParser, text: str) -> ParsedDelta:
    first, last = parser.feed(text), parser.finish()
    return ParsedDelta(first.reasoning + last.reasoning, first.content + last.content,
                       first.tool_calls + last.tool_calls)


def _chat_deltas(parsed: ParsedDelta, keep_reasoning: bool) -> list[dict]:
    deltas = []
    if parsed.reasoning and keep_reasoning:
        deltas.append({"reasoning_content": parsed.reasoning, "reasoning": parsed.reasoning})
    if parsed.content:
        deltas.append({"content": parsed.content})
    if parsed.tool_calls:
        deltas.append({"tool_calls": parsed.tool_calls})
    return deltas


def _finish_reason(reason: str | None, parsed: ParsedDelta) -> str | None:
    return "tool_calls" if parsed.tool_calls and reason == "stop" else reason


def _without_index(call: dict) -> dict:
    return {key: value for key, value in call.items() if key != "index"}


def _usage(choices: list[Choice], n: int) -> dict:
    step = n
    prompt_tokens = sum(choices[i].num_prompt_tokens for i in range(0, len(choices), step))
    cached = sum(choices[i].num_cached_tokens for i in range(0, len(choices), step))
    completion = sum(choice.num_tokens for choice in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _stream_error(error: Exception) -> dict:
    log.warning("stream ended by %r", error)
    api_error = error if isinstance(error, APIError) else engine_error(error)
    return api_error.body()


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"
