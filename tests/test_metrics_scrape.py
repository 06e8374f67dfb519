"""Engine figures from Prometheus /metrics pages: a vLLM page and an SGLang page written from
their documented metric names (tests/fixtures/metrics/), our own server's page, and what a
server that reports nothing gets (absent figures, never zeros)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from jupyter_qwen.server.metrics import RequestMetrics, render_prometheus
from jupyter_qwen.server.prometheus import parse_prometheus
from jupyter_qwen.server.scrape import (
    MetricsReader,
    MetricsUnavailable,
    Scrape,
    engine_figures_from_metrics,
    fetch_metrics,
)

FIXTURES = Path(__file__).with_name("fixtures") / "metrics"


def page(name: str) -> str:
    return (FIXTURES / name).read_text()


def figures_of(text: str) -> dict:
    return engine_figures_from_metrics(Scrape(0.0, parse_prometheus(text)))


def test_a_vllm_page_gives_the_health_figures():
    figures = figures_of(page("vllm.txt"))
    latency = figures.pop("latency")
    assert figures == {
        "metric_names": "vllm",
        "requests_running": 5, "requests_waiting": 1,  # summed over the two engines
        "kv_cache_usage": 0.3,  # their mean
        "num_preemptions": 1, "prompt_tokens_total": 20000, "generation_tokens_total": 5000,
        "prefix_cache_hit_rate": 0.25}  # 400 hits / 1600 queries
    # TTFT buckets summed over engines: 2 by 20 ms, 6 by 40 ms, 10 by 60 ms; ITL read from
    # inter_token_latency_seconds, not the older time_per_output_token_seconds beside it
    assert latency == {"requests": 10, "window_s": None,
                       "ttft_p50_s": pytest.approx(0.035), "ttft_p95_s": pytest.approx(0.0575),
                       "itl_p50_s": pytest.approx(0.03), "itl_p95_s": pytest.approx(0.0625)}


def test_an_sglang_page_gives_the_same_figures_under_its_names():
    figures = figures_of(page("sglang.txt"))
    latency = figures.pop("latency")
    assert figures == {
        "metric_names": "sglang", "requests_running": 7, "requests_waiting": 2,
        "kv_cache_usage": 0.42, "prompt_tokens_total": 81000,
        "generation_tokens_total": 75000, "prefix_cache_hit_rate": 0.125}
    assert "num_preemptions" not in figures  # SGLang does not report it: not a zero
    assert latency == {"requests": 10, "window_s": None,
                       "ttft_p50_s": pytest.approx(0.3125), "ttft_p95_s": pytest.approx(0.875),
                       "itl_p50_s": pytest.approx(0.02), "itl_p95_s": pytest.approx(0.038)}


def test_two_scrapes_give_token_rates_and_a_latency_window():
    first = page("vllm.txt")
    later = (first.replace('engine="0",model_name="Qwen/Qwen3-32B"} 12000.0',
                           'engine="0",model_name="Qwen/Qwen3-32B"} 13000.0')
             .replace('vllm:generation_tokens_total{engine="1",model_name="Qwen/Qwen3-32B"} '
                      '2000.0', 'vllm:generation_tokens_total{engine="1",'
                      'model_name="Qwen/Qwen3-32B"} 2400.0'))
    itl = 'vllm:inter_token_latency_seconds_{}{{engine="0",model_name="Qwen/Qwen3-32B"{}}} '
    for part, le, before, after in (("bucket", ',le="0.05"', 90, 100),
                                    ("bucket", ',le="0.075"', 100, 110),
                                    ("bucket", ',le="+Inf"', 100, 110), ("count", "", 100, 110)):
        line = itl.format(part, le)
        assert line + f"{before}.0" in later
        later = later.replace(line + f"{before}.0", line + f"{after}.0")
    assert later != first
    reader = MetricsReader("http://unused")
    assert "prompt_tokens_per_s" not in reader.add(Scrape(100.0, parse_prometheus(first)))
    figures = reader.add(Scrape(102.0, parse_prometheus(later)))
    assert figures["prompt_tokens_per_s"] == 500.0  # 1000 tokens in 2 s
    assert figures["generation_tokens_per_s"] == 200.0
    # between the scrapes: ten inter-token gaps of 25-50 ms, and no first token (so the TTFT
    # percentiles of the window are unknown, not zero)
    assert figures["latency"] == {"requests": 0, "window_s": 2, "ttft_p50_s": None,
                                  "ttft_p95_s": None, "itl_p50_s": pytest.approx(0.0375),
                                  "itl_p95_s": pytest.approx(0.04875)}


def test_a_page_without_known_names_reports_nothing():
    figures = figures_of("# TYPE process_cpu_seconds_total counter\n"
                         "process_cpu_seconds_total 12.5\n")
    assert figures == {"metric_names": None}


def test_the_parser_reads_escapes_odd_values_and_skips_broken_lines():
    metrics = parse_prometheus(
        'a_metric{path="C:\\\\x",msg="say \\"hi\\"\\n"} 1e+03\n'
        "b_metric +Inf\n"
        "c_metric NaN 1700000000000\n"
        "broken{label=} 3\n"
        "also broken\n"
        'd_metric{x="1",} 2\n')
    assert metrics.samples["a_metric"][0].labels == {"path": "C:\\x", "msg": 'say "hi"\n'}
    assert metrics.total("a_metric") == 1000.0
    assert metrics.total("b_metric") == float("inf")
    assert metrics.total("d_metric") == 2.0
    assert metrics.names() == {"a_metric", "b_metric", "c_metric", "d_metric"}
    assert metrics.total("missing") is None and metrics.histogram("missing") is None


def test_a_quantile_past_the_last_bound_is_that_bound():
    metrics = parse_prometheus('h_bucket{le="1.0"} 1\nh_bucket{le="+Inf"} 4\nh_count 4\n')
    assert metrics.histogram("h").quantile(0.95) == 1.0
    assert metrics.histogram("h").quantile(0.1) == pytest.approx(0.4)


def test_our_own_server_page_reads_with_the_same_names():
    stats = SimpleNamespace(requests_running=2, requests_waiting=3, kv_cache_usage=0.5,
                            prefix_cache_queries=40, prefix_cache_hits=10,
                            prompt_tokens_total=300, generation_tokens_total=120,
                            num_preemptions=0)
    request_metrics = RequestMetrics()
    timer = request_metrics.timer()
    timer.tokens(1)
    timer.tokens(1)
    timer.done("stop")
    figures = figures_of(render_prometheus("qwen3-demo", stats, request_metrics))
    assert figures["metric_names"] == "vllm"
    assert {k: figures[k] for k in ("requests_running", "requests_waiting", "kv_cache_usage",
                                    "prompt_tokens_total", "generation_tokens_total",
                                    "prefix_cache_hit_rate", "num_preemptions")} == {
        "requests_running": 2, "requests_waiting": 3, "kv_cache_usage": 0.5,
        "prompt_tokens_total": 300, "generation_tokens_total": 120,
        "prefix_cache_hit_rate": 0.25, "num_preemptions": 0}
    assert figures["latency"]["requests"] == 1
    assert figures["latency"]["ttft_p50_s"] is not None


def test_no_metrics_route_is_unavailable_not_empty():
    from openai_peer import OpenAIPeer

    peer = OpenAIPeer().start()
    try:
        with pytest.raises(MetricsUnavailable, match="HTTP 404"):
            fetch_metrics(peer.root_url)
        reader = MetricsReader(peer.root_url)
        assert reader.read() is None and "404" in reader.error
    finally:
        peer.close()
    with pytest.raises(MetricsUnavailable):
        fetch_metrics(peer.root_url, timeout=1)  # closed: refused
