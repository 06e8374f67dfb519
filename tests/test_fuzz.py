"""Bad input does no harm: schemathesis against the server's own OpenAPI schema, and Hypothesis
over the output parsers and the chat template.

Each test prints one `FUZZ ...` line with what it tried; RELIABILITY.md quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from jupyter_qwen import serve
from jupyter_qwen.sampling_params import MAX_SEED
from jupyter_qwen.server.chat import (
    TOOL_CLOSE,
    TOOL_OPEN,
    OutputParser,
    parse_tool_call,
    parse_whole,
    template_messages,
    template_tools,
)
from jupyter_qwen.server.protocol import ChatMessage, Tool

EXAMPLES_PER_OPERATION = {"POST /v1/chat/completions": 100, "POST /v1/completions": 100,
                          "POST /v1/responses": 60, "DELETE /v1/sessions/{session_id}": 30}
ADMIN_OPERATIONS = ("POST /admin/stop", "POST /admin/clean")
QUICK = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}


def summary(name: str, **figures) -> None:
    print(f"\nFUZZ {name}: " + ", ".join(f"{key}={value}" for key, value in figures.items()),
          flush=True)


# ---- the HTTP API, from its own schema -----------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_model_path):
    instance = serve(tiny_model_path, max_model_len=128, progress=False)
    yield instance
    instance.stop()


def fuzz_operation(operation, mode: GenerationMode, root: str, statuses: Counter) -> None:
    """Send generated cases for one operation; fail on any 5xx, or an admin route that
    answers anything but 401 without its token."""
    label = operation.label
    admin = label in ADMIN_OPERATIONS

    @settings(max_examples=EXAMPLES_PER_OPERATION.get(label, 10), phases=[Phase.generate],
              **QUICK)
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case):
        response = case.call(base_url=root, timeout=60)
        statuses[(label, response.status_code)] += 1
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        assert not streamed_server_errors(response), (case.as_curl_command(), response.text[-500:])
        assert not admin or response.status_code == 401, response.text[:500]

    with contextlib.suppress(Unsatisfiable):
        send()


def streamed_server_errors(response) -> list[dict]:
    """The errors with a 5xx code inside an event stream (which went out as a 200)."""
    content_type = response.headers.get("content-type") or ""
    if isinstance(content_type, list):  # schemathesis keeps every value of a header
        content_type = ",".join(content_type)
    if not content_type.startswith("text/event-stream"):
        return []
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: {")]
    errors = [event.get("error", event) for event in events
              if "error" in event or event.get("type") == "error"]
    return [error for error in errors if str(error.get("code", "")).startswith("5")]


def test_schemathesis_finds_no_server_error(server):
    """Every operation of /openapi.json, with valid (positive) and invalid (negative) inputs.
    Operations without inputs are covered by their single possible request."""
    schema = schemathesis.openapi.from_url(f"{server.root_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: Counter = Counter()
    start = time.perf_counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(operation, mode, server.root_url, statuses)
    elapsed = time.perf_counter() - start
    client = httpx.Client(base_url=server.root_url, timeout=30,
                          headers={"X-Admin-Token": server.admin_token})
    for session in client.get("/v1/sessions").json()["data"]:
        assert client.delete(f"/v1/sessions/{quote(session['id'], safe='')}").status_code == 200
    health = client.get("/health")
    engine = health.json()["engine"]
    assert health.status_code == 200 and engine["step_failures"] == 0
    assert engine["num_free_blocks"] == engine["num_kv_blocks"]
    labels = {operation.label for operation in operations}
    assert labels >= {"POST /v1/chat/completions", "POST /v1/completions", *ADMIN_OPERATIONS}
    by_status = Counter()
    for (_, status), count in statuses.items():
        by_status[status] += count
    summary("schemathesis", operations=len(operations), cases=sum(statuses.values()),
            seconds=f"{elapsed:.0f}",
            statuses=" ".join(f"{status}:{count}" for status, count in sorted(by_status.items())),
            admin_401=sum(count for (label, _), count in statuses.items()
                          if label in ADMIN_OPERATIONS),
            server_errors=0, health_after=health.status_code, step_failures=0,
            kv_blocks_free_after=f"{engine['num_free_blocks']}/{engine['num_kv_blocks']}")


HI = [{"role": "user", "content": "hi"}]
HOSTILE_BODIES = {
    "seed beyond 64 bits": {"messages": HI, "seed": MAX_SEED + 1},
    "seed that overflows with n": {"messages": HI, "seed": MAX_SEED, "n": 2},
    "session_id object in chat_template_kwargs": {
        "messages": HI, "chat_template_kwargs": {"session_id": {"a": 1}}},
    "session_id list in chat_template_kwargs": {
        "messages": HI, "chat_template_kwargs": {"session_id": [1]}},
    "session_id number in chat_template_kwargs": {
        "messages": HI, "chat_template_kwargs": {"session_id": 7}},
    "enable_thinking object in chat_template_kwargs": {
        "messages": HI, "chat_template_kwargs": {"enable_thinking": {}}},
    "top_k text in chat_template_kwargs": {
        "messages": HI, "chat_template_kwargs": {"top_k": "many"}},
    "JSON nested 100,000 deep": "[" * 100_000,
    "an integer of 5,000 digits": '{"messages": [], "max_tokens": ' + "1" * 5000 + "}",
    "tool arguments nested 100,000 deep": {"messages": [
        {"role": "assistant", "tool_calls": [{"function": {"name": "f",
                                                           "arguments": "[" * 100_000}}]},
        *HI]},
}


def test_hostile_bodies_get_400_while_other_requests_go_on(server):
    """Requests that once failed the engine step of everyone in flight (a seed beyond 64
    bits, a session id of the wrong type) or escaped as a 500: each is a 400 now, and a
    request streaming meanwhile finishes untouched."""
    url = f"{server.url}/chat/completions"
    body = {"messages": HI, "max_tokens": 100, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}

    async def run() -> tuple[dict, dict]:
        async with httpx.AsyncClient(timeout=60) as client:
            async def bystander() -> dict:
                async with client.stream("POST", url, json=body) as response:
                    lines = [line async for line in response.aiter_lines() if line]
                return json.loads(lines[-2][6:])

            running = asyncio.ensure_future(bystander())
            statuses = {}
            for name, hostile in HOSTILE_BODIES.items():
                content = hostile if isinstance(hostile, str) else json.dumps(hostile)
                response = await client.post(url, content=content,
                                             headers={"content-type": "application/json"})
                statuses[name] = response.status_code
            return statuses, await running

    statuses, last_event = asyncio.run(run())
    assert statuses == dict.fromkeys(HOSTILE_BODIES, 400)
    assert last_event["usage"]["completion_tokens"] == 100
    assert server.stats()["step_failures"] == 0
    summary("hostile bodies", bodies=len(statuses), answered_400=len(statuses),
            bystander_tokens=last_event["usage"]["completion_tokens"], step_failures=0)


# ---- model output: reasoning and tool calls ------------------------------------------------

TAG_PIECES = ["<think>", "</think>", TOOL_OPEN, TOOL_CLOSE, "<", ">", "/", "<t", "</", "<tool",
              "_call>", "think>", "\n", "\n\n", " ", "\t", "\r", "{", "}", '"', ":", ",",
              '{"name": "f", "arguments": {"x": 1}}', '{"name": "g"}', '"\\ud800"', "NaN",
              "[" * 3000, "1" * 5000, "é", "😀", "<think>\nhmm\n</think>\n\n",
              f'{TOOL_OPEN}\n{{"name": "f", "arguments": {{"x": 1}}}}\n{TOOL_CLOSE}',
              f'{TOOL_OPEN}{{"name": "f", "arguments": {{"a": "\\ud800"}}}}{TOOL_CLOSE}',
              f'{TOOL_OPEN}{{"name": "f", "arguments": NaN}}{TOOL_CLOSE}',
              f'{TOOL_OPEN}{{"name": "f", "arguments": {"1" * 5000}}}{TOOL_CLOSE}']
model_text = st.lists(st.one_of(st.sampled_from(TAG_PIECES), st.text(max_size=8)),
                      max_size=30).map("".join)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


def split(text: str, at: list[int]) -> list[str]:
    points = sorted({point % (len(text) + 1) for point in at})
    return [text[start:end] for start, end in zip([0, *points], [*points, len(text)],
                                                  strict=True)]


def comparable(reasoning: str, content: str, calls: list[dict]) -> tuple:
    return reasoning, content, [(call["index"], call["function"]) for call in calls]


def streamed(pieces: list[str], parse_tools: bool) -> tuple:
    parser = OutputParser(parse_tools=parse_tools)
    deltas = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    return comparable("".join(delta.reasoning for delta in deltas),
                      "".join(delta.content for delta in deltas),
                      [call for delta in deltas for call in delta.tool_calls])


def test_any_split_of_any_output_parses_like_the_whole():
    seen = Counter()

    @settings(max_examples=1500, **QUICK)
    @given(text=model_text, at=cuts, parse_tools=st.booleans())
    def check(text, at, parse_tools):
        whole = parse_whole(text, parse_tools)
        pieces = split(text, at)
        assert streamed(pieces, parse_tools) == comparable(
            whole.reasoning, whole.content, whole.tool_calls), pieces
        for value in (whole.reasoning, whole.content,
                      *(json.dumps(call, ensure_ascii=False) for call in whole.tool_calls)):
            value.encode()
        seen["examples"] += 1
        seen["pieces"] += len(pieces)
        seen["tool_calls"] += len(whole.tool_calls)
        seen["with_reasoning"] += bool(whole.reasoning)

    check()
    summary("output parser", examples=seen["examples"], pieces=seen["pieces"],
            tool_calls_found=seen["tool_calls"], with_reasoning=seen["with_reasoning"],
            raised=0, streamed_differs_from_whole=0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=12)
plain_text = st.text(max_size=40).filter(lambda text: "<" not in text)


def test_structured_output_comes_back_as_it_was_written():
    seen = Counter()

    @settings(max_examples=600, **QUICK)
    @given(reasoning=plain_text, content=plain_text,
           calls=st.lists(st.tuples(st.text(min_size=1, max_size=10),
                                    st.dictionaries(st.text(max_size=6), json_values,
                                                    max_size=3)), max_size=3),
           at=cuts)
    def check(reasoning, content, calls, at):
        reasoning, content = reasoning.strip(), content.strip()
        blocks = "".join(f"\n{TOOL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}"
                         f"\n{TOOL_CLOSE}" for name, arguments in calls)
        text = f"<think>\n{reasoning}\n</think>\n\n{content}{blocks}"
        parsed = parse_whole(text, parse_tools=True)
        assert parsed.reasoning == reasoning and parsed.content == content
        assert [(call["function"]["name"], json.loads(call["function"]["arguments"]))
                for call in parsed.tool_calls] == calls
        assert streamed(split(text, at), True) == comparable(
            parsed.reasoning, parsed.content, parsed.tool_calls)
        seen["examples"] += 1
        seen["tool_calls"] += len(calls)

    check()
    summary("structured output round trip", examples=seen["examples"],
            tool_calls=seen["tool_calls"], mismatches=0)


def test_tool_call_bodies_never_raise_and_only_yield_strict_json():
    seen = Counter()

    @settings(max_examples=800, **QUICK)
    @given(body=st.one_of(model_text, json_values.map(json.dumps),
                          st.builds(lambda name, args: json.dumps({"name": name,
                                                                   "arguments": args}),
                                    st.text(max_size=8), json_values)))
    def check(body):
        call = parse_tool_call(body)
        seen["examples"] += 1
        if call is None:
            return
        json.dumps(call, ensure_ascii=False).encode()
        written = json.loads(body)
        if not isinstance(written.get("arguments", written.get("parameters")), str):
            json.loads(call["function"]["arguments"], parse_constant=_refuse_constant)
        seen["calls"] += 1

    check()
    summary("tool-call bodies", examples=seen["examples"], calls=seen["calls"], raised=0)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# ---- the chat template ---------------------------------------------------------------------

short_text = st.text(max_size=20)
maybe = lambda strategy: st.none() | strategy  # noqa: E731
content = st.one_of(st.none(), short_text, st.lists(st.builds(
    lambda text: {"type": "text", "text": text}, short_text), max_size=3))
tool_call = st.builds(
    lambda call_id, name, arguments: {"id": call_id, "type": "function",
                                      "function": {"name": name, "arguments": arguments}},
    maybe(short_text), short_text,
    st.one_of(short_text, st.dictionaries(st.text(max_size=6), json_values, max_size=3)))
message = st.builds(
    lambda role, body, name, calls, call_id, reasoning: ChatMessage.model_validate(
        {"role": role, "content": body, "name": name, "tool_calls": calls,
         "tool_call_id": call_id, "reasoning_content": reasoning}),
    st.sampled_from(["system", "developer", "user", "assistant", "tool"]), content,
    maybe(short_text), maybe(st.lists(tool_call, max_size=2)), maybe(short_text),
    maybe(short_text))
tool = st.builds(
    lambda name, description, parameters: Tool.model_validate(
        {"type": "function", "function": {"name": name, "description": description,
                                          "parameters": parameters}}),
    st.text(min_size=1, max_size=10), maybe(short_text),
    maybe(st.dictionaries(st.text(max_size=6), json_values, max_size=3)))


def test_any_valid_conversation_renders_and_tokenizes(tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    seen = Counter()

    @settings(max_examples=300, **QUICK)
    @given(messages=st.lists(message, min_size=1, max_size=6),
           tools=maybe(st.lists(tool, min_size=1, max_size=3)), thinking=st.booleans())
    def check(messages, tools, thinking):
        options = {"tools": template_tools(tools), "add_generation_prompt": True,
                   "enable_thinking": thinking}
        rendered = tokenizer.apply_chat_template(template_messages(messages), tokenize=False,
                                                 **options)
        ids = tokenizer.apply_chat_template(template_messages(messages), tokenize=True,
                                            return_dict=False, **options)
        assert all(0 <= token < len(tokenizer) for token in ids)
        assert tokenizer.decode(ids, skip_special_tokens=False) == rendered
        ending = "<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
        assert rendered.endswith(ending)
        for item in messages:
            if item.role == "user":
                assert item.text() in rendered
        seen["examples"] += 1
        seen["messages"] += len(messages)
        seen["tokens"] += len(ids)

    check()
    summary("chat template", conversations=seen["examples"], messages=seen["messages"],
            tokens=seen["tokens"], raised=0, decode_differs=0)
