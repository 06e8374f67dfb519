"""Lifecycle and reliability on the tiny model: memory comes back, latency stays flat, faults
do no harm, the waiting queue pushes back, and every route checks its credentials.

Each test prints one `RELIABILITY ...` line with what it tried and what survived;
RELIABILITY.md quotes them (run with `-s` to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import random
import socket
import statistics
import threading
import time
import weakref
from dataclasses import dataclass, field

import httpx
import pytest
import torch
from server_waits import wait_idle

from jupyter_qwen import serve
from jupyter_qwen.memory import MIB, process_rss
from jupyter_qwen.server import registry

CYCLE_RSS_TOLERANCE = 8 * MIB
LONG_RUN_RSS_TOLERANCE = 16 * MIB
LOAD_RSS_TOLERANCE = 64 * MIB
WARM_UP = 200
LOAD_CLIENTS = 256
LOAD_SECONDS = 120


M_ARENA_MAX = -8


def limit_malloc_arenas(count: int = 2) -> None:
    """Cap glibc's malloc arenas for this process, at collection time, before any thread.

    glibc gives a thread that finds the existing arenas busy a new one, up to eight per core,
    and keeps each. Every server start brings new threads, so RSS rises by about 1 MiB per
    cycle until the cap is reached, then stays flat. That growth is bounded and is not held
    by anything; with the arenas capped, RSS measures what the cycles keep.
    JUPYTER_QWEN_TEST_MALLOC_ARENAS=default leaves glibc's own cap, to see the difference.
    """
    if os.environ.get("JUPYTER_QWEN_TEST_MALLOC_ARENAS") == "default":
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "mallopt"):
        libc.mallopt(M_ARENA_MAX, count)


limit_malloc_arenas()


def summary(name: str, **figures) -> None:
    print(f"\nRELIABILITY {name}: " + ", ".join(f"{key}={value}" for key, value in
                                               figures.items()), flush=True)


# ---- what the process holds ----------------------------------------------------------------


def live_tensors() -> list[torch.Tensor]:
    """Every torch tensor a Python object refers to (tensors are tracked by the gc)."""
    gc.collect()
    return [obj for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor)]


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views share theirs)."""
    sizes = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
    return sum(sizes.values())


def settled_rss() -> int:
    """RSS once the gc has run and glibc has handed its free pages back (malloc_trim).

    Freed memory that the allocator keeps cached for reuse is not held by anything, and how
    much of it stays mapped depends on fragmentation, not on leaks.
    """
    gc.collect()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    return process_rss()


def open_fds() -> dict[int, str]:
    """The process's open files and sockets, less /proc files: those are read and closed at
    once by threads that outlive any one server (the shared GPU monitor samples this
    process's memory through /proc every few hundred ms), so catching one open is a race,
    not a leak."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if not target.startswith("/proc/"):
                fds[int(name)] = target
    return fds


def registry_files() -> list[str]:
    return sorted(path.name for path in registry.registry_dir().glob("server-*.json"))


@dataclass
class Holdings:
    """What the process holds at one moment: the figures the lifecycle must give back."""

    threads: list[str]
    fds: dict[int, str]
    num_tensors: int
    tensor_bytes: int
    rss: int
    registry: list[str]

    @classmethod
    def now(cls) -> Holdings:
        tensors = live_tensors()
        return cls(sorted(t.name for t in threading.enumerate()), open_fds(), len(tensors),
                   storage_bytes(tensors), settled_rss(), registry_files())

    @property
    def sockets(self) -> int:
        return sum(target.startswith("socket:") for target in self.fds.values())

    def leaks_since(self, baseline: Holdings) -> dict:
        """Everything not back at its baseline value, by name (RSS is judged separately)."""
        leaks = {
            "threads": sorted(set(self.threads) - set(baseline.threads)),
            "fds": {fd: target for fd, target in self.fds.items()
                    if baseline.fds.get(fd) != target},
            "tensors": self.num_tensors - baseline.num_tensors,
            "tensor_bytes": self.tensor_bytes - baseline.tensor_bytes,
            "registry": sorted(set(self.registry) - set(baseline.registry))}
        return {name: leak for name, leak in leaks.items() if leak}


def prime_process_wide_state() -> None:
    """Make what a process creates once, on first use, before the baseline is taken.

    libuv (under uvloop, the HTTP server's loop) opens one pipe per process the first time
    any loop starts, its signal lock, and keeps it for the life of the process by design.
    """
    import uvloop

    uvloop.new_event_loop().close()


def port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def wait_until(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


# ---- clients -------------------------------------------------------------------------------


def chat_body(server, text: str = "hi", max_tokens: int = 8, **extra) -> dict:
    return {"model": server.served_model_name, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "messages": [{"role": "user", "content": text}]} | extra


@dataclass
class Outcome:
    """How one request ended, as its client saw it."""

    status: int
    tokens: int = 0
    error: dict | None = None
    done: bool = False
    chunks: int = 0
    seconds: float = 0.0
    events: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.done


async def post(client: httpx.AsyncClient, url: str, body: dict) -> Outcome:
    start = time.perf_counter()
    response = await client.post(url, json=body)
    outcome = Outcome(response.status_code, seconds=time.perf_counter() - start)
    payload = response.json()
    if response.status_code == 200:
        outcome.tokens, outcome.done = payload["usage"]["completion_tokens"], True
    else:
        outcome.error = payload.get("error")
    return outcome


async def stream(client: httpx.AsyncClient, url: str, body: dict,
                 stop_after: int | None = None) -> Outcome:
    """A streamed request read to its end, or dropped after `stop_after` events."""
    start = time.perf_counter()
    body = body | {"stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", url, json=body) as response:
        outcome = Outcome(response.status_code)
        if response.status_code != 200:
            await response.aread()
            outcome.error = response.json().get("error")
            return outcome
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                outcome.done = True
                break
            event = json.loads(line[6:])
            outcome.chunks += 1
            if "error" in event:
                outcome.error = event["error"]
            elif event.get("usage"):
                outcome.tokens = event["usage"]["completion_tokens"]
            if stop_after is not None and outcome.chunks >= stop_after:
                break
    outcome.seconds = time.perf_counter() - start
    return outcome


def new_client(**kwargs) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits, **kwargs)


async def mixed_requests(server, count: int) -> list[Outcome]:
    """Chat (whole and streamed) and text completions, ten at a time."""
    async with new_client() as client:
        outcomes = []
        for wave in range(0, count, 10):
            jobs = []
            for index in range(wave, min(wave + 10, count)):
                kind = index % 3
                if kind == 0:
                    jobs.append(post(client, f"{server.url}/chat/completions",
                                     chat_body(server, f"request {index}")))
                elif kind == 1:
                    jobs.append(stream(client, f"{server.url}/chat/completions",
                                       chat_body(server, f"request {index}")))
                else:
                    jobs.append(post(client, f"{server.url}/completions", {
                        "prompt": f"request {index}", "max_tokens": 8, "temperature": 0,
                        "ignore_eos": True}))
            outcomes += await asyncio.gather(*jobs)
        return outcomes


def engine_tensor_refs(server) -> list[weakref.ref]:
    runner = server.ctx.engine.engine.runner
    tensors = [*runner.model.parameters(), *runner.model.buffers(), runner.kv_cache]
    return [weakref.ref(tensor) for tensor in tensors]


# ---- start / stop --------------------------------------------------------------------------


def test_start_stop_cycles_give_everything_back(tiny_model_path):
    prime_process_wide_state()
    baseline = Holdings.now()
    port, rss_after, served = None, [], 0
    for round_index in range(10):
        server = serve(tiny_model_path, port=port, max_model_len=256, num_kv_blocks=1024,
                       progress=False)
        assert port in (None, server.port)
        port = server.port
        refs = [weakref.ref(server), *engine_tensor_refs(server)]
        serving = Holdings.now()
        assert serving.num_tensors > baseline.num_tensors
        outcomes = asyncio.run(mixed_requests(server, 50))
        assert all(outcome.ok and outcome.tokens == 8 for outcome in outcomes), outcomes
        served += len(outcomes)
        server.stop()
        del server
        after = Holdings.now()
        assert after.leaks_since(baseline) == {}, f"round {round_index}"
        assert not any(ref() is not None for ref in refs), f"round {round_index}"
        assert port_is_closed(port)
        rss_after.append(after.rss)
    growth = max(rss_after) - rss_after[0]
    summary("start/stop cycles", rounds=10, requests=served, port=f"same ({port})",
            tensors=f"{baseline.num_tensors} -> {after.num_tensors} "
                    f"({after.tensor_bytes - baseline.tensor_bytes:+d} B; "
                    f"{serving.num_tensors} tensors, {serving.tensor_bytes / MIB:.1f} MiB "
                    "while serving)",
            threads=f"{len(baseline.threads)} -> {len(after.threads)}",
            fds=f"{len(baseline.fds)} -> {len(after.fds)} ({serving.sockets} sockets "
                f"while serving, {after.sockets} after)",
            registry_files=f"{len(baseline.registry)} -> {len(after.registry)}",
            malloc_arenas=os.environ.get("JUPYTER_QWEN_TEST_MALLOC_ARENAS", "capped at 2"),
            rss_MiB=" ".join(f"{rss / MIB:.0f}" for rss in rss_after),
            rss_growth_MiB=f"{growth / MIB:.1f} (tolerance {CYCLE_RSS_TOLERANCE / MIB:.0f})")
    assert growth <= CYCLE_RSS_TOLERANCE


# ---- a long run ----------------------------------------------------------------------------


def timed_chat(server):
    """A function that sends one LangChain chat to `server` and returns its latency."""
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=server.url, api_key="EMPTY", model=server.served_model_name,
                      max_tokens=4, temperature=0)

    def ask(text: str) -> float:
        start = time.perf_counter()
        reply = chat.invoke(text)
        assert reply.usage_metadata["output_tokens"] >= 1
        return time.perf_counter() - start

    return ask


def test_a_thousand_langchain_chats_keep_latency_and_memory_flat(tiny_model_path):
    """1,000 sequential chats; the first and the last 100 are paired one for one with requests
    to a control server, warmed up alike, which serves nothing between the windows.

    The shared machine's speed drifts by tens of percent over a minute, and a window's median
    alone moves by a tenth between runs: each chat is divided by its pair's control chat (sent
    just before or just after it, alternately, so neither server always goes first), and what
    is asserted is the median of those ratios in the last window against the first.
    The KV cache is allocated once but its pages are committed as blocks are first used, so
    it is kept small (128 blocks, 4 MiB) and the warm-up goes through all of it: RSS then
    follows everything else.
    """
    options = {"max_model_len": 256, "num_kv_blocks": 128, "progress": False}
    server, control = serve(tiny_model_path, **options), serve(tiny_model_path, **options)
    try:
        ask, ask_control = timed_chat(server), timed_chat(control)
        for index in range(WARM_UP):
            ask(f"warm-up {index}")
            ask_control(f"warm-up {index}")
        rss = [settled_rss()]
        latencies, control_latencies = [], []
        for index in range(1000):
            paired = index < 100 or index >= 900
            if paired and index % 2:
                control_latencies.append(ask_control(f"question number {index}"))
            latencies.append(ask(f"question number {index}"))
            if paired and not index % 2:
                control_latencies.append(ask_control(f"question number {index}"))
            if index % 100 == 99:
                rss.append(settled_rss())
        stats = wait_idle(server)
    finally:
        server.stop()
        control.stop()
    median = lambda values: statistics.median(values) * 1e3  # noqa: E731
    first, last = median(latencies[:100]), median(latencies[-100:])
    control_first, control_last = median(control_latencies[:100]), median(control_latencies[100:])
    paired_ratios = [own / control for own, control in
                     zip(latencies[:100] + latencies[-100:], control_latencies, strict=True)]
    drift = statistics.median(paired_ratios[100:]) / statistics.median(paired_ratios[:100])
    assert abs(drift - 1) <= 0.10, (first, last, control_first, control_last, drift)
    assert max(rss) - rss[0] <= LONG_RUN_RSS_TOLERANCE, rss
    assert stats["num_free_blocks"] == stats["num_kv_blocks"]
    summary("long run", requests=1000, warm_up=WARM_UP, client="LangChain ChatOpenAI, max_tokens=4",
            median_first_100_ms=f"{first:.1f}", median_last_100_ms=f"{last:.1f}",
            raw_ratio=f"{last / first:.3f}",
            control_ms=f"{control_first:.1f} -> {control_last:.1f}",
            machine_drift=f"{control_last / control_first:.3f}",
            drift_beyond_machine=f"{drift:.3f} (limit 1 +- 0.10)",
            total_s=f"{sum(latencies):.1f}",
            rss_MiB=" ".join(f"{value / MIB:.0f}" for value in rss),
            rss_growth_MiB=f"{(max(rss) - rss[0]) / MIB:.1f} "
                           f"(tolerance {LONG_RUN_RSS_TOLERANCE / MIB:.0f})")


# ---- load ----------------------------------------------------------------------------------


async def keep_streaming(client, server, index: int, deadline: float,
                         outcomes: list[Outcome]) -> None:
    rng = random.Random(index)
    while time.monotonic() < deadline:
        max_tokens = rng.randint(4, 24)
        body = chat_body(server, f"client {index} turn {len(outcomes)}", max_tokens)
        try:
            outcome = await stream(client, f"{server.url}/chat/completions", body)
        except httpx.HTTPError as error:
            outcome = Outcome(0, error={"message": repr(error)})
        if outcome.ok and outcome.tokens != max_tokens:
            outcome.error = {"message": f"{outcome.tokens} tokens, not {max_tokens}"}
        outcomes.append(outcome)


async def sample_rss(samples: list[tuple[float, int]], deadline: float) -> None:
    while time.monotonic() < deadline:
        samples.append((time.monotonic(), process_rss()))
        await asyncio.sleep(2.0)


@pytest.mark.slow
def test_256_streaming_clients_for_two_minutes(tiny_model_path):
    """256 clients, each streaming one chat after another for LOAD_SECONDS: no errors, and
    RSS after the first half-minute stays within LOAD_RSS_TOLERANCE of its level then.

    1,024 KV blocks hold every running sequence (at most 3 blocks each) and are all in use
    within seconds, so that RSS does not follow the KV cache's pages being committed.
    """
    server = serve(tiny_model_path, max_model_len=256, max_num_seqs=256, num_kv_blocks=1024,
                   progress=False)
    outcomes: list[Outcome] = []
    samples: list[tuple[float, int]] = []

    async def run() -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        async with new_client() as client:
            await asyncio.wait_for(asyncio.gather(
                sample_rss(samples, deadline),
                *(keep_streaming(client, server, index, deadline, outcomes)
                  for index in range(LOAD_CLIENTS))), LOAD_SECONDS + 60)

    try:
        start = time.monotonic()
        asyncio.run(run())
        elapsed = time.monotonic() - start
        stats = wait_idle(server)
        health = httpx.get(f"{server.root_url}/health", timeout=10).status_code
    finally:
        server.stop()
    errors = [outcome for outcome in outcomes if not outcome.ok or outcome.error]
    assert not errors, errors[:5]
    assert health == 200 and stats["num_free_blocks"] == stats["num_kv_blocks"]
    settled = [rss for moment, rss in samples if moment - samples[0][0] >= 30]
    assert max(settled) - settled[0] <= LOAD_RSS_TOLERANCE
    tokens = sum(outcome.tokens for outcome in outcomes)
    latencies = sorted(outcome.seconds for outcome in outcomes)
    summary("load", clients=LOAD_CLIENTS, seconds=f"{elapsed:.0f}", requests=len(outcomes),
            errors=len(errors), tokens=tokens, tokens_per_s=f"{tokens / elapsed:.0f}",
            request_s_p50=f"{latencies[len(latencies) // 2]:.2f}",
            request_s_max=f"{latencies[-1]:.2f}",
            rss_MiB=f"{samples[0][1] / MIB:.0f} at start, {settled[0] / MIB:.0f} at 30 s, "
                    f"max {max(settled) / MIB:.0f} after",
            rss_growth_after_30s_MiB=f"{(max(settled) - settled[0]) / MIB:.1f} "
                                     f"(tolerance {LOAD_RSS_TOLERANCE / MIB:.0f})")


def test_a_full_waiting_queue_answers_429_at_once(tiny_model_path):
    server = serve(tiny_model_path, max_model_len=256, max_num_seqs=2, max_waiting_requests=4,
                   max_num_batched_tokens=64, progress=False)
    url = f"{server.url}/chat/completions"

    async def flood() -> list[Outcome]:
        async with new_client() as client:
            jobs = [(stream if index % 2 else post)(client, url, chat_body(server, f"{index}", 64))
                    for index in range(64)]
            return await asyncio.wait_for(asyncio.gather(*jobs), 120)

    try:
        outcomes = asyncio.run(flood())
        after = asyncio.run(mixed_requests(server, 4))
        stats = wait_idle(server)
    finally:
        server.stop()
    refused = [outcome for outcome in outcomes if outcome.status == 429]
    served = [outcome for outcome in outcomes if outcome.status == 200]
    assert len(refused) + len(served) == len(outcomes)
    assert all(outcome.ok and outcome.tokens == 64 for outcome in served)
    assert all(outcome.error["code"] == "queue_full" for outcome in refused)
    assert len(served) >= 4 and refused
    slowest_refusal = max(outcome.seconds for outcome in refused)
    assert slowest_refusal < 2.0
    assert all(outcome.ok for outcome in after)
    assert stats["num_free_blocks"] == stats["num_kv_blocks"]
    summary("queue full", clients=len(outcomes), max_num_seqs=2, max_waiting_requests=4,
            served=len(served), refused_429=len(refused),
            slowest_429_ms=f"{slowest_refusal * 1e3:.0f}",
            slowest_served_s=f"{max(outcome.seconds for outcome in served):.2f}",
            requests_after=f"{len(after)} ok")


# ---- faults --------------------------------------------------------------------------------


class StepFault:
    """An engine `before_step` hook that raises in the next step once armed."""

    def __init__(self):
        self.armed = threading.Event()
        self.fired = 0

    def arm(self) -> None:
        self.armed.set()

    def __call__(self) -> None:
        if self.armed.is_set():
            self.armed.clear()
            self.fired += 1
            raise RuntimeError("injected fault")


async def requests_in_flight(server, client, count: int, max_tokens: int = 200):
    """`count` long requests, half streamed, started and running."""
    url = f"{server.url}/chat/completions"
    jobs = [asyncio.ensure_future((stream if index % 2 else post)(
        client, url, chat_body(server, f"in flight {index}", max_tokens)))
        for index in range(count)]
    while server.stats()["requests_running"] < count:
        assert not any(job.done() for job in jobs), [job.result() for job in jobs if job.done()]
        await asyncio.sleep(0.01)
    return jobs


def failed_as_expected(outcome: Outcome, status: int = 503) -> bool:
    """A whole response that is an error, or a stream whose last event is an error."""
    if outcome.status == status:
        return outcome.error["type"] == "service_unavailable"
    return outcome.status == 200 and outcome.error is not None and outcome.done


def test_a_failed_step_fails_the_requests_in_flight_and_the_engine_recovers(tiny_model_path):
    server = serve(tiny_model_path, max_model_len=256, progress=False)
    fault = StepFault()
    server.ctx.engine.before_step = fault
    rounds, in_flight = 10, 8

    async def one_round(client) -> tuple[list[Outcome], Outcome]:
        jobs = await requests_in_flight(server, client, in_flight)
        fault.arm()
        failed = await asyncio.wait_for(asyncio.gather(*jobs), 30)
        after = await asyncio.wait_for(post(client, f"{server.url}/chat/completions",
                                            chat_body(server, "after the fault")), 30)
        return failed, after

    async def run():
        async with new_client() as client:
            return [await one_round(client) for _ in range(rounds)]

    try:
        results = asyncio.run(run())
        stats = wait_idle(server)
        health = httpx.get(f"{server.root_url}/health", timeout=10)
    finally:
        server.stop()
    failed = [outcome for round_failed, _ in results for outcome in round_failed]
    assert all(failed_as_expected(outcome) for outcome in failed), failed
    assert all(after.ok for _, after in results)
    assert fault.fired == stats["step_failures"] == rounds
    assert health.status_code == 200 and stats["num_free_blocks"] == stats["num_kv_blocks"]
    summary("step faults", faults=rounds, requests_failed=len(failed),
            whole_503=sum(outcome.status == 503 for outcome in failed),
            streams_ended_by_error_event=sum(outcome.status == 200 for outcome in failed),
            requests_after_each_fault=f"{rounds} ok", health_after=health.status_code,
            kv_blocks_free=f"{stats['num_free_blocks']}/{stats['num_kv_blocks']}")


def test_an_engine_that_cannot_recover_reports_itself_dead(tiny_model_path, monkeypatch):
    baseline_threads = {thread.name for thread in threading.enumerate()}
    server = serve(tiny_model_path, max_model_len=256, progress=False)
    engine = server.ctx.engine
    refs = engine_tensor_refs(server)
    fault = StepFault()
    engine.before_step = fault

    def broken_abort_all():
        raise RuntimeError("injected fault during recovery")

    monkeypatch.setattr(engine.engine, "abort_all", broken_abort_all)

    async def run():
        async with new_client() as client:
            jobs = await requests_in_flight(server, client, 8)
            fault.arm()
            failed = await asyncio.wait_for(asyncio.gather(*jobs), 30)
            start = time.perf_counter()
            refused = await asyncio.wait_for(asyncio.gather(*(
                (stream if index % 2 else post)(client, f"{server.url}/chat/completions",
                                               chat_body(server, "too late"))
                for index in range(8))), 30)
            return failed, refused, time.perf_counter() - start

    try:
        failed, refused, refusal_seconds = asyncio.run(run())
        health = httpx.get(f"{server.root_url}/health", timeout=10)
        stop_seconds = time.perf_counter()
    finally:
        server.stop()
    stop_seconds = time.perf_counter() - stop_seconds
    assert all(failed_as_expected(outcome) for outcome in failed), failed
    assert all(outcome.status == 503 for outcome in refused), refused
    assert health.status_code == 503 and health.json()["status"] == "dead"
    assert "injected fault during recovery" in health.json()["error"]
    del engine
    gc.collect()
    assert not any(ref() is not None for ref in refs)
    assert {thread.name for thread in threading.enumerate()} <= baseline_threads
    summary("failed recovery", requests_failed=len(failed), health=health.status_code,
            status=health.json()["status"], later_requests_503=len(refused),
            refusals_s=f"{refusal_seconds:.2f}", stop_s=f"{stop_seconds:.2f}",
            engine_tensors_freed=len(refs))


def test_a_fault_outside_the_step_kills_the_engine_cleanly(tiny_model_path, monkeypatch):
    """An abort that raises ends the engine thread: the engine says it is dead instead of
    leaving every request waiting for a thread that is gone."""
    server = serve(tiny_model_path, max_model_len=256, progress=False)
    engine = server.ctx.engine

    def broken_abort(request_id):
        raise RuntimeError("injected fault in abort")

    async def run():
        async with new_client() as client:
            jobs = await requests_in_flight(server, client, 8)
            monkeypatch.setattr(engine.engine, "abort", broken_abort)
            dropped = await stream(client, f"{server.url}/chat/completions",
                                   chat_body(server, "dropped"), stop_after=2)
            failed = await asyncio.wait_for(asyncio.gather(*jobs), 30)
            after = await asyncio.wait_for(post(client, f"{server.url}/chat/completions",
                                                chat_body(server, "after")), 30)
            return dropped, failed, after

    try:
        dropped, failed, after = asyncio.run(run())
        health = httpx.get(f"{server.root_url}/health", timeout=10)
        thread_alive = engine._thread.is_alive()
    finally:
        monkeypatch.undo()
        server.stop()
    assert dropped.chunks == 2
    assert all(failed_as_expected(outcome) for outcome in failed), failed
    assert after.status == 503 and health.json()["status"] == "dead" and not thread_alive
    summary("fault outside a step", requests_failed=len(failed), later_request=after.status,
            health=health.status_code, engine_thread_alive=thread_alive)


def test_running_out_of_kv_blocks_preempts_and_every_request_completes(tiny_model_path):
    """24 blocks of 16 tokens, 24 concurrent requests of about 180 tokens (12 blocks each)."""
    server = serve(tiny_model_path, max_model_len=256, num_kv_blocks=24, progress=False)

    async def run() -> list[Outcome]:
        async with new_client() as client:
            url = f"{server.url}/chat/completions"
            return await asyncio.wait_for(asyncio.gather(*(
                (stream if index % 2 else post)(client, url, chat_body(
                    server, f"a long answer for request {index}", 160))
                for index in range(24))), 300)

    try:
        start = time.perf_counter()
        outcomes = asyncio.run(run())
        elapsed = time.perf_counter() - start
        stats = wait_idle(server)
        health = httpx.get(f"{server.root_url}/health", timeout=10).status_code
    finally:
        server.stop()
    assert all(outcome.ok and outcome.tokens == 160 for outcome in outcomes), outcomes
    assert stats["num_preemptions"] > 0 and health == 200
    assert stats["num_free_blocks"] == stats["num_kv_blocks"] == 24
    summary("KV exhaustion", kv_blocks=24, requests=len(outcomes), tokens_each=160,
            completed=sum(outcome.ok for outcome in outcomes),
            preemptions=stats["num_preemptions"], seconds=f"{elapsed:.1f}",
            kv_blocks_free_after=f"{stats['num_free_blocks']}/{stats['num_kv_blocks']}")


async def disconnecting_client(client, server, index: int) -> str:
    """A client that goes away early: mid-stream, or while waiting for a whole response."""
    rng = random.Random(index)
    body = chat_body(server, f"impatient client {index}", rng.randint(20, 120))
    url = f"{server.url}/chat/completions"
    kind = index % 3
    if kind == 0:
        await stream(client, url, body, stop_after=rng.randint(1, 6))
        return "left mid-stream"
    if kind == 1:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(client, url, body), rng.uniform(0.02, 0.3))
        return "left before the response"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(stream(client, url, body), rng.uniform(0.02, 0.3))
    return "left before the first event"


def test_a_storm_of_disconnects_leaks_no_blocks(tiny_model_path):
    server = serve(tiny_model_path, max_model_len=256, progress=False)
    idle = wait_idle(server)["num_free_blocks"]
    storms, clients, kinds = 3, 128, {}

    async def storm(index: int) -> None:
        async with new_client() as client:
            for kind in await asyncio.gather(*(
                    disconnecting_client(client, server, index * clients + number)
                    for number in range(clients))):
                kinds[kind] = kinds.get(kind, 0) + 1

    try:
        free_after = []
        for index in range(storms):
            asyncio.run(storm(index))
            stats = wait_idle(server)
            free_after.append(stats["num_free_blocks"])
        after = asyncio.run(mixed_requests(server, 10))
        aborted = server.ctx.metrics.finished["abort"]
    finally:
        server.stop()
    assert free_after == [idle] * storms
    assert aborted >= storms * clients // 4
    assert all(outcome.ok for outcome in after)
    summary("disconnect storms", storms=storms, clients_per_storm=clients,
            **{kind.replace(" ", "_"): count for kind, count in sorted(kinds.items())},
            aborted_by_the_server=aborted,
            kv_blocks_free_after_each=f"{free_after} (idle {idle})",
            requests_after=f"{len(after)} ok")


def test_stopping_under_load_ends_every_request_promptly(tiny_model_path):
    baseline = {thread.name for thread in threading.enumerate()}
    server = serve(tiny_model_path, max_model_len=256, progress=False)
    port = server.port

    async def run() -> tuple[list, float]:
        async with new_client() as client:
            jobs = await requests_in_flight(server, client, 32)
            start = time.perf_counter()
            stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)
            ended = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 30)
            await asyncio.wait_for(stopping, 30)
            return ended, time.perf_counter() - start

    ended, seconds = asyncio.run(run())
    assert all(isinstance(item, httpx.HTTPError) or failed_as_expected(item) for item in ended)
    assert server.state == "stopped" and port_is_closed(port)
    assert {thread.name for thread in threading.enumerate()} <= baseline
    summary("stop under load", requests_in_flight=len(ended),
            ended_by_error_event_or_503=sum(isinstance(item, Outcome) for item in ended),
            connection_closed=sum(isinstance(item, httpx.HTTPError) for item in ended),
            stop_and_all_ended_s=f"{seconds:.2f}")


# ---- security ------------------------------------------------------------------------------


def test_every_way_to_serve_binds_loopback_by_default():
    import argparse
    import inspect

    from jupyter_qwen.server.cli import add_server_arguments
    from jupyter_qwen.server.server import QwenServer

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    defaults = {"serve()": inspect.signature(serve).parameters["host"].default,
                "QwenServer()": inspect.signature(QwenServer).parameters["host"].default,
                "python -m jupyter_qwen serve": parser.parse_args([]).host}
    assert set(defaults.values()) == {"127.0.0.1"}, defaults


def openapi_routes(server) -> list[tuple[str, str]]:
    schema = httpx.get(f"{server.root_url}/openapi.json", timeout=10).json()
    return [(method.upper(), path) for path, methods in schema["paths"].items()
            for method in methods]


def call(server, method: str, path: str, headers: dict | None = None) -> httpx.Response:
    body = {"/v1/chat/completions": chat_body(server, max_tokens=2),
            "/v1/completions": {"prompt": "hi", "max_tokens": 2}}.get(path)
    url = server.root_url + path.replace("{session_id}", "no-such-session")
    return httpx.request(method, url, json=body, headers=headers or {}, timeout=30)


def test_every_v1_route_needs_the_api_key_and_admin_routes_the_token(tiny_model_path):
    key = "sekret-key"
    server = serve(tiny_model_path, api_key=key, max_model_len=256, progress=False)
    try:
        assert server.host == "127.0.0.1"
        assert server._socket.getsockname()[0] == "127.0.0.1"
        routes = openapi_routes(server)
        v1 = [(method, path) for method, path in routes if path.startswith("/v1/")]
        admin = [(method, path) for method, path in routes if path.startswith("/admin/")]
        wrong_keys = [None, "Bearer", "Bearer sekret-ke", "Bearer sekret-keyy",
                      "Bearer SEKRET-KEY", f"Basic {key}", key]
        refused = 0
        for method, path in v1:
            for wrong in wrong_keys:
                headers = {} if wrong is None else {"Authorization": wrong}
                response = call(server, method, path, headers)
                assert response.status_code == 401, (method, path, wrong)
                assert response.json()["error"]["code"] == "invalid_api_key"
                refused += 1
            allowed = call(server, method, path, {"Authorization": f"Bearer {key}"})
            assert allowed.status_code != 401 and allowed.status_code < 500, (method, path)
        for method, path in admin:
            for token in (None, "", "wrong", server.admin_token[:-1]):
                headers = {"Authorization": f"Bearer {key}"}
                if token is not None:
                    headers["X-Admin-Token"] = token
                assert call(server, method, path, headers).status_code == 401, (path, token)
                refused += 1
        cleaned = call(server, "POST", "/admin/clean", {"X-Admin-Token": server.admin_token})
        assert cleaned.status_code == 200
        open_routes = sorted(path for method, path in routes
                             if not path.startswith(("/v1/", "/admin/"))
                             and call(server, method, path).status_code != 401)
        assert open_routes == ["/health", "/metrics", "/ping", "/ping", "/version"]
        stopped = call(server, "POST", "/admin/stop", {"X-Admin-Token": server.admin_token})
        assert stopped.status_code == 200
        wait_until(lambda: server.state == "stopped", 15, "the admin stop")
    finally:
        server.stop()
    summary("credentials", bind=server.host, v1_routes=len(v1), admin_routes=len(admin),
            refused_401=refused, open_routes=" ".join(open_routes),
            admin_stop_with_token="stopped")
