"""Serving benchmark: OpenAI streaming clients against our HTTP server, at several request rates.

    python benchmarks/serving.py --shape qwen3-0.6b         # the issue's protocol (~4 min, H200)
    python benchmarks/serving.py --quick                    # CPU smoke run, < 1 min
    python benchmarks/serving.py --rates inf --compare none # the headline figures only

Writes `serving.json` (every number, per run) and `serving.md` (the table) to $OUT when set,
else to `--out` (default out/serving, git-ignored); both are rewritten after every run, so a
run cut short keeps what it finished. The checkpoint is `make_tiny_qwen3(dir, shape)`: random
weights of the real shape (`--model-dir`, default $TMPDIR/jupyter_qwen_bench_<shape>, reused
when it holds one). `--engine-opt key=value` (repeatable) passes EngineConfig / serve() options.

Workload (the issue's protocol)
-------------------------------
500 requests (`--num-requests`); `random.seed(0)`, then each prompt is 512 (`--input-len`) token
ids drawn with `random.randrange(10000)`, i.e. uniform in [0, 10000) (capped below the added
special tokens for the tiny shape's small vocabulary). Each is one `POST /v1/completions` with
the prompt as a token-id list (so its length is exact), `max_tokens=128` (`--output-len`),
`ignore_eos=true` (our extra field), `temperature=0`, `stream=true`,
`stream_options={"include_usage": true}`. Every request must come back with exactly
`usage.completion_tokens == 128`; anything else counts as a failed request.
The same prompts are used in every run; the server's prefix cache is emptied before each run
(prefix hits per run are in the JSON to show it), so no run profits from an earlier one.

Sampling (`--sampling greedy,defaults`, the default; quick: greedy)
-------------------------------------------------------------------
`defaults` adds, right after the unlimited-rate headline run, the same run whose requests carry
no sampling field at all (no temperature, top_p, ...; `ignore_eos` stays): the server's
defaults apply, i.e. the checkpoint's generation_config.json. Real-shape checkpoints from
`make_tiny_qwen3` carry Qwen3's shipped defaults (do_sample, temperature 0.6, top-k 20,
top-p 0.95), so that row is what a client such as LangChain's ChatOpenAI gets; the headline
line gives it beside the greedy headline with the ratio. (The tiny shape is greedy by default.)
A checkpoint folder made before the defaults were written is reused as is: pass a fresh
`--model-dir` (or delete $TMPDIR/jupyter_qwen_bench_<shape>) to get them.

Request rates (`--rates inf,10,20,40`): `inf` sends all requests at once; a number r sends them
with Poisson arrivals of rate r req/s (exponential gaps from `random.Random(--seed)`, the first
request at t=0). The schedule is drawn for all requests, then dealt round-robin to the client
processes; a fresh connection pool per run.

Where the clients run
---------------------
The server (`jupyter_qwen.serve`) runs in this process: uvicorn in its own thread, the engine in
another. `--where process` (default, the headline): the clients run in `--client-procs` separate
Python processes (default 4; this file with `--worker`), so client-side Python does not compete
with the server for this process's GIL, and one client event loop is not the ceiling (measured
on the 2-core development box: the openai SDK spends ~0.4 ms of client CPU per streamed chunk,
raw httpx ~0.27 ms, aiohttp ~0.05 ms; at 12,000 chunks/s one openai process would need several
cores). Each process gets its prompts and send offsets in a JSON file, warms up, says `ready`,
and all start at one instant (`go <time>` on stdin); their timestamps, each from its own start,
are shifted by the start's wall-clock time onto one clock. `--where inproc`: the clients run in
an asyncio loop in the main thread of the server's process.

Clients (`--client openai|httpx|aiohttp`)
-----------------------------------------
openai   the openai SDK's `AsyncOpenAI(...).completions.create(..., stream=True)`, over one shared
         `httpx.AsyncClient` with 1,024 connections allowed, `max_retries=0` (a retry would hide a
         failure), `ignore_eos` sent through `extra_body`. The headline client.
httpx    the same body posted with `httpx.AsyncClient.stream`, SSE lines parsed by hand.
aiohttp  the same with an `aiohttp.ClientSession` (connection limit 1,024), lines parsed by hand.
`--compare inproc,procs1,httpx,aiohttp,direct` (default; `none` for none) adds runs at unlimited
rate that differ from the headline in one respect each: the clients in-process (one event loop in
the server's process), one client process instead of `--client-procs`, a raw httpx client, a
raw aiohttp client, and `direct` = the same requests submitted to the server's AsyncEngine from
an asyncio loop in this process, no HTTP at all (the engine's own ceiling for this workload; same
sampling parameters and detokenization as the HTTP route). Similar figures for openai, httpx and
aiohttp show the client is not the bottleneck; `client CPU` (the client thread's CPU time over
the run's span, `time.thread_time`; the busiest process) says how busy a client event loop was.

Metrics (per run; all times `time.perf_counter` in the client)
--------------------------------------------------------------
wall         first send -> last stream end (after `data: [DONE]`).
output tok/s sum of usage.completion_tokens / wall;  req/s = completed requests / wall.
TTFT         send -> first chunk that carries text (or a finish_reason). The server sends a
             chunk per engine output that has text; a token whose bytes do not yet form
             complete UTF-8 is held back and arrives with the next one.
TPOT         (last token chunk - first token chunk) / (completion_tokens - 1), per request.
ITL          gaps between successive token chunks, pooled over all requests (a chunk carries
             more than one token only when text was held back; tok/chunk is in the notes).
E2E          send -> stream end.  p50 / p99 are linear-interpolated percentiles.
The issue's target for scale: >= 12,000 output tok/s at unlimited rate for Qwen3-0.6B on the H200.

Expected time on an H200 for qwen3-0.6b (estimate): checkpoint ~30 s (once; reused while the
machine stays warm), server load + warm-up ~30-60 s, unlimited-rate runs ~6-12 s each (6 with the
default comparisons), Poisson runs ~ 500 / rate + a few s each (10, 20, 40 req/s: ~95 s), client
processes' start ~1-2 s per run: ~3.5-4.5 min in all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.report import TableReport, markdown_lines, say  # noqa: E402

CLIENTS = ("openai", "httpx", "aiohttp")
WHERES = ("process", "inproc")
COMPARISONS = ("inproc", "procs1", "httpx", "aiohttp", "direct")
CONNECTIONS = 1024
TARGET_TOK_S = 12_000
TARGET_TEXT = ">= 12,000 output tok/s at unlimited rate for Qwen3-0.6B on the H200"
START = time.perf_counter()

# The client side (everything down to `worker_main`) imports neither torch nor jupyter_qwen, so
# the worker process starts quickly and stays small.


# --------------------------------------------------------------------------- client side


class Record:
    """Timestamps of one streamed request (perf_counter seconds)."""

    __slots__ = ("chunks", "end", "error", "first", "gaps", "last", "prompt_tokens", "send",
                 "tokens")

    def __init__(self):
        self.send = self.first = self.last = self.end = None
        self.tokens = self.prompt_tokens = None
        self.chunks = 0
        self.gaps: list[float] = []
        self.error: str | None = None

    def mark(self, now: float) -> None:
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(now - self.last)
        self.last = now
        self.chunks += 1

    def as_dict(self, origin: float) -> dict:
        rel = lambda t: None if t is None else t - origin  # noqa: E731
        return {"send": rel(self.send), "first": rel(self.first), "last": rel(self.last),
                "end": rel(self.end), "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
                "chunks": self.chunks, "gaps": self.gaps, "error": self.error}


def sampling_fields(spec: dict) -> dict:
    """temperature 0 for the greedy runs; nothing for "defaults" runs, whose requests carry no
    sampling field, so the server's defaults (the checkpoint's generation_config) apply."""
    return {} if spec.get("sampling") == "defaults" else {"temperature": 0}


def request_body(spec: dict, prompt: list[int], max_tokens: int) -> dict:
    return {"model": spec["model"], "prompt": prompt, "max_tokens": max_tokens,
            **sampling_fields(spec), "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}


class OpenAIClient:
    def __init__(self, spec: dict):
        import httpx
        import openai

        self.spec = spec
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=CONNECTIONS,
                                max_keepalive_connections=CONNECTIONS),
            timeout=httpx.Timeout(spec["request_timeout"], connect=60.0))
        self.client = openai.AsyncOpenAI(base_url=spec["url"] + "/v1", api_key="EMPTY",
                                         http_client=self.http, max_retries=0,
                                         timeout=spec["request_timeout"])

    async def stream(self, prompt: list[int], max_tokens: int, rec: Record) -> None:
        rec.send = time.perf_counter()
        stream = await self.client.completions.create(
            model=self.spec["model"], prompt=prompt, max_tokens=max_tokens,
            **sampling_fields(self.spec), stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.text or choice.finish_reason:
                    rec.mark(now)
            if chunk.usage is not None:
                rec.tokens = chunk.usage.completion_tokens
                rec.prompt_tokens = chunk.usage.prompt_tokens
        rec.end = time.perf_counter()

    async def close(self) -> None:
        await self.client.close()
        await self.http.aclose()


def sse_line(line: str | bytes, rec: Record, now: float) -> None:
    """Handle one line of a text-completion SSE stream."""
    if isinstance(line, bytes):
        line = line.decode()
    if not line.startswith("data:"):
        return
    data = line[5:].strip()
    if data == "[DONE]":
        return
    event = json.loads(data)
    if "error" in event:
        raise RuntimeError(f"error event in the stream: {event['error']}")
    for choice in event.get("choices") or ():
        if choice.get("text") or choice.get("finish_reason"):
            rec.mark(now)
    usage = event.get("usage")
    if usage:
        rec.tokens = usage["completion_tokens"]
        rec.prompt_tokens = usage["prompt_tokens"]


class HttpxClient:
    def __init__(self, spec: dict):
        import httpx

        self.spec = spec
        self.url = spec["url"] + "/v1/completions"
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=CONNECTIONS,
                                max_keepalive_connections=CONNECTIONS),
            timeout=httpx.Timeout(spec["request_timeout"], connect=60.0),
            headers={"Authorization": "Bearer EMPTY"})

    async def stream(self, prompt: list[int], max_tokens: int, rec: Record) -> None:
        body = request_body(self.spec, prompt, max_tokens)
        rec.send = time.perf_counter()
        async with self.http.stream("POST", self.url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                raise RuntimeError(f"HTTP {response.status_code}: {text[:500]}")
            async for line in response.aiter_lines():
                sse_line(line, rec, time.perf_counter())
        rec.end = time.perf_counter()

    async def close(self) -> None:
        await self.http.aclose()


class AiohttpClient:
    def __init__(self, spec: dict):
        import aiohttp

        self.spec = spec
        self.url = spec["url"] + "/v1/completions"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=spec["request_timeout"]),
            headers={"Authorization": "Bearer EMPTY"})

    async def stream(self, prompt: list[int], max_tokens: int, rec: Record) -> None:
        body = request_body(self.spec, prompt, max_tokens)
        rec.send = time.perf_counter()
        async with self.session.post(self.url, json=body) as response:
            if response.status != 200:
                text = await response.text()
                raise RuntimeError(f"HTTP {response.status}: {text[:500]}")
            async for line in response.content:
                sse_line(line, rec, time.perf_counter())
        rec.end = time.perf_counter()

    async def close(self) -> None:
        await self.session.close()


CLIENT_CLASSES = {"openai": OpenAIClient, "httpx": HttpxClient, "aiohttp": AiohttpClient}


def arrival_offsets(n: int, rate: float, seed: int) -> list[float]:
    """Send times in seconds from the start: all 0 for rate inf, else Poisson arrivals."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


async def _one(client, prompt: list[int], max_tokens: int, rec: Record) -> None:
    try:
        await client.stream(prompt, max_tokens, rec)
    except Exception as error:
        rec.error = f"{type(error).__name__}: {error}"[:1000]
        rec.end = time.perf_counter()


async def run_clients(spec: dict, ready=None) -> dict:
    """Warm the client up (untimed), then send every prompt on schedule; raw records back.

    `ready`, when given, is called after the warm-up and returns the wall-clock time
    (`time.time()`) at which to start, so that several client processes start together.
    """
    raise_fd_limit()
    client = CLIENT_CLASSES[spec["client"]](spec)
    try:
        warm = [Record() for _ in spec["warmup_prompts"]]
        await asyncio.gather(*(_one(client, p, spec["warmup_tokens"], r)
                               for p, r in zip(spec["warmup_prompts"], warm, strict=True)))
        warm_errors = [r.error for r in warm if r.error]
        if ready is not None:
            await asyncio.sleep(max(0.0, ready() - time.time()))
        prompts, max_tokens, offsets = spec["prompts"], spec["max_tokens"], spec["offsets"]
        records = [Record() for _ in prompts]
        tasks = []
        cpu_begin = time.thread_time()
        origin_wall, begin = time.time(), time.perf_counter()
        for prompt, offset, rec in zip(prompts, offsets, records, strict=True):
            delay = begin + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, prompt, max_tokens, rec)))
        await asyncio.gather(*tasks)
        span = time.perf_counter() - begin
        cpu = time.thread_time() - cpu_begin
    finally:
        await client.close()
    return {"records": [r.as_dict(begin) for r in records], "client_cpu_s": cpu,
            "span_s": span, "origin_wall": origin_wall, "warmup_errors": warm_errors,
            "pid": os.getpid()}


def raise_fd_limit() -> None:
    """Hundreds of connections, both ends in one process when the clients run in-process."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = max(soft, min(hard, 1 << 16))
        if wanted > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except Exception:
        pass


def worker_main(spec_path: str, result_path: str) -> None:
    """A client process: warm up, say `ready` on stdout, read `go <time>` on stdin, run."""
    spec = json.loads(Path(spec_path).read_text())

    def ready() -> float:
        print("ready", flush=True)
        word, _, when = sys.stdin.readline().partition(" ")
        if word != "go":
            raise SystemExit("the benchmark did not say go")
        return float(when)

    result = asyncio.run(run_clients(spec, ready))
    Path(result_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- server side


def stamp() -> str:
    return f"[{time.perf_counter() - START:6.1f}s]"


def rate_label(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


@dataclass
class Plan:
    name: str
    rate: float
    client: str
    where: str  # process | inproc | engine
    procs: int = 1  # client processes (where == process)
    headline: bool = False
    sampling: str = "greedy"  # greedy (temperature 0) | defaults (no sampling fields)

    @property
    def where_label(self) -> str:
        return f"process x{self.procs}" if self.where == "process" else self.where


@dataclass
class Report(TableReport):
    out_dir: Path
    env: dict
    args: dict
    server: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)  # runs that could not run at all
    headline: dict = field(default_factory=dict)
    threads_left: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"env": self.env, "args": self.args, "server": self.server, "runs": self.runs,
                "headline": self.headline, "failures": self.failures,
                "failed_requests": sum(r["failed"] for r in self.runs),
                "threads_left": self.threads_left, "target": {
                    "output_tok_per_s": TARGET_TOK_S, "text": TARGET_TEXT},
                "elapsed_s": time.perf_counter() - START}

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "serving.json").write_text(json.dumps(self.as_dict(), indent=1,
                                                              default=str))
        (self.out_dir / "serving.md").write_text(self.markdown())

    def fail(self, name: str, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        say(f"!! {name} failed: {text}")
        traceback.print_exc()
        self.failures.append({"run": name, "error": text,
                              "traceback": traceback.format_exc()[-4000:]})
        self.save()

    def header_lines(self) -> list[str]:
        env, a, s = self.env, self.args, self.server
        lines = [f"date {env['date']}; GPU: {env['gpu']}",
                 "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
                 f"command: {env['command']}",
                 f"workload: {a['num_requests']} requests x {a['input_len']} prompt tokens "
                 f"(ids in [0, {a.get('id_end')}), random.seed({a['seed']})) -> "
                 f"{a['output_len']} output tokens, greedy, ignore_eos, streamed"]
        if s:
            lines.append(f"server: {s.get('model_dir')} options {s.get('options') or '{}'}; "
                         f"loaded in {s.get('load_s', math.nan):.1f} s; "
                         f"{s.get('num_kv_blocks')} KV blocks; "
                         f"max_num_seqs {s.get('max_num_seqs')}")
        return lines

    def headline_line(self) -> str:
        h = self.headline
        if not h:
            return "headline: no unlimited-rate run with the headline client finished"
        verdict = "met" if h["output_tok_per_s"] >= TARGET_TOK_S else "NOT met"
        scope = "" if h["comparable"] else \
            " (the target is for qwen3-0.6b on an H200; this run is not that)"
        line = (f"headline ({h['run']}): {h['output_tok_per_s']:,.0f} output tok/s; target "
                f"{TARGET_TEXT}: {verdict}, {h['output_tok_per_s'] / TARGET_TOK_S:.2f}x of "
                f"target{scope}")
        defaults = h.get("server_defaults")
        if defaults:
            line += (f"\nheadline with server-default sampling ({defaults['run']}, "
                     f"{defaults['sampling'] or 'greedy'}): {defaults['output_tok_per_s']:,.0f} "
                     f"output tok/s = {defaults['ratio_to_greedy']:.3f}x the greedy headline")
        return line

    def table(self) -> list[list[str]]:
        out = [["run", "rate", "client", "where", "done", "errors", "wall s", "req/s",
                "out tok/s", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "ITL p50/p99 ms",
                "client CPU", "notes"]]
        for r in self.runs:
            pair = lambda d: f"{_fmt(d['p50'])} / {_fmt(d['p99'])}"  # noqa: E731
            cpu = r.get("client_cpu_fraction")
            out.append([r["name"], r["rate"], r["client"], r["where"],
                        f"{r['completed']}/{r['requests']}", str(r["failed"]),
                        f"{r['wall_s']:.2f}", f"{r['req_per_s']:.2f}",
                        f"{r['output_tok_per_s']:,.0f}", pair(r["ttft_ms"]), pair(r["tpot_ms"]),
                        pair(r["itl_ms"]), "" if cpu is None else f"{100 * cpu:.0f}%",
                        r["notes"]])
        return out

    def markdown(self) -> str:
        lines = ["# Serving", "", *[f"- {line}" for line in self.header_lines()],
                 f"- {self.headline_line()}", "", *markdown_lines(self.table())]
        lines += ["", "where: process = clients in a separate process (headline), inproc = "
                  "clients in the server's process, engine = AsyncEngine directly, no HTTP "
                  "(ceiling). TTFT: send -> first token chunk; TPOT: (last - first token chunk) "
                  "/ (tokens - 1); ITL: gaps between token chunks; client CPU: client thread CPU "
                  "time / run span. Definitions in benchmarks/serving.py."]
        failed = [(r["name"], e) for r in self.runs for e in r["error_samples"]]
        if failed or self.failures:
            lines += ["", "## Errors", ""]
            lines += [f"- {name}: {e}" for name, e in failed]
            lines += [f"- {f['run']}: {f['error']}" for f in self.failures]
        if self.threads_left:
            lines += ["", f"Non-daemon threads left at the end: {', '.join(self.threads_left)}"]
        return "\n".join(lines) + "\n"

    def closing_lines(self) -> list[str]:
        return [self.headline_line(),
                *(f"ERROR {r['name']}: {e}" for r in self.runs for e in r["error_samples"]),
                *(f"ERROR {f['run']}: {f['error']}" for f in self.failures)]


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 \
        else f"{value:.2f}"


def make_prompts(n: int, length: int, id_end: int, seed: int) -> list[list[int]]:
    """The issue's prompts: `random.seed(seed)`, then ids uniform in [0, id_end)."""
    random.seed(seed)
    return [[random.randrange(id_end) for _ in range(length)] for _ in range(n)]


def warmup_prompts(n: int, length: int, id_end: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(12345 + seed)
    return [[rng.randrange(id_end) for _ in range(length)] for _ in range(n)]


def distribution(values: list[float], scale: float = 1e3) -> dict:
    from benchmarks.common import percentile

    scaled = [v * scale for v in values]
    return {"p50": percentile(scaled, 50), "p90": percentile(scaled, 90),
            "p99": percentile(scaled, 99),
            "mean": sum(scaled) / len(scaled) if scaled else math.nan, "n": len(scaled)}


def summarize(plan: Plan, result: dict, expected_tokens: int, engine_delta: dict | None) -> dict:
    """Figures of one run from the raw per-request records."""
    records = result["records"]
    problems = []
    for index, r in enumerate(records):
        if r["error"] is not None:
            problems.append(f"request {index}: {r['error']}")
        elif r["tokens"] is None:
            problems.append(f"request {index}: no usage in the stream")
        elif r["tokens"] != expected_tokens:
            problems.append(f"request {index}: {r['tokens']} completion tokens, "
                            f"expected {expected_tokens}")
    ok = [r for r in records if r["error"] is None and r["tokens"] is not None]
    timed = [r for r in records if r["send"] is not None and r["end"] is not None]
    begin = min((r["send"] for r in timed), default=0.0)
    end = max((r["end"] for r in timed), default=0.0)
    wall = max(end - begin, 1e-9)
    tokens = sum(r["tokens"] for r in ok)
    firsts = [r for r in ok if r["first"] is not None]
    ttft = [r["first"] - r["send"] for r in firsts]
    tpot = [(r["last"] - r["first"]) / (r["tokens"] - 1) for r in firsts if r["tokens"] > 1]
    itl = [g for r in ok for g in r["gaps"]]
    e2e = [r["end"] - r["send"] for r in ok]
    sends = sorted(r["send"] for r in timed)
    chunks = [r["chunks"] for r in ok]
    completed = len(records) - len(problems)
    run = {"name": plan.name, "rate": rate_label(plan.rate), "client": plan.client,
           "sampling": plan.sampling,
           "where": plan.where_label, "client_procs": result.get("procs"),
           "start_skew_s": result.get("start_skew_s"), "requests": len(records),
           "completed": completed, "failed": len(problems),
           "error_samples": problems[:10],
           "all_exact": not problems, "expected_tokens_each": expected_tokens,
           "completion_tokens": tokens,
           "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in ok),
           "wall_s": wall, "arrival_span_s": sends[-1] - sends[0] if sends else 0.0,
           "req_per_s": completed / wall, "output_tok_per_s": tokens / wall,
           "ttft_ms": distribution(ttft), "tpot_ms": distribution(tpot),
           "itl_ms": distribution(itl), "e2e_ms": distribution(e2e),
           "chunks_per_request": sum(chunks) / len(chunks) if chunks else math.nan,
           "client_cpu_s": result.get("client_cpu_s"),
           "client_cpu_fraction": result.get("client_cpu_fraction"),
           "warmup_errors": result.get("warmup_errors", []), "engine": engine_delta or {}}
    notes = []
    if plan.where == "engine":
        notes.append("no HTTP: AsyncEngine.generate in this process")
    if plan.sampling == "defaults":
        notes.append("no sampling fields: server defaults")
    if not math.isinf(plan.rate):
        notes.append(f"offered {plan.rate:g} req/s, sent over {run['arrival_span_s']:.1f} s")
    else:
        notes.append(f"all sent within {run['arrival_span_s']:.2f} s")
    if engine_delta:
        notes.append(f"preempt {engine_delta.get('num_preemptions', 0)}, prefix hits "
                     f"{engine_delta.get('prefix_cache_hits', 0)} tok")
    if chunks:
        notes.append(f"{tokens / max(sum(chunks), 1):.2f} tok/chunk")
    run["notes"] = "; ".join(notes)
    return run


# --------------------------------------------------------------------------- running


def engine_counters(server) -> dict | None:
    try:
        stats = server.ctx.engine.call(lambda e: e.stats())
    except Exception:
        return None
    return {k: getattr(stats, k) for k in ("num_preemptions", "prefix_cache_hits",
                                            "prefix_cache_queries", "computed_tokens_total",
                                            "generation_tokens_total", "prompt_tokens_total")}


def reset_prefix_cache(server) -> bool:
    try:
        server.ctx.engine.call(lambda e: e.block_manager.reset_prefix_cache())
        return True
    except Exception as error:
        say(f"    (could not empty the prefix cache: {error})")
        return False


def run_in_process(spec: dict) -> dict:
    return merge([asyncio.run(run_clients(spec))])


def run_in_workers(specs: list[dict], timeout: float) -> dict:
    """One client process per spec, started together; their records merged in request order."""
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="jupyter_qwen_serving_") as folder:
        try:
            for index, spec in enumerate(specs):
                spec_path = Path(folder) / f"spec{index}.json"
                spec_path.write_text(json.dumps(spec))
                procs.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path),
                     str(Path(folder) / f"result{index}.json")],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
                    env=_child_env()))
            deadline = time.monotonic() + 180
            for index, proc in enumerate(procs):
                line = _readline(proc, deadline)
                if line.strip() != "ready":
                    raise RuntimeError(f"client process {index} did not get ready "
                                       f"(exit code {proc.poll()}, said {line!r})")
            go = time.time() + 0.1 + 0.01 * len(procs)
            for proc in procs:
                proc.stdin.write(f"go {go!r}\n")
                proc.stdin.close()
            deadline = time.monotonic() + timeout
            for index, proc in enumerate(procs):
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                if code != 0:
                    raise RuntimeError(f"client process {index} exited with {code}")
            return merge([json.loads((Path(folder) / f"result{index}.json").read_text())
                          for index in range(len(procs))])
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()


def _child_env() -> dict:
    """This process's environment, with its import path (wherever the wheels came from)."""
    paths = [str(ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep), *sys.path]
    unique = list(dict.fromkeys(p for p in paths if p))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(unique)}


def _readline(proc: subprocess.Popen, deadline: float) -> str:
    import select

    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
        return ""
    return proc.stdout.readline()


def merge(results: list[dict]) -> dict:
    """Records of client processes (request i went to process i % len(results)), on one clock:
    each process reports times from its own start, shifted here by its start's wall time."""
    base = min(r["origin_wall"] for r in results)
    count = sum(len(r["records"]) for r in results)
    records: list[dict | None] = [None] * count
    for worker, result in enumerate(results):
        shift = result["origin_wall"] - base
        for j, rec in enumerate(result["records"]):
            for key in ("send", "first", "last", "end"):
                if rec[key] is not None:
                    rec[key] += shift
            records[worker + j * len(results)] = rec
    return {"records": records, "client_cpu_s": sum(r["client_cpu_s"] for r in results),
            "client_cpu_fraction": max(r["client_cpu_s"] / max(r["span_s"], 1e-9)
                                       for r in results),
            "span_s": max(r["span_s"] + r["origin_wall"] - base for r in results),
            "start_skew_s": max(r["origin_wall"] for r in results) - base,
            "warmup_errors": [e for r in results for e in r["warmup_errors"]],
            "procs": len(results)}


async def direct_run(async_engine, prompts: list[list[int]], max_tokens: int) -> dict:
    """The same requests straight into the AsyncEngine: the ceiling without HTTP."""
    from jupyter_qwen.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    records = [Record() for _ in prompts]

    async def one(prompt: list[int], rec: Record) -> None:
        rec.send = time.perf_counter()
        rec.tokens, rec.prompt_tokens = 0, len(prompt)
        try:
            async for output in async_engine.generate(prompt, params):
                now = time.perf_counter()
                if output.new_token_ids:
                    rec.mark(now)
                    rec.tokens += len(output.new_token_ids)
        except Exception as error:
            rec.error = f"{type(error).__name__}: {error}"
        rec.end = time.perf_counter()

    cpu_begin = time.thread_time()
    begin = time.perf_counter()
    await asyncio.gather(*(one(p, r) for p, r in zip(prompts, records, strict=True)))
    span = time.perf_counter() - begin
    cpu = time.thread_time() - cpu_begin
    return {"records": [r.as_dict(begin) for r in records], "client_cpu_s": cpu,
            "client_cpu_fraction": cpu / max(span, 1e-9), "span_s": span}


def execute(plan: Plan, server, prompts: list[list[int]], args: argparse.Namespace,
            report: Report) -> dict | None:
    say(f"{stamp()} run {plan.name}: rate {rate_label(plan.rate)}, client {plan.client}, "
        f"{plan.where_label}, {len(prompts)} requests")
    reset_prefix_cache(server)
    before = engine_counters(server)
    offsets = arrival_offsets(len(prompts), plan.rate, args.seed)
    procs = plan.procs if plan.where == "process" else 1
    specs = [{"url": server.root_url, "model": server.served_model_name,
              "prompts": prompts[w::procs], "offsets": offsets[w::procs],
              "max_tokens": args.output_len, "client": plan.client,
              "request_timeout": args.request_timeout,
              "warmup_prompts": warmup_prompts(args.client_warmup, min(16, args.input_len),
                                               args.id_end, seed=w),
              "warmup_tokens": 2, "sampling": plan.sampling} for w in range(procs)]
    try:
        if plan.where == "engine":
            result = asyncio.run(direct_run(server.ctx.engine, prompts, args.output_len))
        elif plan.where == "inproc":
            result = run_in_process(specs[0])
        else:
            result = run_in_workers(specs, args.run_timeout)
    except Exception as error:
        report.fail(plan.name, error)
        return None
    after = engine_counters(server)
    delta = {k: after[k] - before[k] for k in after} if before and after else None
    run = summarize(plan, result, args.output_len, delta)
    report.runs.append(run)
    report.save()
    say(f"    {run['completed']}/{run['requests']} ok, {run['failed']} failed; "
        f"{run['output_tok_per_s']:,.0f} out tok/s, {run['req_per_s']:.2f} req/s, "
        f"wall {run['wall_s']:.2f} s; TTFT p50 {_fmt(run['ttft_ms']['p50'])} / p99 "
        f"{_fmt(run['ttft_ms']['p99'])} ms; TPOT p50 {_fmt(run['tpot_ms']['p50'])} / p99 "
        f"{_fmt(run['tpot_ms']['p99'])} ms; {run['notes']}")
    for problem in run["error_samples"]:
        say(f"    !! {problem}")
    return run


def make_plans(args: argparse.Namespace) -> list[Plan]:
    procs = args.client_procs if args.where == "process" else 1
    main_runs = [Plan(f"rate-{rate_label(r)}", r, args.client, args.where, procs,
                      headline=math.isinf(r)) for r in args.rates]
    compare = []
    for item in args.compare:
        if item == "direct":
            compare.append(Plan("engine-direct", math.inf, "none", "engine", 0))
        elif item == "inproc" and args.where != "inproc":
            compare.append(Plan(f"inf-{args.client}-inproc", math.inf, args.client, "inproc"))
        elif item == "procs1" and procs != 1:
            compare.append(Plan(f"inf-{args.client}-1proc", math.inf, args.client, "process"))
        elif item in CLIENTS and item != args.client:
            compare.append(Plan(f"inf-{item}", math.inf, item, args.where, procs))
    plans: list[Plan] = []
    for run in main_runs:
        plans.append(run)
        if run.headline and "defaults" in args.sampling:
            plans.append(Plan(f"{run.name}-server-defaults", run.rate, run.client, run.where,
                              run.procs, sampling="defaults"))
        if math.isinf(run.rate) and compare:
            plans += compare
            compare = []
    return plans + compare


def parse_args(argv: list[str]) -> argparse.Namespace:
    from benchmarks.common import engine_options, with_kernel_options

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default=None,
                        help="tiny | qwen3-0.6b | qwen3-1.7b | qwen3-4b (default qwen3-0.6b; "
                             "quick: tiny)")
    parser.add_argument("--model-dir", default=None,
                        help="checkpoint folder; created with make_tiny_qwen3 when it holds none")
    parser.add_argument("--num-requests", type=int, default=None, help="default 500 (quick 16)")
    parser.add_argument("--input-len", type=int, default=None, help="default 512 (quick 32)")
    parser.add_argument("--output-len", type=int, default=None, help="default 128 (quick 8)")
    parser.add_argument("--rates", default=None,
                        help="comma list of req/s, 'inf' = all at once (default inf,10,20,40; "
                             "quick: inf,20)")
    parser.add_argument("--client", default="openai", choices=CLIENTS)
    parser.add_argument("--where", default="process", choices=WHERES,
                        help="clients in a separate process (default) or in this one")
    parser.add_argument("--client-procs", type=int, default=None,
                        help="client processes for --where process (default 4; quick 2)")
    parser.add_argument("--compare", default=",".join(COMPARISONS),
                        help="extra unlimited-rate runs: inproc, procs1, httpx, aiohttp, openai, "
                             "direct; 'none' for none")
    parser.add_argument("--sampling", default=None,
                        help="greedy and/or defaults: 'defaults' adds, beside the unlimited-rate "
                             "headline run, the same run whose requests carry no sampling "
                             "fields (the server's defaults apply) (default greedy,defaults; "
                             "quick: greedy)")
    parser.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="EngineConfig / serve() option, repeatable")
    parser.add_argument("--seed", type=int, default=0, help="prompt and arrival seed")
    parser.add_argument("--id-end", type=int, default=10000, help="token ids in [0, id_end)")
    parser.add_argument("--warmup-requests", type=int, default=None,
                        help="untimed requests (in-process) after the server starts, "
                             "input-len tokens, 8 out each (default 256; quick 4)")
    parser.add_argument("--client-warmup", type=int, default=4,
                        help="untimed 2-token requests each client makes before its run")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--run-timeout", type=float, default=600.0,
                        help="seconds a client process may take for one run")
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="torch threads on CPU (default 1)")
    parser.add_argument("--out", default=None, help="output folder when $OUT is not set")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"shape": ("tiny", "qwen3-0.6b"), "num_requests": (16, 500),
                "input_len": (32, 512), "output_len": (8, 128), "rates": ("inf,20", "inf,10,20,40"),
                "warmup_requests": (4, 256), "client_procs": (2, 4),
                "sampling": ("greedy", "greedy,defaults")}
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.sampling = [m.strip() for m in args.sampling.split(",") if m.strip()]
    if any(m not in ("greedy", "defaults") for m in args.sampling):
        parser.error(f"--sampling takes greedy and/or defaults, got {args.sampling!r}")
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates wants numbers or inf, got {args.rates!r}")
    if not args.rates or any(not r > 0 for r in args.rates):
        parser.error("--rates wants positive numbers or inf")
    args.compare = [] if args.compare in ("", "none") else \
        [c.strip() for c in args.compare.split(",") if c.strip()]
    bad = [c for c in args.compare if c not in COMPARISONS + CLIENTS]
    if bad:
        parser.error(f"unknown --compare item(s): {', '.join(bad)}")
    if min(args.num_requests, args.input_len, args.output_len, args.client_procs) < 1:
        parser.error("--num-requests, --input-len, --output-len and --client-procs must be "
                     "positive")
    args.opts = with_kernel_options(engine_options(args.engine_opt, parser))
    return args


def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "triton", "fastapi", "starlette", "uvicorn", "pydantic",
                 "openai", "httpx", "aiohttp"):
        try:
            out[name] = metadata.version(name)
        except Exception:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> dict:
    global START
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        worker_main(argv[1], argv[2])
        return {}
    START = time.perf_counter()
    args = parse_args(argv)
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.cpu_threads)
    try:
        return _main(args, argv, device)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, argv: list[str], device) -> dict:
    import jupyter_qwen
    from benchmarks.common import environment
    from benchmarks.throughput import ensure_checkpoint, usable_id_high

    default_out = ROOT / "out" / "serving"
    out_dir = Path(os.environ.get("OUT") or args.out or default_out)
    env = environment(device, ["benchmarks/serving.py", *argv]) | {"versions": versions()}
    report = Report(out_dir, env, {k: v for k, v in vars(args).items() if k != "rates"}
                    | {"rates": [rate_label(r) for r in args.rates]})
    for line in report.header_lines():
        say(line)
    model_dir = ensure_checkpoint(args.model_dir, args.shape)
    args.id_end = min(args.id_end, usable_id_high(model_dir, args.id_end) + 1)
    report.args |= {"model_dir": str(model_dir), "id_end": args.id_end}
    prompts = make_prompts(args.num_requests, args.input_len, args.id_end, args.seed)

    say(f"{stamp()} starting the server {args.opts or ''}")
    begin = time.perf_counter()
    server = None
    try:
        server = jupyter_qwen.serve(str(model_dir), progress=False, **args.opts)
        load_s = time.perf_counter() - begin
        stats = server.stats()
        report.server = {"model_dir": str(model_dir), "options": args.opts, "load_s": load_s,
                         "url": server.url, "num_kv_blocks": stats.get("num_kv_blocks"),
                         "max_model_len": stats.get("max_model_len"),
                         "max_num_seqs": server.config.max_num_seqs,
                         "default_sampling": server.ctx.default_sampling,
                         "kv_cache_bytes": stats.get("kv_cache_bytes")}
        say(f"    ready in {load_s:.1f} s at {server.url}; {stats.get('num_kv_blocks')} KV "
            f"blocks, max_num_seqs {server.config.max_num_seqs}")
        if args.warmup_requests:
            begin = time.perf_counter()
            warm = run_in_process({
                "url": server.root_url, "model": server.served_model_name, "prompts":
                warmup_prompts(args.warmup_requests, args.input_len, args.id_end, seed=1000),
                "max_tokens": 8, "client": "aiohttp",
                "request_timeout": args.request_timeout, "warmup_prompts": [],
                "warmup_tokens": 2, "offsets": [0.0] * args.warmup_requests})
            bad = [r["error"] for r in warm["records"] if r["error"]]
            report.server["warmup_s"] = time.perf_counter() - begin
            report.server["warmup_errors"] = bad[:10]
            say(f"    warm-up: {args.warmup_requests} requests in "
                f"{report.server['warmup_s']:.1f} s" + (f"; {len(bad)} failed: {bad[0]}"
                                                        if bad else ""))
        report.save()
        for plan in make_plans(args):
            run = execute(plan, server, prompts, args, report)
            if run and plan.headline:
                report.headline = {"run": plan.name, "output_tok_per_s": run["output_tok_per_s"],
                                   "target_tok_per_s": TARGET_TOK_S,
                                   "met": run["output_tok_per_s"] >= TARGET_TOK_S,
                                   "comparable": args.shape == "qwen3-0.6b"
                                   and device.type == "cuda"}
                report.save()
            elif run and plan.sampling == "defaults" and report.headline:
                report.headline["server_defaults"] = {
                    "run": plan.name, "output_tok_per_s": run["output_tok_per_s"],
                    "sampling": report.server.get("default_sampling"),
                    "ratio_to_greedy": run["output_tok_per_s"]
                    / report.headline["output_tok_per_s"]}
                report.save()
    except Exception as error:
        report.fail("server", error)
    finally:
        if server is not None:
            say(f"{stamp()} stopping the server")
            server.stop()
    report.threads_left = [t.name for t in threading.enumerate()
                           if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    report.save()
    report.print_table()
    if report.threads_left:
        say(f"non-daemon threads still alive: {', '.join(report.threads_left)}")
    say(f"{stamp()} done; wrote {out_dir / 'serving.json'} and {out_dir / 'serving.md'}")
    return report.as_dict()


if __name__ == "__main__":
    result = main()
    if result and (result["failed_requests"] or result["failures"]):
        sys.exit(1)
