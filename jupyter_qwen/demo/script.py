"""Scripted conversations that the demo checkpoint is taught (see `jupyter_qwen.demo.teach`).

A random checkpoint never thinks out loud or calls a tool; taught these turns, greedy decoding
replays each scripted assistant turn token for token, so demos and tests can show reasoning,
streaming and a full tool-call round trip with a real engine.

Prompts are rendered by the checkpoint's own chat template, exactly as the server renders
what OpenAI clients send: the weather tool is the schema LangChain's `bind_tools` sends for
`get_weather`, and tool calls come back as objects, not JSON strings.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)
WEATHER_REPORTS = {"Paris": "sunny, 21 °C"}
DEFAULT_WEATHER = "cloudy, 15 °C"


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: Name of the city, for example "Paris".
    """
    return WEATHER_REPORTS.get(city, DEFAULT_WEATHER)


# What langchain_core's convert_to_openai_tool(get_weather) gives; used when it is missing.
GET_WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "properties": {"city": {"description": 'Name of the city, for example "Paris".',
                                    "type": "string"}},
            "required": ["city"],
            "type": "object",
        },
    },
}


def _weather_tool() -> dict[str, Any]:
    try:
        from langchain_core.utils.function_calling import convert_to_openai_tool
    except ImportError:
        return GET_WEATHER_TOOL
    return convert_to_openai_tool(get_weather)


DEMO_TOOLS: list[dict[str, Any]] = [_weather_tool()]

SYSTEM_MESSAGE = {"role": "system", "content": "You are a helpful assistant."}
WEATHER_CALL_ID = "call_demo_weather"


class ScriptedTurn(NamedTuple):
    """A conversation up to an assistant turn, and the text that turn must be.

    `messages` and `tools` are what the chat template gets (shared: copy before changing);
    `answer` is the raw assistant text without `<|im_end|>`."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    enable_thinking: bool
    answer: str

    @property
    def reasoning(self) -> str:
        """What the server reports as `reasoning_content` ("" without a think block)."""
        if not self.answer.startswith("<think>\n"):
            return ""
        return self.answer[len("<think>\n"):self.answer.index("\n</think>")]

    @property
    def text(self) -> str:
        """The answer after the think block, tool-call blocks included."""
        if "</think>" not in self.answer:
            return self.answer
        return self.answer.split("</think>", 1)[1].lstrip()

    @property
    def content(self) -> str:
        """What the server reports as `content`: the text without its tool-call blocks."""
        return _TOOL_CALL_BLOCK.sub("", self.text).strip()

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The answer's tool calls as {"name": ..., "arguments": {...}}."""
        return [json.loads(body) for body in _TOOL_CALL_BLOCK.findall(self.text)]

    def prompt_ids(self, tokenizer) -> list[int]:
        return list(tokenizer.apply_chat_template(
            self.messages, tools=self.tools, add_generation_prompt=True,
            enable_thinking=self.enable_thinking, tokenize=True, return_dict=False))

    def answer_ids(self, tokenizer) -> list[int]:
        """The assistant turn's tokens, `<|im_end|>` included."""
        return tokenizer.encode(self.answer + "<|im_end|>", add_special_tokens=False)


def _answer(reasoning: str, content: str, thinking: bool) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{content}" if thinking else content


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _weather_call(reasoning: str | None = None) -> dict[str, Any]:
    """The assistant's tool-call message as the server hands it to the template."""
    message: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [{
        "type": "function", "id": WEATHER_CALL_ID,
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


HELLO = ("The user says hello. I should greet them back and say what I am.",
         "Hello! I am the jupyter_qwen demo model.")
WEATHER_CALL = ("The user wants the weather in Paris. I will call get_weather for Paris.",
                '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                "</tool_call>")
WEATHER_ANSWER = ("The tool says it is sunny and 21 °C in Paris. I can answer now.",
                  "It is sunny in Paris, 21 °C.")
ARITHMETIC = ("The user asks for 2 + 2. Two plus two is four.", "2 + 2 = 4.")
ABOUT = ("The user asks about jupyter_qwen. I will describe it in a few sentences.",
         "jupyter_qwen runs Qwen3 models inside a Jupyter kernel and serves them through the "
         "OpenAI API. You can chat with it from LangChain, stream the answer token by token "
         "and let the model call your tools.")


def _weather_conversation(answered: bool, call_reasoning: str | None = None) -> list[dict]:
    messages = [_user("What is the weather in Paris?")]
    if answered:
        messages += [_weather_call(call_reasoning),
                     {"role": "tool", "tool_call_id": WEATHER_CALL_ID,
                      "content": get_weather("Paris")}]
    return messages


def _demo_prompts() -> dict[str, ScriptedTurn]:
    plain = {"hello": ([_user("Hello!")], HELLO),
             "arithmetic": ([_user("What is 2 + 2?")], ARITHMETIC),
             "about": ([_user("Tell me about jupyter_qwen.")], ABOUT)}
    tool_use = {"weather_call": (_weather_conversation(False), WEATHER_CALL),
                "weather_answer": (_weather_conversation(True), WEATHER_ANSWER)}
    prompts = {}
    for name, (messages, (reasoning, content)) in {**plain, **tool_use}.items():
        tools = DEMO_TOOLS if name in tool_use else None
        for thinking in (True, False):
            key = name if thinking else f"{name}_no_thinking"
            prompts[key] = ScriptedTurn(messages, tools, thinking,
                                        _answer(reasoning, content, thinking))
    return prompts


DEMO_PROMPTS: dict[str, ScriptedTurn] = _demo_prompts()
"""The scripted turns by name: each one has a "<name>_no_thinking" twin."""


def _variants(turn: ScriptedTurn) -> Iterator[ScriptedTurn]:
    """The turn as clients may send it: with or without a system message."""
    yield turn
    yield turn._replace(messages=[SYSTEM_MESSAGE, *turn.messages])


def _demo_script() -> list[ScriptedTurn]:
    script = [variant for turn in DEMO_PROMPTS.values() for variant in _variants(turn)]
    # Clients that send the reasoning of the tool-call turn back see it rendered.
    answer = DEMO_PROMPTS["weather_answer"]
    kept = answer._replace(messages=_weather_conversation(True, WEATHER_CALL[0]))
    return script + list(_variants(kept))


DEMO_SCRIPT: list[ScriptedTurn] = _demo_script()
"""Every turn the demo checkpoint is taught: DEMO_PROMPTS and their variants."""


def script_digest(script: Sequence[ScriptedTurn]) -> str:
    text = json.dumps([list(turn) for turn in script], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
