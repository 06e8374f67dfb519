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

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from jupyter_qwen import memory
from jupyter_qwen.notebook.gpu import GpuMonitor, Sample, ServerSample, server_key

log = logging.getLogger("jupyter_qwen.notebook")
STATIC = Path(__file__).with_name("static")
DEMO_LABEL = "demo model: tiny, random weights taught a few scripted conversations"
MAX_POINTS = 300
STOP_SETTLE_S = 1.0
IDLE_FIGURES = ("generation_tokens_per_s", "prompt_tokens_per_s", "requests_running",
                "requests_waiting")
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


class GpuDashboard(_MonitorWidget):
    """GPU memory and utilisation of the last minutes (process RSS without a GPU)."""

    def __init__(self, monitor: GpuMonitor | None = None, **kwargs: Any):
        super().__init__(monitor, kind="gpu", **kwargs)
        self.refresh()
        self.monitor.subscribe(self._on_sample)

    def _update(self, sample: Sample) -> None:
        super()._update(sample)
        samples = _thin(self.monitor.history())
        self.history = _columns(samples, sample.time, {
            "memory": _memory_used, "torch_reserved": lambda s: s.torch_reserved,
            "rss": lambda s: s.rss, "utilization": _mean_utilization})
        self.current = {"memory": _memory_used(sample), "memory_total": sample.gpu_total or None,
                        "torch_allocated": sample.torch_allocated,
                        "torch_reserved": sample.torch_reserved, "rss": sample.rss,
                        "utilization": _mean_utilization(sample)}


class ServerPanel(_MonitorWidget):
    """A model server's card: loading progress, then its live dashboard, Stop and Clean."""

    model_name = traitlets.Unicode("").tag(sync=True)
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
    stop_report = traitlets.Unicode("").tag(sync=True)

    def __init__(self, server: Any, monitor: GpuMonitor | None = None, demo: bool = False,
                 **kwargs: Any):
        super().__init__(monitor, kind="server", **kwargs)
        self.server = server
        self.demo = demo
        self.model_name = server.served_model_name
        self.model_path = str(server.model)
        self.url = server.url
        self.snippet = chat_snippet(server)
        self.finished = False
        self._memory_before: int | None = None
        self._stopped_at: float | None = None
        self.on_msg(self._on_custom_msg)
        self.refresh()
        if not self.finished:
            self.monitor.watch(server)
            self.monitor.subscribe(self._on_sample)

    @property
    def key(self) -> str:
        return server_key(self.server)

    def run_action(self, action: str) -> dict:
        """Stop or clean from the kernel (the fallback of the browser's buttons)."""
        if action == "stop":
            self.server.stop()
            return {"stopped": True}
        if action == "clean":
            return memory.collect().to_dict()
        raise ValueError(f"unknown action {action!r}")

    def _on_sample(self, sample: Sample) -> None:
        if self.finished:
            return
        state = self.server.state
        changed = state in ("stopped", "failed") and state != self.state
        settled = state == "stopped" and sample.time - (self._stopped_at or 0) >= STOP_SETTLE_S
        if changed or settled:
            self.refresh(sample)
        else:
            super()._on_sample(sample)

    def _update(self, sample: Sample) -> None:
        super()._update(sample)
        state = self.server.state
        self.state, self.server_id = state, self.key
        self.loading_phase, fraction = self.server.loading
        self.loading_fraction = None if fraction is None else float(fraction)
        self.error = _error_text(self.server) if state in ("failed", "dead") else ""
        figures = sample.servers.get(self.key)
        self.history = _columns(_thin(self.monitor.history()), sample.time,
                                self._series(sample.has_gpu))
        self.current = _server_numbers(sample, figures) or self._last_numbers(sample)
        self._track_stop(sample, state)

    def _last_numbers(self, sample: Sample) -> dict:
        """A stopped server's last figures, with nothing running any more."""
        idle = dict.fromkeys(IDLE_FIGURES, 0) if "kv_cache_usage" in self.current else {}
        return self.current | idle | _memory_numbers(sample)

    def _series(self, has_gpu: bool) -> dict:
        series = {"memory": _memory_used, "kv_cache_bytes": self._figure("kv_cache_bytes"),
                  "generation_tokens_per_s": self._figure("generation_tokens_per_s"),
                  "prompt_tokens_per_s": self._figure("prompt_tokens_per_s"),
                  "requests_running": self._figure("requests_running"),
                  "requests_waiting": self._figure("requests_waiting")}
        if has_gpu:
            series["torch_reserved"] = lambda s: s.torch_reserved
        return series

    def _figure(self, name: str):
        def value(sample: Sample):
            figures = sample.servers.get(self.key)
            return None if figures is None else getattr(figures, name)
        return value

    def _track_stop(self, sample: Sample, state: str) -> None:
        if state not in ("stopping", "stopped"):
            self._memory_before = _memory_used(sample)
        if state == "failed":
            self._finish()
        elif state == "stopped" and self._stopped_at is None:
            self._stopped_at = sample.time
        elif state == "stopped" and sample.time - self._stopped_at >= STOP_SETTLE_S:
            self.stop_report = _stop_report(self._memory_before, _memory_used(sample))
            self._finish()

    def _finish(self) -> None:
        self.finished = True
        self.monitor.unsubscribe(self._on_sample)

    def _on_custom_msg(self, _widget: Any, content: dict, _buffers: list) -> None:
        action = content.get("action")
        if action in ("stop", "clean"):
            threading.Thread(target=self._reply, args=(action, content.get("id")),
                             name=f"jupyter-qwen-{action}", daemon=True).start()

    def _reply(self, action: str, request_id: Any) -> None:
        reply = {"kind": "action", "action": action, "id": request_id}
        try:
            reply |= {"ok": True, "result": self.run_action(action)}
        except Exception as error:
            log.exception("%s failed", action)
            reply |= {"ok": False, "error": f"{type(error).__name__}: {error}"}
        self.send(reply)


def chat_snippet(server: Any) -> str:
    """The LangChain line for `server`; a key is named by the variable that holds the
    server (``qwen_server``), never shown."""
    key = "qwen_server.api_key" if getattr(server, "api_key", None) else '"EMPTY"'
    return (f'ChatOpenAI(base_url="{server.url}", api_key={key}, '
            f'model="{server.served_model_name}")')


def _memory_used(sample: Sample) -> int:
    return sample.gpu_used if sample.has_gpu else sample.rss


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


def _memory_numbers(sample: Sample) -> dict:
    return {"memory": _memory_used(sample), "memory_total": sample.gpu_total or None,
            "torch_reserved": sample.torch_reserved, "rss": sample.rss}


def _server_numbers(sample: Sample, figures: ServerSample | None) -> dict:
    """Memory and the server's figures; empty while the server has none (loading, stopped)."""
    if figures is None or figures.kv_cache_usage is None:
        return {}
    return _memory_numbers(sample) | {name: getattr(figures, name) for name in SERVER_FIGURES}


def _stop_report(before: int | None, after: int) -> str:
    if before is None or before <= after:
        return "stopped"
    return f"stopped; {_size(before - after)} back"


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _error_text(server: Any) -> str:
    error = getattr(server, "load_error", None)
    if error is not None:
        return f"{type(error).__name__}: {error}"
    ctx = getattr(server, "ctx", None)
    engine = getattr(ctx, "engine", None)
    return getattr(ctx, "error", None) or getattr(engine, "error", None) or server.state
