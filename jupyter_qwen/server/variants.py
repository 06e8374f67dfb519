"""Which Qwen3 chat template a checkpoint has, and what that means for thinking.

Qwen3 ships three kinds of chat template. The hybrid one (Qwen3-4B and its siblings) thinks
unless `enable_thinking=False` closes an empty think block in the generation prompt. The
2507 updates come as two models: Instruct-2507 never thinks and has no switch; Thinking-2507
always thinks, and its generation prompt already holds the opening `<think>`, so the model's
output holds `</think>` without an opening tag.

The variant is read from what the template does, not from the checkpoint's name: a probe
conversation is rendered with a generation prompt, thinking on and off. The output parser
starts from what the rendered prompt leaves open (`reasoning_start`), which covers
Thinking-2507 and any prompt that ends inside a think block.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from jupyter_qwen.server.chat import THINK_CLOSE, THINK_OPEN, OutputParser

log = logging.getLogger("jupyter_qwen.server")

HYBRID, INSTRUCT_2507, THINKING_2507, UNKNOWN = (
    "hybrid", "instruct-2507", "thinking-2507", "unknown")
CHAT_VARIANTS = (HYBRID, INSTRUCT_2507, THINKING_2507)
WARNING_HEADER = "x-jupyter-qwen-warning"
TURN_START = "<|im_start|>"
TAIL_TOKENS = 64
_PROBE = [{"role": "user", "content": "Hello"}]
_warned: set[str] = set()


def detect_chat_variant(tokenizer) -> str:
    """"hybrid", "instruct-2507" or "thinking-2507": the Qwen3 template `tokenizer`'s chat
    template behaves like; "unknown" when it renders no probe or behaves like none."""
    try:
        thinking = generation_prompt(tokenizer, enable_thinking=True)
        quiet = generation_prompt(tokenizer, enable_thinking=False)
    except Exception as error:  # a template that cannot render the probe says nothing
        log.info("could not tell the chat template's variant: %r", error)
        return UNKNOWN
    if ends_inside_think(thinking) and ends_inside_think(quiet):
        return THINKING_2507
    if thinking != quiet and THINK_CLOSE in quiet:
        return HYBRID
    if thinking == quiet and THINK_OPEN not in thinking:
        return INSTRUCT_2507
    return UNKNOWN


def generation_prompt(tokenizer, enable_thinking: bool) -> str:
    """What the template appends to a one-message conversation as the generation prompt."""
    def render(add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            _PROBE, add_generation_prompt=add_generation_prompt, tokenize=False,
            enable_thinking=enable_thinking)

    whole, bare = render(True), render(False)
    return whole[len(bare):] if whole.startswith(bare) else whole


def ends_inside_think(text: str) -> bool:
    """Whether `text` leaves a think block open: its last `<think>` has no `</think>` after."""
    return text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)


def prompt_tail(tokenizer, prompt_ids: Sequence[int]) -> str:
    """The text of the prompt's last turn (from its last `<|im_start|>`), or of its last
    TAIL_TOKENS tokens when it has none: enough to see a think block it leaves open."""
    turn_start = tokenizer.convert_tokens_to_ids(TURN_START)
    start = max(0, len(prompt_ids) - TAIL_TOKENS)
    for index in range(len(prompt_ids) - 1, -1, -1):
        if prompt_ids[index] == turn_start:
            start = index
            break
    return tokenizer.decode(list(prompt_ids[start:]), skip_special_tokens=False)


def reply_start(tokenizer, prompt_ids: Sequence[int], variant: str, thinking: bool) -> str:
    """How a chat reply to `prompt_ids` begins: "inside" a think block the prompt left open
    (Thinking-2507's generation prompt, or a prefilled `<think>`), "think" (it opens its own
    reasoning), or "content" (a template that never thinks, or thinking off)."""
    if ends_inside_think(prompt_tail(tokenizer, prompt_ids)):
        return "inside"
    return "think" if thinking and variant != INSTRUCT_2507 else "content"


def output_parser(tokenizer, prompt_ids: Sequence[int], variant: str, thinking: bool,
                  parse_tools: bool, max_tool_calls: int | None = None,
                  forced_tools: bool = False) -> OutputParser:
    """The parser for a chat reply to `prompt_ids`, starting where `reply_start` says."""
    start = reply_start(tokenizer, prompt_ids, variant, thinking)
    calls = {"parse_tools": parse_tools, "max_tool_calls": max_tool_calls,
             "forced_tools": forced_tools}
    if start == "inside":
        return OutputParser(state="reasoning", **calls)
    return OutputParser(thinking=start == "think", **calls)


def thinking_warning(variant: str, requested: bool | None) -> str | None:
    """The warning for a request that set thinking (`requested`, None when it did not) on a
    model whose template cannot honour it; logged once per message."""
    message = None
    if variant == INSTRUCT_2507 and requested:
        message = ("thinking was asked for (enable_thinking or reasoning_effort) but this "
                   "model's chat template (instruct-2507) never thinks")
    elif variant == THINKING_2507 and requested is False:
        message = ("thinking was switched off (enable_thinking or reasoning_effort) but "
                   "this model's chat template (thinking-2507) always thinks")
    if message is not None and message not in _warned:
        _warned.add(message)
        log.warning("%s (told in the %s response header)", message, WARNING_HEADER)
    return message
