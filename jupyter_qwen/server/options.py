"""The server's own options (beside EngineConfig's), each declared once.

`serve()`, `QwenServer`, the command line, `%qwen_serve` and the control panel take
`ServerOptions`' fields and `EngineConfig`'s together; `split_options` tells them apart.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from jupyter_qwen.config import EngineConfig
from jupyter_qwen.options import ConfigError, describe, option, options_of, validate

EFFORT_LEVELS = ("minimal", "low", "medium", "high", "xhigh", "max")
"""The reasoning_effort levels that turn thinking on ("none" turns it off)."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Where the server listens, who may use it, and what requests get by default."""

    enable_thinking: bool = option(
        True, "what requests get when they do not say",
        on_flags=("--enable-thinking",), on_help="think by default (Qwen3's default)",
        off_flags=("--disable-thinking",),
        off_help="answer without a reasoning phase by default",
        form="check", label="think by default")
    port: int | None = option(
        None, "port", default_text="a free one", low=1, high=65535, form="optional_number",
        hint="blank: a free port", placeholder="a free one",
        error="a port is a number from 1 to 65535, got {value}")
    api_key: str | None = option(
        None, "require 'Authorization: Bearer KEY' on /v1 routes; 'auto': a random key, "
        "which chat_model(), openai_client() and the notebook's magics carry for you",
        form="secret", label="API key",
        hint="blank: no key needed on 127.0.0.1; auto: a random one", placeholder="none")
    host: str = option("127.0.0.1", "address to bind")
    allowed_hosts: tuple[str, ...] = option(
        (), "more Host names the server answers to (repeat the flag or separate with "
        "commas; '*' allows any, which re-opens DNS rebinding)",
        default_text="loopback names and the bound address")
    served_model_name: tuple[str, ...] | None = option(
        None, "the model name(s) clients send; /v1/models lists them and responses carry the "
        "first (several: repeat the flag or separate with commas). The server also answers "
        "to the model's path or id, its folder name and its hub id",
        default_text="last path part")
    max_waiting_requests: int = option(
        1024, "queue length beyond which clients get 429", low=1, high=1 << 24)
    thinking_token_budget: int | None = option(
        None, "reasoning tokens a request may spend before the engine ends its thinking "
        "(requests may set their own)", default_text="no limit", low=0, high=1 << 24)
    reasoning_effort_budgets: tuple[str, ...] = option(
        ("minimal=256", "low=1024", "medium=4096", "high=16384"),
        "the thinking_token_budget each reasoning_effort level gets, as LEVEL=TOKENS (repeat "
        "the flag or separate with commas; a level not listed thinks without a limit)",
        default_text="minimal=256,low=1024,medium=4096,high=16384")

    def __post_init__(self) -> None:
        validate(self)
        self.effort_budgets()

    def effort_budgets(self) -> dict[str, int]:
        """`reasoning_effort_budgets` as {level: tokens}; ConfigError for a malformed entry."""
        budgets = {}
        for entry in self.reasoning_effort_budgets:
            level, _, tokens = entry.partition("=")
            if level.strip() not in EFFORT_LEVELS or not tokens.strip().isdigit():
                raise ConfigError("reasoning_effort_budgets", "reasoning_effort_budgets takes "
                                  f"LEVEL=TOKENS with LEVEL one of {', '.join(EFFORT_LEVELS)}; "
                                  f"got {entry!r}")
            budgets[level.strip()] = int(tokens)
        return budgets


def split_options(options: dict[str, Any]) -> tuple[ServerOptions, dict[str, Any]]:
    """The server's options and the engine's keyword arguments, from one dict of either
    (TypeError naming any that is neither's; ConfigError for a bad server value)."""
    server_names = {o.name for o in options_of(ServerOptions)}
    engine_names = set(EngineConfig.field_names()) - {"model"}
    unknown = sorted(set(options) - server_names - engine_names)
    if unknown:
        known = ", ".join(sorted(server_names | engine_names))
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {known}")
    server = ServerOptions(**{k: v for k, v in options.items() if k in server_names})
    return server, {k: v for k, v in options.items() if k in engine_names}


OPTIONS_DOC = describe(ServerOptions, EngineConfig)
"""Every option of `serve()`, one line each, for docstrings."""


def signature_with_options(function: Any) -> inspect.Signature:
    """`function`'s signature with its `**options` spelled out as keyword-only parameters
    (what `help()`, IDEs and `inspect` show for `serve()` and `QwenServer`)."""
    signature = inspect.signature(function)
    fixed = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    spelled = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default)
               for cls in (ServerOptions, EngineConfig) for o in options_of(cls)]
    return signature.replace(parameters=[*fixed, *spelled])
