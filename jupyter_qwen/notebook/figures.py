"""What the notebook shows of one model server, read once from its figures.

A server's figures are what ``QwenServer.stats()`` returns, or the ``engine`` part of its
``GET /health`` for a server of another process: ``memory``, ``latency``, ``running``,
``chat_variant`` and the throughput counters (see the /health contract in ARCHITECTURE.md).
The widget (``ServerPanel``), ``%qwen_status``, ``%qwen_stop`` and the static views saved in
notebooks all read them through here and write them with ``format.py``, so they agree. A
figure that is not known reads "–" followed by why, never 0 and never a blank.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from jupyter_qwen.format import (
    MISSING,
    format_bytes,
    format_duration,
    format_latency,
    format_number,
    format_percent,
)

NOT_REPORTED = "not reported"
NO_GPU = "no GPU"
REASON_BY_STATE = {"loading": "loading", "failed": "failed", "dead": "engine dead",
                   "stopping": "stopping", "stopped": "stopped",
                   "unreachable": "no answer"}
"""Why a server in this state has no live figures."""
MEMORY_PARTS = (("weights", "weights_bytes"), ("KV cache", "kv_cache_bytes"),
                ("activations", "activations_bytes"), ("CUDA graphs", "cuda_graph_bytes"))
"""The pieces of a server's own memory, in the order every view lists them."""
RUNNING_COLUMNS = ("request", "state", "age", "prompt", "cached", "generated", "session")


def missing(reason: str) -> str:
    """``– (reason)``: a figure that is not known, and why."""
    return f"{MISSING} ({reason})"


def known_or(value: Any, write, reason: str) -> str:
    return missing(reason) if value is None else write(value)


def state_reason(state: str) -> str:
    return REASON_BY_STATE.get(state, NOT_REPORTED)


def memory_of(figures: dict) -> dict | None:
    """The server's memory accounting: ``figures["memory"]``; for a server that reports only
    its KV cache (older versions), what can be read of it from its block counts."""
    memory = figures.get("memory")
    if isinstance(memory, dict):
        return memory
    total = figures.get("num_kv_blocks")
    kv_bytes = figures.get("kv_cache_bytes")
    if total is None or kv_bytes is None:
        return None
    free = figures.get("num_free_blocks")
    return {"kv_cache_bytes": kv_bytes, "kv_blocks_total": total,
            "kv_blocks_used": None if free is None else total - free,
            "kv_block_bytes": kv_bytes // total if total else None}


def device_of(figures: dict) -> str | None:
    memory = figures.get("memory") if isinstance(figures.get("memory"), dict) else {}
    return figures.get("device") or memory.get("device")


def _part_reason(key: str, device: str | None) -> str:
    on_cpu = device is not None and device.startswith("cpu")
    if key == "cuda_graph_bytes" and on_cpu:
        return "none on CPU"
    if key == "activations_bytes" and on_cpu:
        return "not measured on CPU"
    return NOT_REPORTED


def server_memory_bytes(memory: dict | None) -> int | None:
    """The memory this server holds by its own accounting: the known parts added up."""
    if not memory or memory.get("weights_bytes") is None:
        return None
    return sum(memory.get(key) or 0 for _, key in MEMORY_PARTS)


def kv_used_bytes(memory: dict) -> int | None:
    used, block = memory.get("kv_blocks_used"), memory.get("kv_block_bytes")
    return None if used is None or block is None else used * block


def kv_text(memory: dict | None, reason: str = NOT_REPORTED) -> str:
    """``3 MiB of 64 MiB (4.7 %), 12 of 256 blocks``: absolute first, then the share."""
    if not memory or memory.get("kv_cache_bytes") is None:
        return missing(reason)
    used, total = memory.get("kv_blocks_used"), memory.get("kv_blocks_total")
    size = format_bytes(memory["kv_cache_bytes"])
    if used is None or not total:
        return f"{size} (use {NOT_REPORTED})"
    used_bytes = kv_used_bytes(memory)
    share = format_percent(used / total)
    return (f"{format_bytes(used_bytes)} of {size} ({share}), "
            f"{format_number(used, 0)} of {format_number(total, 0)} blocks")


def kv_view(memory: dict | None, usage: float | None, reason: str = NOT_REPORTED) -> str:
    """The KV cache line: bytes and blocks where the server reports them, else only the share
    in use (what a remote server's /metrics tells, e.g. vLLM's kv_cache_usage_perc)."""
    if (not memory or memory.get("kv_cache_bytes") is None) and usage is not None:
        return f"{format_percent(usage)} in use"
    return kv_text(memory, reason)


def memory_parts(memory: dict | None, reason: str = NOT_REPORTED) -> list[dict]:
    """Each piece of the server's memory: label, bytes (None when not known) and its text."""
    device = (memory or {}).get("device")
    parts = []
    for label, key in MEMORY_PARTS:
        value = None if memory is None else memory.get(key)
        why = reason if memory is None else _part_reason(key, device)
        text = kv_text(memory, why) if key == "kv_cache_bytes" else known_or(
            value, format_bytes, why)
        parts.append({"label": label, "bytes": value, "text": text,
                      "used": kv_used_bytes(memory) if key == "kv_cache_bytes" and memory
                      else None})
    return parts


def memory_summary(memory: dict | None, reason: str = NOT_REPORTED) -> str:
    """``12 MiB on cpu: weights 5 MiB, KV cache …, activations – (not measured on CPU), …``."""
    total = server_memory_bytes(memory)
    device = (memory or {}).get("device")
    head = known_or(total, format_bytes, reason) + (f" on {device}" if device else "")
    pieces = ", ".join(f"{p['label']} {p['text']}" for p in memory_parts(memory, reason))
    return f"{head}: {pieces}"


def latency_texts(latency: dict | None, reason: str = NOT_REPORTED) -> dict[str, str]:
    """``{"ttft": "45 ms · 120 ms", "itl": …}``: p50 · p95 of the last minutes."""
    if not latency:
        return {"ttft": missing(reason), "itl": missing(reason)}
    if not latency.get("requests"):
        window = format_duration(latency.get("window_s"))
        idle = missing(f"no request finished in the last {window}")
        return {"ttft": idle, "itl": idle}
    return {name: f"p50 {format_latency(latency.get(f'{name}_p50_s'))} · "
                  f"p95 {format_latency(latency.get(f'{name}_p95_s'))}"
            for name in ("ttft", "itl")}


def running_rows(running: list[dict] | None) -> list[dict]:
    """The running requests as the table shows them (``id`` kept for Abort)."""
    rows = []
    for request in running or []:
        rows.append({"id": str(request.get("request_id", "")),
                     "cells": [str(request.get("request_id", "")),
                               str(request.get("state") or MISSING),
                               format_duration(request.get("age_s")),
                               format_number(request.get("prompt_tokens"), 0),
                               format_number(request.get("cached_tokens"), 0),
                               format_number(request.get("generated_tokens"), 0),
                               request.get("session") or MISSING]})
    return rows


@dataclass(slots=True)
class ServerView:
    """One server's figures, written out: what every notebook view of it shows."""

    state: str
    device: str
    chat_variant: str
    uptime: str
    memory_total: str
    memory_parts: list[dict]
    kv: str
    ttft: str
    itl: str
    tokens_per_s: str
    requests: str
    generated: str
    prefix_hits: str
    running: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


def server_view(figures: dict, state: str, no_gpu_reason: str = "") -> ServerView:
    """The view of a server in ``state`` with these figures (empty while it has none)."""
    live = state == "ok"
    reason = NOT_REPORTED if live else state_reason(state)
    memory = memory_of(figures) if figures else None
    device = device_of(figures or {})
    if device is None and no_gpu_reason:
        device_text = missing(NO_GPU) if live else missing(reason)
    else:
        device_text = device or missing(reason)
    total = server_memory_bytes(memory)
    memory_total = known_or(total, format_bytes, reason if memory is None else NOT_REPORTED)
    latency = latency_texts(figures.get("latency") if figures else None, reason)
    running = figures.get("requests_running") if figures else None
    waiting = figures.get("requests_waiting") if figures else None
    return ServerView(
        state=state, device=device_text,
        chat_variant=(figures or {}).get("chat_variant") or missing(reason),
        uptime=known_or((figures or {}).get("uptime"), format_duration, NOT_REPORTED),
        memory_total=memory_total, memory_parts=memory_parts(memory, reason),
        kv=kv_view(memory, (figures or {}).get("kv_cache_usage"), reason),
        ttft=latency["ttft"], itl=latency["itl"],
        tokens_per_s=known_or((figures or {}).get("generation_tokens_per_s"), format_number,
                              reason),
        requests=(f"{format_number(running, 0)} running · {format_number(waiting, 0)} waiting"
                  if running is not None else missing(reason)),
        generated=known_or((figures or {}).get("generation_tokens_total"),
                           lambda n: format_number(n, 0), reason),
        prefix_hits=known_or((figures or {}).get("prefix_cache_hit_rate"), format_percent, reason),
        running=running_rows(figures.get("running") if figures else None))


def view_lines(view: ServerView) -> list[tuple[str, str]]:
    """The view as (label, text) lines, for the saved text and HTML of a widget."""
    return [("device", view.device), ("chat", view.chat_variant), ("uptime", view.uptime),
            ("memory", f"{view.memory_total}: " + ", ".join(
                f"{p['label']} {p['text']}" for p in view.memory_parts)),
            ("TTFT", view.ttft), ("inter-token", view.itl),
            ("tokens/s", view.tokens_per_s), ("prefix hits", view.prefix_hits),
            ("requests", view.requests),
            ("generated", view.generated)]


def lines_html(lines: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th style=\"text-align:left\">{html.escape(label)}</th>"
                   f"<td style=\"text-align:left\">{html.escape(text)}</td></tr>"
                   for label, text in lines)
    return f"<table>{rows}</table>"


# ---- what a stop gave back ----

def stop_summary(reply: Any = None, last_memory: dict | None = None) -> str:
    """``stopped; 12 MiB back: weights 5 MiB, KV cache 7 MiB``: the server's own memory.

    ``reply`` is what the stop answered (``QwenServer.stop()``'s return or the body of
    ``POST /admin/stop``); its ``memory`` (the /health memory shape, taken as the server
    stopped) wins over ``last_memory``, the figures last seen while it served."""
    memory = reply.get("memory") if isinstance(reply, dict) else None
    memory = memory if isinstance(memory, dict) else last_memory
    total = server_memory_bytes(memory)
    if total is None:
        return "stopped (this server did not report its memory)"
    unit = "MiB" if total < 1 << 30 else None
    pieces = ", ".join(f"{label} {format_bytes(memory[key])}" for label, key in MEMORY_PARTS
                       if memory.get(key))
    return f"stopped; {format_bytes(total, unit)} back: {pieces}"


class StopReport:
    """What ``%qwen_stop`` shows: each server's own memory given back, then this process's
    RSS and torch figures before and after (never a whole-GPU difference, which would count
    other processes)."""

    def __init__(self, stopped: list[tuple[str, str]], report: Any):
        self.stopped = stopped
        self.rows = [row for row in report.rows() if not row[0].startswith("GPU")]

    def _lines(self) -> list[tuple[str, str]]:
        lines = list(self.stopped)
        for name, before, after in self.rows:
            lines.append((name, f"{format_bytes(before)} → {format_bytes(after)}"))
        return lines

    def _repr_html_(self) -> str:
        return lines_html(self._lines())

    def __repr__(self) -> str:
        width = max(len(label) for label, _ in self._lines())
        return "\n".join(f"{label:<{width}}  {text}" for label, text in self._lines())
