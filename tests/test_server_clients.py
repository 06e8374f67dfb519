"""Real clients against the server: LangChain's ChatOpenAI, and a server inside a real kernel."""

import asyncio
import socket
import textwrap

import httpx
import pytest
from langchain_openai import ChatOpenAI

from jupyter_qwen import serve


@pytest.fixture(scope="module")
def server(tiny_model_path):
    instance = serve(tiny_model_path, max_model_len=512, progress=False)
    yield instance
    instance.stop()


@pytest.fixture
def chat(server):
    """A fresh client per test: its async side belongs to one event loop."""
    return ChatOpenAI(base_url=server.url, api_key="EMPTY", model=server.served_model_name,
                      max_tokens=8, temperature=0, http_async_client=httpx.AsyncClient())


def test_invoke_and_stream_agree(chat):
    whole = chat.invoke("Say something")
    pieces = list(chat.stream("Say something"))
    assert whole.content == "".join(piece.content for piece in pieces)
    assert whole.response_metadata["finish_reason"] in ("length", "stop")
    assert whole.usage_metadata["output_tokens"] <= 8


def test_async_invoke_and_stream(chat):
    async def run():
        whole = await chat.ainvoke("Say something")
        pieces = [piece async for piece in chat.astream("Say something")]
        return whole, pieces

    whole, pieces = asyncio.run(run())
    assert whole.content == "".join(piece.content for piece in pieces)


def test_batch_and_abatch_of_32(chat):
    prompts = [f"prompt number {i}" for i in range(32)]
    replies = chat.batch(prompts)
    again = asyncio.run(chat.abatch(prompts))
    assert len(replies) == len(again) == 32
    assert [r.content for r in replies] == [r.content for r in again]
    assert all(r.usage_metadata["output_tokens"] >= 1 for r in replies)


def test_chat_model_helper_is_bound_to_the_server(server):
    model = server.chat_model(max_tokens=4, temperature=0)
    assert model.openai_api_base == server.url
    assert model.invoke("hi").content is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_in_kernel(client, code: str, timeout: float = 180) -> str:
    reply = client.execute_interactive(code, timeout=timeout, output_hook=_collect_output)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(_collect_output.texts)


def _collect_output(message):
    if message["msg_type"] == "stream":
        _collect_output.texts.append(message["content"]["text"])
    elif message["msg_type"] == "error":
        _collect_output.texts.append("\n".join(message["content"]["traceback"]))


_collect_output.texts = []


def test_server_inside_a_running_kernel_restarts_on_the_same_port(tiny_model_path):
    from jupyter_client.manager import start_new_kernel

    port = free_port()
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        start = textwrap.dedent(f"""
            import asyncio, jupyter_qwen
            assert asyncio.get_event_loop().is_running()
            server = jupyter_qwen.serve({str(tiny_model_path)!r}, port={port},
                                        max_model_len=256, progress=False)
            print("URL", server.url)
        """)
        assert f"URL http://127.0.0.1:{port}/v1" in run_in_kernel(client, start)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        run_in_kernel(client, "server.stop()")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        run_in_kernel(client, start)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        run_in_kernel(client, "server.stop()")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def demo_server(demo_model):
    instance = serve(demo_model, progress=False)
    yield instance
    instance.stop()


def test_chat_model_keeps_reasoning_that_plain_chatopenai_drops(demo_server):
    from jupyter_qwen.demo import DEMO_PROMPTS

    hello = DEMO_PROMPTS["hello"]
    chat = demo_server.chat_model(temperature=0)
    reply = chat.invoke("Hello!")
    assert reply.content == hello.content
    assert reply.additional_kwargs["reasoning_content"] == hello.reasoning
    streamed = None
    for chunk in chat.stream("Hello!"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.content == hello.content
    assert streamed.additional_kwargs["reasoning_content"] == hello.reasoning
    plain = ChatOpenAI(base_url=demo_server.url, api_key="EMPTY", temperature=0,
                       model=demo_server.served_model_name).invoke("Hello!")
    assert plain.content == hello.content
    assert "reasoning_content" not in plain.additional_kwargs


def test_thinking_switches(demo_server):
    from jupyter_qwen.demo import DEMO_PROMPTS

    client = demo_server.openai_client()
    ask = lambda **extra: client.chat.completions.create(  # noqa: E731
        model=demo_server.served_model_name, temperature=0,
        messages=[{"role": "user", "content": "What is 2 + 2?"}], extra_body=extra
    ).choices[0].message
    thinking = ask()
    assert thinking.content == DEMO_PROMPTS["arithmetic"].content
    assert thinking.reasoning_content == thinking.reasoning == DEMO_PROMPTS["arithmetic"].reasoning
    quiet = ask(enable_thinking=False)
    assert quiet.content == DEMO_PROMPTS["arithmetic_no_thinking"].content
    assert getattr(quiet, "reasoning_content", None) is None
    hidden = ask(chat_template_kwargs={"return_reasoning": False})
    assert hidden.content == thinking.content
    assert getattr(hidden, "reasoning_content", None) is None


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
def test_bind_tools_round_trip(demo_server, streamed):
    from langchain_core.messages import HumanMessage, ToolMessage

    from jupyter_qwen.demo import DEMO_PROMPTS, get_weather

    chat = demo_server.chat_model(temperature=0).bind_tools([get_weather])
    messages = [HumanMessage("What is the weather in Paris?")]
    if streamed:
        call = None
        for chunk in chat.stream(messages):
            call = chunk if call is None else call + chunk
    else:
        call = chat.invoke(messages)
    [tool_call] = call.tool_calls
    assert tool_call["name"] == "get_weather" and tool_call["args"] == {"city": "Paris"}
    assert call.response_metadata["finish_reason"] == "tool_calls"
    assert call.additional_kwargs["reasoning_content"]
    result = get_weather(**tool_call["args"])
    messages += [call, ToolMessage(result, tool_call_id=tool_call["id"])]
    answer = chat.invoke(messages)
    assert answer.content == DEMO_PROMPTS["weather_answer"].content
    assert not answer.tool_calls
