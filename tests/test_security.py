"""Loopback is not a trust boundary: the Host allow-list (DNS rebinding), the session routes'
credentials, api_key="auto", and no CORS — against real servers on the tiny model."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from jupyter_qwen import serve
from jupyter_qwen.options import ConfigError
from jupyter_qwen.server import registry
from jupyter_qwen.server.security import HostPolicy, host_name, host_policy

EVIL = "evil.example.com"
ADDED = "notebook.example.org"
HI = [{"role": "user", "content": "hi"}]


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# ---- parsing Host values ---------------------------------------------------------------------


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8000", "127.0.0.1"), ("localhost", "localhost"), ("LocalHost:80", "localhost"),
    ("localhost.", "localhost"), ("localhost.:8000", "localhost"), ("[::1]:8000", "::1"),
    ("[::1]", "::1"), ("[0:0:0:0:0:0:0:1]:9", "::1"), ("  Evil.Example.COM  ", EVIL),
    ("localhost:", "localhost"),
    ("", None), (":8000", None), ("::1", None), ("[::1", None), ("[::1]x", None),
    ("[::1]:http", None), ("[evil.com]", None), ("localhost:80:80", None),
    ("localhost:port", None), ("a b", None), ("local/host", None), ("localhost:123456", None),
    ("user@localhost", None), (".", None),
])
def test_host_values_are_read_as_browsers_send_them(header, name):
    assert host_name(header) == name


LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.1:8000", "127.8.9.10:1", "localhost:8000",
                  "LOCALHOST.", "app.localhost:8000", "[::1]:8000", "[::ffff:127.0.0.1]:80"]
REFUSED_HOSTS = [EVIL, "attacker.test:80", "", ":80", "localhost.evil.com",
                 "evillocalhost", "127.0.0.1.evil.com", "[::2]:80", "10.0.0.5:8000",
                 "0.0.0.0:8000", "[::]:8000", "::1", "127.1", "[::1"]


@pytest.mark.parametrize("header", LOOPBACK_HOSTS)
def test_loopback_names_pass_everywhere(header):
    assert HostPolicy().allows(header)
    assert host_policy("127.0.0.1").allows(header)


@pytest.mark.parametrize("header", REFUSED_HOSTS)
def test_other_names_are_refused_on_loopback(header):
    assert not host_policy("127.0.0.1").allows(header)


def test_added_names_a_wildcard_and_star():
    policy = host_policy("127.0.0.1", (ADDED, "*.corp.example", "Box.Lan.", "[fd00::5]:80"))
    for header in (ADDED, f"{ADDED.upper()}.:443", "a.corp.example", "x.y.corp.example:9",
                   "box.lan", "[fd00::5]:8000"):
        assert policy.allows(header), header
    for header in ("corp.example", "evilcorp.example", f"x{ADDED}", EVIL):
        assert not policy.allows(header), header
    assert host_policy("127.0.0.1", ("*",)).allows(EVIL)
    for wrong in ("*.", "*", "", "a b", "evil.com/x", "*.[::1]"):
        if wrong != "*":
            with pytest.raises(ConfigError, match="allowed_hosts") as caught:
                host_policy("127.0.0.1", (wrong,))
            assert caught.value.field == "allowed_hosts"


def test_a_missing_host_passes_and_an_empty_one_does_not():
    assert HostPolicy().allows(None)
    assert not HostPolicy().allows("")


def test_a_server_on_every_address_answers_to_the_machines_names_and_addresses():
    import psutil

    hostname = socket.gethostname().lower()
    wildcard = host_policy("0.0.0.0")
    assert wildcard.allows(f"{hostname}:8000") and wildcard.allows("0.0.0.0:8000")
    addresses = [a.address for nic in psutil.net_if_addrs().values() for a in nic
                 if a.family == socket.AF_INET]
    assert addresses and all(wildcard.allows(f"{address}:8000") for address in addresses)
    assert not wildcard.allows(EVIL) and not wildcard.allows("203.0.113.9")
    one_address = host_policy("10.1.2.3")
    assert one_address.allows("10.1.2.3:80") and one_address.allows(hostname)
    assert not one_address.allows("10.1.2.4") and not one_address.allows(EVIL)
    assert host_policy("::").allows("[::]:80") and host_policy("::1").allows("[::1]:80")
    if hostname not in ("localhost",) and not hostname.endswith(".localhost"):
        assert not host_policy("127.0.0.1").allows(hostname), "loopback: loopback names only"


# ---- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_model_path):
    instance = serve(tiny_model_path, max_model_len=256, allowed_hosts=[ADDED],
                     progress=False)
    yield instance
    instance.stop()


def openapi_routes(server) -> list[tuple[str, str]]:
    schema = httpx.get(f"{server.root_url}/openapi.json", timeout=10).json()
    return [(method.upper(), path) for path, methods in schema["paths"].items()
            for method in methods]


def every_request(server) -> list[tuple[str, str, dict | None]]:
    """Each route of the schema, the schema and docs themselves, an unknown path and an SSE
    stream: (method, path, JSON body)."""
    bodies = {"/v1/chat/completions": {"model": server.served_model_name, "messages": HI,
                                       "max_tokens": 2},
              "/v1/completions": {"prompt": "hi", "max_tokens": 2}}
    requests = [(method, path.replace("{session_id}", "s1"), bodies.get(path))
                for method, path in openapi_routes(server)]
    stream = bodies["/v1/chat/completions"] | {"stream": True}
    return [*requests, ("GET", "/openapi.json", None), ("GET", "/docs", None),
            ("GET", "/redoc", None), ("GET", "/docs/oauth2-redirect", None),
            ("GET", "/no/such/path", None), ("POST", "/v1/chat/completions", stream)]


def send(server, method: str, path: str, body: dict | None, host: str,
         headers: dict | None = None) -> httpx.Response:
    return httpx.request(method, server.root_url + path, json=body, timeout=30,
                         headers={"Host": host, **(headers or {})})


def test_a_host_not_allowed_gets_403_on_every_route(server):
    requests = every_request(server)
    paths = {path for _, path, _ in requests}
    assert {"/health", "/metrics", "/v1/models", "/v1/sessions", "/admin/stop",
            "/openapi.json", "/docs"} <= paths
    for host in (EVIL, "attacker.test:80", f"{EVIL}:{server.port}", "",
                 f"localhost.{EVIL}"):
        for method, path, body in requests:
            response = send(server, method, path, body, host,
                            {"X-Admin-Token": server.admin_token})
            assert response.status_code == 403, (host, method, path, response.text[:200])
            error = error_of(response)
            assert error["code"] == "host_not_allowed" and error["type"] == "permission_error"
            assert not response.headers.get("content-type", "").startswith("text/event-stream")
    assert server.state == "ok", "the admin stop was refused too"


def test_allowed_names_and_the_added_one_pass_every_route(server):
    requests = [r for r in every_request(server) if r[1] != "/admin/stop"]
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST.",
                 f"app.localhost:{server.port}", ADDED, f"{ADDED.upper()}.:443"):
        for method, path, body in requests:
            response = send(server, method, path, body, host)
            assert response.status_code != 403, (host, method, path, response.text[:200])
    streamed = send(server, *every_request(server)[-1][:3], ADDED)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "data: [DONE]" in streamed.text


def raw_status(server, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = connection.recv(4096)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /health HTTP/1.0\r\n", 200),  # no Host at all: no name to rebind
    (b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n", 200),
    (b"GET /health HTTP/1.1\r\nHost: [::1]:1\r\n", 200),
    (b"GET /health HTTP/1.1\r\nHost: localhost.\r\n", 200),
    (b"GET /health HTTP/1.1\r\nHost: LOCALHOST:1\r\n", 200),
    (b"GET /health HTTP/1.1\r\nHost: \r\n", 403),
    (b"GET /health HTTP/1.0\r\nHost: evil.example.com\r\n", 403),
    (b"GET /health HTTP/1.1\r\nHost: localhost\r\nHost: evil.example.com\r\n", 403),
    (b"GET /health HTTP/1.1\r\nHost: ::1\r\n", 403),
])
def test_host_edge_cases_over_a_raw_connection(server, head, status):
    assert raw_status(server, head + b"Connection: close\r\n\r\n") == status


def test_session_routes_need_the_admin_token_without_a_key(server):
    client = server.openai_client()
    client.chat.completions.create(model=server.served_model_name, messages=HI, max_tokens=2,
                                   extra_body={"session_id": "private-notes-7"})
    listing = httpx.get(f"{server.url}/sessions")
    assert listing.status_code == 401 and "private-notes-7" not in listing.text
    assert error_of(listing)["code"] == "invalid_admin_token"
    wrong = httpx.get(f"{server.url}/sessions", headers={"X-Admin-Token": "guess"})
    assert wrong.status_code == 401
    deleted = httpx.delete(f"{server.url}/sessions/private-notes-7")
    assert deleted.status_code == 401
    owner = {"X-Admin-Token": server.admin_token}
    ids = [s["id"] for s in httpx.get(f"{server.url}/sessions", headers=owner).json()["data"]]
    assert ids == ["private-notes-7"]
    assert httpx.delete(f"{server.url}/sessions/private-notes-7",
                        headers=owner).status_code == 200


def test_cross_origin_text_plain_posts_get_400_and_no_cors_headers(server):
    body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    origin = {"Origin": "http://evil.example.com"}
    for path in ("/v1/chat/completions", "/v1/completions"):
        response = httpx.post(server.root_url + path, content=body, timeout=30,
                              headers=origin | {"Content-Type": "text/plain"})
        assert response.status_code == 400, response.text
        assert not any(name.startswith("access-control-") for name in response.headers)
    preflight = httpx.options(f"{server.url}/chat/completions", headers=origin | {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code >= 400
    assert not any(name.startswith("access-control-") for name in preflight.headers)


def test_the_sidebars_tornado_client_reaches_health_and_admin(server):
    from jupyter_qwen.labserver.handlers import _fetch

    async def probe():
        health = await _fetch(f"{server.root_url}/health", request_timeout=10)
        clean = await _fetch(f"{server.root_url}/admin/clean", method="POST", body=b"{}",
                             headers={"X-Admin-Token": server.admin_token,
                                      "Content-Type": "application/json"},
                             request_timeout=60)
        return health.code, clean.code

    assert asyncio.run(probe()) == (200, 200)


# ---- a server with a key ---------------------------------------------------------------------


def test_session_routes_need_the_key_when_there_is_one(tiny_model_path):
    keyed = serve(tiny_model_path, api_key="sekret", max_model_len=256, progress=False)
    try:
        assert httpx.get(f"{keyed.url}/sessions").status_code == 401
        assert httpx.delete(f"{keyed.url}/sessions/x").status_code == 401
        with_key = {"Authorization": "Bearer sekret"}
        assert httpx.get(f"{keyed.url}/sessions", headers=with_key).status_code == 200
        assert httpx.delete(f"{keyed.url}/sessions/x", headers=with_key).status_code == 404
        owner = {"X-Admin-Token": keyed.admin_token}
        assert httpx.get(f"{keyed.url}/sessions", headers=owner).status_code == 200
    finally:
        keyed.stop()


def test_an_auto_key_is_random_required_and_carried_by_the_clients(tiny_model_path):
    from jupyter_qwen.notebook.widgets import ServerPanel

    first = serve(tiny_model_path, api_key="auto", max_model_len=256, progress=False)
    second = serve(tiny_model_path, api_key="auto", max_model_len=256, progress=False)
    try:
        key = first.api_key
        assert key not in (None, "auto") and len(key) >= 32 and second.api_key != key
        assert first.options.api_key == "auto"
        assert httpx.get(f"{first.url}/models").status_code == 401
        assert httpx.get(f"{first.url}/models", headers={
            "Authorization": f"Bearer {second.api_key}"}).status_code == 401
        reply = first.chat_model(max_tokens=4, temperature=0).invoke("hi")
        assert isinstance(reply.content, str)
        completion = first.openai_client().chat.completions.create(
            model=first.served_model_name, messages=HI, max_tokens=2)
        assert completion.usage.completion_tokens >= 1
        panel = ServerPanel(first)
        snippet = panel.snippet
        panel.close()
        assert "api_key=qwen_server.api_key" in snippet and key not in snippet
        record = registry.get_record(first.record.id)
        path = registry.registry_dir() / f"server-{record.id}.json"
        # the registry file holds the key for the Jupyter proxy, readable by its owner only,
        # like the admin token beside it; a record's public view leaves it out
        assert record.api_key_required and record.api_key == key
        assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0
        assert key not in json.dumps(record.to_dict(public=True))
    finally:
        first.stop()
        second.stop()
