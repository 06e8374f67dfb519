"""A background sampler of GPU, process and model-server figures, one per process.

``GpuMonitor.shared()`` samples every ``interval`` seconds while anyone listens
(``subscribe``) or a server is watched (``watch``), and keeps the last ``window``
seconds of ``Sample``s. Without NVML it still samples the process RSS and says why
there is no GPU. Torch is consulted only when this process has already imported it.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jupyter_qwen import memory, nvml
from jupyter_qwen.nvml import GpuProcess
from jupyter_qwen.server.handles import origin_of

log = logging.getLogger("jupyter_qwen.notebook")
Listener = Callable[["Sample"], None]
FINISHED_STATES = ("stopped", "failed", "disconnected")


@dataclass(slots=True)
class GpuSample:
    index: int
    name: str
    memory_used: int
    memory_total: int
    utilization: int | None
    processes: list[GpuProcess] = field(default_factory=list)


@dataclass(slots=True)
class ServerSample:
    """One server's figures at one sample; a figure its server did not report is None
    (a remote server's /metrics may lack any of them), never 0."""

    key: str
    model: str
    state: str
    origin: str = "kernel"
    kv_cache_usage: float | None = None
    kv_cache_bytes: int | None = None
    prefix_cache_hit_rate: float | None = None
    generation_tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    generation_tokens_total: int | None = None
    prompt_tokens_total: int | None = None
    requests_running: int | None = None
    requests_waiting: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    """Everything ``server.stats()`` said (memory, latency, running, chat_variant, ...)."""


@dataclass(slots=True)
class Sample:
    time: float
    rss: int
    has_gpu: bool
    gpu_reason: str = ""
    gpus: list[GpuSample] = field(default_factory=list)
    torch_allocated: int | None = None
    torch_reserved: int | None = None
    servers: dict[str, ServerSample] = field(default_factory=dict)

    @property
    def gpu_used(self) -> int:
        return sum(g.memory_used for g in self.gpus)

    @property
    def gpu_total(self) -> int:
        return sum(g.memory_total for g in self.gpus)


def server_key(server: Any) -> str:
    """The registry id of a server, the key of its figures in ``Sample.servers``."""
    record = getattr(server, "record", None)
    return record.id if record is not None else f"server-{id(server):x}"


def sample_gpus() -> tuple[list[GpuSample], str]:
    snap = nvml.gpu_snapshot()
    gpus = [GpuSample(g.index, g.name, g.memory_used, g.memory_total, g.utilization_gpu,
                      list(g.processes)) for g in snap.gpus]
    return gpus, "" if snap.available else snap.reason


def _known(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def sample_server(server: Any) -> ServerSample:
    """``server.stats()`` of a server of any origin, read into a ServerSample."""
    stats = server.stats()
    return ServerSample(
        key=server_key(server), model=str(stats.get("model", "")),
        state=str(stats.get("state", "")), origin=origin_of(server),
        kv_cache_usage=stats.get("kv_cache_usage"), kv_cache_bytes=stats.get("kv_cache_bytes"),
        prefix_cache_hit_rate=stats.get("prefix_cache_hit_rate"),
        generation_tokens_per_s=_known(stats.get("generation_tokens_per_s"), float),
        prompt_tokens_per_s=_known(stats.get("prompt_tokens_per_s"), float),
        generation_tokens_total=_known(stats.get("generation_tokens_total"), int),
        prompt_tokens_total=_known(stats.get("prompt_tokens_total"), int),
        requests_running=_known(stats.get("requests_running"), int),
        requests_waiting=_known(stats.get("requests_waiting"), int), figures=stats)


class GpuMonitor:
    """Samples in a daemon thread while it has listeners or watched servers."""

    _shared: GpuMonitor | None = None
    _shared_lock = threading.Lock()

    def __init__(self, interval: float = 0.5, window: float = 300.0):
        self.interval = interval
        self.window = window
        self._samples: deque[Sample] = deque(maxlen=math.ceil(window / interval) + 1)
        self._listeners: list[Listener] = []
        self._servers: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_error = ""
        self.has_gpu: bool | None = None
        self.gpu_reason = ""

    @classmethod
    def shared(cls) -> GpuMonitor:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
                atexit.register(cls._shared.close)
            return cls._shared

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(sample)`` from the sampler thread after every sample."""
        with self._lock:
            self._listeners.append(listener)
            self._start()

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def watch(self, server: Any) -> None:
        """Sample ``server.stats()`` too, until it stops or is garbage collected."""
        with self._lock:
            self._servers.add(server)
            self._start()

    def unwatch(self, server: Any) -> None:
        with self._lock:
            self._servers.discard(server)

    def watched(self) -> list[Any]:
        with self._lock:
            return list(self._servers)

    def history(self, since: float | None = None) -> list[Sample]:
        with self._lock:
            samples = list(self._samples)
        if since is None:
            return samples
        return [s for s in samples if s.time >= since]

    def latest(self) -> Sample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def sample(self, also: Iterable[Any] = ()) -> Sample:
        """Take one sample now (also what the thread does), and keep it. ``also``: servers
        to sample even when not watched (a finished server is unwatched by whichever sample
        sees it first, which may be the thread's)."""
        gpus, reason = sample_gpus()
        allocated, reserved = memory.torch_memory()
        sample = Sample(time=time.time(), rss=memory.process_rss(), has_gpu=not reason,
                        gpu_reason=reason, gpus=gpus, torch_allocated=allocated,
                        torch_reserved=reserved, servers=self._sample_servers(also))
        self.has_gpu, self.gpu_reason = sample.has_gpu, reason
        with self._lock:
            self._samples.append(sample)
            self._trim(sample.time)
        return sample

    def close(self) -> None:
        """Stop the thread for good (interpreter exit)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * self.interval + 1)

    def _start(self) -> None:
        if self._closed or self.running:
            return
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="jupyter-qwen-gpu-monitor",
                                        daemon=True)
        self._thread.start()

    def _sample_servers(self, also: Iterable[Any] = ()) -> dict[str, ServerSample]:
        figures = {}
        watched = self.watched()
        for server in watched + [s for s in also if s not in watched]:
            try:
                figures[server_key(server)] = sample_server(server)
            except Exception as error:
                self._log_once(f"sampling {server!r} failed: {error!r}")
                continue
            if figures[server_key(server)].state in FINISHED_STATES:
                self.unwatch(server)
        return figures

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0].time < now - self.window:
            self._samples.popleft()

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            sample = self._sample_safely()
            if sample is not None:
                self._notify(sample)
            with self._lock:
                if self._closed or not (self._listeners or self._servers):
                    self._thread = None
                    return
            self._wake.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _sample_safely(self) -> Sample | None:
        try:
            return self.sample()
        except Exception as error:
            self._log_once(f"sampling failed: {error!r}")
            return None

    def _notify(self, sample: Sample) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(sample)
            except Exception as error:
                self._log_once(f"monitor listener {listener!r} failed: {error!r}")

    def _log_once(self, message: str) -> None:
        if message != self._last_error:
            self._last_error = message
            log.warning("%s", message, exc_info=True)
