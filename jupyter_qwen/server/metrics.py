"""Request latency histograms, recent latency percentiles, and the Prometheus text
exposition of /metrics."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
               0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0)


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


LATENCY_WINDOW_S = 300
MAX_RECENT_GAPS = 50_000  # inter-token gaps kept for the percentiles; the oldest go first


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of already sorted values; None for none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class RecentLatencies:
    """TTFT and inter-token gaps of the requests that finished in the last `window_s`
    seconds, on `clock`'s time (monotonic seconds)."""

    def __init__(self, window_s: float = LATENCY_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic,
                 max_gaps: int = MAX_RECENT_GAPS) -> None:
        self.window_s = window_s
        self.clock = clock
        self.requests: deque[tuple[float, float | None]] = deque()  # (finished at, TTFT)
        self.gaps: deque[tuple[float, float]] = deque(maxlen=max_gaps)  # (finished at, gap)

    def add(self, ttft: float | None, gaps: list[float]) -> None:
        now = self.clock()
        self.requests.append((now, ttft))
        self.gaps.extend((now, gap) for gap in gaps)
        self._expire(now)

    def summary(self) -> dict:
        """`engine["latency"]` of /health: p50/p95 of TTFT and inter-token latency (s)."""
        self._expire(self.clock())
        ttfts = sorted(ttft for _, ttft in self.requests if ttft is not None)
        gaps = sorted(gap for _, gap in self.gaps)
        figures = {"window_s": self.window_s, "requests": len(self.requests)}
        for name, values in (("ttft", ttfts), ("itl", gaps)):
            for label, fraction in (("p50", 0.5), ("p95", 0.95)):
                value = percentile(values, fraction)
                figures[f"{name}_{label}_s"] = None if value is None else round(value, 6)
        return figures

    def _expire(self, now: float) -> None:
        oldest = now - self.window_s
        for entries in (self.requests, self.gaps):
            while entries and entries[0][0] < oldest:
                entries.popleft()


class RequestMetrics:
    """Latencies and outcomes of finished requests, fed by the HTTP layer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.ttft = Histogram(TTFT_BUCKETS)
        self.inter_token = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.finished = Counter()
        self.recent = RecentLatencies(clock=clock)

    def latency(self) -> dict:
        with self.lock:
            return self.recent.summary()

    def timer(self) -> RequestTimer:
        return RequestTimer(self)


@dataclass(slots=True)
class RequestTimer:
    """One request's latencies, handed to the shared histograms when it ends."""

    metrics: RequestMetrics
    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    gaps: list[float] = field(default_factory=list)

    def tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.perf_counter()
        if self.last is None:
            self.first = now - self.start
        else:
            self.gaps.append((now - self.last) / count)
        self.last = now

    def done(self, finish_reason: str | None) -> None:
        with self.metrics.lock:
            if self.first is not None:
                self.metrics.ttft.observe(self.first)
            for gap in self.gaps:
                self.metrics.inter_token.observe(gap)
            self.metrics.e2e.observe(time.perf_counter() - self.start)
            self.metrics.recent.add(self.first, self.gaps)
            self.metrics.finished[finish_reason or "abort"] += 1


def render_prometheus(model_name: str, stats, metrics: RequestMetrics) -> str:
    labels = f'model_name="{_escape(model_name)}"'
    gauges = {
        "vllm:num_requests_running": ("Requests in the running batch.", stats.requests_running),
        "vllm:num_requests_waiting": ("Requests waiting to be scheduled.",
                                      stats.requests_waiting),
        "vllm:kv_cache_usage_perc": ("Fraction of KV-cache blocks in use (0 to 1).",
                                     stats.kv_cache_usage),
    }
    counters = {
        "vllm:prefix_cache_queries": ("Prompt tokens looked up in the prefix cache.",
                                      stats.prefix_cache_queries),
        "vllm:prefix_cache_hits": ("Prompt tokens served from the prefix cache.",
                                   stats.prefix_cache_hits),
        "vllm:prompt_tokens": ("Prompt tokens received.", stats.prompt_tokens_total),
        "vllm:generation_tokens": ("Tokens generated.", stats.generation_tokens_total),
        "vllm:num_preemptions": ("Sequences preempted for lack of KV blocks.",
                                 stats.num_preemptions),
    }
    lines: list[str] = []
    for name, (text, value) in gauges.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name}{{{labels}}} {value}"]
    for name, (text, value) in counters.items():
        lines += [f"# HELP {name}_total {text}", f"# TYPE {name}_total counter",
                  f"{name}_total{{{labels}}} {value}"]
    with metrics.lock:
        lines += ["# HELP vllm:request_success_total Finished requests by finish reason.",
                  "# TYPE vllm:request_success_total counter"]
        lines += [f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {count}'
                  for reason, count in sorted(metrics.finished.items())]
        for name, text, histogram in (
                ("vllm:time_to_first_token_seconds", "Time to first token.", metrics.ttft),
                ("vllm:inter_token_latency_seconds", "Time between output tokens.",
                 metrics.inter_token),
                ("vllm:e2e_request_latency_seconds", "Request latency, arrival to finish.",
                 metrics.e2e)):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram",
                      *histogram.lines(name, labels)]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
