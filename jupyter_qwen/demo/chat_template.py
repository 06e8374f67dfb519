"""The demo checkpoint's chat template: ChatML with Qwen3's thinking and tool-call tags.

System, user, assistant and tool turns; tools are listed in the system turn; reasoning is
kept only for assistant turns after the last user turn; `enable_thinking=False` appends an
empty think block to the generation prompt, as Qwen3's own template does.
"""

# An assistant turn's opening: its reasoning (from `reasoning_content`, or a think block that
# opens its content), kept only after the last user turn. The 2507 variants replace this piece.
_ASSISTANT_OPENING = r"""        {%- set reasoning = "" -%}
        {%- if message.reasoning_content is string -%}
            {%- set reasoning = message.reasoning_content -%}
        {%- endif -%}
        {%- if "</think>" in content -%}
            {%- set parts = content.split("</think>", 1) -%}
            {%- set head = parts[0].lstrip() -%}
            {%- if head.startswith("<think>") -%}
                {%- set head = head[7:] -%}
            {%- endif -%}
            {%- if not reasoning -%}
                {%- set reasoning = head -%}
            {%- endif -%}
            {%- set content = parts[1].lstrip() -%}
        {%- endif -%}
        {%- set reasoning = reasoning.strip() -%}
        {{- "<|im_start|>assistant\n" -}}
        {%- if loop.index0 > ns.last_user and reasoning -%}
            {{- "<think>\n" ~ reasoning ~ "\n</think>\n\n" -}}
        {%- endif -%}
"""
CHAT_TEMPLATE = r"""{#- jupyter_qwen ChatML template: system, user, assistant and tool turns. -#}
{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {{- content | selectattr("type", "equalto", "text") | map(attribute="text") | join("\n") -}}
    {%- endif -%}
{%- endmacro -%}
{%- set has_system = messages | length > 0 and messages[0].role == "system" -%}
{%- if tools -%}
    {{- "<|im_start|>system\n" -}}
    {%- if has_system -%}
        {{- text_of(messages[0].content) ~ "\n\n" -}}
    {%- endif -%}
    {{- "# Tools\n\nYou can use the functions listed below when they help with the request. "
        ~ "Each one is described by a JSON object on its own line inside <tools></tools>:"
        ~ "\n<tools>" -}}
    {%- for tool in tools -%}
        {{- "\n" ~ (tool | tojson) -}}
    {%- endfor -%}
    {{- "\n</tools>\n\nTo use a function, reply with its name and a JSON object of arguments "
        ~ "between <tool_call> and </tool_call>, one block per call:\n<tool_call>\n"
        ~ "{\"name\": <function name>, \"arguments\": <JSON object of arguments>}\n"
        ~ "</tool_call><|im_end|>\n" -}}
{%- elif has_system -%}
    {{- "<|im_start|>system\n" ~ text_of(messages[0].content) ~ "<|im_end|>\n" -}}
{%- endif -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for message in messages -%}
    {%- if message.role == "user" -%}
        {%- set ns.last_user = loop.index0 -%}
    {%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
    {%- if loop.first and message.role == "system" -%}
    {%- elif message.role == "assistant" -%}
        {%- set content = text_of(message.content) -%}
""" + _ASSISTANT_OPENING + r"""        {{- content -}}
        {%- if message.tool_calls -%}
            {%- for call in message.tool_calls -%}
                {%- set function = call.function if call.function is defined else call -%}
                {%- if content or not loop.first -%}
                    {{- "\n" -}}
                {%- endif -%}
                {{- "<tool_call>\n{\"name\": " ~ (function.name | tojson) ~ ", \"arguments\": " -}}
                {%- if function.arguments is string -%}
                    {{- function.arguments -}}
                {%- else -%}
                    {{- function.arguments | tojson -}}
                {%- endif -%}
                {{- "}\n</tool_call>" -}}
            {%- endfor -%}
        {%- endif -%}
        {{- "<|im_end|>\n" -}}
    {%- elif message.role == "tool" -%}
        {%- if loop.first or loop.previtem.role != "tool" -%}
            {{- "<|im_start|>user" -}}
        {%- endif -%}
        {{- "\n<tool_response>\n" ~ text_of(message.content) ~ "\n</tool_response>" -}}
        {%- if loop.last or loop.nextitem.role != "tool" -%}
            {{- "<|im_end|>\n" -}}
        {%- endif -%}
    {%- else -%}
        {{- "<|im_start|>" ~ message.role ~ "\n" ~ text_of(message.content) ~ "<|im_end|>\n" -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\n" -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- "<think>\n\n</think>\n\n" -}}
    {%- endif -%}
{%- endif -%}
"""

CHAT_VARIANTS = ("hybrid", "instruct-2507", "thinking-2507")
"""The chat templates the writer knows, by the Qwen3 release whose template each behaves like:
hybrid (thinking switched by `enable_thinking`, CHAT_TEMPLATE), instruct-2507 (never thinks)
and thinking-2507 (always thinks)."""

_HYBRID_HEADER = "{#- jupyter_qwen ChatML template: system, user, assistant and tool turns. -#}"
_HYBRID_ASSISTANT_OPENING = _ASSISTANT_OPENING
_HYBRID_GENERATION_PROMPT = r"""{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\n" -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- "<think>\n\n</think>\n\n" -}}
    {%- endif -%}
{%- endif -%}
"""

# Instruct-2507: no thinking mode. Assistant turns are their content as sent (no reasoning is
# rendered, reasoning_content is not read) and the generation prompt is the bare assistant
# header, whatever enable_thinking says.
_INSTRUCT_CHANGES = {
    _HYBRID_HEADER: "{#- jupyter_qwen ChatML template, instruct-2507 style: no thinking. -#}",
    _HYBRID_ASSISTANT_OPENING: '        {{- "<|im_start|>assistant\\n" -}}\n',
    _HYBRID_GENERATION_PROMPT: '{%- if add_generation_prompt -%}\n'
                               '    {{- "<|im_start|>assistant\\n" -}}\n'
                               '{%- endif -%}\n',
}
# Thinking-2507: always thinks. History as the hybrid template has it (reasoning kept only for
# assistant turns after the last user turn); the generation prompt opens the think block
# itself, so the model's output holds `</think>` without an opening tag.
_THINKING_CHANGES = {
    _HYBRID_HEADER: "{#- jupyter_qwen ChatML template, thinking-2507 style: always thinks. -#}",
    _HYBRID_GENERATION_PROMPT: '{%- if add_generation_prompt -%}\n'
                               '    {{- "<|im_start|>assistant\\n<think>\\n" -}}\n'
                               '{%- endif -%}\n',
}


def _changed(template: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        if template.count(old) != 1:
            raise AssertionError(f"the hybrid template lost the part {old[:40]!r}")
        template = template.replace(old, new)
    return template


def chat_template_for(variant: str = "hybrid") -> str:
    """The chat template of `variant`, one of CHAT_VARIANTS; ValueError for another name."""
    if variant == "hybrid":
        return CHAT_TEMPLATE
    if variant == "instruct-2507":
        return _changed(CHAT_TEMPLATE, _INSTRUCT_CHANGES)
    if variant == "thinking-2507":
        return _changed(CHAT_TEMPLATE, _THINKING_CHANGES)
    raise ValueError(f"unknown chat template variant {variant!r}; "
                     f"choose one of {', '.join(CHAT_VARIANTS)}")
