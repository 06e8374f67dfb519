"""Structured output and forced tool calls on the demo model (random weights taught a few
turns: only the constraint can make its output valid): LangChain's with_structured_output in
every method, the openai SDK's parse, tool_choice, regex and choice, thinking budgets, and
hostile schemas that must end in a 400 or a bounded compile while other requests stream."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Annotated, Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from jupyter_qwen import serve
from jupyter_qwen.engine.constraints import GrammarCache, SequenceConstraint
from jupyter_qwen.engine.errors import ConstraintError, ConstraintTimeoutError
from jupyter_qwen.sampling_params import SamplingParams, StructuredOutputs

pytest.importorskip("xgrammar")
HI = [{"role": "user", "content": "Tell me about someone."}]
THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
THINKING_BUDGET = {"chat_template_kwargs": {"enable_thinking": True, "thinking_token_budget": 6}}


class Address(BaseModel):
    city: str = Field(max_length=12)
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    """A person (the schema bounds every free field, so a random model ends)."""

    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=130)
    role: Literal["admin", "user", "guest"]
    tags: list[Literal["a", "b", "c"]] = Field(max_length=3)
    address: Address
    nickname: str | None = Field(default=None, max_length=8)
    score: Annotated[int, Field(ge=0, le=9)] | Literal["none"]


class GetWeather(BaseModel):
    """Get the weather in a city."""

    city: Literal["Paris", "Tokyo", "Lima"]
    days: int = Field(ge=1, le=7)


class SendNote(BaseModel):
    """Send a short note."""

    text: str = Field(max_length=10)


@pytest.fixture(scope="module")
def server(demo_model):
    instance = serve(demo_model, max_model_len=2048, progress=False)
    yield instance
    instance.stop()


def chat_model(server, extra: dict, **kwargs):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=server.served_model_name, base_url=server.url,
                      api_key=server.api_key or "none", temperature=1.0, max_tokens=400, seed=1,
                      extra_body=extra, **kwargs)


METHODS = ["default", "json_schema", "function_calling", "json_mode"]


@pytest.mark.parametrize("thinking", ["off", "budget"])
@pytest.mark.parametrize("method", METHODS)
def test_with_structured_output_returns_a_valid_instance(server, method, thinking):
    extra = THINKING_OFF if thinking == "off" else THINKING_BUDGET
    model = chat_model(server, extra)
    if method == "json_mode":
        pytest.xfail("json_object bounds no string or number, and the random demo model does "
                     "not close them within max_tokens: the output is a valid JSON prefix")
        runnable = model.with_structured_output(Person, method="json_mode", include_raw=True)
        raw = runnable.invoke(HI)["raw"]
        assert isinstance(json.loads(raw.content), dict)
        return
    kwargs = {} if method == "default" else {"method": method}
    person = model.with_structured_output(Person, **kwargs).invoke(HI)
    assert isinstance(person, Person)


def test_structured_output_async_and_streamed(server):
    runnable = chat_model(server, THINKING_BUDGET).with_structured_output(Person)
    assert isinstance(asyncio.run(runnable.ainvoke(HI)), Person)
    chunks = list(chat_model(server, THINKING_OFF, streaming=True)
                  .with_structured_output(Person, method="function_calling").stream(HI))
    assert isinstance(chunks[-1], Person)


def test_openai_parse_returns_a_parsed_object(server):
    client = server.openai_client()
    completion = client.chat.completions.parse(
        model=server.served_model_name, messages=HI, response_format=Person, max_tokens=400,
        temperature=1.0, extra_body=THINKING_OFF)
    assert isinstance(completion.choices[0].message.parsed, Person)


@pytest.mark.parametrize("choice", ["any", "GetWeather"])
def test_forced_tool_calls_are_valid(server, choice):
    model = chat_model(server, THINKING_BUDGET).bind_tools([GetWeather, SendNote],
                                                           tool_choice=choice)
    message = model.invoke([{"role": "user", "content": "Hello!"}])
    assert message.tool_calls
    for call in message.tool_calls:
        schema = {"GetWeather": GetWeather, "SendNote": SendNote}[call["name"]]
        schema.model_validate(call["args"])
    if choice == "GetWeather":
        assert [call["name"] for call in message.tool_calls] == ["GetWeather"]


def test_parallel_tool_calls_false_gives_one_call(server):
    model = chat_model(server, THINKING_OFF).bind_tools(
        [GetWeather, SendNote], tool_choice="any", parallel_tool_calls=False)
    assert len(model.invoke(HI).tool_calls) == 1


def test_tool_choice_none_returns_no_call(server):
    model = chat_model(server, THINKING_OFF).bind_tools([GetWeather], tool_choice="none")
    message = model.invoke([{"role": "user", "content": "What is the weather in Paris?"}])
    assert not message.tool_calls and "<tool_call>" not in message.content


def post(server, body: dict, route: str = "chat/completions") -> httpx.Response:
    base = {"model": server.served_model_name, "max_tokens": 64, "temperature": 1.0}
    if route == "chat/completions":
        base |= {"messages": HI} | THINKING_OFF
    return httpx.post(f"{server.url}/{route}", json=base | body, timeout=120)


@pytest.mark.parametrize(("field", "value"), [
    ("structured_outputs", {"regex": "[0-9]{3}-[a-z]{2}"}),
    ("guided_regex", "[0-9]{3}-[a-z]{2}"),
])
@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_regex_output_matches(server, field, value, route):
    body = {field: value} | ({"prompt": "code:"} if route == "completions" else {})
    response = post(server, body, route)
    choice = response.json()["choices"][0]
    text = choice["message"]["content"] if route == "chat/completions" else choice["text"]
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", text), text


def test_choice_output_is_one_of_the_choices(server):
    options = ["yes", "no", "maybe later"]
    for body in ({"structured_outputs": {"choice": options}}, {"guided_choice": options}):
        response = post(server, body | {"n": 3})
        assert {c["message"]["content"] for c in response.json()["choices"]} <= set(options)


def test_thinking_budget_ends_the_reasoning_then_the_answer_follows(server):
    body = {"chat_template_kwargs": {"enable_thinking": True}, "thinking_token_budget": 4,
            "structured_outputs": {"choice": ["red", "blue"]}, "max_tokens": 100}
    response = post(server, body)
    message = response.json()["choices"][0]["message"]
    assert message["content"] in ("red", "blue")
    assert "Considering the limited time" in message["reasoning_content"]


def test_reasoning_effort_levels_bring_their_thinking_budget(demo_model):
    """reasoning_effort low turns thinking on with the budget the server gives that level:
    the engine ends the reasoning itself once it is spent."""
    budgeted = serve(demo_model, max_model_len=1024, progress=False,
                     reasoning_effort_budgets=("low=4",))
    try:
        body = {"reasoning_effort": "low", "chat_template_kwargs": {},
                "structured_outputs": {"choice": ["red", "blue"]},
                "max_tokens": 100}
        message = post(budgeted, body).json()["choices"][0]["message"]
        assert message["content"] in ("red", "blue")
        assert "Considering the limited time" in message["reasoning_content"]
        unlimited = post(budgeted, body | {"reasoning_effort": "high", "max_tokens": 40})
        reasoning = unlimited.json()["choices"][0]["message"].get("reasoning_content") or ""
        assert "Considering the limited time" not in reasoning
    finally:
        budgeted.stop()


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                 "schema": {"type": "objekt"}}}},
     "response_format"),
    ({"structured_outputs": {"regex": "((("}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= ( \"a\" | "}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "nonsense"}}}}}],
      "tool_choice": "required"}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_bad_constraints_are_400s_naming_the_field(server, body, param):
    response = post(server, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def nested_schema(depth: int) -> dict:
    schema: dict = {"type": "integer", "minimum": 0, "maximum": 9}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


HOSTILE = {
    "deeply nested": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": nested_schema(400)}}},
    "self-referencing": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"$defs": {"node": {"type": "object", "properties": {
            "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
            "required": ["next"]}}, "$ref": "#/$defs/node"}}}},
    "circular reference": {"guided_json": {"$defs": {"a": {"$ref": "#/$defs/a"}},
                                           "$ref": "#/$defs/a"}},
    "10,000-member enum": {"guided_json": {"enum": [f"value_{i}" for i in range(10_000)]}},
    "catastrophic regex": {"guided_regex": "(a+)+(b+)+(c|cc|ccc)*$"},
    "garbage grammar": {"guided_grammar": "%%%% ::= ::= ((("},
}


def test_hostile_constraints_never_stall_the_server(server):
    """Each gets a 400 or an answer within a bounded time while another request streams."""
    streamed: list[str] = []

    def stream() -> None:
        body = {"model": server.served_model_name, "prompt": "story:", "max_tokens": 400,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{server.url}/completions", json=body, timeout=300) as r:
            streamed.extend(line for line in r.iter_lines() if line.startswith("data: {"))

    streaming = threading.Thread(target=stream)
    streaming.start()
    for name, body in HOSTILE.items():
        started = time.monotonic()
        response = post(server, body | {"max_tokens": 24})
        assert response.status_code in (200, 400), (name, response.text)
        assert time.monotonic() - started < 60, name
    streaming.join(timeout=300)
    usage = json.loads(streamed[-1].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 400, "the other request streamed to its end"
    assert post(server, {"max_tokens": 4}).status_code == 200


@pytest.fixture(scope="module")
def grammars(demo_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    cache = GrammarCache(tokenizer, len(tokenizer), [tokenizer.eos_token_id], timeout=30)
    yield cache
    cache.close()


def test_grammars_compile_once_and_bad_ones_raise(grammars):
    spec = StructuredOutputs(json={"type": "object"})
    first = grammars.compile(spec)
    assert grammars.compile(StructuredOutputs(json={"type": "object"})) is first
    with pytest.raises(ConstraintError):
        grammars.compile(StructuredOutputs(regex="((("))


@pytest.mark.parametrize("string", [{"maxLength": 8}, {"minLength": 1, "maxLength": 8}, {}])
def test_json_strings_never_take_a_raw_control_character(grammars, string):
    """JSON forbids raw control characters in strings; with a length bound the library's
    own grammar let them through (seen as a \x07 in a sampled answer)."""
    import xgrammar

    schema = {"type": "object", "additionalProperties": False, "required": ["a"],
              "properties": {"a": {"type": "string", **string}}}
    compiled = grammars.compile(StructuredOutputs(json=schema))
    for text, valid in (('{"a": "ab"}', True), ('{"a": "a\x07b"}', False),
                        ('{"a": "a\x1fb"}', False), ('{"a": "\u00e9t\u00e9"}', True)):
        assert xgrammar.GrammarMatcher(compiled).accept_string(text) is valid, (text, string)


def test_tool_arguments_never_take_a_raw_control_character(grammars):
    """The same for a forced tool call's arguments (the structural tag of `tool_choice`)."""
    import xgrammar

    from jupyter_qwen.server.protocol import Tool
    from jupyter_qwen.server.structured import tools_constraint

    tool = Tool.model_validate({"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "required": ["city"],
            "properties": {"city": {"type": "string", "maxLength": 12}}}}})
    compiled = grammars.compile(tools_constraint([tool], "required", parallel=False))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>'
    assert xgrammar.GrammarMatcher(compiled).accept_string(call % "Paris")
    assert not xgrammar.GrammarMatcher(compiled).accept_string(call % "Par\x07is")


def test_a_compile_past_the_limit_is_an_error_not_a_stall(grammars):
    grammars.timeout = 0.001
    try:
        started = time.monotonic()
        with pytest.raises(ConstraintTimeoutError):
            grammars.compile(StructuredOutputs(json=nested_schema(300)))
        assert time.monotonic() - started < 1
    finally:
        grammars.timeout = 30


def test_a_spent_budget_forces_the_end_of_reasoning():
    params = SamplingParams(thinking=True, thinking_token_budget=2)
    constraint = SequenceConstraint(params, None, think_open=7, think_close=8,
                                    early_stop_ids=[5, 8, 6])
    bitmask = __import__("torch").full((1, 1), -1, dtype=__import__("torch").int32)
    forced = []
    for token in (7, 1, 2):
        assert constraint.fill(bitmask, 0) == (token == 7)
        constraint.accept(token)
    while constraint.phase == "forcing":
        assert constraint.fill(bitmask, 0)
        forced.append(int(bitmask[0, 0]).bit_length() - 1)
        constraint.accept(forced[-1])
    assert forced == [5, 8, 6] and constraint.phase == "answer"
    assert not constraint.fill(bitmask, 0)


def test_structured_outputs_take_exactly_one_kind():
    with pytest.raises(ValueError):
        StructuredOutputs(regex="a", choice=["b"])
    with pytest.raises(ValueError):
        StructuredOutputs()
    assert SamplingParams(structured_outputs=StructuredOutputs(regex="a"),
                          temperature=0).plain_greedy is False


WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_forced_weather_call_closes_its_arguments(server, thinking, choice):
    """The demo model was taught `</think>`, a blank line, then the call: the constraint lets
    it write that blank line, so it stays on its path and closes the argument string."""
    from jupyter_qwen.demo import DEMO_TOOLS

    tool_choice = choice if choice == "required" else {
        "type": "function", "function": {"name": "get_weather"}}
    body = {"messages": WEATHER_QUESTION, "tools": DEMO_TOOLS, "tool_choice": tool_choice,
            "max_tokens": 100, "temperature": 0,
            "chat_template_kwargs": {"enable_thinking": thinking}}
    choice_out = post(server, body).json()["choices"][0]
    assert choice_out["finish_reason"] == "tool_calls", choice_out
    call = choice_out["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_call_cut_by_max_tokens_is_a_call_and_a_length_finish(server, stream):
    """An unbounded string argument and a model that never closes it: the call is still
    reported as a call (its arguments the text so far), never as markup in the content."""
    from jupyter_qwen.demo import DEMO_TOOLS

    client = server.openai_client()
    kwargs = {"model": server.served_model_name, "messages": HI, "tools": DEMO_TOOLS,
              "tool_choice": "required", "max_tokens": 18, "temperature": 1.0, "seed": 3,
              "extra_body": THINKING_OFF}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls
                 or []]
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        finish, content, calls = (choice.finish_reason, choice.message.content or "",
                                  choice.message.tool_calls or [])
    assert finish == "length" and "<tool_call>" not in content
    assert [call.function.name for call in calls] == ["get_weather"]
    assert calls[0].function.arguments.startswith("{")


def test_after_its_own_end_of_reasoning_the_model_may_write_the_blank_line(grammars):
    """`</think>` then the grammar's first tokens or the pieces of "\\n\\n", once; after that
    only the grammar."""
    import torch
    import xgrammar

    from jupyter_qwen.engine.constraints import ConstraintFactory, new_token_bitmask

    tokenizer = grammars.tokenizer
    factory = ConstraintFactory(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    try:
        params = SamplingParams(thinking=True, structured_outputs=StructuredOutputs(
            choice=["red", "blue"]))
        matcher = xgrammar.GrammarMatcher(grammars.compile(params.structured_outputs))
        constraint = SequenceConstraint(params, matcher, factory.think_open,
                                        factory.think_close, factory.early_stop_ids,
                                        factory.separator_ids)
        newline = tokenizer.encode("\n", add_special_tokens=False)[0]
        red = tokenizer.encode("red", add_special_tokens=False)[0]

        def allowed() -> set[int]:
            bitmask = new_token_bitmask(1, len(tokenizer))
            assert constraint.fill(bitmask, 0)
            bits = torch.tensor([(int(w) >> b) & 1 for w in bitmask[0] for b in range(32)])
            return set(torch.nonzero(bits[:len(tokenizer)]).flatten().tolist())

        for token in tokenizer.encode("<think>\nhm\n</think>", add_special_tokens=False):
            constraint.accept(token)
        assert {newline, red} <= allowed()
        constraint.accept(newline)
        assert {newline, red} <= allowed()
        constraint.accept(newline)
        assert newline not in allowed() and red in allowed()
    finally:
        factory.close()


def test_the_matcher_takes_sampled_tokens_at_the_next_fill(grammars):
    """`accept` only notes the token (the engine calls it between steps, while the GPU
    waits); the next `fill`, which runs beside the next forward pass, advances the matcher
    over every noted token in order. The masks equal a constraint advanced token by token."""
    import torch
    import xgrammar

    from jupyter_qwen.engine.constraints import new_token_bitmask

    tokenizer = grammars.tokenizer
    spec = StructuredOutputs(json={"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8}}, "required": ["name"]})
    compiled = grammars.compile(spec)
    params = SamplingParams(structured_outputs=spec)
    text = tokenizer.encode('{"name": "ab', add_special_tokens=False)
    stepped, deferred = (SequenceConstraint(params, xgrammar.GrammarMatcher(compiled), None,
                                            None, []) for _ in range(2))
    masks = {}
    for name, constraint in (("stepped", stepped), ("deferred", deferred)):
        for token in text:
            constraint.accept(token)
            if name == "stepped":
                assert constraint.fill(new_token_bitmask(1, len(tokenizer)), 0)
        masks[name] = new_token_bitmask(1, len(tokenizer))
    untouched, fresh = new_token_bitmask(1, len(tokenizer)), new_token_bitmask(1, len(tokenizer))
    deferred.matcher.fill_next_token_bitmask(untouched, 0)
    xgrammar.GrammarMatcher(compiled).fill_next_token_bitmask(fresh, 0)
    assert deferred.pending == text and torch.equal(untouched, fresh)
    assert stepped.fill(masks["stepped"], 0) and deferred.fill(masks["deferred"], 0)
    assert deferred.pending == [] and torch.equal(masks["stepped"], masks["deferred"])
    assert not torch.equal(masks["deferred"], fresh)
