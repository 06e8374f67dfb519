"""The OpenAI-compatible server over real HTTP on loopback, with the openai SDK and httpx."""

import asyncio
import json
from urllib.parse import quote

import httpx
import openai
import pytest
from server_waits import wait_idle

from jupyter_qwen import serve
from jupyter_qwen.server import registry


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    instance = serve(tiny_model_path, max_model_len=512, progress=False)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client()


def greedy(**kwargs):
    return {"temperature": 0, "extra_body": {"ignore_eos": True}} | kwargs


def chat(client, server, content="Tell me a story", **kwargs):
    return client.chat.completions.create(
        model=server.served_model_name, messages=[{"role": "user", "content": content}],
        **kwargs)


def test_models_and_health(server):
    models = httpx.get(f"{server.url}/models").json()
    [entry] = models["data"]
    assert entry["id"] == server.served_model_name and entry["max_model_len"] == 512
    health = httpx.get(f"{server.root_url}/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and "engine" in health.json()


def test_chat_completion_counts_tokens(client, server):
    response = chat(client, server, **greedy(max_tokens=12))
    [choice] = response.choices
    assert choice.finish_reason == "length" and isinstance(choice.message.content, str)
    assert response.usage.completion_tokens == 12
    assert response.usage.prompt_tokens > 5
    assert response.usage.total_tokens == response.usage.prompt_tokens + 12


def test_streamed_chat_equals_the_whole_response(client, server):
    whole = chat(client, server, **greedy(max_tokens=20)).choices[0].message.content
    chunks = list(chat(client, server, stream=True, stream_options={"include_usage": True},
                       **greedy(max_tokens=20)))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_n_choices_share_the_prompt(client, server):
    response = chat(client, server, n=2, temperature=1.0, seed=3, max_tokens=8,
                    extra_body={"ignore_eos": True})
    assert [c.index for c in response.choices] == [0, 1]
    assert response.usage.completion_tokens == 16
    assert response.choices[0].message.content != response.choices[1].message.content


def test_stop_string_cuts_the_content(client, server):
    text = chat(client, server, **greedy(max_tokens=30)).choices[0].message.content
    stop = text[8:11]
    cut = chat(client, server, stop=[stop], **greedy(max_tokens=30)).choices[0]
    assert cut.message.content == text[:text.find(stop)]
    assert cut.finish_reason == "stop"


def test_seed_makes_sampling_reproducible(client, server):
    first = chat(client, server, temperature=1.0, seed=11, max_tokens=16).choices[0]
    again = chat(client, server, temperature=1.0, seed=11, max_tokens=16).choices[0]
    other = chat(client, server, temperature=1.0, seed=12, max_tokens=16).choices[0]
    assert first.message.content == again.message.content
    assert first.message.content != other.message.content


def test_logprobs(client, server):
    response = chat(client, server, logprobs=True, top_logprobs=3, **greedy(max_tokens=6))
    content = response.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_text_completions(client, server):
    whole = client.completions.create(model=server.served_model_name, prompt="Once upon",
                                      max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert whole.usage.completion_tokens == 10 and whole.choices[0].finish_reason == "length"
    pieces = client.completions.create(model=server.served_model_name, prompt="Once upon",
                                       max_tokens=10, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    assert "".join(p.choices[0].text for p in pieces if p.choices) == whole.choices[0].text
    echoed = client.completions.create(model=server.served_model_name, prompt=[5, 6, 7],
                                       max_tokens=3, temperature=0, echo=True, logprobs=2)
    assert len(echoed.choices[0].logprobs.tokens) == len(echoed.choices[0].logprobs.top_logprobs)
    batch = client.completions.create(model=server.served_model_name, prompt=["a", "b c"],
                                      max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert [c.index for c in batch.choices] == [0, 1] and batch.usage.completion_tokens == 8


BAD_REQUESTS = [
    ("malformed json", "{not json", 400, None),
    ("missing messages", {"model": "x"}, 400, "messages"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("wrong role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ("bad temperature", {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
     400, "temperature"),
    ("negative max_tokens", {"messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": -5}, 400, "max_tokens"),
    ("too many tokens", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 600},
     400, "max_tokens"),
    ("too long prompt", {"messages": [{"role": "user", "content": "word " * 2000}]}, 400,
     "messages"),
    ("image part", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, None),
    ("bad top_k", {"messages": [{"role": "user", "content": "hi"}], "top_k": -7}, 400,
     "top_k"),
    ("bad top_k in chat_template_kwargs", {"messages": [{"role": "user", "content": "hi"}],
                                           "chat_template_kwargs": {"top_k": -7}}, 400,
     "top_k"),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_clear_errors(server, name, body, status, param):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(f"{server.url}/chat/completions", content=content,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param
    assert httpx.get(f"{server.root_url}/health").status_code == 200


def test_unknown_model_is_404(client, server):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"


def test_chat_fields_on_a_text_completion_are_ignored_whatever_their_value(server):
    """reasoning_effort belongs to chat; on /v1/completions it is an unknown field (named
    in the ignored-fields header), also when its value is not one a chat would take."""
    from jupyter_qwen.server.fields import IGNORED_FIELDS_HEADER

    for effort in ("high", [], {"level": 1}):
        response = httpx.post(f"{server.url}/completions", json={
            "model": server.served_model_name, "prompt": "hi", "max_tokens": 2,
            "reasoning_effort": effort}, timeout=60)
        assert response.status_code == 200, (effort, response.text)
        assert "reasoning_effort" in response.headers[IGNORED_FIELDS_HEADER]


def test_oversized_body_is_413(server):
    response = httpx.post(f"{server.url}/chat/completions", content=b"x" * (33 << 20),
                          headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_fields_are_ignored(client, server):
    response = chat(client, server, max_tokens=3, extra_body={"frobnicate": True})
    assert response.choices[0].message.content is not None


def test_concurrent_streams_and_disconnects_leak_no_blocks(server):
    idle = wait_idle(server)["num_free_blocks"]

    async def one(client, index):
        body = {"model": server.served_model_name, "max_tokens": 24, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"client {index} says hi"}]}
        async with client.stream("POST", f"{server.url}/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            events = 0
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                if index % 4 == 0 and events == 4:
                    return None
                if line == "data: [DONE]":
                    break
                payload = json.loads(line[6:])
                if payload.get("usage"):
                    usage = payload["usage"]
        return usage

    async def run():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(run())
    finished = [r for r in results if r is not None]
    assert len(finished) == 48
    assert all(r["completion_tokens"] == 24 for r in finished)
    assert wait_idle(server)["num_free_blocks"] == idle


def test_sessions_reuse_the_conversation(client, server):
    session_id = "notebook 1/conversation #1"
    system = "You are a careful assistant. " * 20
    history = [{"role": "system", "content": system},
               {"role": "user", "content": "first question " * 5}]
    first = client.chat.completions.create(
        model=server.served_model_name, messages=history, max_tokens=8, temperature=0,
        extra_body={"session_id": session_id, "enable_thinking": False})
    answer = first.choices[0].message.content
    history += [{"role": "assistant", "content": answer},
                {"role": "user", "content": "second question"}]
    second = client.chat.completions.create(
        model=server.served_model_name, messages=history, max_tokens=8, temperature=0,
        extra_body={"session_id": session_id, "enable_thinking": False})
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 0.8 * first.usage.prompt_tokens
    owner = httpx.Client(headers={"X-Admin-Token": server.admin_token})
    sessions = owner.get(f"{server.url}/sessions").json()["data"]
    assert [s["id"] for s in sessions] == [session_id] and sessions[0]["turns"] == 2
    assert owner.delete(f"{server.url}/sessions/{quote(session_id, safe='')}").status_code == 200
    assert owner.delete(f"{server.url}/sessions/{quote(session_id, safe='')}").status_code == 404
    stats = wait_idle(server)
    assert stats["num_free_blocks"] == stats["num_kv_blocks"]


def test_metrics_use_vllm_names(client, server):
    chat(client, server, max_tokens=2)
    text = httpx.get(f"{server.root_url}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries_total",
                 "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_count", "vllm:e2e_request_latency_seconds_sum"):
        assert name in text


def test_api_key_is_enforced(tiny_model_path):
    guarded = serve(tiny_model_path, api_key="sekret", max_model_len=256, progress=False)
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(f"{guarded.url}/chat/completions", json=body).status_code == 401
        wrong = httpx.post(f"{guarded.url}/chat/completions", json=body,
                           headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{guarded.url}/models").status_code == 401
        ok = guarded.openai_client().chat.completions.create(
            model=guarded.served_model_name, messages=body["messages"], max_tokens=2)
        assert ok.usage.completion_tokens >= 1
    finally:
        guarded.stop()


def test_queue_full_is_429(tiny_model_path):
    small = serve(tiny_model_path, max_num_seqs=1, max_num_batched_tokens=64,
                  max_waiting_requests=2, max_model_len=256, progress=False)
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                "ignore_eos": True, "temperature": 0}

        async def flood():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(
                    client.post(f"{small.url}/chat/completions", json=body) for _ in range(8)))

        statuses = sorted(r.status_code for r in asyncio.run(flood()))
        assert 429 in statuses and 200 in statuses
        assert set(statuses) <= {200, 429}
    finally:
        small.stop()


def test_two_servers_admin_stop_and_registry(tiny_model_path):
    first = serve(tiny_model_path, max_model_len=256, progress=False)
    second = serve(tiny_model_path, max_model_len=256, progress=False)
    try:
        assert first.port != second.port
        ids = {record.id for record in registry.list_records()}
        assert {first.record.id, second.record.id} <= ids
        for instance in (first, second):
            reply = instance.openai_client().chat.completions.create(
                model=instance.served_model_name,
                messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            assert reply.choices
        assert httpx.post(f"{first.root_url}/admin/stop").status_code == 401
        stopped = httpx.post(f"{first.root_url}/admin/stop",
                             headers={"X-Admin-Token": first.admin_token})
        reply = stopped.json()
        assert reply["stopped"] is True
        # this process's own figures, never whole-GPU ones
        assert set(reply["before"]) == set(reply["after"]) == {
            "rss", "torch_allocated", "torch_reserved", "process_gpu"}
        assert reply["before"]["rss"] > 0 and reply["after"]["rss"] > 0
        import time

        deadline = time.monotonic() + 15
        while first.state != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.state == "stopped"
        assert first.record.id not in {r.id for r in registry.list_records()}
        cleaned = httpx.post(f"{second.root_url}/admin/clean",
                             headers={"X-Admin-Token": second.admin_token})
        assert cleaned.status_code == 200 and "before" in cleaned.json()
    finally:
        first.stop()
        second.stop()
    assert second.record.id not in {r.id for r in registry.list_records()}
