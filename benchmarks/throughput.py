"""Throughput of our engine against transformers on the same workloads, and against the floor.

    python benchmarks/throughput.py --shape qwen3-0.6b        # everything (~9-10 min, H200)
    # or in two calls that each fit a 10-minute limit:
    python benchmarks/throughput.py --shape qwen3-0.6b --peers hf_generate,hf_static
    python benchmarks/throughput.py --shape qwen3-0.6b --workloads w256 --peers hf_batch
    python benchmarks/throughput.py --shape tiny --quick      # CPU smoke run, < 1 min
    python benchmarks/throughput.py --shape qwen3-0.6b --workloads w256,batch1 --peers none \
        --sampling greedy,qwen3,penalties,seeded              # sampling beside greedy
    python benchmarks/throughput.py --shape qwen3-0.6b --workloads w256,batch1 --peers none \
        --structured                                          # JSON schemas beside greedy

Writes `throughput.json` (every number) and `throughput.md` (the table) to $OUT when set, else
to `--out` (default out/throughput, git-ignored); both are rewritten after every measured part,
so a run cut short keeps what it finished. The checkpoint is `make_tiny_qwen3(dir, shape)`:
random weights of the real shape, bf16; our engine and transformers load the same folder
(`--model-dir`, default $TMPDIR/jupyter_qwen_bench_<shape>, reused when it holds one).
`--engine-opt key=value` (repeatable) passes EngineConfig options to our engine; `kernels.NAME`
keys set its kernel options (e.g. `--engine-opt kernels.pdl=off`).

Workloads (every system greedy, EOS ignored, so all produce exactly the requested lengths)
-----------------------------------------------------------------------------------------
w256     nano-vllm's bench.py request set, reproduced exactly: `random.seed(0)`; for each of
         256 requests draw its input length `randint(100, 1024)` then its ids, each
         `randint(0, 10000)` (inclusive, as nano-vllm does); after all prompts, draw every
         request's output length `randint(100, 1024)` in request order. That gives 142,827
         prompt and 133,966 output tokens (nano-vllm's published total). nano-vllm samples at
         temperature 0.6; we use greedy for ours and the peers alike, so tokens can be checked.
         One warm-up generate of a few short requests, then one timed `LLM.generate` of all
         256; throughput = output tokens / wall time including prefill.
batch1   one request, 128 prompt tokens, 512 output tokens. Wall tok/s (512 / total time) and
         decode tok/s = 511 / (time after the first token). Ours: `engine.add_request` +
         `step()`, first token timed at the step that returns it; the median of 5 runs.
         transformers: decode time = T(512 new tokens) - T(1 new token), median of 3 runs of
         the latter.
batch64  64 requests of 128 random tokens, 256 output tokens each (one static shape, so the
         compiled static-cache peer runs it as is).
prefix   256 requests: one shared 2,048-token random prefix + 32 unique random tokens each,
         128 new tokens each, all submitted at once; our engine only, twice in fresh engines:
         prefix caching on and off. TTFT = submit -> step that returns the first token; p50/p99
         and total throughput; ratio = TTFT p50 off / on.
Token ids are capped below the tokenizer's added tokens for small vocabularies (tiny shape).

Expected time on an H200 for qwen3-0.6b (estimates, not yet measured): checkpoint ~30 s
(once; reused while the machine stays warm), ceilings ~5 s, our engine ~1.5-2.5 min (three
engine loads with warm-up, w256, batch64, batch1, prefix on/off), hf_generate ~1.5-2 min (w256 in
4 batches is most of it), hf_static ~2-3 min (two torch.compile runs, one per shape),
hf_batch ~3 min (w256 at ~900 tok/s ~150 s, plus CUDA-graph warm-up).

Sampling (`--sampling greedy,qwen3,penalties,seeded`; default greedy only)
-------------------------------------------------------------------------
Each mode besides greedy runs our engine's w256 / batch64 / batch1 again in the same engine,
right after that workload's greedy run, and is printed beside it with the ratio to greedy
("Sampling beside greedy"; rows "ours, <mode>" carry that ratio in the ours/peer column).
qwen3 = Qwen3's shipped generation_config.json (temperature 0.6, top-k 20, top-p 0.95);
penalties = qwen3 + presence_penalty 1.5 + repetition_penalty 1.05 (Qwen's advice against
repetition); seeded = qwen3 with every request seeded (seed = its index). EOS ignored as above.
The engine is warmed up with every chosen mode before timing. Must-show ratios (issue #14, H200,
qwen3-0.6b, W256): qwen3 >= 0.95, penalties >= 0.90, seeded >= 0.93; batch1 qwen3 >= 0.95.

Structured output (`--structured`, the same as adding `structured` to `--sampling`)
----------------------------------------------------------------------------------
Runs w256 / batch64 / batch1 again, greedy, with every request carrying its own JSON schema
(benchmarks/structured.py `request_schema(index)`: distinct names and enum values, an array
and a free string last, so the grammar masks every step of a random-weight output), beside
the unconstrained greedy run in the same engine. Before the timed run the workload's schemas
are compiled into the engine's grammar cache (two workers, as the server compiles each request
before queueing it); that compile time is reported apart ("compile" rows and
runs["ours/<workload>/structured_compile"]). The first requests' outputs are replayed through
a fresh matcher of their schema (reported "grammar check"). Also reported: the first-request
compile time of a 20-field schema (the compiler's vocabulary set-up apart, then one cold
compile and the median of 5 distinct ones). Must-show (issue #15, H200): w256 structured
>= 0.90x greedy, batch1 structured >= 0.90x greedy.

Peers (transformers, same folder, bf16 on GPU / float32 on CPU, attn_implementation="sdpa",
each in try/except, memory freed between them; EOS is disabled by setting
`generation_config.eos_token_id = None`, which is exactly `ignore_eos`: `min_new_tokens` would
instead mask EOS out of the logits and change greedy tokens wherever EOS is the argmax)
---------------------------------------------------------------------------------------------
hf_generate  `model.generate`, default dynamic cache, greedy. batch1 / batch64: as is.
             w256 (adapted): requests sorted by output length into batches of 64 (`--hf-batch`),
             left padded; each batch generates its longest output; only each request's own
             output tokens count (the raw rate, wasted tokens included, is in the notes).
             Sorting by output length uses knowledge a server would not have: it favours the peer.
hf_static    `generate(..., cache_implementation="static")`. On CUDA transformers 5 compiles the
             decode forward itself (`torch.compile(mode="reduce-overhead")`, CUDA graphs, via
             `get_compiled_call`); prefill stays eager. Three identical calls: the first compiles
             (its excess over the third is reported as compile time), the third is timed.
             Runs batch1 and batch64. On CPU nothing is compiled.
hf_batch     transformers' continuous batching: `model.init_continuous_batching(...)`, `warmup()`,
             `start()`, `add_request(ids, max_new_tokens=own length)` for every request, results
             collected until all finish (what `generate_batch` does internally, but with each
             request's own length: `generate_batch` takes one max_new_tokens for all). If that
             path fails before timing, falls back to `generate_batch` with the longest length and
             counts only useful tokens (marked adapted). Attention: "sdpa" as loaded (5.x CB
             accepts sdpa / paged|eager / flash); w256 only.
`--peer-limit-seconds S` stops hf_generate (after the batch that crosses S) or hf_batch (at S)
early; such figures are marked "partial" (hf_batch: finished requests only, a lower bound).
Each peer's greedy tokens are compared with ours for the first requests: MATCH, or MISMATCH
with the first divergent position (bf16 on GPU can diverge late; that is reported, not fatal).

Physical floor (ceilings measured at the start of the same run)
----------------------------------------------------------------
BW = device-to-device copy bandwidth, bytes read + written (1 GiB -> 1 GiB, median of 20);
MM = bf16 matmul rate, 8192^3 on random normal data (median of 20, 3 rotating input pairs).
Model counts (L layers, d hidden, I intermediate, H / Hk heads, D head dim, V vocab, b=2 bytes):
  P_lin  = L (d H D + 2 d Hk D + H D d + 3 d I)        every linear layer
  P_head = V d                                         lm_head (= embedding matrix, tied)
  P_norm = L (2 d + 2 D) + d
  W      = b (P_lin + P_head + P_norm)                 weight bytes one forward step reads
  kv     = 2 L Hk D b                                  KV bytes per token of context
Decode step over n running sequences with c_i cached tokens each:
  bytes = W + n d b (embedding rows) + kv * sum(c_i) (KV read) + kv * n (KV written)
  flops = 2 (P_lin + P_head) n + 4 L H D sum(c_i + 1)
  time  = max(bytes / BW, flops / MM)
Prefill of prompts p_i (q_i new over k_i cached tokens), one lump:
  flops = 2 P_lin sum(q_i) + 2 P_head n + 4 L H D sum(q_i k_i + q_i (q_i + 1) / 2)
  bytes = W + sum(q_i) (d b + kv) + kv sum(k_i);    time = max(bytes / BW, flops / MM)
Workload floor: every request starts together and leaves when its output is done (max_num_seqs
>= requests); the prefill gives each request its first token; decode step k = 1 .. max(out)-1
runs the requests with out_i > k, c_i = in_i + k - 1. floor = prefill + sum of decode steps;
floor tok/s = output tokens / floor; decode-only floor tok/s = (out - n) / decode part.
Prefix workload: per-sequence KV reads (no cross-request sharing in attention); with caching
the shared 2,048 tokens are prefilled once (k_i = 2048 for all but the first request).

Numbers for Qwen3-0.6B at BW = 4.26 TB/s, MM = 800 TFLOP/s (this script's formulas):
  P_lin 440.4 M, P_head 155.6 M, P_norm 65.5 k -> W = 1.192 GB; kv = 114,688 B/token.
  batch1, weights only: 4.26e12 / 1.192e9 = 3,574 tok/s (the measured anchor; it leaves KV out).
  batch1 with KV (context 128 .. 639, mean 383 tokens = 44 MB a step): 3,446 tok/s.
  w256: 1,023 decode steps; weights 1.22 TB + KV reads 13.84 TB -> 15.09 TB of decode traffic
  (the anchor's "KV reads ~15.2 TB" matches this total, weights included, not the KV alone);
  decode 3.54 s + prefill 1.37e14 FLOP = 0.17 s -> floor 3.71 s = 36,100 output tok/s. The
  anchors "~4.1 s" and "~35,000 tok/s" disagree with each other (133,966 / 4.1 s = 32,700);
  ours sits between them, the difference being rounding of the KV count and of MM.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    Ceilings,
    Floor,
    ModelCost,
    engine_options,
    environment,
    first_divergence,
    free_device_memory,
    measure_ceilings,
    memory_in_use,
    percentile,
    schedule_floor,
    synchronize,
    with_kernel_options,
)
from benchmarks.report import TableReport, markdown_lines, say
from benchmarks.structured import (
    STRUCTURED,
    follows_grammar,
    precompile,
    structured_outputs,
    twenty_field_compile,
)

ALL_WORKLOADS = ("w256", "batch1", "batch64", "prefix")
ALL_SAMPLINGS = ("greedy", "qwen3", "penalties", "seeded", STRUCTURED)
QWEN3_DEFAULTS = {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
SAMPLING_FIELDS = {"greedy": {"temperature": 0.0}, "qwen3": QWEN3_DEFAULTS,
                   "penalties": {**QWEN3_DEFAULTS, "presence_penalty": 1.5,
                                 "repetition_penalty": 1.05},
                   "seeded": QWEN3_DEFAULTS, STRUCTURED: {"temperature": 0.0}}
ALL_PEERS = ("hf_generate", "hf_static", "hf_batch")
PEER_WORKLOADS = {"hf_generate": ("w256", "batch1", "batch64"),
                  "hf_static": ("batch1", "batch64"), "hf_batch": ("w256",)}
CHECKED_REQUESTS = 3
START = time.perf_counter()
BATCH1_REPEATS = 5  # batch1 runs of each mode; the median one is reported


@dataclass(frozen=True)
class Sizes:
    w256_requests: int = 256
    w256_in: tuple[int, int] = (100, 1024)
    w256_out: tuple[int, int] = (100, 1024)
    id_high: int = 10000
    batch1_in: int = 128
    batch1_out: int = 512
    batch64_requests: int = 64
    batch64_in: int = 128
    batch64_out: int = 256
    prefix_requests: int = 256
    prefix_shared: int = 2048
    prefix_unique: int = 32
    prefix_out: int = 128
    hf_batch: int = 64
    warmup_requests: int = 4
    warmup_in: int = 32
    warmup_out: int = 16


FULL = Sizes()
QUICK = Sizes(w256_requests=6, w256_in=(8, 40), w256_out=(4, 16), batch1_in=16, batch1_out=16,
              batch64_requests=4, batch64_in=16, batch64_out=8, prefix_requests=6,
              prefix_shared=64, prefix_unique=8, prefix_out=4, hf_batch=4, warmup_requests=2,
              warmup_in=8, warmup_out=4)


@dataclass
class Workload:
    name: str
    prompts: list[list[int]]
    out_lens: list[int]
    cached_lens: list[int] | None = None  # for the floor of the prefix-cached run

    @property
    def output_tokens(self) -> int:
        return sum(self.out_lens)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def make_workloads(sizes: Sizes, id_high: int) -> dict[str, Workload]:
    """All workloads, each from its own seeded stream (w256 exactly as nano-vllm draws it)."""
    random.seed(0)
    lo, hi = sizes.w256_in
    prompts = [[random.randint(0, id_high) for _ in range(random.randint(lo, hi))]
               for _ in range(sizes.w256_requests)]
    outs = [random.randint(*sizes.w256_out) for _ in range(sizes.w256_requests)]
    w256 = Workload("w256", prompts, outs)
    rng = random.Random(1)
    batch1 = Workload("batch1", [[rng.randint(0, id_high) for _ in range(sizes.batch1_in)]],
                      [sizes.batch1_out])
    rng = random.Random(2)
    batch64 = Workload("batch64", [[rng.randint(0, id_high) for _ in range(sizes.batch64_in)]
                                   for _ in range(sizes.batch64_requests)],
                       [sizes.batch64_out] * sizes.batch64_requests)
    rng = random.Random(3)
    shared = [rng.randint(0, id_high) for _ in range(sizes.prefix_shared)]
    prompts = [shared + [rng.randint(0, id_high) for _ in range(sizes.prefix_unique)]
               for _ in range(sizes.prefix_requests)]
    prefix = Workload("prefix", prompts, [sizes.prefix_out] * sizes.prefix_requests)
    return {"w256": w256, "batch1": batch1, "batch64": batch64, "prefix": prefix}


def warmup_workload(sizes: Sizes, id_high: int) -> Workload:
    """A few short requests of varied lengths (odd, even, multiple of 16) for JIT warm-up."""
    rng = random.Random(99)
    lengths = [sizes.warmup_in * (1 + i) + i for i in range(sizes.warmup_requests)]
    return Workload("warmup", [[rng.randint(0, id_high) for _ in range(n)] for n in lengths],
                    [sizes.warmup_out] * sizes.warmup_requests)


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    workload: str
    system: str
    metric: str
    value: float
    unit: str
    same_workload: str = "same"
    notes: str = ""
    ratio: float | None = None  # speed of ours over this row (>1: ours faster)
    floor_fraction: float | None = None


@dataclass
class Report(TableReport):
    out_dir: Path
    env: dict
    args: dict
    ceilings: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    floors: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    token_checks: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    tokens: dict = field(default_factory=dict)  # (system, workload) -> first requests' tokens
    sampling: list[dict] = field(default_factory=list)  # sampled runs beside greedy

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def error(self, system: str, workload: str, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        say(f"!! {system} / {workload} failed: {text}")
        traceback.print_exc()
        self.errors.append({"system": system, "workload": workload, "error": text,
                            "traceback": traceback.format_exc()[-4000:]})
        self.save()

    def as_dict(self) -> dict:
        return {"env": self.env, "args": self.args, "ceilings": self.ceilings,
                "model": self.model, "floors": self.floors, "runs": self.runs,
                "rows": [asdict(r) for r in self.rows], "token_checks": self.token_checks,
                "errors": self.errors, "elapsed_s": time.perf_counter() - START,
                "sampling": self.sampling,
                "first_tokens": {f"{system}/{name}": tokens
                                 for (system, name), tokens in self.tokens.items()}}

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "throughput.json").write_text(json.dumps(self.as_dict(), indent=1,
                                                                 default=_jsonable))
        (self.out_dir / "throughput.md").write_text(self.markdown())

    def header_lines(self) -> list[str]:
        env, ce = self.env, self.ceilings
        lines = [f"date {env['date']}; GPU: {env['gpu']}",
                 f"torch {env['torch']}, transformers {env['transformers']}, "
                 f"triton {env.get('triton')}, python {env['python']}",
                 f"command: {env['command']}"]
        if ce:
            lines.append(f"ceilings: copy {ce['copy_bytes_per_s'] / 1e12:.3f} TB/s (read+write), "
                         f"matmul {ce['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s "
                         f"({ce['matmul_size']}^3)")
        return lines

    def table(self) -> list[list[str]]:
        out = [["workload", "system", "metric", "figure", "ours/peer", "of floor", "same/adapted",
                "notes"]]
        order = {name: index for index, name in enumerate(ALL_WORKLOADS)}
        for r in sorted(self.rows, key=lambda r: order.get(r.workload, len(order))):
            out.append([r.workload, r.system, r.metric, f"{_fmt(r.value)} {r.unit}",
                        "" if r.ratio is None else f"{r.ratio:.2f}x",
                        "" if r.floor_fraction is None else f"{100 * r.floor_fraction:.1f}%",
                        r.same_workload, r.notes])
        return out

    def markdown(self) -> str:
        lines = ["# Throughput", "", *[f"- {line}" for line in self.header_lines()], "",
                 *markdown_lines(self.table())]
        lines += ["", "ours/peer: speed of our engine over that row (tok/s ratio, or TTFT "
                  "peer/ours); >1 means ours is faster. Prefix rows compare caching on vs off.",
                  "of floor: figure / physical floor figure (see the script's docstring)."]
        if self.sampling:
            lines += ["", "## Sampling beside greedy (same engine, same run)", "",
                      *self.sampling_lines()]
        if self.token_checks:
            lines += ["", "## Token checks", ""]
            lines += [f"- {c['text']}" for c in self.token_checks]
        if self.errors:
            lines += ["", "## Errors", ""]
            lines += [f"- {e['system']} / {e['workload']}: {e['error']}" for e in self.errors]
        return "\n".join(lines) + "\n"

    def sampling_lines(self) -> list[str]:
        params = {name: ", ".join(f"{k} {v}" for k, v in fields.items())
                  for name, fields in SAMPLING_FIELDS.items()}
        params["seeded"] += ", every request seeded"
        params[STRUCTURED] += ", every request its own JSON schema"
        return [f"- {s['workload']} {s['metric']}: {s['sampling']} ({params[s['sampling']]}) "
                f"{_fmt(s['tokens_per_s'])} vs greedy {_fmt(s['greedy_tokens_per_s'])} = "
                + ("n/a" if s["ratio"] is None else f"{s['ratio']:.3f}x greedy")
                for s in self.sampling]

    def closing_lines(self) -> list[str]:
        return [*self.sampling_lines(), *(check["text"] for check in self.token_checks),
                *(f"ERROR {e['system']} / {e['workload']}: {e['error']}" for e in self.errors)]


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


def stamp() -> str:
    return f"[{time.perf_counter() - START:6.1f}s]"


# --------------------------------------------------------------------------- checkpoint


def ensure_checkpoint(model_dir: str | None, shape: str) -> Path:
    from jupyter_qwen.testing import make_tiny_qwen3

    folder = Path(model_dir or Path(tempfile.gettempdir()) / f"jupyter_qwen_bench_{shape}")
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        say(f"{stamp()} checkpoint: {folder} (existing)")
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    begin = time.perf_counter()
    make_tiny_qwen3(partial, shape=shape)
    if folder.exists():
        if any(folder.iterdir()):
            for item in partial.iterdir():
                shutil.move(str(item), folder / item.name)
            partial.rmdir()
        else:
            folder.rmdir()
            partial.rename(folder)
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial.rename(folder)
    say(f"{stamp()} checkpoint: made {shape} in {folder} ({time.perf_counter() - begin:.1f} s)")
    return folder


def usable_id_high(model_dir: Path, wanted: int) -> int:
    """Largest token id to draw: `wanted`, or below the added special tokens of a small vocab."""
    from jupyter_qwen.demo import ADDED_TOKENS

    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    return min(wanted, vocab - len(ADDED_TOKENS) - 1)


# --------------------------------------------------------------------------- our engine


def _engine_stats(llm) -> dict:
    return asdict(llm.engine.stats())


def _stats_delta(before: dict, after: dict) -> dict:
    keys = ("num_preemptions", "prefix_cache_hits", "prefix_cache_queries", "computed_tokens_total",
            "generation_tokens_total", "prompt_tokens_total")
    delta = {k: after[k] - before[k] for k in keys}
    delta["num_kv_blocks"] = after["num_kv_blocks"]
    return delta


def _log_stats(label: str, delta: dict) -> None:
    say(f"    {label} engine stats: preemptions {delta['num_preemptions']}, prefix hits "
        f"{delta['prefix_cache_hits']}/{delta['prefix_cache_queries']} tokens, KV blocks "
        f"{delta['num_kv_blocks']}, computed tokens {delta['computed_tokens_total']}")


def sampling_params(sampling: str, max_tokens: int, index: int):
    """One request's parameters under `--sampling` mode `sampling` (see SAMPLING_FIELDS);
    "seeded" gives every request its own seed (its index), "structured" its own JSON schema."""
    from jupyter_qwen.sampling_params import SamplingParams

    seed = index if sampling == "seeded" else None
    constraint = structured_outputs(index) if sampling == STRUCTURED else None
    return SamplingParams(**SAMPLING_FIELDS[sampling], seed=seed, max_tokens=max_tokens,
                          ignore_eos=True, detokenize=False, structured_outputs=constraint)


def ours_generate(llm, workload: Workload, sampling: str = "greedy") -> dict:
    params = [sampling_params(sampling, n, index) for index, n in enumerate(workload.out_lens)]
    before = _engine_stats(llm)
    synchronize(llm.engine.runner.device)
    begin = time.perf_counter()
    outputs = llm.generate(workload.prompts, params)
    synchronize(llm.engine.runner.device)
    wall = time.perf_counter() - begin
    errors = [o.error for o in outputs if o.error]
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    produced = sum(len(o.token_ids) for o in outputs)
    return {"wall_s": wall, "output_tokens": produced, "tokens_per_s": produced / wall,
            "expected_tokens": workload.output_tokens,
            "stats": _stats_delta(before, _engine_stats(llm)),
            "tokens": [o.token_ids for o in outputs[:CHECKED_REQUESTS]]}


def ours_stepped(llm, workload: Workload, sampling: str = "greedy") -> dict:
    """Submit every request, drive `step()`, time each request's first and last token."""
    engine = llm.engine
    before = _engine_stats(llm)
    submitted, first, finished, tokens = {}, {}, {}, {}
    synchronize(engine.runner.device)
    begin = time.perf_counter()
    for index, (prompt, n) in enumerate(zip(workload.prompts, workload.out_lens, strict=True)):
        rid = f"bench-{index}"
        submitted[rid] = time.perf_counter()
        engine.add_request(prompt, sampling_params(sampling, n, index), request_id=rid)
        tokens[rid] = []
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            if out.new_token_ids and out.request_id not in first:
                first[out.request_id] = now
            tokens[out.request_id].extend(out.new_token_ids)
            if out.finished:
                finished[out.request_id] = now
    wall = time.perf_counter() - begin
    ttft = [first[rid] - submitted[rid] for rid in submitted]
    produced = sum(len(t) for t in tokens.values())
    last_first = max(first.values())
    decode_tokens = produced - len(first)
    return {"wall_s": wall, "output_tokens": produced, "tokens_per_s": produced / wall,
            "expected_tokens": workload.output_tokens,
            "ttft_s": ttft, "ttft_p50_ms": 1e3 * percentile(ttft, 50),
            "ttft_p99_ms": 1e3 * percentile(ttft, 99),
            "decode_s": max(finished.values()) - last_first,
            "decode_tokens_per_s": decode_tokens / max(max(finished.values()) - last_first, 1e-9),
            "stats": _stats_delta(before, _engine_stats(llm)),
            "tokens": [tokens[f"bench-{i}"] for i in range(min(CHECKED_REQUESTS, len(tokens)))]}


def ours_batch1(llm, workload: Workload, sampling: str = "greedy") -> dict:
    """`ours_stepped` BATCH1_REPEATS times, the run of median speed: one request of 512
    tokens takes ~0.6 s, and single runs of it moved by +-10 % between modes."""
    runs = sorted((ours_stepped(llm, workload, sampling) for _ in range(BATCH1_REPEATS)),
                  key=lambda run: run["tokens_per_s"])
    median = runs[len(runs) // 2]
    return {**median, "repeats_tokens_per_s": [run["tokens_per_s"] for run in runs]}


def run_ours(model_dir: Path, opts: dict, workloads: dict[str, Workload], warmup: Workload,
             floors: dict[str, Floor], report: Report, device: torch.device,
             samplings: tuple[str, ...] = ("greedy",)) -> None:
    from jupyter_qwen.llm import LLM

    main_names = [n for n in ("w256", "batch64", "batch1") if n in workloads]
    if main_names:
        llm = _open_engine(LLM, model_dir, opts, report, "ours", warmup, samplings)
        if llm is not None:
            try:
                for name in main_names:
                    greedy = _ours_workload(llm, name, workloads[name], floors, report)
                    for sampling in samplings:
                        if sampling != "greedy":
                            _ours_sampled(llm, name, workloads[name], sampling, greedy, report)
                if STRUCTURED in samplings:
                    _twenty_field_row(llm, report)
            finally:
                llm.close()
                del llm
                free_device_memory(device)
    if "prefix" in workloads:
        results = {}
        for caching in (True, False):
            label = f"ours (prefix cache {'on' if caching else 'off'})"
            llm = _open_engine(LLM, model_dir, {**opts, "enable_prefix_caching": caching},
                               report, label, warmup)
            if llm is None:
                continue
            try:
                say(f"{stamp()} {label}: prefix workload")
                run = ours_stepped(llm, workloads["prefix"])
                results[caching] = run
                report.runs[f"ours/prefix/{'on' if caching else 'off'}"] = _strip(run)
                _log_stats(label, run["stats"])
                say(f"    TTFT p50 {run['ttft_p50_ms']:.1f} ms, p99 {run['ttft_p99_ms']:.1f} ms, "
                    f"{run['tokens_per_s']:,.0f} tok/s")
            except Exception as error:
                report.error(label, "prefix", error)
            finally:
                llm.close()
                del llm
                free_device_memory(device)
        _prefix_rows(results, floors, report)
    report.save()


def _open_engine(LLM, model_dir: Path, opts: dict, report: Report, label: str, warmup: Workload,
                 samplings: tuple[str, ...] = ("greedy",)):
    say(f"{stamp()} {label}: loading engine {opts or ''}")
    try:
        begin = time.perf_counter()
        llm = LLM(str(model_dir), **opts)
        load_s = time.perf_counter() - begin
        begin = time.perf_counter()
        for sampling in dict.fromkeys(("greedy", *samplings)):
            ours_generate(llm, warmup, sampling)
        warm_s = time.perf_counter() - begin
    except Exception as error:
        report.error(label, "load", error)
        if "llm" in locals():
            llm.close()
        return None
    stats = _engine_stats(llm)
    report.runs.setdefault("ours/engines", []).append(
        {"label": label, "opts": opts, "load_s": load_s, "warmup_s": warm_s,
         "num_kv_blocks": stats["num_kv_blocks"],
         "memory_allocated": memory_in_use(llm.engine.runner.device)})
    say(f"    loaded in {load_s:.1f} s, warm-up {warm_s:.1f} s, {stats['num_kv_blocks']} KV blocks")
    return llm


def _ours_workload(llm, name: str, workload: Workload, floors: dict[str, Floor],
                   report: Report) -> dict | None:
    say(f"{stamp()} ours: {name} ({len(workload.prompts)} requests, {workload.prompt_tokens} "
        f"prompt + {workload.output_tokens} output tokens)")
    try:
        run = ours_batch1(llm, workload) if name == "batch1" else ours_generate(llm, workload)
    except Exception as error:
        report.error("ours", name, error)
        return None
    report.tokens[("ours", name)] = run["tokens"]
    report.runs[f"ours/{name}"] = _strip(run)
    _log_stats("ours", run["stats"])
    floor = floors[name]
    note = "" if run["output_tokens"] == run["expected_tokens"] else \
        f"produced {run['output_tokens']} of {run['expected_tokens']} tokens"
    report.add(Row(name, "ours", "output tok/s", run["tokens_per_s"], "tok/s",
                   notes=_join(f"{run['wall_s']:.2f} s wall incl. prefill", note,
                               f"preempt {run['stats']['num_preemptions']}"),
                   floor_fraction=run["tokens_per_s"] / floor.tokens_per_s))
    if name == "batch1":
        report.add(Row(name, "ours", "decode tok/s", run["decode_tokens_per_s"], "tok/s",
                       notes=f"after first token; TTFT {run['ttft_p50_ms']:.1f} ms",
                       floor_fraction=run["decode_tokens_per_s"] / floor.decode_tokens_per_s))
    say(f"    {run['tokens_per_s']:,.0f} tok/s ({run['wall_s']:.2f} s)")
    report.save()
    return run


def _ours_sampled(llm, name: str, workload: Workload, sampling: str, greedy: dict | None,
                  report: Report) -> None:
    """The same workload in the same engine under a sampling mode, beside its greedy run."""
    say(f"{stamp()} ours, {sampling}: {name}")
    try:
        if sampling == STRUCTURED:
            _precompile_row(llm, name, len(workload.prompts), report)
        run = (ours_batch1(llm, workload, sampling) if name == "batch1"
               else ours_generate(llm, workload, sampling))
        if sampling == STRUCTURED:
            run["grammar_check"] = [follows_grammar(llm, index, tokens)
                                    for index, tokens in enumerate(run["tokens"])]
            say(f"    grammar check of the first outputs: {run['grammar_check']}")
    except Exception as error:
        report.error(f"ours, {sampling}", name, error)
        return
    report.runs[f"ours/{name}/{sampling}"] = _strip(run)
    metrics = [("output tok/s", "tokens_per_s")]
    if name == "batch1":
        metrics.append(("decode tok/s", "decode_tokens_per_s"))
    for metric, key in metrics:
        ratio = run[key] / greedy[key] if greedy else None
        report.add(Row(name, f"ours, {sampling}", metric, run[key], "tok/s", ratio=ratio,
                       notes=_join("ours/peer here: this / greedy, same engine",
                                   f"preempt {run['stats']['num_preemptions']}")))
        report.sampling.append({"workload": name, "sampling": sampling, "metric": metric,
                                "tokens_per_s": run[key],
                                "greedy_tokens_per_s": greedy[key] if greedy else None,
                                "ratio": ratio})
    say(f"    {run['tokens_per_s']:,.0f} tok/s ({run['wall_s']:.2f} s)"
        + (f", {run['tokens_per_s'] / greedy['tokens_per_s']:.3f}x greedy" if greedy else ""))
    report.save()


def _precompile_row(llm, name: str, count: int, report: Report) -> None:
    compiled = precompile(llm, count)
    report.runs[f"ours/{name}/structured_compile"] = compiled
    report.add(Row("compile", "ours, structured", f"{name}: {count} schemas",
                   1e3 * compiled["compile_wall_s"], "ms",
                   notes=f"{compiled['workers']} workers; "
                         f"{compiled['compile_ms_per_schema']:.1f} ms a schema"))
    say(f"    compiled {count} schemas in {compiled['compile_wall_s']:.2f} s")


def _twenty_field_row(llm, report: Report) -> None:
    try:
        timing = twenty_field_compile(llm)
    except Exception as error:
        report.error("ours, structured", "20-field compile", error)
        return
    report.runs["ours/structured/twenty_field_compile"] = timing
    report.add(Row("compile", "ours, structured", "20-field schema, first request",
                   timing["first_compile_ms"], "ms",
                   notes=f"median of {timing['samples']} {timing['median_compile_ms']:.1f} ms; "
                         f"compiler set-up once {timing['compiler_setup_ms']:.0f} ms"))
    say(f"    20-field schema: first compile {timing['first_compile_ms']:.1f} ms, median "
        f"{timing['median_compile_ms']:.1f} ms, compiler set-up "
        f"{timing['compiler_setup_ms']:.0f} ms")
    report.save()


def _prefix_rows(results: dict, floors: dict[str, Floor], report: Report) -> None:
    on, off = results.get(True), results.get(False)
    for caching, run in ((True, on), (False, off)):
        if run is None:
            continue
        system = f"ours, prefix cache {'on' if caching else 'off'}"
        other = off if caching else None
        floor = floors["prefix_on" if caching else "prefix_off"]
        stats = run["stats"]
        hits = f"hits {stats['prefix_cache_hits']}/{stats['prefix_cache_queries']} tok"
        report.add(Row("prefix", system, "TTFT p50", run["ttft_p50_ms"], "ms",
                       ratio=other["ttft_p50_ms"] / run["ttft_p50_ms"] if other else None,
                       notes=_join(hits if caching else "",
                                   "ratio: TTFT p50 off / on" if other else "")))
        report.add(Row("prefix", system, "TTFT p99", run["ttft_p99_ms"], "ms",
                       ratio=other["ttft_p99_ms"] / run["ttft_p99_ms"] if other else None))
        report.add(Row("prefix", system, "output tok/s", run["tokens_per_s"], "tok/s",
                       ratio=run["tokens_per_s"] / other["tokens_per_s"] if other else None,
                       floor_fraction=run["tokens_per_s"] / floor.tokens_per_s,
                       notes=f"{run['wall_s']:.2f} s wall; preempt {stats['num_preemptions']}"))
    if on and off:
        say(f"    prefix TTFT p50 ratio off/on: {off['ttft_p50_ms'] / on['ttft_p50_ms']:.2f}x")


def _strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in ("tokens", "ttft_s")} | (
        {"ttft_s_sorted": sorted(run["ttft_s"])} if "ttft_s" in run else {})


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# --------------------------------------------------------------------------- transformers peers


class PeerTimeout(Exception):
    pass


def load_hf(model_dir: Path, device: torch.device):
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype,
                                                 attn_implementation="sdpa")
    model = model.to(device).eval()
    config = model.generation_config
    config.eos_token_id = None  # == ignore_eos: never stop early, never mask EOS
    if config.pad_token_id is None:
        pad = model.config.pad_token_id
        config.pad_token_id = pad if pad is not None else 0
    config.do_sample = False
    for name in ("temperature", "top_p", "top_k"):
        if hasattr(config, name):
            setattr(config, name, None)
    return model


def _left_pad(prompts: list[list[int]], pad: int, device: torch.device):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def hf_timed_generate(model, prompts: list[list[int]], new_tokens: int, device: torch.device,
                      **kwargs) -> tuple[float, list[list[int]]]:
    ids, mask = _left_pad(prompts, model.generation_config.pad_token_id, device)
    synchronize(device)
    begin = time.perf_counter()
    # generate() runs under no_grad itself; inference_mode would make the static cache's
    # tensors inference tensors, which compiled CUDA-graph replays may not update in place.
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                         do_sample=False, **kwargs)
    synchronize(device)
    wall = time.perf_counter() - begin
    return wall, out[:, ids.shape[1]:].tolist()


def hf_generate_run(model, workload: Workload, device: torch.device, batch_size: int,
                    limit_s: float | None, **kwargs) -> dict:
    """Batches sorted by output length; each batch generates its longest output."""
    n = len(workload.prompts)
    order = sorted(range(n), key=lambda i: (workload.out_lens[i], len(workload.prompts[i])))
    batches = [order[k:k + batch_size] for k in range(0, n, batch_size)]
    tokens: dict[int, list[int]] = {}
    wall = generated = useful = 0
    done = 0
    for batch in batches:
        new = max(workload.out_lens[i] for i in batch)
        seconds, outs = hf_timed_generate(model, [workload.prompts[i] for i in batch], new,
                                          device, **kwargs)
        wall += seconds
        done += 1
        for row, i in enumerate(batch):
            tokens[i] = outs[row][:workload.out_lens[i]]
            useful += len(tokens[i])
            generated += len(outs[row])
        if limit_s and wall > limit_s and done < len(batches):
            break
    return {"wall_s": wall, "useful_tokens": useful, "generated_tokens": generated,
            "tokens_per_s": useful / wall, "raw_tokens_per_s": generated / wall,
            "batches_done": done, "batches": len(batches), "batch_size": batch_size,
            "expected_tokens": sum(workload.out_lens[i] for b in batches[:done] for i in b),
            "tokens": [tokens.get(i, []) for i in range(min(CHECKED_REQUESTS, n))]}


def hf_decode_only(model, workload: Workload, device: torch.device, full_wall: float,
                   **kwargs) -> tuple[float, float]:
    """(decode tok/s, time to first token): T(n tokens) - T(1 token), median of 3 T(1)."""
    firsts = [hf_timed_generate(model, workload.prompts, 1, device, **kwargs)[0] for _ in range(3)]
    first = statistics.median(firsts)
    steps = workload.out_lens[0] - 1
    return steps * len(workload.prompts) / max(full_wall - first, 1e-9), first


def run_hf_generate(model_dir, workloads, warmup, floors, report, device, args) -> None:
    model = load_hf(model_dir, device)
    try:
        hf_timed_generate(model, warmup.prompts, warmup.out_lens[0], device)
        for name in PEER_WORKLOADS["hf_generate"]:
            if name not in workloads:
                continue
            workload = workloads[name]
            say(f"{stamp()} hf_generate: {name}")
            try:
                if name == "w256":
                    run = hf_generate_run(model, workload, device, args.hf_batch,
                                          args.peer_limit_seconds)
                    partial = run["batches_done"] < run["batches"]
                    same = "adapted"
                    notes = _join(f"{run['batches']} batches of {run['batch_size']} sorted by "
                                  "output length, each runs its longest output; useful tokens only",
                                  f"{run['wall_s']:.1f} s; raw {run['raw_tokens_per_s']:,.0f} "
                                  "tok/s incl. wasted tokens",
                                  f"PARTIAL: {run['batches_done']}/{run['batches']} batches "
                                  f"(--peer-limit-seconds), not extrapolated" if partial else "")
                else:
                    wall, outs = hf_timed_generate(model, workload.prompts,
                                                   workload.out_lens[0], device)
                    produced = sum(len(o) for o in outs)
                    run = {"wall_s": wall, "useful_tokens": produced,
                           "tokens_per_s": produced / wall,
                           "expected_tokens": workload.output_tokens,
                           "tokens": outs[:CHECKED_REQUESTS]}
                    same, notes = "same", f"{wall:.2f} s"
                    if name == "batch1":
                        run["decode_tokens_per_s"], run["first_token_s"] = hf_decode_only(
                            model, workload, device, wall)
                _peer_rows(report, "hf_generate", name, run, floors[name], same, notes)
            except Exception as error:
                report.error("hf_generate", name, error)
    finally:
        del model
        free_device_memory(device)


def run_hf_static(model_dir, workloads, warmup, floors, report, device, args) -> None:
    model = load_hf(model_dir, device)
    kwargs = {"cache_implementation": "static"}
    try:
        for name in PEER_WORKLOADS["hf_static"]:
            if name not in workloads:
                continue
            workload = workloads[name]
            say(f"{stamp()} hf_static: {name} (3 identical calls: compile, warm, timed)")
            try:
                new = workload.out_lens[0]
                walls = []
                for _ in range(3):
                    wall, outs = hf_timed_generate(model, workload.prompts, new, device, **kwargs)
                    walls.append(wall)
                    say(f"    call {len(walls)}: {wall:.2f} s")
                compiled = hasattr(model, "_compiled_call")
                produced = sum(len(o) for o in outs)
                run = {"wall_s": walls[-1], "call_walls_s": walls,
                       "compile_s": walls[0] - walls[-1], "compiled": compiled,
                       "compile_config": repr(getattr(model, "_last_compile_config", None)),
                       "useful_tokens": produced, "tokens_per_s": produced / walls[-1],
                       "expected_tokens": workload.output_tokens,
                       "tokens": outs[:CHECKED_REQUESTS]}
                if name == "batch1":
                    run["decode_tokens_per_s"], run["first_token_s"] = hf_decode_only(
                        model, workload, device, walls[-1], **kwargs)
                if compiled:
                    how = f"compile + first call {walls[0]:.1f} s (excluded)"
                elif device.type == "cuda":
                    how = ("compile NOT detected (no model._compiled_call); calls "
                           + ", ".join(f"{w:.1f} s" for w in walls))
                else:
                    how = "NOT compiled (transformers auto-compiles on CUDA only)"
                notes = _join(f"{walls[-1]:.2f} s", how)
                _peer_rows(report, "hf_static", name, run, floors[name], "same", notes)
            except Exception as error:
                report.error("hf_static", name, error)
    finally:
        del model
        free_device_memory(device)


def _filtered(cls, values: dict):
    names = set(inspect.signature(cls).parameters)
    return cls(**{k: v for k, v in values.items() if k in names})


def run_hf_batch(model_dir, workloads, warmup, floors, report, device, args) -> None:
    if "w256" not in workloads:
        return
    workload = workloads["w256"]
    model = load_hf(model_dir, device)
    say(f"{stamp()} hf_batch: w256 (continuous batching, per-request max_new_tokens)")
    try:
        try:
            run = hf_continuous(model, workload, warmup, device, args.peer_limit_seconds)
            same = "same"
        except _NotStarted as error:
            say(f"    manager path failed before timing ({error.__cause__!r}); "
                "falling back to generate_batch with the longest max_new_tokens")
            run = hf_generate_batch_fallback(model, workload, device)
            same = "adapted"
        notes = _join("" if same == "same" else "generate_batch fallback: every request runs the "
                      "longest output; useful tokens only", f"{run['wall_s']:.1f} s",
                      f"attn {run.get('attn')}",
                      f"setup/warm-up {run.get('setup_s', 0):.1f} s excluded",
                      "PARTIAL: stopped at --peer-limit-seconds; finished requests only "
                      "(lower bound)" if run.get("partial") else "",
                      f"{run['failed']} requests failed" if run.get("failed") else "")
        _peer_rows(report, "hf_batch", "w256", run, floors["w256"], same, notes)
    except Exception as error:
        report.error("hf_batch", "w256", error)
    finally:
        del model
        free_device_memory(device)


class _NotStarted(Exception):
    pass


def _cb_kwargs(model, workload: Workload, device: torch.device) -> dict:
    kwargs = {}
    params = inspect.signature(model.init_continuous_batching).parameters
    if "continuous_batching_config" in params:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        values = {} if device.type == "cuda" else {"num_blocks": 64, "kv_padding_interval_size": 0,
                                                   "q_padding_interval_size": 0}
        kwargs["continuous_batching_config"] = _filtered(ContinuousBatchingConfig, values)
    if "workload_hints" in params:
        from transformers.generation.continuous_batching.utils import WorkloadHints

        kwargs["workload_hints"] = _filtered(WorkloadHints, {
            "max_prompt_length": max(len(p) for p in workload.prompts),
            "max_generated_length": max(workload.out_lens),
            "num_requests": len(workload.prompts)})
    return kwargs


def _init_manager(model, generation_config, kwargs):
    try:
        return model.init_continuous_batching(generation_config=generation_config, **kwargs)
    except ValueError as error:
        if "mplementation" not in str(error):
            raise
        for name in ("paged|sdpa", "sdpa_paged", "paged|eager"):
            try:
                model.set_attn_implementation(name)
                return model.init_continuous_batching(generation_config=generation_config, **kwargs)
            except Exception:
                continue
        raise


def hf_continuous(model, workload: Workload, warmup: Workload, device: torch.device,
                  limit_s: float | None) -> dict:
    from transformers import GenerationConfig

    manager = None
    try:
        config = GenerationConfig(max_new_tokens=max(workload.out_lens), do_sample=False,
                                  eos_token_id=-1,
                                  pad_token_id=model.generation_config.pad_token_id)
        begin = time.perf_counter()
        manager = _init_manager(model, config, _cb_kwargs(model, workload, device))
        attn = model.config._attn_implementation  # stop() restores the loaded one
        if hasattr(manager, "warmup") and device.type == "cuda":
            manager.warmup()
        manager.start()
        accepts = inspect.signature(manager.add_request).parameters

        def submit(prompt: list[int], n: int, rid: str) -> None:
            extra = {"eos_token_id": -1} if "eos_token_id" in accepts else {}
            manager.add_request(prompt, request_id=rid, max_new_tokens=n, **extra)

        def collect(rids: set[str], deadline: float | None) -> tuple[dict, bool]:
            results = {}
            while len(results) < len(rids):
                if deadline is not None and time.perf_counter() > deadline:
                    return results, True
                result = manager.get_result(timeout=0.5)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("continuous batching thread stopped; "
                                           f"{len(results)}/{len(rids)} requests finished")
                    continue
                if result.request_id in rids and result.is_finished():
                    results[result.request_id] = result
            return results, False

        warm_ids = {f"warm-{i}" for i in range(len(warmup.prompts))}
        for i, prompt in enumerate(warmup.prompts):
            submit(prompt, warmup.out_lens[i], f"warm-{i}")
        collect(warm_ids, time.perf_counter() + 600)
        setup = time.perf_counter() - begin
    except Exception as error:
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.stop(block=True, timeout=30)
        raise _NotStarted(str(error)) from error
    try:
        rids = [f"req-{i}" for i in range(len(workload.prompts))]
        synchronize(device)
        begin = time.perf_counter()
        for rid, prompt, n in zip(rids, workload.prompts, workload.out_lens, strict=True):
            submit(prompt, n, rid)
        results, partial = collect(set(rids), begin + limit_s if limit_s else None)
        wall = time.perf_counter() - begin
    finally:
        stop_params = inspect.signature(manager.stop).parameters
        extra = {"hard_stop": True} if "hard_stop" in stop_params else {}
        manager.stop(block=True, timeout=60, **extra)
    failed = sum(1 for r in results.values() if getattr(r, "error", None))
    tokens = {rid: list(r.generated_tokens)[:n] for (rid, r), n in
              ((item, workload.out_lens[int(item[0].split("-")[1])]) for item in results.items())}
    useful = sum(len(t) for t in tokens.values())
    return {"wall_s": wall, "useful_tokens": useful, "tokens_per_s": useful / wall,
            "expected_tokens": workload.output_tokens, "partial": partial, "failed": failed,
            "finished_requests": len(results), "setup_s": setup, "attn": attn,
            "tokens": [tokens.get(f"req-{i}", []) for i in range(CHECKED_REQUESTS)]}


def hf_generate_batch_fallback(model, workload: Workload, device: torch.device) -> dict:
    from transformers import GenerationConfig

    longest = max(workload.out_lens)
    config = GenerationConfig(max_new_tokens=longest, do_sample=False, eos_token_id=-1,
                              pad_token_id=model.generation_config.pad_token_id)
    params = inspect.signature(model.generate_batch).parameters
    extra = {"progress_bar": False} | {
        k: v for k, v in _cb_kwargs(model, workload, device).items() if k != "workload_hints"}
    extra = {k: v for k, v in extra.items() if k in params}
    warm = GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=-1,
                            pad_token_id=model.generation_config.pad_token_id)
    begin = time.perf_counter()
    model.generate_batch(inputs=[p[:16] for p in workload.prompts[:4]], generation_config=warm,
                         **extra)
    setup = time.perf_counter() - begin
    synchronize(device)
    begin = time.perf_counter()
    outputs = model.generate_batch(inputs=workload.prompts, generation_config=config, **extra)
    synchronize(device)
    wall = time.perf_counter() - begin
    ordered = list(outputs.values())
    tokens = [list(o.generated_tokens)[:n]
              for o, n in zip(ordered, workload.out_lens, strict=False)]
    useful = sum(len(t) for t in tokens)
    return {"wall_s": wall, "useful_tokens": useful, "tokens_per_s": useful / wall,
            "generated_tokens": sum(len(o.generated_tokens) for o in ordered), "setup_s": setup,
            "expected_tokens": workload.output_tokens, "attn": model.config._attn_implementation,
            "tokens": tokens[:CHECKED_REQUESTS]}


def _peer_rows(report: Report, system: str, name: str, run: dict, floor: Floor, same: str,
               notes: str) -> None:
    report.runs[f"{system}/{name}"] = _strip(run)
    report.tokens[(system, name)] = run["tokens"]
    if run["useful_tokens"] != run["expected_tokens"]:
        notes = _join(notes, f"produced {run['useful_tokens']} of {run['expected_tokens']} tokens")
    report.add(Row(name, system, "output tok/s", run["tokens_per_s"], "tok/s", same, notes,
                   floor_fraction=run["tokens_per_s"] / floor.tokens_per_s))
    if "decode_tokens_per_s" in run:
        report.add(Row(name, system, "decode tok/s", run["decode_tokens_per_s"], "tok/s", same,
                       "decode time = T(all) - T(1 new token); "
                       f"T(1) = {1e3 * run['first_token_s']:.1f} ms",
                       floor_fraction=run["decode_tokens_per_s"] / floor.decode_tokens_per_s))
    say(f"    {system} {name}: {run['tokens_per_s']:,.0f} tok/s ({run['wall_s']:.2f} s)")
    report.save()


PEER_RUNNERS = {"hf_generate": run_hf_generate, "hf_static": run_hf_static,
                "hf_batch": run_hf_batch}


# --------------------------------------------------------------------------- comparisons


def check_tokens(report: Report) -> None:
    report.token_checks.clear()
    for (system, name), peer_tokens in sorted(report.tokens.items()):
        if system == "ours" or ("ours", name) not in report.tokens:
            continue
        ours = report.tokens[("ours", name)]
        for index, (a, b) in enumerate(zip(ours, peer_tokens, strict=False)):
            if not b:
                continue
            where = first_divergence(a, b)
            status = "MATCH" if where is None else "MISMATCH"
            text = f"{status} ours vs {system} on {name} request {index}: " + (
                f"{len(a)} tokens identical" if where is None else
                f"first divergence at output position {where} "
                f"(ours {len(a)}, peer {len(b)} tokens)")
            report.token_checks.append({"system": system, "workload": name, "request": index,
                                        "status": status, "first_divergence": where,
                                        "ours_len": len(a), "peer_len": len(b), "text": text})


def fill_ratios(report: Report) -> None:
    ours = {(r.workload, r.metric): r.value for r in report.rows if r.system == "ours"}
    for row in report.rows:
        if row.system.startswith("ours") or (row.workload, row.metric) not in ours:
            continue
        mine = ours[(row.workload, row.metric)]
        row.ratio = mine / row.value if row.unit == "tok/s" else row.value / mine


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen3-0.6b",
                        help="tiny | qwen3-0.6b | qwen3-1.7b | qwen3-4b (make_tiny_qwen3 shapes)")
    parser.add_argument("--model-dir", default=None,
                        help="checkpoint folder; created with make_tiny_qwen3 when it holds none")
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    parser.add_argument("--peers", default=",".join(ALL_PEERS),
                        help="comma list of hf_generate, hf_static, hf_batch; 'none' for none")
    parser.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="EngineConfig option for our engine, repeatable")
    parser.add_argument("--sampling", default="greedy",
                        help="comma list of greedy, qwen3, penalties, seeded, structured: each "
                             "runs our engine's w256 / batch64 / batch1 beside greedy, same "
                             "engine")
    parser.add_argument("--structured", action="store_true",
                        help="add the structured mode: every request its own JSON schema, "
                             "and the compile time of a 20-field schema")
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    parser.add_argument("--hf-batch", type=int, default=None,
                        help="hf_generate batch size on w256 (default 64; quick: 4)")
    parser.add_argument("--peer-limit-seconds", type=float, default=None,
                        help="stop a peer's w256 run early after this many seconds (partial)")
    parser.add_argument("--cpu-threads", type=int, default=1,
                        help="torch threads on CPU (development runs on a shared box; default 1)")
    parser.add_argument("--out", default=None, help="output folder when $OUT is not set")
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.peers = [] if args.peers in ("", "none") else [p for p in args.peers.split(",") if p]
    args.sampling = tuple(dict.fromkeys([*(m for m in args.sampling.split(",") if m),
                                         *([STRUCTURED] if args.structured else [])]))
    bad = [w for w in args.workloads if w not in ALL_WORKLOADS] + \
        [p for p in args.peers if p not in ALL_PEERS] + \
        [m for m in args.sampling if m not in ALL_SAMPLINGS]
    if bad:
        parser.error(f"unknown workload, peer or sampling: {', '.join(bad)}")
    args.opts = with_kernel_options(engine_options(args.engine_opt, parser))
    return args


def main(argv: list[str] | None = None) -> dict:
    global START
    START = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    args.hf_batch = args.hf_batch or sizes.hf_batch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.cpu_threads)
    try:
        return _main(args, argv, sizes, device)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, argv: list[str], sizes: Sizes, device: torch.device) -> dict:
    default_out = Path(__file__).resolve().parents[1] / "out" / "throughput"
    out_dir = Path(os.environ.get("OUT") or args.out or default_out)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:
        pass

    report = Report(out_dir, environment(device, ["benchmarks/throughput.py", *argv]),
                    {k: v for k, v in vars(args).items()} | {"sizes": asdict(sizes)})
    for line in report.header_lines():
        say(line)
    model_dir = ensure_checkpoint(args.model_dir, args.shape)
    report.args["model_dir"] = str(model_dir)

    say(f"{stamp()} measuring ceilings")
    ceilings: Ceilings = measure_ceilings(device, args.quick)
    report.ceilings = asdict(ceilings)
    say(report.header_lines()[-1])

    elem_bytes = 2 if device.type == "cuda" else 4
    cost = ModelCost.from_folder(model_dir, elem_bytes)
    report.model = asdict(cost) | {
        "linear_params": cost.linear_params, "head_params": cost.head_params,
        "norm_params": cost.norm_params, "total_params": cost.total_params,
        "weight_bytes": cost.weight_bytes, "kv_bytes_per_token": cost.kv_bytes_per_token,
        "batch1_weights_only_floor_tok_s": ceilings.copy_bytes_per_s / cost.weight_bytes}
    id_high = usable_id_high(model_dir, sizes.id_high)
    every = make_workloads(sizes, id_high)
    workloads = {name: every[name] for name in args.workloads}
    warmup = warmup_workload(sizes, id_high)

    floors: dict[str, Floor] = {}
    for name, w in every.items():
        lens = [len(p) for p in w.prompts]
        if name == "prefix":
            shared = sizes.prefix_shared
            floors["prefix_on"] = schedule_floor(cost, ceilings, lens, w.out_lens,
                                                 [0] + [shared] * (len(lens) - 1))
            floors["prefix_off"] = schedule_floor(cost, ceilings, lens, w.out_lens)
        else:
            floors[name] = schedule_floor(cost, ceilings, lens, w.out_lens)
    report.floors = {k: f.as_dict() for k, f in floors.items()}
    say(f"floors: weights {cost.weight_bytes / 1e9:.3f} GB/step, "
        f"KV {cost.kv_bytes_per_token:,} B/token; "
        f"batch1 {floors['batch1'].decode_tokens_per_s:,.0f} decode tok/s "
        f"(weights only {report.model['batch1_weights_only_floor_tok_s']:,.0f}); "
        f"w256 {floors['w256'].time_s:.2f} s = {floors['w256'].tokens_per_s:,.0f} tok/s "
        f"(KV reads {floors['w256'].kv_read_bytes / 1e12:.2f} TB)")
    report.save()

    run_ours(model_dir, args.opts, workloads, warmup, floors, report, device, args.sampling)
    for peer in args.peers:
        if not any(w in workloads for w in PEER_WORKLOADS[peer]):
            continue
        say(f"{stamp()} peer {peer}")
        try:
            PEER_RUNNERS[peer](model_dir, workloads, warmup, floors, report, device, args)
        except Exception as error:
            report.error(peer, "load", error)
        free_device_memory(device)
        report.runs[f"{peer}/memory_allocated_after"] = memory_in_use(device)
        check_tokens(report)
        for check in report.token_checks:
            if check["system"] == peer:
                say("    " + check["text"])

    check_tokens(report)
    fill_ratios(report)
    report.save()
    report.print_table()
    say(f"{stamp()} done; wrote {out_dir / 'throughput.json'} and {out_dir / 'throughput.md'}")
    return report.as_dict()


if __name__ == "__main__":
    main()
