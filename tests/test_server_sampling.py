"""logit_bias, min_tokens, stop_token_ids and allowed_token_ids on both OpenAI routes, and
400s in OpenAI's error shape naming the field for bad values."""

from __future__ import annotations

import httpx
import openai
import pytest

from jupyter_qwen import serve

PROMPT = [11, 250, 37, 1200, 999, 4, 86]


@pytest.fixture(scope="module")
def server(tiny_model_path):
    instance = serve(tiny_model_path, max_model_len=256, progress=False)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def complete(client, server, **kwargs):
    return client.completions.create(model=server.served_model_name, prompt=PROMPT, **kwargs)


def chat(client, server, **kwargs):
    return client.chat.completions.create(
        model=server.served_model_name, messages=[{"role": "user", "content": "Hi there"}],
        **kwargs)


def test_logit_bias_forces_the_token_on_both_routes(client, server, tokenizer):
    token = 345
    text = complete(client, server, max_tokens=5, temperature=0.8, seed=1,
                    logit_bias={str(token): 100}, extra_body={"ignore_eos": True})
    assert text.choices[0].text == tokenizer.decode([token] * 5)
    reply = chat(client, server, max_tokens=4, logit_bias={str(token): 100},
                 extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 4
    assert reply.choices[0].message.content == tokenizer.decode([token] * 4)


def test_allowed_token_ids_and_stop_token_ids(client, server, tokenizer):
    allowed = [300, 301, 302]
    out = complete(client, server, max_tokens=10, temperature=1.0, seed=2,
                   extra_body={"allowed_token_ids": allowed, "ignore_eos": True})
    assert out.usage.completion_tokens == 10
    ids = tokenizer.encode(out.choices[0].text, add_special_tokens=False)
    assert set(ids) <= set(allowed)
    stopped = complete(client, server, max_tokens=10, temperature=0,
                       logit_bias={"302": 100}, extra_body={"stop_token_ids": [302]})
    assert stopped.usage.completion_tokens == 1 and stopped.choices[0].finish_reason == "stop"
    reply = chat(client, server, max_tokens=10, logit_bias={"302": 100},
                 extra_body={"stop_token_ids": [302]})
    assert reply.usage.completion_tokens == 1 and reply.choices[0].finish_reason == "stop"


def test_min_tokens_holds_back_eos(client, server, tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    early = complete(client, server, max_tokens=10, temperature=0, logit_bias={str(eos): 100})
    assert early.usage.completion_tokens == 1 and early.choices[0].finish_reason == "stop"
    held = complete(client, server, max_tokens=10, temperature=0, logit_bias={str(eos): 100},
                    extra_body={"min_tokens": 4})
    assert held.usage.completion_tokens == 5 and held.choices[0].finish_reason == "stop"
    reply = chat(client, server, max_tokens=10, logit_bias={str(eos): 100},
                 extra_body={"min_tokens": 3})
    assert reply.usage.completion_tokens == 4


BAD = [
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"5": -100.5}}, "logit_bias"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": "much"}}, "logit_bias"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": [1, 5000]}, "allowed_token_ids"),
    ({"allowed_token_ids": [-1]}, "allowed_token_ids"),
    ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ({"stop_token_ids": "7"}, "stop_token_ids"),
]


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
@pytest.mark.parametrize(("fields", "name"), BAD)
def test_bad_values_get_400_naming_the_field(server, route, fields, name):
    body = {"model": server.served_model_name, "max_tokens": 8} | fields
    if route == "completions":
        body["prompt"] = PROMPT
    else:
        body["messages"] = [{"role": "user", "content": "Hi"}]
    response = httpx.post(f"{server.url}/{route}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].split(".")[0] == name, error
    assert name in error["message"]


def test_the_sdk_raises_bad_request_for_a_bad_bias(client, server):
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, server, max_tokens=4, logit_bias={"3": 250})
    assert caught.value.body["param"] == "logit_bias"
