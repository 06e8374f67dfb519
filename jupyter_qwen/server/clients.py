"""The clients a server handle hands out: openai's, sync and async, and LangChain's (torch-free).

Every handle (an in-kernel `QwenServer`, a child-process or a remote server) has `url`,
`api_key` and `served_model_name`; this mixin builds the clients from them, in one place.
"""

from __future__ import annotations


class OpenAIClients:
    """`openai_client()`, `async_openai_client()` and `chat_model()` for a handle with `url`
    (the OpenAI base URL), `api_key` (None: the server needs none) and `served_model_name`."""

    url: str
    api_key: str | None
    served_model_name: str

    def openai_client(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=self.api_key or "EMPTY", **kwargs)

    def async_openai_client(self, **kwargs):
        import openai

        return openai.AsyncOpenAI(base_url=self.url, api_key=self.api_key or "EMPTY", **kwargs)

    def chat_model(self, **kwargs):
        """A LangChain ChatOpenAI bound to this server that keeps the model's reasoning."""
        from jupyter_qwen.server.langchain import ReasoningChatOpenAI

        options = {"base_url": self.url, "api_key": self.api_key or "EMPTY",
                   "model": self.served_model_name} | kwargs
        return ReasoningChatOpenAI(**options)
