"""A LangChain ChatOpenAI that keeps Qwen3's reasoning in `additional_kwargs`."""

from __future__ import annotations

from typing import Any

from langchain_openai import ChatOpenAI


def _reasoning(message: Any) -> str | None:
    if message is None:
        return None
    if not isinstance(message, dict):
        message = message.model_dump() if hasattr(message, "model_dump") else vars(message)
    return message.get("reasoning_content") or message.get("reasoning")


class ReasoningChatOpenAI(ChatOpenAI):
    """ChatOpenAI for jupyter_qwen servers: `reasoning_content` survives, streamed or not."""

    def _create_chat_result(self, response, generation_info=None):
        result = super()._create_chat_result(response, generation_info)
        raw = response if isinstance(response, dict) else response.model_dump()
        for generation, choice in zip(result.generations, raw.get("choices") or [], strict=False):
            reasoning = _reasoning(choice.get("message"))
            if reasoning:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return result

    def _convert_chunk_to_generation_chunk(self, chunk, default_chunk_class,
                                           base_generation_info):
        generation = super()._convert_chunk_to_generation_chunk(
            chunk, default_chunk_class, base_generation_info)
        choices = chunk.get("choices") or chunk.get("chunk", {}).get("choices") or []
        if generation is not None and choices:
            reasoning = _reasoning(choices[0].get("delta"))
            if reasoning:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return generation
