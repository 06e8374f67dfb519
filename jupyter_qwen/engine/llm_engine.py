"""The synchronous engine: requests in, one scheduled model step at a time, tokens out."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_qwen.config import EngineConfig
from jupyter_qwen.engine.block_manager import BlockManager
from jupyter_qwen.engine.constraints import ConstraintFactory
from jupyter_qwen.engine.detokenizer import OutputDetokenizer
from jupyter_qwen.engine.errors import PromptTooLongError
from jupyter_qwen.engine.memory_figures import MemoryFigures, memory_figures
from jupyter_qwen.engine.model_runner import ModelRunner
from jupyter_qwen.engine.scheduler import Scheduler
from jupyter_qwen.engine.sequence import Sequence, SequenceStatus, TokenLogprobs
from jupyter_qwen.engine.sessions import SessionStore
from jupyter_qwen.model.loader import Progress, resolve_model_path
from jupyter_qwen.sampling_params import SamplingParams


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str = ""
    new_logprobs: list[TokenLogprobs] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0


@dataclass(slots=True)
class EngineStats:
    requests_running: int
    requests_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    num_free_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    prompt_tokens_total: int
    generation_tokens_total: int
    computed_tokens_total: int
    num_preemptions: int


class LLMEngine:
    def __init__(self, config: EngineConfig, progress: Progress | None = None):
        from transformers import AutoTokenizer

        self.config = config
        self.model_path = resolve_model_path(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.runner = ModelRunner(config, self.model_path, progress)
        self.max_model_len = self.runner.max_model_len
        self.vocab_size = self.runner.model_config.vocab_size
        self.eos_token_ids = load_eos_token_ids(self.model_path, self.tokenizer)
        self.runner.eos_token_ids = self.eos_token_ids
        self.constraints = ConstraintFactory(self.tokenizer, self.vocab_size,
                                             sorted(self.eos_token_ids),
                                             config.grammar_compile_timeout)
        self.block_manager = BlockManager(self.runner.num_kv_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   self.runner.max_num_batched_tokens)
        self.sessions = SessionStore(self.block_manager, config.session_ttl)
        self.scheduler.reclaim_memory = self.sessions.release_oldest
        self.scheduler.on_preempt = self.runner.release
        self.requests: dict[str, Sequence] = {}
        self.emit_outputs = True
        self._ids = itertools.count()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.computed_tokens_total = 0

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, session_id: str | None = None) -> Sequence:
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else str(next(self._ids))
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        token_ids = self.tokenize(prompt)
        self.check_prompt(token_ids)
        params.check_token_ids(self.vocab_size)
        seq = Sequence(request_id, token_ids, params, session_id=session_id)
        seq.constraint = self.constraints.for_params(params)
        if params.detokenize or params.stop:
            seq.detokenizer = OutputDetokenizer.for_output(
                self.tokenizer, params.stop, params.include_stop_str_in_output,
                params.skip_special_tokens)
        self.requests[request_id] = seq
        self.scheduler.add(seq)
        self.prompt_tokens_total += len(token_ids)
        return seq

    def check_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("the prompt is empty")
        if len(token_ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(token_ids)} tokens but max_model_len is "
                f"{self.max_model_len}, which leaves no room to generate")
        bad = [t for t in token_ids if not (isinstance(t, int) and 0 <= t < self.vocab_size)]
        if bad:
            raise ValueError(f"prompt token ids must be integers in [0, {self.vocab_size}); "
                             f"got {bad[:5]}")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def step(self) -> list[RequestOutput]:
        if self.sessions.sessions:
            self.sessions.expire()
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        sampled_seqs, sampled = self.runner.execute(scheduled)
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.computed_tokens_total += item.num_new_tokens
        self.generation_tokens_total += len(sampled_seqs)
        outputs = []
        for seq, token_id, logprobs in zip(sampled_seqs, sampled.token_ids, sampled.logprobs,
                                           strict=True):
            new_logprobs = self._append_token(seq, token_id, logprobs)
            if self.emit_outputs or seq.is_finished:
                outputs.append(self._output(seq, [token_id], new_logprobs))
        return outputs

    def _append_token(self, seq: Sequence, token_id: int,
                      logprobs: TokenLogprobs | None) -> list[TokenLogprobs]:
        seq.token_ids.append(token_id)
        if seq.constraint is not None:
            seq.constraint.accept(token_id)
        new_logprobs = []
        if logprobs is not None and seq.params.logprobs is not None:
            logprobs.top = logprobs.top[:seq.params.logprobs]
            seq.logprobs.append(logprobs)
            new_logprobs.append(logprobs)
        reason = self._stop_reason(seq, token_id)
        if reason:
            self._finish(seq, reason)
        return new_logprobs

    def _stop_reason(self, seq: Sequence, token_id: int) -> str | None:
        params = seq.params
        if token_id in self.eos_token_ids and not params.ignore_eos:
            return "stop"
        if params.stop_token_ids and token_id in params.stop_token_ids:
            return "stop"
        if seq.detokenizer is not None and seq.detokenizer.push([token_id]):
            return "stop"
        num_tokens = len(seq.token_ids)
        if params.max_tokens is not None and num_tokens - seq.num_prompt_tokens >= \
                params.max_tokens:
            return "length"
        if num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.session_id is not None and reason != "abort":
            self.sessions.keep(seq)
        self.scheduler.remove(seq)
        self.runner.release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.constraint = None
        del self.requests[seq.request_id]

    def _output(self, seq: Sequence, new_token_ids: list[int],
                new_logprobs: list[TokenLogprobs]) -> RequestOutput:
        new_text = ""
        if seq.detokenizer is not None:
            new_text = seq.detokenizer.take_delta(final=seq.is_finished)
        return RequestOutput(seq.request_id, new_token_ids, new_text, new_logprobs,
                             seq.is_finished, seq.finish_reason, seq.num_prompt_tokens,
                             seq.num_output_tokens, seq.num_cached_tokens)

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.requests.get(request_id)
        if seq is None:
            return None
        self._finish(seq, "abort")
        return self._output(seq, [], [])

    def abort_all(self) -> list[RequestOutput]:
        return [self.abort(request_id) for request_id in list(self.requests)]

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            requests_running=len(self.scheduler.running),
            requests_waiting=len(self.scheduler.waiting), kv_cache_usage=bm.usage,
            num_kv_blocks=bm.num_blocks, num_free_blocks=bm.num_free_blocks,
            prefix_cache_queries=bm.prefix_cache_queries,
            prefix_cache_hits=bm.prefix_cache_hits,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            computed_tokens_total=self.computed_tokens_total,
            num_preemptions=self.scheduler.num_preemptions)

    def memory(self) -> MemoryFigures | None:
        """Where this engine's memory goes (None once closed)."""
        runner = self.runner
        if runner is None or runner.kv_cache is None:
            return None
        try:
            return memory_figures(runner, self.block_manager.num_free_blocks)
        except AttributeError:  # closed by the engine thread while being read
            return None

    def running_requests(self) -> list[dict]:
        """The requests in flight, oldest first (call it on the thread that steps the
        engine)."""
        now = time.monotonic()
        seqs = sorted(self.requests.values(), key=lambda seq: seq.arrival_time)
        return [seq.running_figures(now) for seq in seqs]

    def close(self) -> None:
        if self.runner is None:
            return
        try:
            self.abort_all()
            self.sessions.clear()
        finally:
            self.constraints.close()
            self.runner.close()
            self.runner = None

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_eos_token_ids(model_path: Path, tokenizer) -> set[int]:
    ids: set[int] = set()
    config_file = model_path / "generation_config.json"
    if config_file.is_file():
        eos = json.loads(config_file.read_text()).get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else eos or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
