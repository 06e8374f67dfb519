"""Tiny checkpoints of each Qwen3 chat template variant, taught one multi-turn conversation
with a tool call, so that greedy decoding gives known text through the whole server.

Each turn is (reasoning, content); what the model is taught to write after the prompt
depends on the variant: a whole think block (hybrid), the reasoning and `</think>` only
(thinking-2507, whose prompt opened the block), or the content only (instruct-2507).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from jupyter_qwen.demo.script import DEMO_TOOLS, ScriptedTurn, get_weather

VARIANTS = ("hybrid", "instruct-2507", "thinking-2507")
CALL_ID = "call_variant_weather"
CALL_BLOCK = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
              "</tool_call>")
QUESTION, THANKS, HELLO = "What is the weather in Paris?", "Thank you!", "Hello!"


class Turn(NamedTuple):
    reasoning: str
    content: str
    calls_tool: bool = False


GREETING = Turn("A greeting. I greet back.", "Hello from the variant model.")
CALL = Turn("The weather needs the tool.", "", calls_tool=True)
ANSWER = Turn("The tool said sunny.", "It is sunny in Paris, 21 °C.")
CLOSING = Turn("They thank me. I close kindly.", "You are welcome!")


def expected_reasoning(variant: str, turn: Turn) -> str | None:
    """The reply's reasoning_content: none on a model that never thinks."""
    return None if variant == "instruct-2507" else turn.reasoning


def written(variant: str, turn: Turn) -> str:
    """What the model writes after the variant's generation prompt, for `turn`."""
    text = CALL_BLOCK if turn.calls_tool else turn.content
    if variant == "hybrid":
        return f"<think>\n{turn.reasoning}\n</think>\n\n{text}"
    if variant == "thinking-2507":
        return f"{turn.reasoning}\n</think>\n\n{text}"
    return text


def call_message() -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": [{
        "type": "function", "id": CALL_ID,
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}


def conversation(upto: int) -> list[dict[str, Any]]:
    """The OpenAI messages before reply `upto` (1: the tool call, 2: the answer with the
    tool's result, 3: the reply to a follow-up turn)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    if upto >= 2:
        messages += [call_message(),
                     {"role": "tool", "tool_call_id": CALL_ID, "content": get_weather("Paris")}]
    if upto >= 3:
        messages += [{"role": "assistant", "content": ANSWER.content},
                     {"role": "user", "content": THANKS}]
    return messages


REPLIES = {1: CALL, 2: ANSWER, 3: CLOSING}


def _as_template_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the server hands them to the template (tool-call arguments parsed)."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            message = message | {"tool_calls": [{
                "type": "function", "id": CALL_ID,
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
        out.append(message)
    return out


def script(variant: str) -> list[ScriptedTurn]:
    turns = [ScriptedTurn([{"role": "user", "content": HELLO}], None, True,
                          written(variant, GREETING))]
    for upto, turn in REPLIES.items():
        turns.append(ScriptedTurn(_as_template_input(conversation(upto)), DEMO_TOOLS, True,
                                  written(variant, turn)))
    return turns


def make_variant_model(folder: Path, variant: str) -> Path:
    from jupyter_qwen.testing import make_tiny_qwen3

    return make_tiny_qwen3(folder, variant=variant, script=script(variant))
