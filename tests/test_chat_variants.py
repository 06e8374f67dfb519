"""The Qwen3 family as it ships: hybrid, Instruct-2507 and Thinking-2507 chat templates.

Templates, variant detection and the output parser's start state are checked directly; then
each variant's taught tiny checkpoint (tests/variant_script.py) is served and driven through
the openai SDK and LangChain over a multi-turn conversation with a tool call, streamed and
not.
"""

import httpx
import pytest
from transformers import AutoTokenizer
from variant_script import (
    ANSWER,
    CALL,
    CALL_ID,
    CLOSING,
    GREETING,
    HELLO,
    REPLIES,
    VARIANTS,
    conversation,
    expected_reasoning,
    written,
)

from jupyter_qwen import serve
from jupyter_qwen.demo.chat_template import CHAT_TEMPLATE, chat_template_for
from jupyter_qwen.demo.script import DEMO_TOOLS, get_weather
from jupyter_qwen.server.chat import OutputParser
from jupyter_qwen.server.variants import (
    WARNING_HEADER,
    detect_chat_variant,
    ends_inside_think,
    output_parser,
    thinking_warning,
)

HISTORY = [{"role": "user", "content": "Q1"},
           {"role": "assistant", "content": "<think>\nR1\n</think>\n\nA1"},
           {"role": "user", "content": "Q2"},
           {"role": "assistant", "content": "A2", "reasoning_content": "R2"}]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from jupyter_qwen.demo.checkpoint import write_tokenizer_files
    from jupyter_qwen.demo.shapes import get_shape

    out = {}
    for variant in VARIANTS:
        folder = tmp_path_factory.mktemp(f"tokenizer-{variant}")
        write_tokenizer_files(folder, get_shape("tiny"), chat_template_for(variant))
        out[variant] = AutoTokenizer.from_pretrained(folder)
    return out


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_hybrid_is_the_demo_template_unchanged():
    assert chat_template_for() is CHAT_TEMPLATE
    with pytest.raises(ValueError, match="unknown chat template variant"):
        chat_template_for("thinking")


@pytest.mark.parametrize("thinking", [True, False])
def test_generation_prompts(tokenizers, thinking):
    user = [{"role": "user", "content": "Hi"}]
    prompts = {variant: render(tokenizer, user, add_generation_prompt=True,
                               enable_thinking=thinking)
               for variant, tokenizer in tokenizers.items()}
    head = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert prompts["hybrid"] == head + ("" if thinking else "<think>\n\n</think>\n\n")
    assert prompts["instruct-2507"] == head
    assert prompts["thinking-2507"] == head + "<think>\n"


def test_history_keeps_reasoning_as_each_template_does(tokenizers):
    hybrid = render(tokenizers["hybrid"], HISTORY)
    thinking = render(tokenizers["thinking-2507"], HISTORY)
    instruct = render(tokenizers["instruct-2507"], HISTORY)
    # Hybrid and Thinking-2507: earlier turns lose their reasoning, the last turn keeps it.
    assert thinking == hybrid
    assert "R1" not in hybrid and "assistant\nA1<|im_end|>" in hybrid
    assert "assistant\n<think>\nR2\n</think>\n\nA2<|im_end|>" in hybrid
    # Instruct-2507 renders what was sent, and never reasoning_content.
    assert "assistant\n<think>\nR1\n</think>\n\nA1<|im_end|>" in instruct
    assert "R2" not in instruct and "assistant\nA2<|im_end|>" in instruct


@pytest.mark.parametrize("variant", VARIANTS)
def test_tool_markup_is_the_same_in_every_variant(tokenizers, variant):
    messages = conversation(2)
    messages[1] = messages[1] | {"tool_calls": [{"type": "function", "id": CALL_ID,
                                                 "function": {"name": "get_weather",
                                                              "arguments": {"city": "Paris"}}}]}
    text = render(tokenizers[variant], messages, tools=DEMO_TOOLS)
    assert "<tools>\n" in text and '"name": "get_weather"' in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call><|im_end|>') in text
    assert (f"<|im_start|>user\n<tool_response>\n{get_weather('Paris')}\n</tool_response>"
            "<|im_end|>") in text


def test_the_variant_is_read_from_the_template(tokenizers):
    assert {variant: detect_chat_variant(tokenizer)
            for variant, tokenizer in tokenizers.items()} == {v: v for v in VARIANTS}


def test_a_template_that_cannot_render_is_unknown(tokenizers):
    class Broken:
        def apply_chat_template(self, *args, **kwargs):
            raise ValueError("no chat template")

    assert detect_chat_variant(Broken()) == "unknown"


def test_ends_inside_think():
    assert ends_inside_think("assistant\n<think>\n")
    assert ends_inside_think("assistant\n<think>\nhalf a thought")
    assert not ends_inside_think("assistant\n<think>\n\n</think>\n\n")
    assert not ends_inside_think("assistant\n")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("thinking", [True, False])
def test_parser_starts_from_what_the_prompt_leaves_open(tokenizers, variant, thinking):
    tokenizer = tokenizers[variant]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=True,
                                        add_generation_prompt=True, return_dict=False,
                                        enable_thinking=thinking)
    text = written(variant, ANSWER)
    whole = output_parser(tokenizer, ids, variant, thinking, parse_tools=False)
    first, last = whole.feed(text), whole.finish()
    streamed = output_parser(tokenizer, ids, variant, thinking, parse_tools=False)
    pieces = [streamed.feed(char) for char in text] + [streamed.finish()]
    for reasoning, content in [(first.reasoning + last.reasoning, first.content + last.content),
                               ("".join(p.reasoning for p in pieces),
                                "".join(p.content for p in pieces))]:
        if variant == "hybrid" and not thinking:
            # The model was told not to think: whatever it writes is content, tags included.
            assert (reasoning, content) == ("", text.strip())
        else:
            assert reasoning == (expected_reasoning(variant, ANSWER) or "")
            assert content == ANSWER.content


def test_a_parser_started_in_reasoning_splits_at_the_closing_tag():
    parser = OutputParser(parse_tools=True, state="reasoning")
    first = parser.feed("\nthinking...\n</thi")
    rest = parser.feed('nk>\n\nok <tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>')
    tail = parser.finish()
    assert first.reasoning + rest.reasoning + tail.reasoning == "thinking..."
    assert first.content + rest.content + tail.content == "ok"
    assert [call["function"]["name"] for call in rest.tool_calls + tail.tool_calls] == ["f"]


def test_warnings_for_a_switch_the_template_lacks():
    assert thinking_warning("instruct-2507", True) and "never thinks" in \
        thinking_warning("instruct-2507", True)
    assert "always thinks" in thinking_warning("thinking-2507", False)
    for variant, requested in [("instruct-2507", None), ("instruct-2507", False),
                               ("thinking-2507", True), ("thinking-2507", None),
                               ("hybrid", True), ("hybrid", False), ("unknown", True)]:
        assert thinking_warning(variant, requested) is None


# End to end: each variant's taught checkpoint behind the server.

@pytest.fixture(scope="module", params=VARIANTS)
def server(request, variant_model):
    instance = serve(variant_model(request.param), max_model_len=512, progress=False)
    yield instance
    instance.stop()


def ask(server, upto: int, stream: bool, **extra):
    """Reply `upto` of the conversation through the openai SDK: (content, reasoning,
    tool calls as (name, arguments), finish reason)."""
    client = server.openai_client()
    request = dict(model=server.served_model_name, messages=conversation(upto),
                   tools=DEMO_TOOLS, temperature=0, extra_body=extra)
    if not stream:
        choice = client.chat.completions.create(**request).choices[0]
        calls = [(c.function.name, c.function.arguments)
                 for c in choice.message.tool_calls or []]
        return (choice.message.content, getattr(choice.message, "reasoning_content", None),
                calls, choice.finish_reason)
    content, reasoning, calls, finish = "", "", {}, None
    for chunk in client.chat.completions.create(**request, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
        for call in delta.tool_calls or []:
            calls[call.index] = (call.function.name, call.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    return content or None, reasoning or None, list(calls.values()), finish


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_sdk_over_a_conversation_with_a_tool(server, stream):
    variant = server.chat_variant
    for upto, turn in REPLIES.items():
        content, reasoning, calls, finish = ask(server, upto, stream)
        assert reasoning == expected_reasoning(variant, turn), (variant, upto)
        if turn.calls_tool:
            assert calls == [("get_weather", '{"city": "Paris"}')] and finish == "tool_calls"
            assert content is None
        else:
            assert (content, calls, finish) == (turn.content, [], "stop"), (variant, upto)


def test_the_variant_is_in_models_and_status(server):
    card = server.openai_client().models.list().data[0]
    assert card.model_extra["chat_variant"] == server.chat_variant
    assert server.chat_variant in VARIANTS
    assert server.stats()["chat_variant"] == server.chat_variant


def test_enable_thinking_the_template_cannot_honour_is_warned(server):
    variant = server.chat_variant
    url = f"{server.url}/chat/completions"
    body = {"model": server.served_model_name, "temperature": 0,
            "messages": [{"role": "user", "content": HELLO}]}
    for enable in (True, False):
        for stream in (False, True):
            reply = httpx.post(url, json=body | {"enable_thinking": enable, "stream": stream},
                               timeout=60)
            assert reply.status_code == 200
            warning = reply.headers.get(WARNING_HEADER)
            cannot = (variant, enable) in {("instruct-2507", True), ("thinking-2507", False)}
            assert bool(warning) == cannot, (variant, enable, stream, warning)
    quiet = httpx.post(url, json=body, timeout=60)
    assert WARNING_HEADER not in quiet.headers


def test_thinking_off_on_thinking_2507_still_splits_the_reasoning(server):
    if server.chat_variant != "thinking-2507":
        pytest.skip("only Thinking-2507 ignores enable_thinking=false")
    client = server.openai_client()
    reply = client.chat.completions.with_raw_response.create(
        model=server.served_model_name, temperature=0, extra_body={"enable_thinking": False},
        messages=[{"role": "user", "content": HELLO}])
    assert "always thinks" in reply.headers[WARNING_HEADER]
    message = reply.parse().choices[0].message
    assert (message.content, message.reasoning_content) == (GREETING.content,
                                                            GREETING.reasoning)


def test_thinking_2507_with_a_budget_ends_its_reasoning_and_answers(server):
    """The prompt opened the think block: the budget counts from there, the engine closes the
    reasoning with the early-stopping text, and the constrained answer follows."""
    if server.chat_variant != "thinking-2507":
        pytest.skip("only Thinking-2507's prompt opens the think block itself")
    reply = server.openai_client().chat.completions.create(
        model=server.served_model_name, temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": HELLO}],
        extra_body={"thinking_token_budget": 3,
                    "structured_outputs": {"choice": ["yes", "no"]}})
    message = reply.choices[0].message
    assert "Considering the limited time" in message.reasoning_content
    assert "<think>" not in message.reasoning_content
    assert message.content in ("yes", "no")


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_langchain_chat_model_over_a_conversation_with_a_tool(server, stream):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    variant = server.chat_variant
    chat = server.chat_model(temperature=0).bind_tools([get_weather])

    def reply(messages):
        if not stream:
            return chat.invoke(messages)
        whole = None
        for chunk in chat.stream(messages):
            whole = chunk if whole is None else whole + chunk
        return whole

    messages = [HumanMessage(conversation(1)[0]["content"])]
    call = reply(messages)
    [tool_call] = call.tool_calls
    assert (tool_call["name"], tool_call["args"]) == ("get_weather", {"city": "Paris"})
    assert call.additional_kwargs.get("reasoning_content") == \
        expected_reasoning(variant, CALL)
    messages += [call, ToolMessage(get_weather("Paris"), tool_call_id=tool_call["id"])]
    answer = reply(messages)
    assert answer.content == ANSWER.content and not answer.tool_calls
    assert answer.additional_kwargs.get("reasoning_content") == \
        expected_reasoning(variant, ANSWER)
    messages += [AIMessage(answer.content), HumanMessage(conversation(3)[-1]["content"])]
    closing = reply(messages)
    assert closing.content == CLOSING.content
    assert closing.additional_kwargs.get("reasoning_content") == \
        expected_reasoning(variant, CLOSING)


def test_command_line_writes_each_variant(tmp_path):
    import argparse
    import json

    from jupyter_qwen.demo.cli import add_make_tiny_model_command

    parser = argparse.ArgumentParser()
    add_make_tiny_model_command(parser.add_subparsers())
    for variant in VARIANTS:
        folder = tmp_path / variant
        args = parser.parse_args(["make-tiny-model", str(folder), "--num-hidden-layers", "1",
                                  "--chat-variant", variant])
        assert args.run(args) == 0
        template = chat_template_for(variant)
        assert (folder / "chat_template.jinja").read_text() == template
        assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] \
            == template
    with pytest.raises(SystemExit):
        parser.parse_args(["make-tiny-model", str(tmp_path), "--chat-variant", "thinking"])
