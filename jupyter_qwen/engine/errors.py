"""The engine's errors, torch-free so that the server and notebook layers may name them."""

from __future__ import annotations

from jupyter_qwen.options import ConfigError


class OutOfKVCacheMemoryError(ConfigError):
    """The KV cache cannot hold even one sequence of `max_model_len` tokens."""

    def __init__(self, message: str):
        super().__init__("max_model_len", message)


class PromptTooLongError(ValueError):
    """The prompt leaves no room to generate within `max_model_len`."""


class QueueFullError(RuntimeError):
    """Too many requests are already waiting."""


class EngineDeadError(RuntimeError):
    """The engine failed and cannot serve requests any more."""


class EngineStepError(RuntimeError):
    """A model step failed; the requests in flight were ended."""


class ConstraintError(ValueError):
    """A structured-output constraint that does not compile; `param` names its kind."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ConstraintTimeoutError(ConstraintError):
    """A constraint whose compilation ran past the time limit."""
