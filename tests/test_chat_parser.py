"""Splitting Qwen3 output into reasoning, content and tool calls, whole and streamed."""

import json
import random

import pytest

from jupyter_qwen.server.chat import OutputParser, parse_whole

THOUGHT = "<think>\nLet me think about it.\nStill thinking.\n</think>\n\nThe answer is 4."
TOOL = ('<think>\nI need the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", '
        '"arguments": {"city": "Paris"}}\n</tool_call>')


def streamed(text: str, parse_tools: bool, seed: int = 0):
    rng = random.Random(seed)
    parser = OutputParser(parse_tools=parse_tools)
    pieces, start = [], 0
    while start < len(text):
        end = start + rng.randint(1, 4)
        pieces.append(parser.feed(text[start:end]))
        start = end
    pieces.append(parser.finish())
    return pieces


def joined(pieces):
    return ("".join(p.reasoning for p in pieces), "".join(p.content for p in pieces),
            [call for p in pieces for call in p.tool_calls])


@pytest.mark.parametrize("seed", range(5))
def test_streaming_split_equals_whole_split(seed):
    for text in (THOUGHT, TOOL, "plain answer", "  <think>\nx\n</think>\n\n  y  "):
        whole = parse_whole(text, parse_tools=True)
        reasoning, content, calls = joined(streamed(text, True, seed))
        assert (reasoning, content) == (whole.reasoning, whole.content)
        assert [c["function"] for c in calls] == [c["function"] for c in whole.tool_calls]


def test_reasoning_and_content_are_split():
    parsed = parse_whole(THOUGHT, parse_tools=False)
    assert parsed.reasoning == "Let me think about it.\nStill thinking."
    assert parsed.content == "The answer is 4."


def test_no_partial_tag_ever_reaches_content_or_reasoning():
    for pieces in (streamed(THOUGHT, True, s) for s in range(20)):
        for piece in pieces:
            for text in (piece.reasoning, piece.content):
                assert "<" not in text and "think>" not in text


def test_tool_call_becomes_an_openai_tool_call():
    parsed = parse_whole(TOOL, parse_tools=True)
    assert parsed.content == ""
    [call] = parsed.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_tool_calls_are_plain_content_when_tools_are_off():
    parsed = parse_whole(TOOL, parse_tools=False)
    assert parsed.tool_calls == [] and parsed.content.startswith("<tool_call>")


@pytest.mark.parametrize("body", ['{"name": "f", "arguments": {', "not json at all",
                                  '["a list"]', '{"arguments": {}}'])
def test_malformed_tool_call_stays_content(body):
    text = f"Sure.\n<tool_call>\n{body}\n</tool_call>"
    parsed = parse_whole(text, parse_tools=True)
    assert parsed.tool_calls == []
    assert parsed.content == f"Sure.\n<tool_call>\n{body}\n</tool_call>"


def test_unterminated_tool_call_and_reasoning_are_not_lost():
    assert parse_whole("ok <tool_call>\n{\"name\": \"f\"", True).content == \
        'ok <tool_call>\n{"name": "f"'
    assert parse_whole("<think>\nhalf a thought", False).reasoning == "half a thought"


def test_several_tool_calls_are_numbered():
    text = "\n".join(f'<tool_call>\n{{"name": "f{i}", "arguments": {{}}}}\n</tool_call>'
                     for i in range(3))
    calls = joined(streamed(text, True))[2]
    assert [c["index"] for c in calls] == [0, 1, 2]
    assert [c["function"]["name"] for c in calls] == ["f0", "f1", "f2"]


def test_text_that_looks_like_a_tag_but_is_not_survives():
    text = "a < b and <thin ice> and <tool_callx>"
    whole = parse_whole(text, parse_tools=True)
    assert whole.content == text
    assert joined(streamed(text, True))[1] == text


def forced_parse(text: str) -> tuple[str, list[dict]]:
    """Streamed a few characters at a time through a parser of forced tool calls."""
    parser = OutputParser(parse_tools=True, thinking=False, forced_tools=True)
    pieces = [parser.feed(text[i:i + 3]) for i in range(0, len(text), 3)] + [parser.finish()]
    return "".join(p.content for p in pieces), [c for p in pieces for c in p.tool_calls]


def test_a_forced_call_cut_short_is_a_call_with_partial_arguments():
    cut = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    content, calls = forced_parse(cut)
    assert content == ""
    assert [c["function"] for c in calls] == [{"name": "get_weather",
                                               "arguments": '{"city": "Par'}]
    with pytest.raises(ValueError):
        json.loads(calls[0]["function"]["arguments"])
    # without a forcing grammar, the same text stays content, as before
    assert parse_whole(cut, parse_tools=True, thinking=False).content == cut.strip()


def test_a_forced_call_whose_string_holds_the_closing_tag_is_read_whole():
    text = ('<tool_call>\n{"name": "note", "arguments": {"text": "a</tool_call>b"}}\n'
            "</tool_call>")
    content, calls = forced_parse(text)
    assert content == ""
    assert json.loads(calls[0]["function"]["arguments"]) == {"text": "a</tool_call>b"}
