"""OpenAI API parity with vLLM on the demo model: validation rows (status and `param`),
/tokenize and /detokenize, /version, /ping, /v1/models/{id}, reasoning_effort and
include_reasoning, continued assistant turns, and the x-ignored-fields header."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import httpx
import openai
import pytest

from jupyter_qwen import serve
from jupyter_qwen.demo import DEMO_PROMPTS, DEMO_TOOLS
from jupyter_qwen.server.chat import OutputParser, parse_whole
from jupyter_qwen.server.fields import DECLARED_UNUSED, REJECTED
from jupyter_qwen.server.protocol import ChatCompletionRequest, CompletionRequest

HI = [{"role": "user", "content": "hi"}]
HELLO = DEMO_PROMPTS["hello"]


@pytest.fixture(scope="module")
def server(demo_model):
    instance = serve(demo_model, max_model_len=1024, progress=False)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client()


def create(client, server, route: str, body: dict):
    """POST through the openai SDK: its own arguments where it has them, the rest as
    extra_body."""
    if route == "chat":
        known = {"messages", "stream", "stream_options", "logprobs", "top_logprobs", "tools",
                 "tool_choice", "seed", "max_tokens", "reasoning_effort"}
        method = client.chat.completions.create
    else:
        known = {"prompt", "stream", "stream_options", "echo", "max_tokens", "seed", "logprobs"}
        method = client.completions.create
    kwargs = {key: value for key, value in body.items() if key in known}
    extra = {key: value for key, value in body.items() if key not in known}
    return method(model=server.served_model_name, extra_body=extra, **kwargs)


TOOL = DEMO_TOOLS[0]
IMAGE = {"type": "image_url", "image_url": {"url": "http://x"}}
REJECTED_ROWS = [
    ("stream_options without stream", "chat",
     {"messages": HI, "stream_options": {"include_usage": True}}, "stream_options"),
    ("stream_options without stream, completions", "completions",
     {"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
    ("top_logprobs without logprobs", "chat", {"messages": HI, "top_logprobs": 2},
     "top_logprobs"),
    ("empty tools with a tool_choice", "chat",
     {"messages": HI, "tools": [], "tool_choice": "auto"}, "tools"),
    ("tool_choice without tools", "chat", {"messages": HI, "tool_choice": "required"},
     "tool_choice"),
    ("named tool_choice that is not a tool", "chat",
     {"messages": HI, "tools": [TOOL],
      "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ("image part", "chat",
     {"messages": [{"role": "user", "content": [IMAGE]}]}, "messages.0.content.0"),
    ("image part further in", "chat",
     {"messages": [*HI, {"role": "user", "content": [{"type": "text", "text": "see"}, IMAGE]}]},
     "messages.1.content.1"),
    ("text part without text", "chat",
     {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages.0.content.0.text"),
    ("continue_final_message with add_generation_prompt", "chat",
     {"messages": HI, "continue_final_message": True, "add_generation_prompt": True},
     "continue_final_message"),
    ("max_tokens 0 without echo", "completions", {"prompt": "a", "max_tokens": 0},
     "max_tokens"),
    ("beam search", "chat", {"messages": HI, "use_beam_search": True}, "use_beam_search"),
    ("json schema output", "chat",
     {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {}}},
     "response_format"),
    ("suffix", "completions", {"prompt": "a", "suffix": "b"}, "suffix"),
    ("cache_salt", "chat", {"messages": HI, "cache_salt": "s" * 43}, "cache_salt"),
    ("seed below -1", "chat", {"messages": HI, "seed": -2}, "seed"),
    ("unknown reasoning_effort", "chat", {"messages": HI, "reasoning_effort": "huge"},
     "reasoning_effort"),
]


@pytest.mark.parametrize(("name", "route", "body", "param"), REJECTED_ROWS,
                         ids=[row[0] for row in REJECTED_ROWS])
def test_rejected_requests_name_their_field(client, server, name, route, body, param):
    with pytest.raises(openai.BadRequestError) as info:
        create(client, server, route, body | {"max_tokens": body.get("max_tokens", 2)})
    assert info.value.status_code == 400
    assert info.value.body["param"] == param, info.value.body
    assert info.value.body["type"] == "invalid_request_error"


ACCEPTED_ROWS = [
    ("seed -1 is random", "chat", {"messages": HI, "seed": -1}),
    ("empty stream_options without stream", "chat", {"messages": HI, "stream_options": {}}),
    ("top_logprobs 0 without logprobs", "chat", {"messages": HI, "top_logprobs": 0}),
    ("tool_choice none without tools", "chat", {"messages": HI, "tool_choice": "none"}),
    ("null n and presence_penalty", "chat", {"messages": HI, "n": None,
                                             "presence_penalty": None}),
    ("text response_format", "chat", {"messages": HI, "response_format": {"type": "text"}}),
    ("seed -1, completions", "completions", {"prompt": "a", "seed": -1}),
]


@pytest.mark.parametrize(("name", "route", "body"), ACCEPTED_ROWS,
                         ids=[row[0] for row in ACCEPTED_ROWS])
def test_accepted_requests(client, server, name, route, body):
    response = create(client, server, route, body | {"max_tokens": 2})
    assert response.choices and response.usage.completion_tokens >= 1


def test_echo_with_max_tokens_0_returns_the_prompt(client, server):
    response = create(client, server, "completions",
                      {"prompt": "Once upon a time", "echo": True, "max_tokens": 0})
    [choice] = response.choices
    assert choice.text == "Once upon a time" and choice.finish_reason == "length"
    assert response.usage.completion_tokens == 0 and response.usage.prompt_tokens > 0
    pieces = list(create(client, server, "completions",
                         {"prompt": "Once upon a time", "echo": True, "max_tokens": 0,
                          "stream": True}))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == "Once upon a time"


# ---- /tokenize, /detokenize, /version, /ping, /v1/models/{id} -------------------------------


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.root_url}{path}", json=body, timeout=30)


@pytest.mark.parametrize("text", ["Hello, world!", "héllo 日本語 🙂\n  spaces", "<think>x</think>"])
def test_tokenize_detokenize_round_trip_of_a_prompt(server, text):
    tokens = post(server, "/tokenize", {"prompt": text, "return_token_strs": True}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    assert tokens["max_model_len"] == 1024
    assert len(tokens["token_strs"]) == tokens["count"]
    back = post(server, "/detokenize", {"tokens": tokens["tokens"]}).json()
    assert back == {"prompt": text}


def test_tokenize_chat_gives_the_prompt_a_chat_completion_uses(client, server):
    for thinking in (True, False):
        body = {"messages": HELLO.messages, "enable_thinking": thinking}
        tokens = post(server, "/tokenize", body).json()
        assert tokens["token_strs"] is None
        reply = create(client, server, "chat", body | {"max_tokens": 1})
        assert tokens["count"] == reply.usage.prompt_tokens
        text = post(server, "/detokenize", {"tokens": tokens["tokens"]}).json()["prompt"]
        assert text.endswith("<|im_start|>assistant\n" +
                             ("" if thinking else "<think>\n\n</think>\n\n"))
    off = post(server, "/tokenize", {"messages": HELLO.messages, "reasoning_effort": "none"})
    assert off.json()["tokens"] == post(server, "/tokenize", {
        "messages": HELLO.messages, "chat_template_kwargs": {"enable_thinking": False}}
    ).json()["tokens"]


def test_tokenize_chat_without_generation_prompt_and_continued(server):
    closed = post(server, "/tokenize", {"messages": HELLO.messages,
                                        "add_generation_prompt": False}).json()
    text = post(server, "/detokenize", {"tokens": closed["tokens"]}).json()["prompt"]
    assert text.endswith("Hello!<|im_end|>\n")
    prefilled = [*HELLO.messages, {"role": "assistant", "content": "Hello! I am"}]
    open_turn = post(server, "/tokenize", {"messages": prefilled,
                                           "continue_final_message": True}).json()
    text = post(server, "/detokenize", {"tokens": open_turn["tokens"]}).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\nHello! I am")


TOKENIZE_ERRORS = [
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": HI}, 400, "messages"),
    ("/tokenize", {"messages": [{"role": "user", "content": [IMAGE]}]}, 400,
     "messages.0.content.0"),
    ("/tokenize", {"prompt": "a", "model": "gpt-9"}, 404, "model"),
    ("/detokenize", {"tokens": [1, 10**12]}, 400, "tokens.1"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens.0"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), TOKENIZE_ERRORS)
def test_tokenize_errors(server, path, body, status, param):
    response = post(server, path, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_version_ping_and_one_model(client, server):
    from jupyter_qwen._version import __version__

    assert httpx.get(f"{server.root_url}/version").json() == {"version": __version__}
    for method in ("GET", "POST"):
        assert httpx.request(method, f"{server.root_url}/ping").status_code == 200
    model = client.models.retrieve(server.served_model_name)
    assert model.id == server.served_model_name and model.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-9")
    assert info.value.body == {"message": info.value.body["message"],
                               "type": "invalid_request_error", "param": "model",
                               "code": "model_not_found"}


def test_api_key_guards_the_model_routes_and_tokenizer_not_liveness(demo_model):
    """vLLM guards /v1 routes only; jupyter_qwen guards /tokenize and /detokenize too (they
    run the model's tokenizer for anyone), and leaves /ping, /version and /health open."""
    guarded = serve(demo_model, api_key="sekret", max_model_len=256, progress=False)
    try:
        name = guarded.served_model_name
        assert httpx.get(f"{guarded.url}/models/{name}").status_code == 401
        assert guarded.openai_client().models.retrieve(name).id == name
        assert httpx.post(f"{guarded.root_url}/tokenize", json={"prompt": "a"}).status_code \
            == 401
        assert httpx.post(f"{guarded.root_url}/tokenize", json={"prompt": "a"}, headers={
            "Authorization": "Bearer sekret"}).status_code == 200
        assert httpx.get(f"{guarded.root_url}/ping").status_code == 200
    finally:
        guarded.stop()


# ---- reasoning: reasoning_effort, include_reasoning, the split with thinking off ----------


def message_of(response):
    return response.choices[0].message


def test_reasoning_effort_none_gives_no_reasoning(client, server):
    body = {"messages": HELLO.messages, "max_tokens": 200, "temperature": 0}
    thinking = message_of(create(client, server, "chat", body | {"reasoning_effort": "high"}))
    assert thinking.reasoning_content == HELLO.reasoning
    assert thinking.content == HELLO.content
    plain = message_of(create(client, server, "chat", body | {"reasoning_effort": "none"}))
    assert getattr(plain, "reasoning_content", None) is None
    assert plain.content == DEMO_PROMPTS["hello_no_thinking"].content
    chunks = list(create(client, server, "chat", body | {"reasoning_effort": "none",
                                                         "stream": True}))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert not any(getattr(delta, "reasoning_content", None) for delta in deltas)
    assert "".join(delta.content or "" for delta in deltas) == plain.content


def test_include_reasoning_false_drops_the_reasoning(client, server):
    body = {"messages": HELLO.messages, "max_tokens": 200, "temperature": 0,
            "include_reasoning": False}
    message = message_of(create(client, server, "chat", body))
    assert getattr(message, "reasoning_content", None) is None
    assert message.content == HELLO.content


def test_a_prefilled_assistant_turn_continues(client, server):
    prefill = {"role": "assistant", "content": "Hello! I am",
               "reasoning_content": HELLO.reasoning}
    body = {"messages": [*HELLO.messages, prefill], "max_tokens": 30, "temperature": 0,
            "continue_final_message": True, "add_generation_prompt": False}
    message = message_of(create(client, server, "chat", body))
    assert "Hello! I am" + message.content == HELLO.content \
        or ("Hello! I am " + message.content) == HELLO.content, message.content


@pytest.mark.parametrize("seed", range(4))
def test_thinking_off_keeps_a_think_block_in_the_content(seed):
    text = "<think>\nnot reasoning\n</think>\n\nThe answer."
    whole = parse_whole(text, parse_tools=False, thinking=False)
    assert (whole.reasoning, whole.content) == ("", text)
    parser = OutputParser(thinking=False)
    step = seed + 1
    pieces = [parser.feed(text[i:i + step]) for i in range(0, len(text), step)]
    pieces.append(parser.finish())
    assert "".join(p.reasoning for p in pieces) == ""
    assert "".join(p.content for p in pieces) == text
    assert parse_whole(text, parse_tools=False).reasoning == "not reasoning"


# ---- ignored fields: a warning once per name, and the header -----------------------------


def test_ignored_fields_are_listed_in_a_header_and_warned_once(server, caplog):
    body = {"messages": HI, "max_tokens": 2, "frobnicate_once": 1, "add_special_tokens": True}
    url = f"{server.url}/chat/completions"
    with caplog.at_level(logging.WARNING, logger="jupyter_qwen.server"):
        first = httpx.post(url, json=body, timeout=30)
        second = httpx.post(url, json=body, timeout=30)
        with httpx.stream("POST", url, json=body | {"stream": True}, timeout=30) as streamed:
            lines = [line for line in streamed.iter_lines() if line]
            header = streamed.headers["x-ignored-fields"]
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["x-ignored-fields"] == "add_special_tokens, frobnicate_once"
    assert header == "add_special_tokens, frobnicate_once" and lines[-1] == "data: [DONE]"
    warnings = [r.getMessage() for r in caplog.records if "frobnicate_once" in r.getMessage()]
    assert len(warnings) == 1 and caplog.records[0].levelno == logging.WARNING
    clean = httpx.post(url, json={"messages": HI, "max_tokens": 2}, timeout=30)
    assert "x-ignored-fields" not in clean.headers
    completion = httpx.post(f"{server.url}/completions", json={
        "prompt": "a", "max_tokens": 2, "frobnicate_once": 1}, timeout=30)
    assert completion.headers["x-ignored-fields"] == "frobnicate_once"
    json.loads(completion.text)


# ---- `param` of schema errors names the field, not the union member pydantic tried -------


SCHEMA_ERRORS = [
    ({"messages": HI, "tool_choice": {"type": "function", "function": {"name": ""}}},
     "tool_choice.function.name"),
    ({"messages": HI, "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages.0.content.0.text"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": HI, "stop": [1]}, "stop.0"),
]


@pytest.mark.parametrize(("body", "param"), SCHEMA_ERRORS)
def test_schema_errors_name_a_real_path(server, body, param):
    response = httpx.post(f"{server.url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# ---- docs/openai-compatibility.md against the code ---------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "openai-compatibility.md"
ROW = re.compile(r"^\| `([^`]+)` \| ([a-z ]+) \|")


def doc_tables() -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    section = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = tables.setdefault(line[3:].strip(), {})
        elif (match := ROW.match(line)) and section is not None:
            assert match[1] not in section, f"{match[1]} twice"
            section[match[1]] = match[2].strip()
    return tables


FIELD_TABLES = {"`POST /v1/chat/completions`": (ChatCompletionRequest, "chat/completions"),
                "`POST /v1/completions`": (CompletionRequest, "completions")}


@pytest.mark.parametrize("title", FIELD_TABLES)
def test_the_field_table_matches_the_request_models(title):
    model, _ = FIELD_TABLES[title]
    rows = doc_tables()[title]
    declared = set(model.model_fields)
    assert set(rows.values()) <= {"honoured", "rejected", "ignored"}
    assert declared <= set(rows), f"fields missing from the table: {declared - set(rows)}"
    for name, status in rows.items():
        if status == "honoured":
            assert name in declared and name not in DECLARED_UNUSED, name
        elif status == "rejected":
            assert name in REJECTED and name not in declared, name
        else:
            assert name in DECLARED_UNUSED or (name not in declared and name not in REJECTED)


def test_every_refused_field_is_in_a_table():
    tables = doc_tables()
    rejected = {name for title in FIELD_TABLES for name, status in tables[title].items()
                if status == "rejected"}
    assert rejected == set(REJECTED)


@pytest.mark.parametrize("title", FIELD_TABLES)
def test_the_server_does_what_the_field_table_says(server, title):
    """Every rejected field gets its 400, every ignored one the header."""
    _, route = FIELD_TABLES[title]
    base = {"messages": HI} if route == "chat/completions" else {"prompt": "a"}
    url = f"{server.url}/{route}"
    for name, status in doc_tables()[title].items():
        if status == "honoured":
            continue
        value = False if name in DECLARED_UNUSED else "surely not harmless"
        response = httpx.post(url, json=base | {"max_tokens": 1, name: value}, timeout=30)
        if status == "rejected":
            assert response.status_code == 400, name
            assert response.json()["error"]["param"] == name
        else:
            assert response.status_code == 200, (name, response.text)
            assert response.headers["x-ignored-fields"] == name


def route_key(method: str, path: str) -> str:
    return f"{method} {re.sub(r'{[^}]*}', '{}', path)}"


def test_the_route_table_matches_the_app(server):
    from fastapi.routing import APIRoute

    from jupyter_qwen.server.app import router

    served = {route_key(method, route.path_format) for route in router.routes
              if isinstance(route, APIRoute) for method in route.methods}
    rows = doc_tables()["Routes"]
    assert {route_key(*key.split(" ", 1)) for key, status in rows.items()
            if status == "served"} == served
    for key, status in rows.items():
        method, path = key.split(" ", 1)
        if status == "not served":
            response = httpx.request(method, server.root_url + path.replace("{", "").replace(
                "}", ""), json={})
            assert response.status_code in (404, 405), key


def test_ignored_field_names_beyond_latin1_are_percent_encoded(server):
    response = httpx.post(f"{server.url}/chat/completions", timeout=30, json={
        "messages": HI, "max_tokens": 1, "\U000106df, x": 1})
    assert response.status_code == 200
    assert response.headers["x-ignored-fields"] == "%F0%90%9B%9F%2C%20x"


# ---- the Responses API (in part) ----------------------------------------------------------

RESPONSES_TOOL = {"type": "function", "name": TOOL["function"]["name"],
                  "description": TOOL["function"]["description"],
                  "parameters": TOOL["function"]["parameters"]}


def test_responses_create_retrieve_delete(client, server):
    response = client.responses.create(model=server.served_model_name, input="Hello!",
                                       max_output_tokens=200, temperature=0)
    assert response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == HELLO.reasoning
    assert response.output_text == HELLO.content
    assert client.responses.retrieve(response.id).output_text == HELLO.content
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    plain = client.responses.create(model=server.served_model_name, input="Hello!",
                                    max_output_tokens=200, temperature=0,
                                    reasoning={"effort": "none"})
    assert [item.type for item in plain.output] == ["message"]
    assert plain.output_text == DEMO_PROMPTS["hello_no_thinking"].content


def test_responses_tool_round_trip_on_the_stored_conversation(client, server):
    question = "What is the weather in Paris?"
    first = client.responses.create(model=server.served_model_name, input=question,
                                    tools=[RESPONSES_TOOL], max_output_tokens=100,
                                    temperature=0)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model=server.served_model_name, previous_response_id=first.id, tools=[RESPONSES_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "sunny, 21 °C"}], max_output_tokens=200, temperature=0)
    assert second.output_text == DEMO_PROMPTS["weather_answer"].content
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens // 2


UNSUPPORTED_RESPONSES = [({"background": True}, "background"),
                         ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
                         ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
                         ({"input": [{"type": "message", "role": "user", "content": [
                             {"type": "input_image", "image_url": "http://x"}]}]},
                          "input.0.content.0"),
                         ({"previous_response_id": "resp_nope"}, "response_id"),
                         ({"max_output_tokens": 1100}, "max_output_tokens")]


@pytest.mark.parametrize(("fields", "param"), UNSUPPORTED_RESPONSES)
def test_responses_refuse_what_they_cannot_do(server, fields, param):
    response = httpx.post(f"{server.url}/responses", timeout=30,
                          json={"input": "Hello!", "max_output_tokens": 2} | fields)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param


def test_responses_list_ignored_fields(server):
    response = httpx.post(f"{server.url}/responses", timeout=30, json={
        "input": "Hello!", "max_output_tokens": 2, "truncation": "auto"})
    assert response.status_code == 200 and response.headers["x-ignored-fields"] == "truncation"
