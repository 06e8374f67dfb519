"""Structured output from the request: `response_format`, vLLM's `structured_outputs` and the
legacy `guided_*` fields, and the tool-call grammar of `tool_choice`. Each becomes one
`StructuredOutputs`, compiled (with the engine's time limit) before the request is queued,
so that a schema that does not compile is a 400 and never reaches the engine."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_qwen.engine.errors import ConstraintError
from jupyter_qwen.sampling_params import StructuredOutputs
from jupyter_qwen.server.errors import APIError
from jupyter_qwen.server.protocol import NamedToolChoice, Tool

STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object")
GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


def request_constraint(body, tools: list[Tool] | None = None, tool_choice=None,
                       parallel_tool_calls: bool | None = None) -> StructuredOutputs | None:
    """The request's one constraint, or None; a 400 naming the field for a bad one."""
    tool_constraint = tools_constraint(tools, tool_choice, parallel_tool_calls is not False)
    if tool_constraint is not None:
        return tool_constraint
    if body.structured_outputs is not None:
        return _from_structured_outputs(body.structured_outputs)
    for name, kind in GUIDED_FIELDS.items():
        value = getattr(body, name, None)
        if value is not None:
            return _build(name, **{kind: value})
    return _from_response_format(body.response_format)


def _from_structured_outputs(fields: dict[str, Any]) -> StructuredOutputs:
    given = {key: value for key, value in fields.items()
             if key in STRUCTURED_KINDS and value not in (None, False)}
    unknown = sorted(set(fields) - set(STRUCTURED_KINDS) - {"disable_any_whitespace",
                                                             "disable_fallback",
                                                             "disable_additional_properties",
                                                             "whitespace_pattern"})
    if unknown:
        raise APIError(400, f"structured_outputs does not take {unknown[0]!r}; it takes one of "
                       f"{', '.join(STRUCTURED_KINDS)}", param=f"structured_outputs.{unknown[0]}")
    if len(given) != 1:
        raise APIError(400, "structured_outputs takes exactly one of "
                       f"{', '.join(STRUCTURED_KINDS)}", param="structured_outputs")
    (kind, value), = given.items()
    if kind == "json" and isinstance(value, str):
        value = _parse_schema(value, "structured_outputs.json")
    return _build(f"structured_outputs.{kind}", **{kind: value})


def _from_response_format(response_format: dict[str, Any] | None) -> StructuredOutputs | None:
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputs(json_object=True)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None and isinstance(spec, dict):
            schema = spec.get("json_schema")  # an older spelling some clients send
        if not isinstance(schema, dict):
            raise APIError(400, "response_format json_schema needs a JSON schema object in "
                           "json_schema.schema", param="response_format")
        return _build("response_format.json_schema.schema", json=schema)
    raise APIError(400, f"response_format type {kind!r} is not one of text, json_object, "
                   "json_schema", param="response_format")


def _parse_schema(text: str, param: str) -> dict:
    try:
        schema = json.loads(text)
    except ValueError:
        raise APIError(400, "the JSON schema is not valid JSON", param=param) from None
    if not isinstance(schema, dict):
        raise APIError(400, "the JSON schema must be an object", param=param)
    return schema


def _build(param: str, **fields) -> StructuredOutputs:
    try:
        return StructuredOutputs(**fields)
    except ValueError as error:
        raise APIError(400, str(error), param=param) from None


def tools_constraint(tools: list[Tool] | None, choice, parallel: bool,
                     ) -> StructuredOutputs | None:
    """`required`: at least one call (exactly one without parallel calls) of any tool, its
    arguments valid against that tool's parameters; a named choice: that function only;
    `none` with tools: no tool-call markup at all."""
    if not tools or choice in (None, "auto"):
        return None
    if choice == "none":
        return _structural({"type": "any_text", "excludes": [TOOL_OPEN]})
    if isinstance(choice, NamedToolChoice):
        chosen = [tool for tool in tools if tool.function.name == choice.function.name]
        parallel = False
    else:
        chosen = list(tools)
    tags = [{"type": "tag",
             "begin": f'{TOOL_OPEN}\n{{"name": {json.dumps(tool.function.name)}, '
                      '"arguments": ',
             "content": {"type": "json_schema", "max_whitespace_cnt": 1,
                         "json_schema": tool.function.parameters or {"type": "object"}},
             "end": f"}}\n{TOOL_CLOSE}"} for tool in chosen]
    return _structural({"type": "tags_with_separator", "tags": tags, "separator": "\n",
                        "at_least_one": True, "stop_after_first": not parallel})


def _structural(format_: dict) -> StructuredOutputs:
    return StructuredOutputs(structural_tag=json.dumps({"type": "structural_tag",
                                                        "format": format_}))


PARAM_OF_KIND = {"json": "response_format", "json_object": "response_format",
                 "structural_tag": "tools", "regex": "structured_outputs.regex",
                 "choice": "structured_outputs.choice", "grammar": "structured_outputs.grammar"}


async def compile_constraint(engine, spec: StructuredOutputs | None, param: str | None = None,
                             ) -> None:
    """Compile in a worker thread (the engine's cache keeps it); a 400 naming `param` if it
    does not compile or runs past the time limit."""
    if spec is None:
        return
    try:
        await asyncio.to_thread(engine.engine.constraints.grammars.compile, spec)
    except ConstraintError as error:
        raise APIError(400, str(error), param=param or PARAM_OF_KIND.get(spec.kind)) from None


def constraint_param(body) -> str | None:
    """The request field a compile error is about."""
    if getattr(body, "tool_choice", None) not in (None, "auto") and getattr(body, "tools", None):
        return "tools"
    if body.structured_outputs is not None:
        kinds = [k for k in STRUCTURED_KINDS if body.structured_outputs.get(k) is not None]
        return f"structured_outputs.{kinds[0]}" if kinds else "structured_outputs"
    for name in GUIDED_FIELDS:
        if getattr(body, name, None) is not None:
            return name
    return "response_format"
