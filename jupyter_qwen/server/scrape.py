"""Engine figures from a server's Prometheus ``/metrics`` (vLLM, SGLang or jupyter_qwen),
torch-free and standard library only.

`engine_figures_from_metrics` maps the metric names of vLLM and SGLang (our own server
writes vLLM's names) onto the keys of our ``/health`` engine figures; `MetricsReader` keeps
the scrapes of the last minutes so token rates and latency percentiles describe recent
requests. A metric a server does not report leaves its figure out: never a zero.

Metric names read (first found wins):

- requests_running: ``vllm:num_requests_running``, ``sglang:num_running_reqs``
- requests_waiting: ``vllm:num_requests_waiting``, ``sglang:num_queue_reqs``
- kv_cache_usage: ``vllm:kv_cache_usage_perc``, ``vllm:gpu_cache_usage_perc`` (before V1),
  ``sglang:token_usage``
- prompt / generation tokens: ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
  ``sglang:prompt_tokens_total``, ``sglang:generation_tokens_total``
- prefix_cache_hit_rate: ``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``,
  ``sglang:cache_hit_rate``
- num_preemptions: ``vllm:num_preemptions_total``
- latency: ``vllm:time_to_first_token_seconds``, ``sglang:time_to_first_token_seconds``;
  ``vllm:inter_token_latency_seconds``, ``vllm:time_per_output_token_seconds``,
  ``sglang:inter_token_latency_seconds``, ``sglang:time_per_output_token_seconds``
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any

from jupyter_qwen.server.prometheus import Histogram, Metrics, parse_prometheus

LATENCY_WINDOW_S = 300.0
RATE_MIN_INTERVAL_S = 0.5
MAX_METRICS_BYTES = 16 << 20
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
PROMPT_TOKENS = ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total")
GENERATION_TOKENS = ("vllm:generation_tokens_total", "sglang:generation_tokens_total")
PREFIX_HITS = ("vllm:prefix_cache_hits_total",)
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total",)
PREFIX_HIT_RATE = ("sglang:cache_hit_rate",)
PREEMPTIONS = ("vllm:num_preemptions_total",)
TTFT = ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds")
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds",
       "sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Scrape:
    """One reading of /metrics: when, and what it said."""

    time: float
    metrics: Metrics


def _first(metrics: Metrics, names: tuple[str, ...], mean: bool = False) -> float | None:
    for name in names:
        value = metrics.mean(name) if mean else metrics.total(name)
        if value is not None:
            return value
    return None


def _first_histogram(metrics: Metrics, names: tuple[str, ...]) -> Histogram | None:
    for name in names:
        histogram = metrics.histogram(name)
        if histogram is not None:
            return histogram
    return None


def metric_family(metrics: Metrics) -> str | None:
    """Whose metric names the page uses: "vllm" (vLLM and jupyter_qwen), "sglang", or None."""
    prefixes = {name.split(":", 1)[0] for name in metrics.names() if ":" in name}
    return next((family for family in ("vllm", "sglang") if family in prefixes), None)


def engine_figures_from_metrics(now: Scrape, rate_base: Scrape | None = None,
                                window_base: Scrape | None = None) -> dict[str, Any]:
    """The engine figures of one scrape, in /health's keys.

    `rate_base`: an earlier scrape the token rates are measured from (no rates without it).
    `window_base`: the scrape latency percentiles count from (None: since the server started,
    and ``window_s`` is null).
    """
    metrics = now.metrics
    figures: dict[str, Any] = {"metric_names": metric_family(metrics)}
    gauges = {"requests_running": (RUNNING, False), "requests_waiting": (WAITING, False),
              "kv_cache_usage": (KV_CACHE_USAGE, True), "num_preemptions": (PREEMPTIONS, False),
              "prompt_tokens_total": (PROMPT_TOKENS, False),
              "generation_tokens_total": (GENERATION_TOKENS, False)}
    for key, (names, mean) in gauges.items():
        value = _first(metrics, names, mean)
        if value is not None:
            figures[key] = round(value, 4) if mean else int(value)
    hit_rate = _prefix_hit_rate(metrics)
    if hit_rate is not None:
        figures["prefix_cache_hit_rate"] = round(hit_rate, 4)
    if rate_base is not None:
        figures |= _rates(now, rate_base)
    latency = _latency(metrics, None if window_base is None else window_base.metrics)
    if latency is not None:
        latency["window_s"] = None if window_base is None else round(now.time - window_base.time)
        figures["latency"] = latency
    return figures


def _prefix_hit_rate(metrics: Metrics) -> float | None:
    queries = _first(metrics, PREFIX_QUERIES)
    hits = _first(metrics, PREFIX_HITS)
    if queries is not None and hits is not None:
        return hits / queries if queries else 0.0
    return _first(metrics, PREFIX_HIT_RATE, mean=True)


def _rates(now: Scrape, base: Scrape) -> dict[str, float]:
    elapsed = now.time - base.time
    rates = {}
    if elapsed <= 0:
        return rates
    for key, names in (("prompt_tokens_per_s", PROMPT_TOKENS),
                       ("generation_tokens_per_s", GENERATION_TOKENS)):
        after, before = _first(now.metrics, names), _first(base.metrics, names)
        if after is not None and before is not None and after >= before:
            rates[key] = round((after - before) / elapsed, 2)
    return rates


def _latency(metrics: Metrics, base: Metrics | None) -> dict[str, Any] | None:
    ttft, itl = _first_histogram(metrics, TTFT), _first_histogram(metrics, ITL)
    if ttft is None and itl is None:
        return None
    if base is not None:
        ttft = _since(ttft, _first_histogram(base, TTFT))
        itl = _since(itl, _first_histogram(base, ITL))
    latency: dict[str, Any] = {"requests": None if ttft is None else int(ttft.count)}
    for prefix, histogram in (("ttft", ttft), ("itl", itl)):
        for q in (50, 95):
            value = None if histogram is None else histogram.quantile(q / 100)
            latency[f"{prefix}_p{q}_s"] = None if value is None else round(value, 6)
    return latency


def _since(histogram: Histogram | None, earlier: Histogram | None) -> Histogram | None:
    if histogram is None or earlier is None or earlier.count > histogram.count:
        return histogram  # no earlier reading, or the server restarted: all it has
    return histogram.minus(earlier)


class MetricsUnavailable(Exception):
    """The server gave no readable /metrics page (no route, refused, not Prometheus text)."""


def fetch_metrics(root_url: str, timeout: float = 2.0,
                  headers: dict[str, str] | None = None) -> Metrics:
    """``GET {root_url}/metrics`` parsed; MetricsUnavailable when there is none."""
    request = urllib.request.Request(f"{root_url}/metrics", headers=headers or {})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            body = response.read(MAX_METRICS_BYTES)
    except urllib.error.HTTPError as error:
        raise MetricsUnavailable(f"/metrics answered HTTP {error.code}") from None
    except (OSError, ValueError) as error:
        raise MetricsUnavailable(str(error) or type(error).__name__) from None
    metrics = parse_prometheus(body.decode(errors="replace"))
    if not metrics.samples:
        raise MetricsUnavailable("/metrics has no Prometheus samples")
    return metrics


class MetricsReader:
    """Reads one server's /metrics again and again, keeping the last minutes of scrapes so
    that rates and percentiles describe recent traffic. Thread-safe."""

    def __init__(self, root_url: str, headers: dict[str, str] | None = None,
                 window_s: float = LATENCY_WINDOW_S):
        self.root_url = root_url.rstrip("/")
        self.headers = headers or {}
        self.window_s = window_s
        self.scrapes: deque[Scrape] = deque()
        self.error: str | None = None
        self._lock = threading.Lock()

    def read(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The engine figures now; None (and `error` says why) without a /metrics page."""
        try:
            metrics = fetch_metrics(self.root_url, timeout, self.headers)
        except MetricsUnavailable as error:
            self.error = str(error)
            return None
        self.error = None
        return self.add(Scrape(time.monotonic(), metrics))

    def add(self, scrape: Scrape) -> dict[str, Any]:
        """Keep `scrape` and return its figures (rates from the latest earlier scrape at
        least RATE_MIN_INTERVAL_S old, percentiles over the window)."""
        with self._lock:
            while self.scrapes and scrape.time - self.scrapes[0].time > self.window_s:
                self.scrapes.popleft()
            earlier = [s for s in self.scrapes if scrape.time - s.time >= RATE_MIN_INTERVAL_S]
            window_base = self.scrapes[0] if self.scrapes else None
            self.scrapes.append(scrape)
        return engine_figures_from_metrics(scrape, earlier[-1] if earlier else None, window_base)
