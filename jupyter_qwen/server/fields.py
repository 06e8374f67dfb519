"""Request fields the protocol models do not declare: which are refused with a 400, which
are ignored (logged at WARNING once per name, and listed in the `x-ignored-fields` header),
and which other servers' recipes send although they change nothing here (listed in the
`x-no-effect-fields` header). Also the literal `extra_body` object of raw HTTP clients, whose
fields count as top-level fields (`merge_extra_body`).

docs/openai-compatibility.md tabulates every field of vLLM's OpenAI server against these
lists and the models in protocol.py; tests/test_api_parity.py keeps the table and the code
in step.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from jupyter_qwen.server.errors import APIError

log = logging.getLogger("jupyter_qwen.server")
IGNORED_FIELDS_HEADER = "x-ignored-fields"
NO_EFFECT_HEADER = "x-no-effect-fields"
MERGED_HEADER = "x-merged-fields"
EXTRA_BODY = "extra_body"

REJECTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_beam_search": ((False,), "beam search is not supported"),
    "prompt_logprobs": ((0,), "prompt logprobs are not supported"),
    "logprob_token_ids": ((), "logprobs of chosen token ids are not supported"),
    "bad_words": (([],), "bad words are not supported"),
    "truncate_prompt_tokens": ((), "prompt truncation is not supported"),
    "priority": ((0,), "priority scheduling is not supported"),
    "cache_salt": ((), "the prefix cache cannot be salted: all requests of a server share it"),
    "chat_template": ((), "the chat template comes from the model; requests cannot set it"),
    "echo": ((False,), "echo is not supported in chat completions"),
    "suffix": (("",), "suffix is not supported"),
    "prompt_embeds": ((), "prompt embeddings are not supported"),
    "watermarking": ((False,), "watermarking is not supported"),
}
"""Undeclared fields refused with a 400 unless null or one of the harmless values given."""

DECLARED_UNUSED: dict[str, tuple[Any, ...]] = {}
"""Declared fields that are accepted but not acted on: ignored (and so reported) unless they
hold one of the values given, which is what happens anyway."""

FROM_OTHER_SERVERS: dict[str, tuple[str, tuple[Any, ...], str]] = {
    "enable_cache": ("LMDeploy", (True,), "a session_id already keeps the conversation's KV "
                     "blocks between turns, and the prefix cache is always on"),
    "separate_reasoning": ("SGLang", (True,), "reasoning always comes apart from the content, "
                           "in reasoning_content"),
    "stream_reasoning": ("SGLang", (True,), "streamed reasoning is always sent as it comes"),
}
"""Fields of other servers' published Qwen3 recipes that ask for what jupyter_qwen does
anyway: name -> (the server, the values that change nothing here, why). Accepted with the
`x-no-effect-fields` header; another value is ignored (and reported) like any unknown field."""

MAX_WARNED_NAMES = 1000
"""Names remembered for the once-per-name warning; past them new names go unlogged (a client
could send endless made-up names), though the header still lists them."""
_warned: set[str] = set()
_warned_no_effect: set[str] = set()


def check_extra_fields(body: BaseModel) -> list[str]:
    """Raise the 400 for a refused field; return the names of the ignored ones (sorted),
    warning once per process for each name."""
    extra = body.model_extra or {}
    for name, value in extra.items():
        rule = REJECTED.get(name)
        if rule is not None and value is not None and value not in rule[0]:
            raise APIError(400, f"{rule[1]} ({name})", param=name)
    extra = {name: value for name, value in extra.items() if not has_no_effect(name, value)}
    ignored = sorted({*extra, *(name for name, harmless in DECLARED_UNUSED.items()
                                if getattr(body, name, None) not in harmless)})
    for name in ignored:
        if name not in _warned and len(_warned) < MAX_WARNED_NAMES:
            _warned.add(name)
            log.warning("ignoring the request field %r: jupyter_qwen does not support it "
                        "(listed in the x-ignored-fields response header)", name[:200])
    return ignored


def ignored_fields_header(names: list[str]) -> str:
    """The header's value: the names, comma-separated, each percent-encoded past ASCII
    letters, digits and `_.-~` (a header carries Latin-1 only)."""
    return ", ".join(quote(name[:200], safe="") for name in names)


def has_no_effect(name: str, value: Any) -> bool:
    """Whether `name: value` is one of FROM_OTHER_SERVERS' fields with a value that asks for
    what happens anyway."""
    known = FROM_OTHER_SERVERS.get(name)
    return known is not None and any(type(value) is type(harmless) and value == harmless
                                     for harmless in known[1])


def no_effect_fields(data: dict[str, Any]) -> list[str]:
    """The fields of a request body that other servers know and that change nothing here
    (sorted), warning once per process for each name with the reason."""
    names = sorted(name for name, value in data.items() if has_no_effect(name, value))
    for name in names:
        if name not in _warned_no_effect:
            _warned_no_effect.add(name)
            server, _, reason = FROM_OTHER_SERVERS[name]
            log.warning("the request field %r (from %s) has no effect here: %s (listed in the "
                        "x-no-effect-fields response header)", name, server, reason)
    return names


def merge_extra_body(data: dict[str, Any]) -> dict[str, Any]:
    """The body with a literal `extra_body` object's fields moved to the top level, as the
    openai SDK would have sent them (raw HTTP clients copy the SDK's `extra_body` into the
    JSON). 400 when it is not an object, or when one of its fields is also at the top level.
    A null `extra_body` is dropped."""
    extra = data[EXTRA_BODY]
    rest = {name: value for name, value in data.items() if name != EXTRA_BODY}
    if extra is None:
        return rest
    if not isinstance(extra, dict):
        raise APIError(400, "extra_body must be an object: its fields count as top-level "
                       f"fields; got {type(extra).__name__}", param=EXTRA_BODY)
    for name in extra:
        if name in rest:
            raise APIError(400, f"{name!r} is given both at the top level and in extra_body: "
                           "give it once", param=f"{EXTRA_BODY}.{name}")
    return rest | extra
