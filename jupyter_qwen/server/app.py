"""The FastAPI application: OpenAI-compatible routes, health, metrics, sessions, admin."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from jupyter_qwen._version import __version__
from jupyter_qwen.server.completions import CompletionHandler
from jupyter_qwen.server.context import ServerContext, health_report
from jupyter_qwen.server.errors import APIError
from jupyter_qwen.server.metrics import render_prometheus
from jupyter_qwen.server.protocol import ChatCompletionRequest, CompletionRequest
from jupyter_qwen.server.request_body import RequestBodyRoute
from jupyter_qwen.server.responses import ResponsesRequest, ResponseStore, create_response
from jupyter_qwen.server.security import HostGuard, HostPolicy
from jupyter_qwen.server.tokenization import (
    DetokenizeRequest,
    TokenizeRequest,
    detokenize,
    tokenize,
)

log = logging.getLogger("jupyter_qwen.server")
MAX_BODY_BYTES = 32 << 20


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


def has_admin_token(request: Request, ctx: ServerContext) -> bool:
    token = request.headers.get("x-admin-token", "")
    return bool(token) and hmac.compare_digest(token.encode(), ctx.admin_token.encode())


async def require_admin_token(request: Request, ctx: Context) -> None:
    if not has_admin_token(request, ctx):
        raise APIError(401, "admin routes need the server's X-Admin-Token header",
                       "invalid_admin_token", code="invalid_admin_token")


async def require_session_owner(request: Request, ctx: Context) -> None:
    """Session ids are the owner's: the API key's holder when there is a key, else the
    holder of the admin token (the kernel that started the server, and the sidebar)."""
    if has_admin_token(request, ctx):
        return
    if ctx.api_key is not None:
        await require_api_key(request, ctx)
        return
    raise APIError(401, "without an API key, listing and deleting sessions needs the "
                   "server's X-Admin-Token header (server.admin_token)",
                   "invalid_admin_token", code="invalid_admin_token")


router = APIRouter(route_class=RequestBodyRoute)
API_KEY = [Depends(require_api_key)]
ADMIN_TOKEN = [Depends(require_admin_token)]
SESSION_OWNER = [Depends(require_session_owner)]


def create_app(ctx: ServerContext, hosts: HostPolicy | None = None) -> FastAPI:
    """The app of one server. Its routes are module-level functions that find the server in
    `app.state`: FastAPI caches what it learns about route functions for the whole process,
    so routes that closed over `ctx` would keep every stopped server alive. Every request
    first passes the `Host` check of `hosts` (default: loopback names only)."""
    app = FastAPI(title="jupyter_qwen", version=__version__)
    app.state.ctx = ctx
    app.state.handler = CompletionHandler(ctx)
    app.state.responses = ResponseStore()
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(HostGuard, policy=hosts or HostPolicy())
    app.include_router(router)
    return app


@router.get("/v1/models", dependencies=API_KEY)
async def list_models(ctx: Context):
    """One card per served name, as vLLM lists them; the aliases in each card."""
    return {"object": "list",
            "data": [model_card(ctx, name) for name in ctx.model_names.served]}


@router.get("/v1/models/{model_id:path}", dependencies=API_KEY)
async def retrieve_model(model_id: str, ctx: Context):
    ctx.check_model(model_id)
    served = {name.casefold(): name for name in ctx.model_names.served}
    return model_card(ctx, served.get(model_id.casefold(), ctx.served_model_name))


def model_card(ctx: ServerContext, name: str) -> dict:
    engine = ctx.engine
    return {"id": name, "object": "model", "created": int(ctx.started_at),
            "owned_by": "jupyter_qwen", "root": ctx.model,
            "max_model_len": engine.engine.max_model_len if engine else None,
            "chat_variant": ctx.chat_variant,
            "aliases": list(ctx.model_names.aliases)}


@router.post("/tokenize", dependencies=API_KEY)
async def tokenize_route(body: TokenizeRequest, ctx: Context):
    engine = ready_for(ctx, body.model)
    return await asyncio.to_thread(tokenize, engine.engine.tokenizer, body,
                                   engine.engine.max_model_len, ctx.default_enable_thinking)


@router.post("/detokenize", dependencies=API_KEY)
async def detokenize_route(body: DetokenizeRequest, ctx: Context):
    tokenizer = ready_for(ctx, body.model).engine.tokenizer
    return await asyncio.to_thread(detokenize, tokenizer, body)


def ready_for(ctx: ServerContext, model: str | None):
    """The ready engine, for a request that names this server's model or none."""
    engine = ctx.ready_engine()
    ctx.check_model(model)
    return engine


@router.get("/version")
async def version():
    return {"version": __version__}


@router.get("/ping")
@router.post("/ping")
async def ping(ctx: Context):
    """200 with an empty body while the server serves, else 503 (as /health)."""
    if ctx.status != "ok":
        return APIError(503, f"the server is {ctx.status}", "service_unavailable").response()
    return Response(status_code=200)


@router.post("/v1/chat/completions", dependencies=API_KEY)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return await request.app.state.handler.chat(body, request)


@router.post("/v1/completions", dependencies=API_KEY)
async def completions(body: CompletionRequest, request: Request):
    return await request.app.state.handler.completion(body, request)


@router.post("/v1/responses", dependencies=API_KEY)
async def responses_create(body: ResponsesRequest, request: Request):
    state = request.app.state
    return await create_response(state.handler, state.responses, body, request)


@router.get("/v1/responses/{response_id}", dependencies=API_KEY)
async def responses_retrieve(response_id: str, request: Request):
    return request.app.state.responses.get(response_id).body


@router.delete("/v1/responses/{response_id}", dependencies=API_KEY)
async def responses_delete(response_id: str, request: Request):
    request.app.state.responses.delete(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/v1/sessions", dependencies=SESSION_OWNER)
async def list_sessions(ctx: Context):
    engine = ctx.ready_engine()
    sessions = await asyncio.to_thread(engine.call, lambda e: e.sessions.list())
    return {"object": "list", "data": sessions}


@router.delete("/v1/sessions/{session_id:path}", dependencies=SESSION_OWNER)
async def delete_session(session_id: str, ctx: Context):
    engine = ctx.ready_engine()
    if not await asyncio.to_thread(engine.call, lambda e: e.sessions.drop(session_id)):
        raise APIError(404, f"no session {session_id!r}", "not_found", "session_id")
    return {"id": session_id, "object": "session", "deleted": True}


@router.get("/health")
async def health(ctx: Context):
    body = await asyncio.to_thread(health_report, ctx)
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(ctx: Context):
    engine = ctx.ready_engine()
    return render_prometheus(ctx.served_model_name, engine.engine.stats(), ctx.metrics)


@router.post("/admin/stop", dependencies=ADMIN_TOKEN)
async def admin_stop(ctx: Context):
    """Release the engine's memory and answer with this process's figures before and
    after; the HTTP side stops once the answer is sent."""
    report = await asyncio.to_thread(ctx.on_release)
    asyncio.get_running_loop().call_later(0.05, ctx.on_stop)
    return {"stopped": True} | report


class AbortRequest(BaseModel):
    request_id: str


@router.post("/admin/abort", dependencies=ADMIN_TOKEN)
async def admin_abort(body: AbortRequest, ctx: Context):
    """End a running or waiting request: its client's stream ends with finish_reason
    "abort" and its KV blocks go back."""
    engine = ctx.ready_engine()
    if not await asyncio.to_thread(engine.abort_request, body.request_id):
        raise APIError(404, f"no running or waiting request {body.request_id!r}",
                       "not_found", "request_id")
    return {"aborted": body.request_id}


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
    first = _most_specific(errors)
    location = [str(part) for part in first.get("loc", ())
                if part != "body" and not _is_union_member(part)]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg', '')}",
                        "invalid_request_error")
    message = first.get("msg", "invalid request")
    return APIError(400, f"invalid field {param or 'body'}: {message}",
                    "invalid_request_error", param)




_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}


def _is_union_member(part) -> bool:
    """Whether a location part names the member of a union pydantic tried (`str`,
    `list[TextPart]`, `NamedToolChoice`, `literal['none','auto']`), not a field or index."""
    return isinstance(part, str) and (part in _TYPE_NAMES or part[:1].isupper()
                                      or any(mark in part for mark in "[('-"))


def _most_specific(errors: list[dict]) -> dict:
    """The first error, or the deepest one about the same field: of a union, the member
    that got furthest says best what is wrong."""
    if not errors:
        return {}
    head = errors[0].get("loc", ())[:2]
    same_field = [error for error in errors if error.get("loc", ())[:2] == head]
    return max(same_field, key=lambda error: len(error.get("loc", ())))
