"""Structured output: grammars compiled once per constraint, and a matcher per sequence.

`GrammarCache` compiles a request's `StructuredOutputs` with xgrammar in worker threads
(the compiler releases the GIL, so the engine keeps stepping), bounded by a time limit: a
compile past it is a `ConstraintTimeoutError`, not a stall. Compiled grammars are kept in a
bounded LRU. `SequenceConstraint` follows one sequence: free reasoning until `</think>` (with
`thinking=True`), the early-stopping text forced once a thinking budget is spent, then the
grammar, whose token bitmask is applied to the row's logits before sampling.

Qwen3 writes `</think>` then a blank line, then its answer (the chat template renders past
turns that way, and the early-stopping text ends so too). After a `</think>` the model wrote
itself, the grammar's first tokens therefore come with that separator allowed beside them:
without it the model, pushed off the only path it knows, spells `<tool_call>` out of single
characters and wanders inside the first JSON string. The separator is white space, which the
reply parser trims from the content, so it is kept out of the grammar.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

from jupyter_qwen.engine.errors import ConstraintError, ConstraintTimeoutError
from jupyter_qwen.sampling_params import SamplingParams, StructuredOutputs

DEFAULT_COMPILE_TIMEOUT = 5.0
DEFAULT_CACHE_SIZE = 256
COMPILE_WORKERS = 2
# xgrammar (0.2.8, 0.2.9) writes the characters of a string with minLength / maxLength as
# `[^"\\\r\n]`, which lets raw control characters (invalid in JSON) through; its other
# strings take JSON's own class, which this puts in their place
LENGTH_STRING_CHARACTERS = r'[^\"\\\r\n]'
JSON_STRING_CHARACTERS = r'[^\0-\x1f\"\\\r\n]'
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_SEPARATOR = "\n\n"  # what Qwen3 writes between `</think>` and the answer
# What Qwen's documentation inserts when a thinking budget runs out, then the answer follows.
EARLY_STOP_TEXT = ("\n\nConsidering the limited time by the user, I have to give the solution "
                   "based on the thinking directly now.\n</think>\n\n")


class GrammarCache:
    """Compiled grammars for one tokenizer, keyed by the constraint's kind and text."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int],
                 timeout: float = DEFAULT_COMPILE_TIMEOUT, size: int = DEFAULT_CACHE_SIZE):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        self.timeout = timeout
        self.size = size
        self._compiled: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._pending: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()
        self._compiler = None
        self._executor = ThreadPoolExecutor(COMPILE_WORKERS, "jupyter-qwen-grammar")

    @property
    def compiler(self):
        """Built on first use: reading a 150k-token vocabulary takes about half a second."""
        with self._lock:
            if self._compiler is None:
                import xgrammar

                info = xgrammar.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size,
                    stop_token_ids=self.stop_token_ids)
                self._compiler = xgrammar.GrammarCompiler(info, max_threads=1,
                                                          cache_enabled=False)
            return self._compiler

    def compile(self, spec: StructuredOutputs) -> Any:
        """The compiled grammar (cached on `spec` too); ConstraintError if it does not
        compile, ConstraintTimeoutError past the time limit (the compile goes on in the
        background and lands in the cache)."""
        if spec.compiled is not None:
            return spec.compiled
        key = spec.cache_key()
        future = self._lookup_or_submit(key)
        try:
            spec.compiled = future.result(timeout=self.timeout)
        except FutureTimeout:
            raise ConstraintTimeoutError(
                f"compiling the {key[0]} constraint took longer than {self.timeout:g} s",
                param=key[0]) from None
        except ConstraintError:
            raise
        except Exception as error:  # the library's parse errors: the user's input
            raise ConstraintError(f"the {key[0]} constraint does not compile: "
                                  f"{_short(error)}", param=key[0]) from None
        return spec.compiled

    def _lookup_or_submit(self, key: tuple[str, str]) -> Future:
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                done: Future = Future()
                done.set_result(self._compiled[key])
                return done
            future = self._pending.get(key)
            if future is None:
                future = self._executor.submit(self._compile_and_keep, key)
                self._pending[key] = future
            return future

    def _compile_and_keep(self, key: tuple[str, str]) -> Any:
        try:
            compiled = compile_constraint(self.compiler, *key)
        finally:
            with self._lock:
                self._pending.pop(key, None)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > self.size:
                self._compiled.popitem(last=False)
        return compiled

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def compile_constraint(compiler, kind: str, text: str) -> Any:
    if kind == "json":
        return compiler.compile_grammar(json_schema_grammar(text))
    if kind == "json_object":  # compact, as json.dumps writes it: no runs of white space
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
    if kind == "regex":
        return compiler.compile_regex(text)
    if kind == "choice":
        return compiler.compile_regex("|".join(_escape_regex(c) for c in json.loads(text)))
    if kind == "grammar":
        return _compile_grammar(compiler, text)
    if kind == "structural_tag":
        return compiler.compile_grammar(structural_tag_grammar(text))
    raise ConstraintError(f"unknown constraint kind {kind!r}", param=kind)


def json_schema_grammar(schema: str) -> str:
    """The EBNF of a JSON schema (compact separators), with no raw control character allowed
    in any string (`LENGTH_STRING_CHARACTERS`)."""
    import xgrammar

    return _json_strings(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False))


def structural_tag_grammar(tag: str) -> str:
    """The EBNF of a structural tag (the tool calls' format), its JSON schemas' strings held
    to JSON's characters as `json_schema_grammar` does."""
    import xgrammar

    return _json_strings(xgrammar.Grammar.from_structural_tag(tag))


def _json_strings(grammar) -> str:
    """`grammar`'s EBNF with JSON's string characters where the library wrote its own."""
    return str(grammar).replace(LENGTH_STRING_CHARACTERS, JSON_STRING_CHARACTERS)


def _compile_grammar(compiler, text: str) -> Any:
    """EBNF (GBNF, as vLLM takes it) first, then Lark."""
    try:
        return compiler.compile_grammar(text)
    except RuntimeError as ebnf_error:
        import xgrammar

        try:
            return compiler.compile_grammar(xgrammar.Grammar.from_lark(text))
        except Exception:
            raise ebnf_error from None


def _escape_regex(text: str) -> str:
    special = set("\\^$.|?*+()[]{}/")
    return "".join("\\" + char if char in special else char for char in text)


def _short(error: Exception) -> str:
    """The library's message without its source location prefix."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "] " in message and message.startswith("["):
        message = message.split("] ", 1)[1]
    if message.startswith("/") and ": " in message:
        message = message.split(": ", 1)[1]
    return message[:300]


class SequenceConstraint:
    """One sequence's constraint state, advanced with every token it generates.

    Phases: "reasoning" (free; the first token is `<think>`), "forcing" (the early-stopping
    text of a spent thinking budget, one token at a time), "separator" (after the model's own
    `</think>`: the grammar's first tokens, or pieces of the blank line before the answer),
    "answer" (the grammar, if any).
    Preemption keeps the generated tokens, so the state stays valid across a recompute.

    `accept` only notes a sampled token; the matcher takes the noted tokens at the next
    `fill` (or read of `phase`). The runner fills once the next forward pass is queued, so
    the matcher's work runs while the GPU computes instead of between steps. Nothing that
    ends a sequence reads the matcher: a grammar's end lets only the stop tokens through, and
    the engine's stop check sees those.
    """

    def __init__(self, params: SamplingParams, matcher, think_open: int | None,
                 think_close: int | None, early_stop_ids: list[int],
                 separator_ids: dict[int, str] | None = None,
                 stop_token_ids: tuple[int, ...] = ()):
        self.matcher = matcher
        self.stop_token_ids = stop_token_ids  # all a finished grammar allows after its end
        self.think_open = think_open
        self.think_close = think_close
        self.budget = params.thinking_token_budget
        self.early_stop_ids = early_stop_ids
        self.separator_ids = separator_ids or {}
        self.separator_left = ""
        reasoning = params.thinking and think_close is not None
        self._phase = "reasoning" if reasoning else "answer"
        self.pending: list[int] = []  # sampled tokens the matcher has not taken yet
        self.forced: list[int] = []
        # counted from the opening `<think>`: a prompt that opened it counts it already
        self.num_reasoning_tokens = 1 if reasoning and params.reasoning_open else 0
        if reasoning and self.budget == 0:
            self._start_forcing()

    @property
    def phase(self) -> str:
        self.catch_up()
        return self._phase

    def accept(self, token_id: int) -> None:
        """Note the sequence's new token (the matcher takes it at the next `catch_up`)."""
        self.pending.append(token_id)

    def catch_up(self) -> None:
        """Advance the state over the noted tokens, in order."""
        if self.pending:
            pending, self.pending = self.pending, []
            for token_id in pending:
                self._advance(token_id)

    def fill(self, bitmask: torch.Tensor, row: int) -> bool:
        """Write this step's allowed tokens into `bitmask[row]` (the whole row); False when
        unconstrained (the row is left as it was)."""
        self.catch_up()
        if self._phase == "reasoning" and self.num_reasoning_tokens == 0 and self.think_open \
                is not None:
            return _allow_only(bitmask, row, self.think_open)
        if self._phase == "forcing":
            return _allow_only(bitmask, row, self.forced[0])
        if self._phase in ("separator", "answer") and self.matcher is not None:
            if self.matcher.is_terminated():  # ended, and generating on (ignore_eos)
                return _allow_only(bitmask, row, *self.stop_token_ids)
            self.matcher.fill_next_token_bitmask(bitmask, row)
            if self._phase == "separator":
                for token_id in self._separator_pieces():
                    _allow_also(bitmask, row, token_id)
            return True
        return False

    def _separator_pieces(self) -> list[int]:
        return [token_id for token_id, text in self.separator_ids.items()
                if self.separator_left.startswith(text)]

    def _advance(self, token_id: int) -> None:
        if self._phase == "reasoning":
            self._accept_reasoning(token_id)
        elif self._phase == "forcing":
            self.forced.pop(0)
            if not self.forced:
                self._phase = "answer"
        elif self._phase == "separator" and token_id in self._separator_pieces():
            self.separator_left = self.separator_left[len(self.separator_ids[token_id]):]
            if not self.separator_left:
                self._phase = "answer"
        else:
            self._phase = "answer"
            if self.matcher is not None and not self.matcher.is_terminated():
                self.matcher.accept_token(token_id)

    def _accept_reasoning(self, token_id: int) -> None:
        if token_id == self.think_close:
            self._phase, self.separator_left = "separator", ANSWER_SEPARATOR
            return
        self.num_reasoning_tokens += 1
        if self.budget is not None and self.num_reasoning_tokens >= self.budget + 1:
            self._start_forcing()

    def _start_forcing(self) -> None:
        self.forced = list(self.early_stop_ids)
        if self.think_open is not None and self.num_reasoning_tokens == 0:
            self.forced.insert(0, self.think_open)
            self.num_reasoning_tokens = 1
        self._phase = "forcing" if self.forced else "answer"


def _allow_only(bitmask: torch.Tensor, row: int, *token_ids: int) -> bool:
    bitmask[row] = 0
    for token_id in token_ids:
        _allow_also(bitmask, row, token_id)
    return True


def _allow_also(bitmask: torch.Tensor, row: int, token_id: int) -> None:
    word, bit = divmod(token_id, 32)
    value = (int(bitmask[row, word]) & 0xFFFFFFFF) | (1 << bit)
    bitmask[row, word] = value - (1 << 32 if value >= 1 << 31 else 0)  # an int32 word


class ConstraintFactory:
    """Builds each constrained sequence's `SequenceConstraint` for one engine."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int],
                 timeout: float = DEFAULT_COMPILE_TIMEOUT):
        self.grammars = GrammarCache(tokenizer, vocab_size, stop_token_ids, timeout)
        self.vocab_size = vocab_size
        self.think_open = _single_token(tokenizer, THINK_OPEN)
        self.think_close = _single_token(tokenizer, THINK_CLOSE)
        self.early_stop_ids = tokenizer.encode(EARLY_STOP_TEXT, add_special_tokens=False)
        self.separator_ids = _separator_tokens(tokenizer)

    def for_params(self, params: SamplingParams) -> SequenceConstraint | None:
        if not params.constrained:
            return None
        matcher = None
        if params.structured_outputs is not None:
            import xgrammar

            compiled = self.grammars.compile(params.structured_outputs)
            matcher = xgrammar.GrammarMatcher(compiled)
        return SequenceConstraint(params, matcher, self.think_open, self.think_close,
                                  self.early_stop_ids, self.separator_ids,
                                  tuple(self.grammars.stop_token_ids))

    def close(self) -> None:
        self.grammars.close()


def _single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def _separator_tokens(tokenizer) -> dict[int, str]:
    """The single tokens that spell a start of the blank line after `</think>`."""
    pieces = {}
    for length in range(1, len(ANSWER_SEPARATOR) + 1):
        token_id = _single_token(tokenizer, ANSWER_SEPARATOR[:length])
        if token_id is not None:
            pieces[token_id] = ANSWER_SEPARATOR[:length]
    return pieces


def new_token_bitmask(num_rows: int, vocab_size: int, pin_memory: bool = False) -> torch.Tensor:
    """Packed bits, every token allowed: 32 tokens per int32 word."""
    return torch.full((num_rows, (vocab_size + 31) // 32), -1, dtype=torch.int32,
                      pin_memory=pin_memory)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor,
                        rows: torch.Tensor) -> None:
    """Set the logits of the tokens `bitmask` leaves out to -inf, in place, on `rows` (int32,
    on the logits' device; row r of `bitmask` masks row r of `logits`)."""
    import xgrammar

    xgrammar.apply_token_bitmask_inplace(logits, bitmask, indices=rows,
                                         vocab_size=logits.shape[-1])
