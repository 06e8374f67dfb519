"""The FastAPI application: OpenAI-compatible routes, health, metrics, sessions, admin."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jupyter_qwen.engine.async_engine import AsyncEngine
from jupyter_qwen.engine.errors import (
    EngineDeadError,
    EngineStepError,
    PromptTooLongError,
    QueueFullError,
)
from jupyter_qwen.server.completions import CompletionHandler
from jupyter_qwen.server.errors import APIError
from jupyter_qwen.server.metrics import RequestMetrics, render_prometheus
from jupyter_qwen.server.protocol import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("jupyter_qwen.server")
MAX_BODY_BYTES = 32 << 20


@dataclass(slots=True)
class ServerContext:
    """What the routes need to know about the server they belong to."""

    model: str
    served_model_name: str
    api_key: str | None
    admin_token: str
    default_enable_thinking: bool = True
    default_sampling: dict = field(default_factory=dict)
    engine: AsyncEngine | None = None
    state: str = "loading"
    loading_phase: str = "starting"
    loading_fraction: float | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    on_stop: Callable[[], None] = lambda: None
    on_clean: Callable[[], dict] = dict

    @property
    def status(self) -> str:
        if self.engine is not None and self.engine.state == "dead":
            return "dead"
        return self.state

    def ready_engine(self) -> AsyncEngine:
        status = self.status
        if status == "loading":
            raise APIError(503, f"the model is still loading ({self.loading_phase})",
                           "service_unavailable")
        if status != "ok" or self.engine is None:
            reason = self.error or (self.engine.error if self.engine else None) or status
            raise APIError(503, f"the engine is not serving: {reason}", "service_unavailable")
        return self.engine


def server_context(request: Request) -> ServerContext:
    return request.app.state.ctx


Context = Annotated[ServerContext, Depends(server_context)]


async def require_api_key(request: Request, ctx: Context) -> None:
    if ctx.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), ctx.api_key.encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                       "invalid_api_key", code="invalid_api_key")


async def require_admin_token(request: Request, ctx: Context) -> None:
    token = request.headers.get("x-admin-token", "")
    if not token or not hmac.compare_digest(token.encode(), ctx.admin_token.encode()):
        raise APIError(401, "admin routes need the server's X-Admin-Token header",
                       "invalid_admin_token", code="invalid_admin_token")


router = APIRouter()
API_KEY = [Depends(require_api_key)]
ADMIN_TOKEN = [Depends(require_admin_token)]


def create_app(ctx: ServerContext) -> FastAPI:
    """The app of one server. Its routes are module-level functions that find the server in
    `app.state`: FastAPI caches what it learns about route functions for the whole process,
    so routes that closed over `ctx` would keep every stopped server alive."""
    app = FastAPI(title="jupyter_qwen", version="0.1.0")
    app.state.ctx = ctx
    app.state.handler = CompletionHandler(ctx)
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=MAX_BODY_BYTES)
    app.include_router(router)
    return app


@router.get("/v1/models", dependencies=API_KEY)
async def list_models(ctx: Context):
    engine = ctx.engine
    return {"object": "list", "data": [{
        "id": ctx.served_model_name, "object": "model", "created": int(ctx.started_at),
        "owned_by": "jupyter_qwen", "root": ctx.model,
        "max_model_len": engine.engine.max_model_len if engine else None}]}


@router.post("/v1/chat/completions", dependencies=API_KEY)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return await request.app.state.handler.chat(body, request)


@router.post("/v1/completions", dependencies=API_KEY)
async def completions(body: CompletionRequest, request: Request):
    return await request.app.state.handler.completion(body, request)


@router.get("/v1/sessions", dependencies=API_KEY)
async def list_sessions(ctx: Context):
    engine = ctx.ready_engine()
    sessions = await asyncio.to_thread(engine.call, lambda e: e.sessions.list())
    return {"object": "list", "data": sessions}


@router.delete("/v1/sessions/{session_id:path}", dependencies=API_KEY)
async def delete_session(session_id: str, ctx: Context):
    engine = ctx.ready_engine()
    if not await asyncio.to_thread(engine.call, lambda e: e.sessions.drop(session_id)):
        raise APIError(404, f"no session {session_id!r}", "not_found", "session_id")
    return {"id": session_id, "object": "session", "deleted": True}


@router.get("/health")
async def health(ctx: Context):
    body = health_report(ctx)
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(ctx: Context):
    engine = ctx.ready_engine()
    return render_prometheus(ctx.served_model_name, engine.engine.stats(), ctx.metrics)


@router.post("/admin/stop", dependencies=ADMIN_TOKEN)
async def admin_stop(ctx: Context):
    asyncio.get_running_loop().call_later(0.05, ctx.on_stop)
    return {"stopped": True}


@router.post("/admin/clean", dependencies=ADMIN_TOKEN)
async def admin_clean(ctx: Context):
    return await asyncio.to_thread(ctx.on_clean)


class BodySizeLimit:
    """Refuses bodies announced as larger than `limit` bytes (413), before reading them.

    A plain ASGI middleware: it stays out of the way of streamed responses.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                response = APIError(413, f"the request body is larger than {self.limit} bytes",
                                    "request_too_large").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def health_report(ctx: ServerContext) -> dict[str, Any]:
    from jupyter_qwen.nvml import gpu_snapshot

    report: dict[str, Any] = {
        "status": ctx.status, "model": ctx.served_model_name, "root": ctx.model,
        "uptime": round(time.time() - ctx.started_at, 3), "engine": engine_figures(ctx),
        "gpu": gpu_snapshot().to_dict()}
    if ctx.status == "loading":
        report["loading"] = {"phase": ctx.loading_phase, "fraction": ctx.loading_fraction}
    if ctx.error or (ctx.engine and ctx.engine.error):
        report["error"] = ctx.error or ctx.engine.error
    return report


def engine_figures(ctx: ServerContext) -> dict[str, Any]:
    if ctx.engine is None:
        return {"engine_state": ctx.status}
    engine = ctx.engine
    stats = engine.engine.stats() if engine.engine.runner is not None else None
    prompt_rate, generation_rate = engine.rates()
    figures: dict[str, Any] = {"engine_state": engine.state,
                               "prompt_tokens_per_s": round(prompt_rate, 2),
                               "generation_tokens_per_s": round(generation_rate, 2),
                               "step_failures": engine.num_step_failures}
    if stats is not None:
        hit_rate = stats.prefix_cache_hits / stats.prefix_cache_queries \
            if stats.prefix_cache_queries else 0.0
        figures |= {
            "requests_running": stats.requests_running,
            "requests_waiting": engine.num_waiting,
            "kv_cache_usage": round(stats.kv_cache_usage, 4),
            "num_kv_blocks": stats.num_kv_blocks, "num_free_blocks": stats.num_free_blocks,
            "prefix_cache_hit_rate": round(hit_rate, 4),
            "prompt_tokens_total": stats.prompt_tokens_total,
            "generation_tokens_total": stats.generation_tokens_total,
            "num_preemptions": stats.num_preemptions,
            "max_model_len": engine.engine.max_model_len,
            "kv_cache_bytes": stats.num_kv_blocks * engine.engine.runner.kv_block_bytes}
    return figures


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        return validation_error(error.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        kind = "not_found" if error.status_code == 404 else "invalid_request_error"
        return APIError(error.status_code, str(error.detail), kind).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {error!r}", "internal_error").response()


def validation_error(errors: list[dict]) -> APIError:
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg', '')}",
                        "invalid_request_error")
    message = first.get("msg", "invalid request")
    return APIError(400, f"invalid field {param or 'body'}: {message}",
                    "invalid_request_error", param)


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


async def sse(events: AsyncIterator[dict | str]) -> AsyncIterator[str]:
    """Server-sent events; an event is a dict, or a string of JSON already serialised."""
    async for event in events:
        if not isinstance(event, str):
            event = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        yield f"data: {event}\n\n"
    yield "data: [DONE]\n\n"


def streaming_response(events: AsyncIterator[dict | str]) -> StreamingResponse:
    return StreamingResponse(sse(events), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
