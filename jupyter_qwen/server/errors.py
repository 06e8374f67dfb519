"""Errors in OpenAI's shape ({"error": {"message", "type", "param", "code"}}), and the errors
of starting a server, in one torch-free place for the notebook layer to name."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jupyter_qwen.engine.errors import (
    EngineDeadError,
    EngineStepError,
    OutOfKVCacheMemoryError,
    PromptTooLongError,
    QueueFullError,
)
from jupyter_qwen.model.errors import ModelNotFoundError
from jupyter_qwen.options import ConfigError

if TYPE_CHECKING:
    from fastapi.responses import JSONResponse

__all__ = ["APIError", "ConfigError", "ErrorSummary", "ModelNotFoundError",
           "OutOfKVCacheMemoryError", "ServerStartError", "summarize_error"]


@dataclass(frozen=True, slots=True)
class ErrorSummary:
    """An error as the views show it: one line, what to do, and the full text behind it."""

    line: str
    hint: str | None = None
    detail: str | None = None


def summarize_error(error: BaseException) -> ErrorSummary:
    """One line for `error`: a user error (ConfigError and its kinds) says itself; anything
    else says its type and the first line of its message. The detail keeps the error's own
    detail (the hub's words) or its traceback."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(error, ConfigError | ServerStartError):
        line = first or type(error).__name__
    else:
        line = f"{type(error).__name__}: {first}" if first else type(error).__name__
    detail = getattr(error, "detail", None) or "".join(
        traceback.format_exception(type(error), error, error.__traceback__)).strip()
    return ErrorSummary(line, getattr(error, "hint", None), detail)


class ServerStartError(RuntimeError):
    """The server could not start: its HTTP side or its model failed. `field` names the
    option at fault when one is (e.g. "port" for a port that is taken)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status, message, kind, param, code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code if self.code is not None else self.status}}

    def response(self) -> JSONResponse:
        from fastapi.responses import JSONResponse

        return JSONResponse(self.body(), status_code=self.status)


def engine_error(error: Exception) -> APIError:
    """The HTTP error for an exception raised while submitting or running a request."""
    if isinstance(error, QueueFullError):
        return APIError(429, str(error), "rate_limit_exceeded", code="queue_full")
    if isinstance(error, EngineDeadError | EngineStepError):
        return APIError(503, str(error), "service_unavailable")
    if isinstance(error, PromptTooLongError):
        return APIError(400, str(error), "invalid_request_error", "messages",
                        code="context_length_exceeded")
    if isinstance(error, ValueError):
        return APIError(400, str(error), "invalid_request_error")
    return APIError(500, f"internal error: {error!r}", "internal_error")
