"""Request fields the protocol models do not declare: which are refused with a 400, and which
are ignored (logged at WARNING once per name, and listed in the `x-ignored-fields` header).

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

MAX_WARNED_NAMES = 1000
"""Names remembered for the once-per-name warning; past them new names go unlogged (a client
could send endless made-up names), though the header still lists them."""
_warned: set[str] = set()


def check_extra_fields(body: BaseModel) -> list[str]:
    """Raise the 400 for a refused field; return the names of the ignored ones (sorted),
    warning once per process for each name."""
    extra = body.model_extra or {}
    for name, value in extra.items():
        rule = REJECTED.get(name)
        if rule is not None and value is not None and value not in rule[0]:
            raise APIError(400, f"{rule[1]} ({name})", param=name)
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
