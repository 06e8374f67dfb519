"""ServerContext: what the routes know about the server they belong to, and its figures."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jupyter_qwen.engine.async_engine import AsyncEngine
from jupyter_qwen.server.errors import APIError, summarize_error
from jupyter_qwen.server.metrics import RequestMetrics
from jupyter_qwen.server.names import ModelNames


@dataclass(slots=True)
class ServerContext:
    """What the routes need to know about the server they belong to."""

    model: str
    served_model_name: str
    api_key: str | None
    admin_token: str
    default_enable_thinking: bool = True
    default_thinking_token_budget: int | None = None
    effort_budgets: dict[str, int] = field(default_factory=dict)
    chat_variant: str = "unknown"
    default_sampling: dict = field(default_factory=dict)
    engine: AsyncEngine | None = None
    state: str = "loading"
    loading_phase: str = "starting"
    loading_fraction: float | None = None
    error: str | None = None  # one line
    error_detail: str | None = None  # the full text behind `error`
    hint: str | None = None  # what to do about `error`
    device: str | None = None  # "cuda:0", "cpu", ...; None until the engine's is known
    origin: str = "kernel"  # "kernel": in a notebook's kernel; "process": a process of its own
    started_at: float = field(default_factory=time.time)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    on_release: Callable[[], dict] = dict  # stop the engine; this process's memory report
    on_stop: Callable[[], None] = lambda: None
    on_clean: Callable[[], dict] = dict
    names: ModelNames | None = None  # None: the served name and the model as given

    @property
    def model_names(self) -> ModelNames:
        return self.names or ModelNames((self.served_model_name,), (self.model,))

    def check_model(self, name: str | None, kind: str = "invalid_request_error") -> None:
        """404 `model_not_found` for a name this server does not answer to, listing those
        it does."""
        names = self.model_names
        if not names.answers_to(name):
            known = ", ".join(repr(known) for known in names.all())
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                           f"{names.primary!r} and answers to {known}", kind, "model",
                           code="model_not_found")

    def fail(self, error: BaseException) -> None:
        """Loading failed: keep one line, the hint and the full text."""
        summary = summarize_error(error)
        self.error, self.hint, self.error_detail = summary.line, summary.hint, summary.detail
        self.state = "failed"

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


def health_report(ctx: ServerContext) -> dict[str, Any]:
    """What `GET /health` says. Reads the engine thread's figures, so call it off the
    event loop."""
    from jupyter_qwen.nvml import gpu_snapshot

    report: dict[str, Any] = {
        "status": ctx.status, "model": ctx.served_model_name, "root": ctx.model,
        "pid": os.getpid(), "device": ctx.device, "origin": ctx.origin,
        "uptime": round(time.time() - ctx.started_at, 3), "engine": engine_figures(ctx),
        "gpu": gpu_snapshot().to_dict()}
    if ctx.status == "loading":
        report["loading"] = {"phase": ctx.loading_phase, "fraction": ctx.loading_fraction}
    report |= error_figures(ctx)
    return report


def error_figures(ctx: ServerContext) -> dict[str, Any]:
    """`error` (one line), `error_detail` and `hint` of a failed or dead server; nothing
    for a healthy one."""
    if ctx.error:
        return {"error": ctx.error, "error_detail": ctx.error_detail, "hint": ctx.hint}
    engine_error = ctx.engine.error if ctx.engine else None
    if not engine_error:
        return {}
    lines = engine_error.strip().splitlines() or ["the engine failed"]
    return {"error": lines[0], "error_detail": engine_error,
            "hint": "stop this server and start it again; the error detail says what failed"}


def engine_figures(ctx: ServerContext) -> dict[str, Any]:
    if ctx.engine is None:
        return {"engine_state": ctx.status}
    engine = ctx.engine
    stats = engine.engine.stats() if engine.engine.runner is not None else None
    prompt_rate, generation_rate = engine.rates()
    figures: dict[str, Any] = {"engine_state": engine.state, "chat_variant": ctx.chat_variant,
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
    memory = engine.engine.memory()
    if memory is not None:
        figures["memory"] = memory.to_dict()
    figures["latency"] = ctx.metrics.latency()
    running = engine.running_requests()
    if running is not None:
        figures["running"] = running
    return figures
