"""Live notebook widgets: ``ServerPanel`` (what ``%qwen_serve`` shows) and ``GpuDashboard``.

Both are anywidgets with their own ES module and CSS (``static/``), charts drawn as
inline SVG in the browser. The shared ``GpuMonitor`` thread drives them: after each
sample a widget updates its traits, at most every ``min_interval`` seconds, which
ipykernel sends on iopub even while another cell runs.

Stop and Clean act from the browser through the Jupyter server extension
(``POST {baseUrl}jupyter-qwen/servers/{id}/stop|clean``), so they work while the
kernel is busy; without that route the browser sends a custom message instead,
handled here.
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from jupyter_qwen import memory
from jupyter_qwen.format import chat_snippet, format_bytes, format_percent
from jupyter_qwen.notebook.figures import (
    ServerView,
    kv_used_bytes,
    lines_html,
    memory_of,
    server_view,
    stop_summary,
    view_lines,
)
from jupyter_qwen.notebook.gpu import GpuMonitor, Sample, ServerSample, server_key
from jupyter_qwen.notebook.saved_view import SavedView
from jupyter_qwen.server.handles import kernel_servers, origin_of

log = logging.getLogger("jupyter_qwen.notebook")
STATIC = Path(__file__).with_name("static")
DEMO_LABEL = "demo model: tiny, random weights taught a few scripted conversations"
MAX_POINTS = 300
STOP_SETTLE_S = 1.0
IDLE_FIGURES = ("generation_tokens_per_s", "prompt_tokens_per_s", "requests_running",
                "requests_waiting")
SERVER_ACTIONS = ("stop", "clean", "abort")
"""The server's buttons, in the order every view shows them: Start/Stop first, then Clean,
then the others (Abort is per running request); the sidebar follows the same order."""
ACTIONS_BY_ORIGIN = {"kernel": SERVER_ACTIONS, "process": ("stop",), "remote": ()}
"""What applies to a server of each origin: Stop ends a child process (Clean would clean this
kernel, not the child); a remote server is not ours to stop or clean."""
SETTLED_STATES = ("ok", "failed", "dead", "stopped")
"""States after which the saved view is re-published with the figures they settle on."""
ONE_LINE_CHARS = 200
SERVER_FIGURES = ("kv_cache_usage", "kv_cache_bytes", "prefix_cache_hit_rate",
                  "generation_tokens_total", "prompt_tokens_total", *IDLE_FIGURES)


class _MonitorWidget(anywidget.AnyWidget):
    """A widget fed by a GpuMonitor: charts of the last minutes and current numbers."""

    _esm = STATIC / "panel.js"
    _css = STATIC / "panel.css"

    kind = traitlets.Unicode("gpu").tag(sync=True)
    has_gpu = traitlets.Bool(False).tag(sync=True)
    gpu_reason = traitlets.Unicode("").tag(sync=True)
    window_s = traitlets.Float(300.0).tag(sync=True)
    history = traitlets.Dict().tag(sync=True)
    current = traitlets.Dict().tag(sync=True)
    gpus = traitlets.List().tag(sync=True)
    updated_at = traitlets.Float(0.0).tag(sync=True)

    def __init__(self, monitor: GpuMonitor | None = None, min_interval: float = 0.5,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.monitor = monitor or GpuMonitor.shared()
        self.min_interval = min_interval
        self.window_s = self.monitor.window
        self._last_push = 0.0
        self._push_lock = threading.Lock()

    def close(self) -> None:
        self.monitor.unsubscribe(self._on_sample)
        super().close()

    def _on_sample(self, sample: Sample) -> None:
        if sample.time - self._last_push < 0.9 * self.min_interval:
            return
        self.refresh(sample)

    def refresh(self, sample: Sample | None = None) -> None:
        """Send the current figures now (the monitor thread calls this, throttled)."""
        sample = sample or self._fresh_sample()
        with self._push_lock, self.hold_sync():
            self._last_push = sample.time
            self._update(sample)
            self.updated_at = sample.time

    def _fresh_sample(self) -> Sample:
        latest = self.monitor.latest()
        if latest is not None and time.time() - latest.time < 2 * self.monitor.interval:
            return latest
        return self.monitor.sample()

    def _update(self, sample: Sample) -> None:
        self.has_gpu, self.gpu_reason = sample.has_gpu, sample.gpu_reason
        self.gpus = [{"index": g.index, "name": g.name, "used": g.memory_used,
                      "total": g.memory_total, "utilization": g.utilization}
                     for g in sample.gpus]


class GpuDashboard(SavedView, _MonitorWidget):
    """GPU memory and utilisation of the last minutes (process RSS without a GPU), and every
    server of this kernel (``kernel_servers()``: in-kernel, child processes, remote ones),
    each marked with its origin and written out by ``figures.server_view``."""

    servers = traitlets.List().tag(sync=True)
    """One row a server: id, name, url, origin, state, view (``ServerView``), actions."""

    def static_text(self) -> str:
        if not self.has_gpu:
            head = (f"GPU monitor: no GPU ({self.gpu_reason}); this process holds "
                    f"{format_bytes(self.current.get('rss'))}")
        else:
            head = "GPU monitor\n" + "\n".join(
                f"GPU {g['index']} {g['name']}: {format_bytes(g['used'])} of "
                f"{format_bytes(g['total'])} used, "
                f"{format_percent(_fraction(g['utilization']), 0)} busy" for g in self.gpus)
        return "\n".join([head, *(server_row_text(row) for row in self.servers)])

    def static_html(self) -> str:
        return f"<pre>{html.escape(self.static_text())}</pre>"

    def __init__(self, monitor: GpuMonitor | None = None, **kwargs: Any):
        super().__init__(monitor, kind="gpu", **kwargs)
        self._watching: weakref.WeakSet = weakref.WeakSet()
        servers = self._watch_servers()
        self.on_msg(self._on_custom_msg)
        self.refresh(self.monitor.sample(also=servers))
        self.monitor.subscribe(self._on_sample)

    def close(self) -> None:
        """Stop listening; servers watched only for this dashboard are no longer sampled."""
        for server in list(self._watching):
            if not any(not panel.finished for panel in panels_of(server)):
                self.monitor.unwatch(server)
        super().close()

    def run_action(self, server_id: str, action: str) -> dict:
        """Stop a server of this kernel from its row (where its origin lets it)."""
        server = next((s for s in kernel_servers() if server_key(s) == server_id), None)
        if server is None:
            raise ValueError(f"no server {server_id!r} in this kernel")
        if action != "stop" or action not in server_actions(server):
            raise ValueError(f"{action} does not apply to a {origin_of(server)} server")
        reply = server.stop()
        return {"stopped": True, "report": str(reply) if reply is not None else ""}

    def _watch_servers(self) -> list[Any]:
        servers = kernel_servers()
        for server in servers:
            if server not in self._watching:
                self._watching.add(server)
                self.monitor.watch(server)
        return servers

    def _on_custom_msg(self, _widget: Any, content: dict, _buffers: list) -> None:
        if content.get("action") == "stop":
            threading.Thread(target=self._reply, args=(content,), daemon=True,
                             name="jupyter-qwen-stop").start()

    def _reply(self, content: dict) -> None:
        reply = {"kind": "action", "action": "stop", "id": content.get("id")}
        try:
            reply |= {"ok": True,
                      "result": self.run_action(str(content.get("server_id")), "stop")}
        except Exception as error:
            log.exception("stop failed")
            reply |= {"ok": False, "error": f"{type(error).__name__}: {error}"}
        self.send(reply)
        self.refresh(self.monitor.sample())

    def _update(self, sample: Sample) -> None:
        super()._update(sample)
        self.servers = [server_row(server, sample) for server in self._watch_servers()
                        if server_key(server) in sample.servers]
        samples = _thin(self.monitor.history())
        self.history = _columns(samples, sample.time, {
            "memory": _memory_used, "torch_reserved": lambda s: s.torch_reserved,
            "rss": lambda s: s.rss, "utilization": _mean_utilization})
        self.current = {"memory": _memory_used(sample), "memory_total": sample.gpu_total or None,
                        "torch_allocated": sample.torch_allocated,
                        "torch_reserved": sample.torch_reserved, "rss": sample.rss,
                        "utilization": _mean_utilization(sample)}


_PANELS: weakref.WeakSet = weakref.WeakSet()


def panels_of(server: Any) -> list[ServerPanel]:
    """The ServerPanels showing ``server`` in this kernel."""
    return [panel for panel in list(_PANELS) if panel.server is server]


class ServerPanel(SavedView, _MonitorWidget):
    """A model server's card: loading progress, then its live dashboard, Stop and Clean.

    ``view`` holds the server's figures written out (``figures.server_view``): device, chat
    variant, uptime, the memory split, KV cache, latency and the running requests (each
    with Abort). A failed or dead server shows ``error`` (one line), ``hint`` and
    ``error_detail`` (the full text, behind a disclosure). The saved notebook keeps a text
    and HTML view with the last figures (``SavedView``)."""

    model_name = traitlets.Unicode("").tag(sync=True)
    origin = traitlets.Unicode("kernel").tag(sync=True)
    model_path = traitlets.Unicode("").tag(sync=True)
    url = traitlets.Unicode("").tag(sync=True)
    snippet = traitlets.Unicode("").tag(sync=True)
    demo = traitlets.Bool(False).tag(sync=True)
    demo_label = traitlets.Unicode(DEMO_LABEL).tag(sync=True)
    server_id = traitlets.Unicode("").tag(sync=True)
    state = traitlets.Unicode("loading").tag(sync=True)
    loading_phase = traitlets.Unicode("").tag(sync=True)
    loading_fraction = traitlets.Float(None, allow_none=True).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    error_detail = traitlets.Unicode("").tag(sync=True)
    hint = traitlets.Unicode("").tag(sync=True)
    view = traitlets.Dict().tag(sync=True)
    actions = traitlets.List(list(SERVER_ACTIONS)).tag(sync=True)
    can_abort = traitlets.Bool(False).tag(sync=True)
    stop_report = traitlets.Unicode("").tag(sync=True)

    def __init__(self, server: Any, monitor: GpuMonitor | None = None, demo: bool = False,
                 **kwargs: Any):
        super().__init__(monitor, kind="server", **kwargs)
        self.server = server
        self.demo = demo
        self.model_name = getattr(server, "name", None) or server.served_model_name
        self.model_path = str(server.model)
        self.url = server.url
        self.origin = origin_of(server)
        self.can_abort = callable(getattr(server, "abort", None))
        self.actions = server_actions(server)
        self.snippet = chat_snippet(server.url, server.served_model_name,
                                    getattr(server, "api_key", None) is not None)
        self.finished = False
        self._last_memory: dict | None = None
        self._last_figures: dict = {}
        self._stop_reply: Any = None
        self._stopped_at: float | None = None
        self._republish_due = False
        self.on_msg(self._on_custom_msg)
        _PANELS.add(self)
        self.monitor.watch(server)  # a finished server is dropped by the next sample
        self.refresh(self.monitor.sample(also=[server]))
        if not self.finished:
            self.monitor.subscribe(self._on_sample)

    @property
    def key(self) -> str:
        return server_key(self.server)

    def run_action(self, action: str, request_id: str | None = None) -> dict:
        """Stop, clean or abort from the kernel (the fallback of the browser's buttons)."""
        if action not in self.actions:
            raise ValueError(f"{action} does not apply to a {self.origin} server")
        if action == "stop":
            self._stop_reply = self.server.stop()
            return {"stopped": True}
        if action == "clean":
            return memory.collect().to_dict()
        if action == "abort":
            abort = getattr(self.server, "abort", None)
            if abort is None:
                raise RuntimeError("this server cannot abort requests")
            reply = abort(request_id)
            return reply if isinstance(reply, dict) else {"aborted": request_id}
        raise ValueError(f"unknown action {action!r}")

    def refresh(self, sample: Sample | None = None) -> None:
        if not self.finished:
            super().refresh(sample)
        if self._republish_due:
            self._republish_due = False
            self.republish()

    def refresh_saved_view(self) -> None:
        self.refresh()
        self.republish()

    def stopped_with(self, report: str) -> None:
        """The server was stopped from elsewhere (``%qwen_stop``): show the same report."""
        self.refresh()
        if not self.finished:
            self.stop_report = report
            self._finish()
            self.refresh_saved_view()

    def _on_sample(self, sample: Sample) -> None:
        if self.finished:
            return
        state = self.server.state
        changed = state in ("stopped", "failed", "ok", "dead") and state != self.state
        settled = state == "stopped" and sample.time - (self._stopped_at or 0) >= STOP_SETTLE_S
        if changed or settled:
            self.refresh(sample)
        else:
            super()._on_sample(sample)

    def _update(self, sample: Sample) -> None:
        super()._update(sample)
        state = self.server.state
        if state != self.state and state in SETTLED_STATES:
            self._republish_due = True
        self.state, self.server_id = state, self.key
        self.loading_phase, fraction = getattr(self.server, "loading", ("", None))
        self.loading_fraction = None if fraction is None else float(fraction)
        server_figures = sample.servers.get(self.key)
        figures = server_figures.figures if server_figures is not None else {}
        if state in ("failed", "dead"):
            self.error, self.hint, self.error_detail = error_parts(self.server, figures)
        else:
            self.error = self.hint = self.error_detail = ""
        if figures and state == "ok":
            self._last_memory = memory_of(figures) or self._last_memory
            self._last_figures = figures
        self.view = self._view(state, figures, local_gpu_reason(self.origin, sample))
        self.history = _columns(_thin(self.monitor.history()), sample.time,
                                self._series(sample.has_gpu))
        self.current = (_server_numbers(sample, server_figures, self.origin)
                        or self._last_numbers(sample))
        self._track_stop(sample, state)

    def _view(self, state: str, figures: dict, no_gpu_reason: str) -> dict:
        """The figures written out; once the server stops, the last ones it served with."""
        if state == "ok" or not self._last_figures:
            return server_view(figures if state == "ok" else {}, state, no_gpu_reason).to_dict()
        idle = {"running": [], "requests_running": 0, "requests_waiting": 0,
                "generation_tokens_per_s": 0.0} if state == "stopped" else {}
        return server_view(self._last_figures | idle, "ok", no_gpu_reason).to_dict() | {
            "state": state}

    def _last_numbers(self, sample: Sample) -> dict:
        """A stopped server's last figures, with nothing running any more."""
        idle = dict.fromkeys(IDLE_FIGURES, 0) if "kv_cache_usage" in self.current else {}
        return self.current | idle | _memory_numbers(sample, None, self.origin)

    def _series(self, has_gpu: bool) -> dict:
        series = {"memory": lambda s: _own_memory(s, s.servers.get(self.key), self.origin),
                  "kv_cache_bytes": self._figure("kv_cache_bytes"),
                  "kv_used_bytes": self._kv_used,
                  "generation_tokens_per_s": self._figure("generation_tokens_per_s"),
                  "prompt_tokens_per_s": self._figure("prompt_tokens_per_s"),
                  "requests_running": self._figure("requests_running"),
                  "requests_waiting": self._figure("requests_waiting")}
        if has_gpu and self.origin == "kernel":
            series["torch_reserved"] = lambda s: s.torch_reserved
        return series

    def _figure(self, name: str):
        def value(sample: Sample):
            figures = sample.servers.get(self.key)
            return None if figures is None else getattr(figures, name)
        return value

    def _kv_used(self, sample: Sample) -> int | None:
        figures = sample.servers.get(self.key)
        memory_figures = memory_of(figures.figures) if figures is not None else None
        return kv_used_bytes(memory_figures) if memory_figures else None

    def _track_stop(self, sample: Sample, state: str) -> None:
        if state == "failed":
            self._finish()
        elif state == "stopped" and self._stopped_at is None:
            self._stopped_at = sample.time
        elif state == "stopped" and sample.time - self._stopped_at >= STOP_SETTLE_S \
                and not self.finished:
            self.stop_report = stop_summary(self._stop_reply, self._last_memory)
            self._republish_due = True
            self._finish()

    def _finish(self) -> None:
        self.finished = True
        self.monitor.unsubscribe(self._on_sample)

    def _on_custom_msg(self, _widget: Any, content: dict, _buffers: list) -> None:
        action = content.get("action")
        if action in SERVER_ACTIONS:
            threading.Thread(target=self._reply,
                             args=(action, content.get("id"), content.get("request_id")),
                             name=f"jupyter-qwen-{action}", daemon=True).start()

    def _reply(self, action: str, message_id: Any, request_id: str | None = None) -> None:
        reply = {"kind": "action", "action": action, "id": message_id}
        try:
            reply |= {"ok": True, "result": self.run_action(action, request_id)}
        except Exception as error:
            log.exception("%s failed", action)
            reply |= {"ok": False, "error": f"{type(error).__name__}: {error}"}
        self.send(reply)

    # ---- what a saved notebook shows ----

    def static_lines(self) -> list[tuple[str, str]]:
        where = "" if self.origin == "kernel" else f", {self.origin}"  # kernel: the usual case
        lines = [("server", f"{self.model_name} ({self.state}{where})"), ("URL", self.url)]
        if self.state == "loading":
            fraction = self.loading_fraction
            progress = "" if fraction is None else f" ({format_percent(fraction, 0)})"
            lines.append(("loading", f"{self.loading_phase or 'starting'}{progress}"))
        if self.error:
            lines += [("error", self.error)] + ([("hint", self.hint)] if self.hint else [])
        if self.view:
            lines += view_lines(ServerView(**self.view))
        lines.append(("actions", actions_text(self.actions, self.origin)))
        if self.stop_report:
            lines.append(("stop", self.stop_report))
        return lines

    def static_text(self) -> str:
        width = max(len(label) for label, _ in self.static_lines())
        return "\n".join(f"{label:<{width}}  {text}" for label, text in self.static_lines())

    def static_html(self) -> str:
        detail = (f"<details><summary>full error</summary><pre>{html.escape(self.error_detail)}"
                  "</pre></details>") if self.error_detail else ""
        return f"<div>{lines_html(self.static_lines())}{detail}</div>"


def server_row(server: Any, sample: Sample) -> dict:
    """A server's row in the dashboard: who it is, where it runs, its figures written out."""
    figures = sample.servers[server_key(server)]
    state = figures.state or "unreachable"
    view = server_view(figures.figures if state == "ok" else {}, state,
                       local_gpu_reason(figures.origin, sample))
    return {"id": server_key(server), "name": getattr(server, "name", server.served_model_name),
            "model": server.served_model_name, "url": server.url, "origin": figures.origin,
            "state": state, "view": view.to_dict(), "actions": server_actions(server)}


def local_gpu_reason(origin: str, sample: Sample) -> str:
    """Why this machine has no GPU, for a server on this machine; "" for a remote one (its
    device is wherever it runs: "not reported" when it does not say)."""
    return "" if origin == "remote" else sample.gpu_reason


def server_row_text(row: dict) -> str:
    """A dashboard row as the saved notebook's text shows it."""
    view = ServerView(**row["view"])
    return (f"{row['name']} ({row['origin']}, {row['state']}) at {row['url']}: "
            f"requests {view.requests}, tokens/s {view.tokens_per_s}, KV cache {view.kv}, "
            f"TTFT {view.ttft}; actions: {actions_text(row['actions'], row['origin'])}")


def _memory_used(sample: Sample) -> int:
    return sample.gpu_used if sample.has_gpu else sample.rss


def _own_memory(sample: Sample, figures: ServerSample | None,
                origin: str = "kernel") -> int | None:
    """The server's process's memory: its own NVML figure on a GPU, its RSS without one, as
    the server reports them; for a server in this kernel, this process's figures (torch's
    reserved bytes, the RSS) where it does not. Never the whole card; None when a server of
    another process does not say."""
    memory_figures = (figures.figures.get("memory") if figures is not None else None) or {}
    reported = memory_figures.get("process_gpu_bytes" if sample.has_gpu else "rss_bytes")
    if origin != "kernel":
        return reported
    if not sample.has_gpu:
        return sample.rss
    return reported or sample.torch_reserved


def _fraction(percent: float | None) -> float | None:
    return None if percent is None else percent / 100


def _mean_utilization(sample: Sample) -> float | None:
    values = [g.utilization for g in sample.gpus if g.utilization is not None]
    return sum(values) / len(values) if values else None


def _thin(samples: list[Sample]) -> list[Sample]:
    step = max(1, math.ceil(len(samples) / MAX_POINTS))
    return samples[::-1][::step][::-1]


def _columns(samples: list[Sample], now: float, series: dict) -> dict[str, list]:
    columns = {"t": [round(s.time - now, 2) for s in samples]}
    for name, value in series.items():
        columns[name] = [_round(value(s)) for s in samples]
    return columns


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _memory_numbers(sample: Sample, figures: ServerSample | None,
                    origin: str = "kernel") -> dict:
    here = origin == "kernel"
    memory_figures = (figures.figures.get("memory") if figures is not None else None) or {}
    return {"memory": _own_memory(sample, figures, origin),
            "torch_reserved": sample.torch_reserved if here else None,
            "rss": sample.rss if here else memory_figures.get("rss_bytes")}


def _server_numbers(sample: Sample, figures: ServerSample | None,
                    origin: str = "kernel") -> dict:
    """Memory and the server's figures (None for those it does not report); empty while the
    server has none (loading, stopped)."""
    if figures is None or figures.state != "ok" or not figures.figures:
        return {}
    return _memory_numbers(sample, figures, origin) | {name: getattr(figures, name)
                                                       for name in SERVER_FIGURES}


def server_actions(server: Any) -> list[str]:
    """The buttons a server's card shows: by its origin, Abort only where it can abort."""
    actions = ACTIONS_BY_ORIGIN.get(origin_of(server), ())
    can_abort = callable(getattr(server, "abort", None))
    return [action for action in actions if action != "abort" or can_abort]


def actions_text(actions: list[str], origin: str) -> str:
    """``Stop, Clean`` or why there is none (a remote server is not ours to stop)."""
    shown = [action.capitalize() for action in actions if action != "abort"]
    if shown:
        return ", ".join(shown)
    return "none: a remote server is stopped where it runs" if origin == "remote" else "none"


def error_parts(server: Any, figures: dict) -> tuple[str, str, str]:
    """A failed or dead server's error: one line, what to do (or ""), and the full text."""
    line, hint, detail = (figures.get(k) for k in ("error", "hint", "error_detail"))
    error = getattr(server, "load_error", None)
    if error is not None:
        full = f"{type(error).__name__}: {error}"
        detail = detail or "".join(traceback.format_exception(error)).rstrip()
    else:
        ctx = getattr(server, "ctx", None)
        engine = getattr(ctx, "engine", None)
        full = getattr(ctx, "error", None) or getattr(engine, "error", None) or server.state
        output_tail = getattr(server, "output_tail", None)  # a child process: its last words
        if callable(output_tail) and not detail:
            detail = output_tail() or None
    line = one_line(line or full)
    detail = detail or (full if full != line else "")
    return line, hint or "", detail


def one_line(text: str, limit: int = ONE_LINE_CHARS) -> str:
    """The first line of ``text``, cut at ``limit`` characters."""
    first = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return first if len(first) <= limit else first[:limit - 1] + "…"
