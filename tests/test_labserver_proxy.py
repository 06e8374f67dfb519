"""Each model server's OpenAI routes through the Jupyter server's URL and auth.

A real Jupyter server (pytest-jupyter, listening on a port of its own) runs the labserver
extension; a real demo model server (QwenServer, its own threads) is in the registry. The
openai SDK talks to both, directly and through `{jupyter}/jupyter-qwen/servers/<id>/v1`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import time

import httpx
import openai
import pytest
from jupyter_server.auth import IdentityProvider

from jupyter_qwen import serve
from jupyter_qwen.demo import DEMO_PROMPTS
from jupyter_qwen.server import registry

pytest_plugins = ["pytest_jupyter.jupyter_server"]

HELLO = DEMO_PROMPTS["hello"].messages
LONG = 400  # tokens: on CPU this takes far longer than one chunk's trip through the proxy


class TokenSchemeOnly(IdentityProvider):
    """An identity provider that reads only ``Authorization: token ...`` (as older ones do)."""

    auth_header_pat = re.compile(r"(token)\s+(.+)", re.IGNORECASE)


@pytest.fixture
def jp_server_config(request):
    config = {"ServerApp": {"jpserver_extensions": {"jupyter_qwen.labserver": True}}}
    if request.node.get_closest_marker("token_scheme_only"):
        config["ServerApp"]["identity_provider_class"] = TokenSchemeOnly
    return config


@pytest.fixture(scope="module")
def model_server(demo_model):
    instance = serve(demo_model, max_model_len=1024, progress=False)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def keyed_server(demo_model):
    instance = serve(demo_model, api_key="auto", max_model_len=256, progress=False)
    yield instance
    instance.stop()


@pytest.fixture
def jupyter_url(jp_serverapp, http_server, jp_http_port, jp_base_url) -> str:
    """The Jupyter server's address with its base URL (pytest-jupyter's has a %40 in it);
    `http_server` makes it listen on that port."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}"


@pytest.fixture
def jupyter_token(jp_serverapp) -> str:
    return jp_serverapp.identity_provider.token


def in_registry(server) -> None:
    """Register the module's server in this test's runtime folder (jp_environ makes a new
    one for each test)."""
    registry.register(server.record)


def clients(server, jupyter_url: str, token: str) -> tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]:
    """(direct, through Jupyter): async, since the Jupyter server runs in this test's loop."""
    direct = openai.AsyncOpenAI(base_url=server.url, api_key=server.api_key or "EMPTY")
    proxied = openai.AsyncOpenAI(base_url=server.proxy_url(jupyter_url), api_key=token)
    return direct, proxied


async def stream_pieces(client: openai.AsyncOpenAI, server, on_first=None, **body) -> list[dict]:
    """The deltas (reasoning or content) of a greedy streamed chat completion, one a chunk."""
    stream = await client.chat.completions.create(
        model=server.served_model_name, messages=HELLO, stream=True, temperature=0, **body)
    pieces = []
    async for chunk in stream:
        delta = chunk.choices[0].delta.model_dump(exclude_none=True) if chunk.choices else {}
        if delta.get("content") or delta.get("reasoning_content"):
            if not pieces and on_first is not None:
                on_first()
            pieces.append(delta)
    return pieces


async def stream_text(client: openai.AsyncOpenAI, server, **body) -> tuple[str, int, int]:
    """(the reasoning and answer text, tokens generated, chunks with text) of a greedy
    streamed chat completion. Chunk boundaries themselves are not compared: the server joins
    tokens into one chunk when its reader is slower than the engine."""
    stream = await client.chat.completions.create(
        model=server.served_model_name, messages=HELLO, stream=True, temperature=0,
        stream_options={"include_usage": True}, **body)
    text, chunks, usage = [], 0, None
    async for chunk in stream:
        usage = chunk.usage or usage
        delta = chunk.choices[0].delta.model_dump(exclude_none=True) if chunk.choices else {}
        piece = delta.get("reasoning_content", "") + (delta.get("content") or "")
        text.append(piece)
        chunks += bool(piece)
    assert usage is not None
    return "".join(text), usage.completion_tokens, chunks


async def wait_idle(server, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = server.stats()
        if stats["requests_running"] == stats["requests_waiting"] == 0:
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError(f"server not idle: {server.stats()}")


# ---- streaming ---------------------------------------------------------------------------


async def test_streamed_tokens_through_jupyter_are_the_direct_ones(
        model_server, jupyter_url, jupyter_token):
    in_registry(model_server)
    direct, proxied = clients(model_server, jupyter_url, jupyter_token)
    body = {"max_tokens": 64, "extra_body": {"ignore_eos": True}}
    expected_text, expected_count, _ = await stream_text(direct, model_server, **body)
    text, count, chunks = await stream_text(proxied, model_server, **body)
    assert expected_count == count == 64 and len(set(expected_text)) > 8
    assert text == expected_text
    assert chunks >= 16  # streamed in pieces, not handed over as one


async def test_chunks_arrive_while_the_server_is_still_generating(
        model_server, jupyter_url, jupyter_token):
    """A buffering proxy would hand over the first chunk only after the request finished."""
    in_registry(model_server)
    _, proxied = clients(model_server, jupyter_url, jupyter_token)
    before = (await wait_idle(model_server))["generation_tokens_total"]
    at_first: dict = {}  # the server's figures when the first chunk arrived

    def first_chunk() -> None:
        at_first.update(model_server.stats())

    pieces = await stream_pieces(proxied, model_server, on_first=first_chunk, max_tokens=LONG,
                                 extra_body={"ignore_eos": True})
    assert len(pieces) > LONG // 2
    # when the first chunk came, the request was still generating, far from its end
    assert at_first["requests_running"] == 1
    assert at_first["generation_tokens_total"] - before < LONG // 2


async def test_a_client_that_goes_away_aborts_the_request_upstream(
        model_server, jupyter_url, jupyter_token):
    in_registry(model_server)
    _, proxied = clients(model_server, jupyter_url, jupyter_token)
    before = (await wait_idle(model_server))["generation_tokens_total"]
    max_tokens = 900
    stream = await proxied.chat.completions.create(
        model=model_server.served_model_name, messages=HELLO, stream=True, temperature=0,
        max_tokens=max_tokens, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.model_dump(exclude_none=True).get(
                "reasoning_content"):
            break
    assert model_server.stats()["requests_running"] == 1
    await stream.close()  # the client hangs up after its first token
    generated = (await wait_idle(model_server))["generation_tokens_total"] - before
    assert 1 <= generated < max_tokens // 2  # aborted, not run to the end


async def test_a_client_that_goes_away_before_the_answer_aborts_it_too(
        model_server, jupyter_url, jupyter_token):
    """A whole (not streamed) answer: nothing comes back until the end, so the proxy must
    notice the hang-up on the idle connection."""
    in_registry(model_server)
    before = (await wait_idle(model_server))["generation_tokens_total"]
    max_tokens = 900
    body = {"model": model_server.served_model_name, "messages": HELLO, "temperature": 0,
            "max_tokens": max_tokens, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.3)) as http:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
            await http.post(f"{model_server.proxy_url(jupyter_url)}/chat/completions",
                            json=body, headers={"Authorization": f"Bearer {jupyter_token}"})
    generated = (await wait_idle(model_server))["generation_tokens_total"] - before
    assert 1 <= generated < max_tokens // 2


# ---- whole answers and other routes ------------------------------------------------------


async def test_whole_answers_and_models_through_jupyter(model_server, jupyter_url, jupyter_token):
    in_registry(model_server)
    direct, proxied = clients(model_server, jupyter_url, jupyter_token)
    body = {"model": model_server.served_model_name, "messages": HELLO, "temperature": 0,
            "max_tokens": 24}
    expected = await direct.chat.completions.create(**body)
    got = await proxied.chat.completions.create(**body)
    assert got.choices[0].message.content == expected.choices[0].message.content
    assert got.usage.completion_tokens == expected.usage.completion_tokens
    assert [m.id for m in (await proxied.models.list()).data] == [
        m.id for m in (await direct.models.list()).data]
    # the model server's own errors come back as they are
    with pytest.raises(openai.NotFoundError) as error:
        await proxied.chat.completions.create(**(body | {"model": "no-such-model"}))
    assert "no-such-model" in error.value.body["message"]


async def test_headers_status_and_token_forms(model_server, jupyter_url, jupyter_token):
    in_registry(model_server)
    base = model_server.proxy_url(jupyter_url)
    async with httpx.AsyncClient() as http:
        for auth in (f"token {jupyter_token}", f"Bearer {jupyter_token}"):
            reply = await http.get(f"{base}/models", headers={"Authorization": auth})
            assert reply.status_code == 200 and reply.json()["object"] == "list"
        reply = await http.get(f"{base}/models?token={jupyter_token}")
        assert reply.status_code == 200
        reply = await http.post(
            f"{base}/chat/completions", headers={"Authorization": f"Bearer {jupyter_token}"},
            json={"model": model_server.served_model_name, "messages": HELLO, "stream": True,
                  "max_tokens": 4})
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["x-accel-buffering"] == "no"
        assert reply.text.rstrip().endswith("data: [DONE]")
        # a status other than 200 passes through, body and all
        reply = await http.post(
            f"{base}/chat/completions", headers={"Authorization": f"Bearer {jupyter_token}"},
            json={"model": model_server.served_model_name, "messages": []})
        assert reply.status_code == 400 and "error" in reply.json()


# ---- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "token wrong-token", "Bearer"])
async def test_requests_without_the_jupyter_token_are_refused(model_server, jupyter_url, auth):
    in_registry(model_server)
    base = model_server.proxy_url(jupyter_url)
    headers = {"Authorization": auth} if auth else {}
    body = {"model": model_server.served_model_name, "messages": HELLO, "max_tokens": 4}
    before = model_server.stats()["prompt_tokens_total"]
    async with httpx.AsyncClient() as http:
        for reply in (await http.get(f"{base}/models", headers=headers),
                      await http.post(f"{base}/chat/completions", headers=headers, json=body),
                      await http.delete(f"{base}/sessions/x", headers=headers)):
            assert reply.status_code == 403, reply.text
            assert reply.json()["error"]["type"] == "permission_error"
    assert model_server.stats()["prompt_tokens_total"] == before  # nothing reached the model


@pytest.mark.token_scheme_only
async def test_bearer_works_where_jupyter_reads_only_token(
        model_server, jupyter_url, jupyter_token):
    """The proxy turns ``Bearer`` into ``token`` for its own route only."""
    in_registry(model_server)
    bearer = {"Authorization": f"Bearer {jupyter_token}"}
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"{model_server.proxy_url(jupyter_url)}/models", headers=bearer)
        assert reply.status_code == 200 and reply.json()["object"] == "list"
    async with httpx.AsyncClient() as http:  # a new client: no login cookie from the above
        reply = await http.get(f"{jupyter_url}jupyter-qwen/servers", headers=bearer)
        assert reply.status_code == 403  # other routes keep the provider's own rules


async def test_the_openai_sdk_with_a_wrong_key_gets_403(model_server, jupyter_url):
    in_registry(model_server)
    client = openai.AsyncOpenAI(base_url=model_server.proxy_url(jupyter_url), api_key="wrong")
    with pytest.raises(openai.PermissionDeniedError):
        await client.models.list()


async def test_a_keyed_server_gets_its_key_from_the_record(
        keyed_server, jupyter_url, jupyter_token, jp_fetch):
    in_registry(keyed_server)
    path = registry.registry_dir() / f"server-{keyed_server.record.id}.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert registry.get_record(keyed_server.record.id).api_key == keyed_server.api_key
    # Jupyter's token opens it; the model server's own key is never shown
    proxied = openai.AsyncOpenAI(base_url=keyed_server.proxy_url(jupyter_url),
                                 api_key=jupyter_token)
    answer = await proxied.chat.completions.create(
        model=keyed_server.served_model_name, messages=HELLO, max_tokens=4)
    assert answer.usage.completion_tokens >= 1
    listing = (await jp_fetch("jupyter-qwen", "servers")).body.decode()
    assert keyed_server.api_key not in listing and "api_key\"" not in listing
    (item,) = json.loads(listing)["servers"]
    assert item["api_key_required"] is True
    # nor is the Jupyter token passed upstream: there it is a wrong key
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"{keyed_server.url}/models",
                               headers={"Authorization": f"Bearer {jupyter_token}"})
    assert reply.status_code == 401


# ---- errors ------------------------------------------------------------------------------


async def test_unknown_server_is_404_in_openai_shape(jupyter_url, jupyter_token, jp_environ):
    async with httpx.AsyncClient() as http:
        for server_id in ("aaaaaaaaaaaa", "not-an-id"):
            reply = await http.get(
                f"{jupyter_url}jupyter-qwen/servers/{server_id}/v1/models",
                headers={"Authorization": f"Bearer {jupyter_token}"})
            assert reply.status_code == 404
            error = reply.json()["error"]
            assert "no running jupyter_qwen server" in error["message"]
            assert error["type"] == "not_found_error" and error["code"] == 404


async def test_unreachable_server_is_502(jupyter_url, jupyter_token, jp_environ):
    lost = registry.new_record(host="127.0.0.1", port=_free_port(), model="lost-one")
    registry.register(lost)
    client = openai.AsyncOpenAI(base_url=f"{jupyter_url}{registry.proxy_path(lost.id)}",
                                api_key=jupyter_token, max_retries=0)
    with pytest.raises(openai.InternalServerError) as error:
        await client.models.list()
    assert error.value.status_code == 502
    assert "did not answer" in error.value.body["message"]


async def test_servers_list_their_proxy_path(model_server, jp_fetch):
    in_registry(model_server)
    (item,) = json.loads((await jp_fetch("jupyter-qwen", "servers")).body)["servers"]
    assert item["proxy_path"] == f"jupyter-qwen/servers/{model_server.record.id}/v1"
    assert model_server.proxy_url("https://hub.example/user/me/") == (
        f"https://hub.example/user/me/{item['proxy_path']}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
