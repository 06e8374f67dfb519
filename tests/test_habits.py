"""Habits from other servers' recipes: a literal `extra_body` in a raw HTTP body, loose model
names, and fields other servers know that change nothing here."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import httpx
import pytest

from jupyter_qwen import serve
from jupyter_qwen.demo import DEMO_PROMPTS
from jupyter_qwen.server.fields import FROM_OTHER_SERVERS, merge_extra_body
from jupyter_qwen.server.names import model_names
from jupyter_qwen.server.options import ServerOptions

HELLO = DEMO_PROMPTS["hello"]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(demo_model):
    instance = serve(demo_model, max_model_len=1024, progress=False)
    yield instance
    instance.stop()


def hello_body(**fields) -> dict:
    return {"messages": HELLO.messages, "max_tokens": 200, "temperature": 0} | fields


def sse_deltas(response: httpx.Response) -> list[dict]:
    events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [delta for event in events[:-1] for choice in json.loads(event)["choices"]
            if (delta := choice.get("delta"))]


# ---- a literal extra_body -----------------------------------------------------------------


def test_literal_extra_body_turns_thinking_off(server):
    url = f"{server.url}/chat/completions"
    thinking = httpx.post(url, json=hello_body(), timeout=60)
    assert thinking.json()["choices"][0]["message"]["reasoning_content"] == HELLO.reasoning
    assert "x-merged-fields" not in thinking.headers
    response = httpx.post(url, json=hello_body(extra_body={"enable_thinking": False}),
                          timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-merged-fields"] == "extra_body"
    assert "x-ignored-fields" not in response.headers
    message = response.json()["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert message["content"] == DEMO_PROMPTS["hello_no_thinking"].content


def test_literal_extra_body_turns_thinking_off_when_streamed(server):
    body = hello_body(stream=True, extra_body={"chat_template_kwargs": {
        "enable_thinking": False}})
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body,
                      timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["x-merged-fields"] == "extra_body"
        deltas = sse_deltas(response)
    assert not any(delta.get("reasoning_content") for delta in deltas)
    assert "".join(delta.get("content") or "" for delta in deltas) \
        == DEMO_PROMPTS["hello_no_thinking"].content


def test_literal_extra_body_in_completions_and_responses(server):
    completion = httpx.post(f"{server.url}/completions", timeout=60, json={
        "prompt": "Once upon", "max_tokens": 6, "extra_body": {"ignore_eos": True}})
    assert completion.status_code == 200, completion.text
    assert completion.headers["x-merged-fields"] == "extra_body"
    assert completion.json()["usage"]["completion_tokens"] == 6
    response = httpx.post(f"{server.url}/responses", timeout=60, json={
        "input": "Hello!", "max_output_tokens": 200, "temperature": 0,
        "extra_body": {"reasoning": {"effort": "none"}}})
    assert response.status_code == 200, response.text
    assert response.headers["x-merged-fields"] == "extra_body"
    assert [item["type"] for item in response.json()["output"]] == ["message"]


BAD_EXTRA_BODIES = [
    ({"enable_thinking": True, "extra_body": {"enable_thinking": False}},
     "extra_body.enable_thinking"),
    ({"extra_body": {"max_tokens": 3}}, "extra_body.max_tokens"),
    ({"extra_body": ["enable_thinking"]}, "extra_body"),
    ({"extra_body": "enable_thinking=false"}, "extra_body"),
    ({"extra_body": {"top_k": "many"}}, "top_k"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_EXTRA_BODIES)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_extra_body_is_a_400_naming_it(server, fields, param, stream):
    body = {"messages": HI, "max_tokens": 3, "stream": stream} | fields
    response = httpx.post(f"{server.url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert "x-merged-fields" not in response.headers


def test_merge_extra_body():
    assert merge_extra_body({"a": 1, "extra_body": {"b": 2}}) == {"a": 1, "b": 2}
    assert merge_extra_body({"a": 1, "extra_body": None}) == {"a": 1}
    assert merge_extra_body({"extra_body": {"extra_body": {"c": 3}}}) == {
        "extra_body": {"c": 3}}


# ---- fields of other servers that change nothing here -------------------------------------


def test_enable_cache_is_accepted_with_a_warning_header(server, caplog):
    url = f"{server.url}/chat/completions"
    body = {"messages": HI, "max_tokens": 2, "session_id": "habits", "enable_cache": True}
    with caplog.at_level(logging.WARNING, logger="jupyter_qwen.server"):
        first = httpx.post(url, json=body, timeout=30)
        second = httpx.post(url, json=body | {"stream": True}, timeout=30)
    for response in (first, second):
        assert response.status_code == 200, response.text
        assert response.headers["x-no-effect-fields"] == "enable_cache"
        assert "x-ignored-fields" not in response.headers
    warnings = [r.getMessage() for r in caplog.records if "enable_cache" in r.getMessage()]
    assert len(warnings) == 1 and "LMDeploy" in warnings[0]
    merged = httpx.post(url, timeout=30, json={"messages": HI, "max_tokens": 2,
                                              "extra_body": {"separate_reasoning": True}})
    assert merged.headers["x-no-effect-fields"] == "separate_reasoning"
    other = httpx.post(url, json=body | {"enable_cache": False}, timeout=30)
    assert other.status_code == 200
    assert other.headers["x-ignored-fields"] == "enable_cache"
    assert "x-no-effect-fields" not in other.headers
    plain = httpx.post(url, json={"messages": HI, "max_tokens": 2}, timeout=30)
    assert "x-no-effect-fields" not in plain.headers


def field_rows(title: str) -> dict[str, str]:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "openai-compatibility.md").read_text()
    section = doc.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| ([a-z ]+) \|", section, re.MULTILINE))


def test_the_table_of_other_servers_fields_matches_the_code():
    rows = field_rows("Fields from other servers")
    assert rows == {name: "no effect" for name in FROM_OTHER_SERVERS}


# ---- model names: several served names and aliases ----------------------------------------


@pytest.fixture(scope="module")
def hub_checkpoint(tiny_model_path, tmp_path_factory) -> Path:
    """The tiny checkpoint laid out as the Hugging Face cache keeps Qwen/Qwen3-0.6B."""
    snapshot = tmp_path_factory.mktemp("hub") / "models--Qwen--Qwen3-0.6B" / "snapshots"
    snapshot.mkdir(parents=True)
    (snapshot / "0123abc").symlink_to(tiny_model_path, target_is_directory=True)
    return snapshot / "0123abc"


@pytest.fixture(scope="module")
def named(hub_checkpoint):
    instance = serve(str(hub_checkpoint), served_model_name=["qwen-a", "qwen-b"],
                     max_model_len=256, progress=False)
    yield instance
    instance.stop()


def test_a_server_answers_to_its_names_and_aliases(named):
    for name in ("qwen-a", "qwen-b", "QWEN-A", "Qwen/Qwen3-0.6B", "qwen3-0.6b", "Qwen3-0.6B",
                 str(named.model)):
        response = httpx.post(f"{named.url}/chat/completions", timeout=30, json={
            "model": name, "messages": HI, "max_tokens": 2})
        assert response.status_code == 200, (name, response.text)
        assert response.json()["model"] == "qwen-a"
    assert named.served_model_name == "qwen-a" and named.record.served_model_name == "qwen-a"
    assert named.stats()["model"] == "qwen-a"


def test_models_lists_the_served_names_with_the_aliases(named):
    cards = httpx.get(f"{named.url}/models").json()["data"]
    assert [card["id"] for card in cards] == ["qwen-a", "qwen-b"]
    assert {"Qwen/Qwen3-0.6B", "Qwen3-0.6B"} <= set(cards[0]["aliases"])
    assert httpx.get(f"{named.url}/models/qwen-b").json()["id"] == "qwen-b"
    assert httpx.get(f"{named.url}/models/Qwen/Qwen3-0.6B").json()["id"] == "qwen-a"


@pytest.mark.parametrize("route", ["chat/completions", "completions", "models/Qwen-0.6B"])
def test_another_name_is_a_404_listing_the_names(named, route):
    body = {"model": "Qwen-0.6B", "messages": HI, "prompt": "a", "max_tokens": 2}
    if route.startswith("models/"):
        response = httpx.get(f"{named.url}/{route}", timeout=30)
    else:
        response = httpx.post(f"{named.url}/{route}", json=body, timeout=30)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    for name in ("'qwen-a'", "'qwen-b'", "'Qwen/Qwen3-0.6B'", "'Qwen3-0.6B'"):
        assert name in error["message"]


def test_the_names_of_a_model():
    hub = Path("/cache/hub/models--Qwen--Qwen3-1.7B/snapshots/abc")
    assert model_names("Qwen/Qwen3-1.7B", None, hub).all() == ("Qwen3-1.7B", "Qwen/Qwen3-1.7B")
    local = model_names("/models/Qwen3-0.6B", None, Path("/models/Qwen3-0.6B"))
    assert local.served == ("Qwen3-0.6B",)
    assert local.aliases == ("/models/Qwen3-0.6B", "Qwen/Qwen3-0.6B")
    assert model_names("/tmp/tiny", ("a", "b")).all() == ("a", "b", "tiny", "/tmp/tiny")
    assert not local.answers_to("Qwen3-1.7B") and local.answers_to(None)


def test_served_model_name_takes_several_names():
    from jupyter_qwen.__main__ import build_parser

    assert ServerOptions(served_model_name="a, b").served_model_name == ("a", "b")
    assert ServerOptions(served_model_name="one").served_model_name == ("one",)
    args = build_parser().parse_args(["serve", "m", "--served-model-name", "a",
                                      "--served-model-name", "b,c"])
    assert args.served_model_name == ("a", "b", "c")
