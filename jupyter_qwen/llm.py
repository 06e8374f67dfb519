"""Offline API: `LLM(model).generate(prompts)` and `LLM(model).chat(messages)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Any

from jupyter_qwen.config import EngineConfig
from jupyter_qwen.engine.llm_engine import LLMEngine
from jupyter_qwen.engine.sequence import Sequence, TokenLogprobs
from jupyter_qwen.sampling_params import SamplingParams

Prompt = str | list[int]


@dataclass(slots=True)
class GenerationOutput:
    prompt: str | None
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    error: str | None = None


class LLM:
    """A Qwen3 model with the engine around it, for batch generation in one process.

    >>> with LLM("path/to/checkpoint") as llm:
    ...     [out] = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=8))
    """

    def __init__(self, model: str, **engine_config: Any):
        self.engine = LLMEngine(EngineConfig.from_kwargs(model, **engine_config))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | list[Prompt],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 ) -> list[GenerationOutput]:
        prompts = _as_prompt_list(prompts)
        params = _as_params_list(sampling_params, len(prompts))
        outputs: list[GenerationOutput] = []
        running: list[tuple[GenerationOutput, Sequence]] = []
        try:
            for prompt, param in zip(prompts, params, strict=True):
                outputs.append(self._submit(prompt, param, running))
            self.engine.emit_outputs = False
            while self.engine.has_unfinished_requests():
                self.engine.step()
        except BaseException:
            for _, seq in running:
                self.engine.abort(seq.request_id)
            raise
        finally:
            self.engine.emit_outputs = True
        for output, seq in running:
            self._collect(output, seq)
        return outputs

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | list[SamplingParams] | None = None,
             enable_thinking: bool = True, tools: list[dict] | None = None,
             ) -> list[GenerationOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.apply_chat_template(c, enable_thinking, tools) for c in conversations]
        return self.generate(prompts, sampling_params)

    def apply_chat_template(self, messages: list[dict], enable_thinking: bool = True,
                            tools: list[dict] | None = None) -> list[int]:
        return list(self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True,
            return_dict=False, enable_thinking=enable_thinking))

    def _submit(self, prompt: Prompt, params: SamplingParams,
                running: list[tuple[GenerationOutput, Sequence]]) -> GenerationOutput:
        output = GenerationOutput(prompt if isinstance(prompt, str) else None, [])
        try:
            output.prompt_token_ids = self.engine.tokenize(prompt)
            seq = self.engine.add_request(output.prompt_token_ids,
                                          dataclasses.replace(params, detokenize=False))
        except ValueError as error:
            output.error, output.finish_reason = str(error), "error"
            return output
        running.append((output, seq))
        return output

    def _collect(self, output: GenerationOutput, seq: Sequence) -> None:
        output.token_ids = seq.output_token_ids
        output.finish_reason = seq.finish_reason
        output.num_cached_tokens = seq.num_cached_tokens
        output.logprobs = seq.logprobs
        if seq.detokenizer is not None:
            output.text = seq.detokenizer.text
        else:
            output.text = self.tokenizer.decode(
                output.token_ids, skip_special_tokens=seq.params.skip_special_tokens)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_prompt_list(prompts: Prompt | list[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, SequenceABC) and prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]
    return list(prompts)


def _as_params_list(params, count: int) -> list[SamplingParams]:
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(f"got {len(params)} sampling params for {count} prompts")
    return params
