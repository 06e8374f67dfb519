"""Per-request sampling and stopping options."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_LOGPROBS = 20
MAX_SEED = (1 << 64) - 1
MAX_LOGIT_BIAS = 100.0

CONSTRAINT_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass(slots=True)
class StructuredOutputs:
    """One constraint on a request's output, vLLM's names: `json` (a JSON schema, as a dict
    or its text), `regex`, `choice` (the output is exactly one of these strings), `grammar`
    (EBNF, or Lark) or `json_object=True` (any JSON object). Internal kinds built by the
    server from `tool_choice` use `structural_tag` (the constraint library's own format).

    `compiled` caches the compiled grammar once the engine has built it; requests that
    share these params (n > 1) share it.
    """

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: str | None = None
    compiled: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.json, bool) or (self.json is not None
                                           and not isinstance(self.json, dict | str)):
            raise ValueError("structured_outputs.json must be a JSON schema object")
        if self.choice is not None:
            if isinstance(self.choice, str) or not all(isinstance(c, str) for c in self.choice):
                raise ValueError("structured_outputs.choice must be a list of strings")
            self.choice = list(self.choice)
            if not self.choice:
                raise ValueError("structured_outputs.choice must hold at least one string")
        given = [name for name, value in self.items()]
        if len(given) != 1:
            raise ValueError("structured_outputs takes exactly one of json, regex, choice, "
                             f"grammar or json_object; got {given or 'none'}")

    def items(self) -> list[tuple[str, Any]]:
        """The constraint as (kind, value) pairs: exactly one once validated."""
        values = {"json": self.json, "regex": self.regex, "choice": self.choice,
                  "grammar": self.grammar, "json_object": self.json_object or None,
                  "structural_tag": self.structural_tag}
        return [(name, value) for name, value in values.items() if value is not None]

    @property
    def kind(self) -> str:
        return self.items()[0][0]

    def cache_key(self) -> tuple[str, str]:
        kind, value = self.items()[0]
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False)
        return kind, value


@dataclass(slots=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    `temperature=0` is greedy decoding. `top_k=0` and `top_p=1` switch those
    filters off. `max_tokens=None` generates until a stop condition or the
    model's context limit. `logprobs=N` returns the chosen token's log
    probability and the N most likely alternatives at each step.
    `detokenize=False` skips building text while generating (stop strings
    still work).

    `logit_bias` maps token ids to a value in [-100, 100] added to their logits;
    `allowed_token_ids` restricts sampling to those tokens; `min_tokens` masks the
    end-of-sequence and `stop_token_ids` tokens until that many
    tokens are generated.

    `structured_outputs` constrains the output to a JSON schema, a regular expression, a
    choice of strings or a grammar (see `StructuredOutputs`). `thinking=True` says the output
    opens with Qwen3's free reasoning, closed by `</think>`: the constraint starts after it,
    and `thinking_token_budget` (if set) bounds it: once that many reasoning tokens are
    generated the engine ends the reasoning itself. `reasoning_open=True` says the prompt
    already opened the think block (Thinking-2507 templates), so the output starts inside
    it. `max_tokens` bounds the whole output.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int | None = 256
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    detokenize: bool = True
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0
    allowed_token_ids: list[int] | None = None
    structured_outputs: StructuredOutputs | None = None
    thinking: bool = False
    reasoning_open: bool = False
    thinking_token_budget: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias is not None:
            self.logit_bias = {_token_id_key(key): value
                               for key, value in dict(self.logit_bias).items()} or None
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = list(self.allowed_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        self.validate()

    def validate(self) -> None:
        _check_range("temperature", self.temperature, 0.0, 100.0)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        _check_range("repetition_penalty", self.repetition_penalty, 0.0, 100.0, low_open=True)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_int("top_k", self.top_k, 0)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id, 0)
        self._validate_token_fields()

    def _validate_token_fields(self) -> None:
        _check_int("min_tokens", self.min_tokens, 0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens "
                             f"({self.max_tokens})")
        for token_id, bias in (self.logit_bias or {}).items():
            _check_int("logit_bias", token_id, 0)
            _check_range("logit_bias", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids:
                raise ValueError("allowed_token_ids must hold at least one token id")
            for token_id in self.allowed_token_ids:
                _check_int("allowed_token_ids", token_id, 0)
        if self.thinking_token_budget is not None:
            _check_int("thinking_token_budget", self.thinking_token_budget, 0)
        if self.structured_outputs is not None and not isinstance(self.structured_outputs,
                                                                  StructuredOutputs):
            raise ValueError("structured_outputs must be a StructuredOutputs, got "
                             f"{type(self.structured_outputs).__name__}")

    def check_token_ids(self, vocab_size: int) -> None:
        """Raise ValueError, naming the field, for a token id the model's vocabulary lacks."""
        for name, token_ids in (("logit_bias", self.logit_bias or {}),
                                ("allowed_token_ids", self.allowed_token_ids or [])):
            unknown = sorted(t for t in token_ids if t >= vocab_size)
            if unknown:
                raise ValueError(f"{name} holds token ids outside the vocabulary of "
                                 f"{vocab_size} tokens: {unknown[:5]}")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def plain_greedy(self) -> bool:
        """Greedy, with no penalties, no log probabilities and nothing that changes the
        logits: the argmax is all it needs."""
        return (self.greedy and not self.uses_penalties and self.logprobs is None
                and not self.adjusts_logits)

    @property
    def adjusts_logits(self) -> bool:
        """Whether logit_bias, allowed_token_ids, min_tokens or a constraint (structured
        output, a thinking budget) change the logits."""
        return bool(self.logit_bias or self.allowed_token_ids is not None or self.min_tokens
                    or self.constrained)

    @property
    def constrained(self) -> bool:
        """Whether the engine keeps a per-sequence constraint: a grammar to follow or a
        reasoning budget to enforce."""
        return self.structured_outputs is not None or (
            self.thinking and self.thinking_token_budget is not None)

    @property
    def uses_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)


def _token_id_key(key):
    """logit_bias keys: token ids, or their decimal strings as JSON objects carry them."""
    if isinstance(key, str):
        if not key.strip().isdigit():
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return int(key)
    return key


def _check_range(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (low < value if low_open else low <= value) or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        upper = "" if high is None else f", at most {high}"
        raise ValueError(f"{name} must be an integer of at least {low}{upper}, got {value!r}")
