"""Check, then time, the Triton attention kernels on a CUDA GPU (one call, ~3 minutes).

    python benchmarks/kernels.py            # table on stdout, and in $OUT/kernels.txt if OUT is set

Ceilings are measured first (device-to-device copy: bytes read + written; an 8192^3 bf16
matrix product). Each case is checked against the torch reference (relative error) before
it is timed. Our kernels are timed by CUDA-graph replay over several input sets (so small
cases neither measure launch gaps nor the L2); torch's scaled_dot_product_attention on the
same gathered, contiguous tensors is timed with triton.testing.do_bench for scale.
Qwen3-0.6B attention shapes: 16 query heads, 8 kv heads, head_dim 128, bf16, block 16.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import event_seconds
from benchmarks.kernel_setup import PagedCase, random_paged_case, relative_error
from jupyter_qwen.model.attention import causal_attention, gather_context

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 16, 8, 128, 16, torch.bfloat16
SCALE = HEAD_DIM**-0.5
CAPACITY_TOKENS = 32768
ROTATION_BYTES = 256 << 20
CHECKED_SEQS = 16
DEVICE = "cuda"
DECODE_BATCHES, DECODE_CONTEXTS = (1, 64, 256), (512, 2048, 8192)
PREFILL_CHUNKS, PREFILL_PREFIXES = (512, 2048), (0, 2048)
MIXED_BATCHES = (  # (q_lens, seq_lens): a prefill chunk beside decoding sequences
    ([512] + [1] * 64, [2560] + [2048] * 64),
    ([512, 1], [2560, 32000]),
)
STORE_TOKENS = (256, 2048, 16384)


@dataclass
class Row:
    kernel: str
    variant: str
    shape: str
    micros: float = math.nan
    gbps: float = math.nan
    bw_fraction: float = math.nan
    tflops: float = math.nan
    mm_fraction: float = math.nan
    rel_err: float = math.nan
    note: str = ""


@dataclass
class Ceilings:
    copy_gbps: float
    matmul_tflops: float


LOG: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LOG.append(line)


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_event_seconds(run: Callable[[], object], repeats: int) -> float:
    return statistics.median(event_seconds(run) for _ in range(repeats))


def graph_seconds_per_call(calls: list[Callable[[], object]], replays: int = 15) -> float:
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    seconds = median_event_seconds(graph.replay, replays) / len(calls)
    del graph
    return seconds


def graph_micros_per_call(calls: list[Callable[[], object]], replays: int = 15) -> float:
    """Median replay time of one CUDA graph holding every call, per call, in microseconds."""
    return graph_seconds_per_call(calls, replays) * 1e6


def bench_seconds(run: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median") / 1e3


def measure_copy_gbps() -> float:
    source = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)
    target = torch.empty_like(source)
    target.copy_(source)
    seconds = median_event_seconds(lambda: target.copy_(source), 10)
    return 2 * source.numel() * source.element_size() / seconds / 1e9


def measure_matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    return 2 * 8192**3 / median_event_seconds(lambda: a @ b, 10) / 1e12


def measure_ceilings() -> Ceilings:
    ceilings = Ceilings(measure_copy_gbps(), measure_matmul_tflops())
    torch.cuda.empty_cache()
    say(f"copy bandwidth {ceilings.copy_gbps:.0f} GB/s (2 GiB bf16 copy, read+write); "
        f"bf16 matmul 8192^3 {ceilings.matmul_tflops:.0f} TFLOP/s (random data)")
    return ceilings


def kv_bytes(seq_lens: list[int]) -> int:
    return 2 * sum(seq_lens) * KV_HEADS * HEAD_DIM * torch.finfo(DTYPE).bits // 8


def attention_flops(q_lens: list[int], seq_lens: list[int]) -> float:
    visible = sum(q * (n - q) + q * (q + 1) / 2 for q, n in zip(q_lens, seq_lens, strict=True))
    return 4 * HEAD_DIM * HEADS * visible


def make_cases(q_lens: list[int], seq_lens: list[int], count: int) -> list[PagedCase]:
    widest = max(-(-n // BLOCK_SIZE) for n in seq_lens)
    spare_columns = max(2, CAPACITY_TOKENS // BLOCK_SIZE - widest)
    return [random_paged_case(q_lens, seq_lens, HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE,
                              DEVICE, spare_columns=spare_columns) for _ in range(count)]


def rotation_count(seq_lens: list[int]) -> int:
    return max(1, min(64, math.ceil(ROTATION_BYTES / kv_bytes(seq_lens))))


def checked_error(case: PagedCase, out: torch.Tensor) -> float:
    meta = case.meta
    starts = meta.query_start_loc_cpu
    picks = sorted({0, meta.num_seqs - 1, *range(0, meta.num_seqs, max(1, meta.num_seqs
                                                                       // CHECKED_SEQS))})
    got, want = [], []
    for i in picks:
        rows = slice(starts[i], starts[i + 1])
        key = gather_context(case.k_cache, meta.block_tables[i], meta.seq_lens_cpu[i]).float()
        value = gather_context(case.v_cache, meta.block_tables[i], meta.seq_lens_cpu[i]).float()
        want.append(causal_attention(case.query[rows].float(), key, value, SCALE))
        got.append(out[rows])
    return relative_error(torch.cat(got), torch.cat(want))


def contiguous_context(case: PagedCase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    meta = case.meta
    gathered = [(gather_context(case.k_cache, meta.block_tables[i], n),
                 gather_context(case.v_cache, meta.block_tables[i], n))
                for i, n in enumerate(meta.seq_lens_cpu)]
    keys = torch.stack([k for k, _ in gathered]).transpose(1, 2).contiguous()
    values = torch.stack([v for _, v in gathered]).transpose(1, 2).contiguous()
    starts = meta.query_start_loc_cpu
    queries = torch.stack([case.query[starts[i]:starts[i + 1]] for i in range(meta.num_seqs)])
    return queries.transpose(1, 2).contiguous(), keys, values


def sdpa_seconds(row: Row, case: PagedCase) -> float:
    """Torch SDPA on the gathered context: with enable_gqa, else with K/V repeated per head."""
    q, k, v = contiguous_context(case)
    q_len, k_len = q.shape[2], k.shape[2]
    options: dict = {"scale": SCALE}
    if q_len == k_len and q_len > 1:
        options["is_causal"] = True
    elif q_len > 1:
        from torch.nn.attention.bias import causal_lower_right

        options["attn_mask"] = causal_lower_right(q_len, k_len)
    row.note = "enable_gqa"
    try:
        return bench_seconds(lambda: F.scaled_dot_product_attention(
            q, k, v, enable_gqa=True, **options))
    except Exception as error:
        row.note = f"K/V repeated ({type(error).__name__} with enable_gqa)"
    k, v = (t.repeat_interleave(HEADS // KV_HEADS, 1) for t in (k, v))
    return bench_seconds(lambda: F.scaled_dot_product_attention(q, k, v, **options))


def fill_rates(row: Row, seconds: float, moved: float, flops: float, ceilings: Ceilings) -> Row:
    row.micros = seconds * 1e6
    row.gbps = moved / seconds / 1e9
    row.bw_fraction = row.gbps / ceilings.copy_gbps
    if flops:
        row.tflops = flops / seconds / 1e12
        row.mm_fraction = row.tflops / ceilings.matmul_tflops
    return row


def attention_rows(kernel: str, q_lens: list[int], seq_lens: list[int],
                   launch: Callable[..., torch.Tensor], variants: dict[str, dict],
                   ceilings: Ceilings) -> list[Row]:
    shape = shape_name(q_lens, seq_lens)
    cases = make_cases(q_lens, seq_lens, rotation_count(seq_lens))
    moved = kv_bytes(seq_lens) + 2 * sum(q_lens) * HEADS * HEAD_DIM * 2
    flops = attention_flops(q_lens, seq_lens) if kernel != "decode" else 0.0
    rows = [Row(kernel, name, shape) for name in variants]
    for row, options in zip(rows, variants.values(), strict=True):
        guarded(row, lambda r=row, o=options: fill_rates(
            r, kernel_seconds(r, cases, launch, o), moved, flops, ceilings))
    row = Row(kernel, "torch sdpa", shape, note="n/a (ragged)")
    if len(set(q_lens)) == 1 and len(set(seq_lens)) == 1:
        guarded(row, lambda: fill_rates(row, sdpa_seconds(row, cases[0]), moved, flops,
                                        ceilings))
    cases.clear()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return [*rows, row]


def guarded(row: Row, work: Callable[[], object]) -> None:
    try:
        work()
    except Exception as error:
        row.note = f"{type(error).__name__}: {error}"[:100]
        traceback.print_exc()


def kernel_seconds(row: Row, cases: list[PagedCase], launch: Callable[..., torch.Tensor],
                   options: dict) -> float:
    out = torch.full_like(cases[0].query, float("nan"))
    launch(cases[0], out=out, **options)
    synchronize()
    row.rel_err = checked_error(cases[0], out)
    return graph_seconds_per_call([lambda c=c: launch(c, **options) for c in cases])


def shape_name(q_lens: list[int], seq_lens: list[int]) -> str:
    if max(q_lens) == 1:
        return f"B={len(q_lens)} ctx={seq_lens[0]}"
    parts = {}
    for q, n in zip(q_lens, seq_lens, strict=True):
        key = f"q={q} ctx={n}"
        parts[key] = parts.get(key, 0) + 1
    return " + ".join(f"{count}x({key})" if count > 1 else key for key, count in parts.items())


def decode_launch(case: PagedCase, out=None, **options) -> torch.Tensor:
    from jupyter_qwen.model.kernels.decode_attention import decode_attention

    meta = case.meta
    return decode_attention(case.query, case.k_cache, case.v_cache, meta.block_tables,
                            meta.seq_lens, SCALE, out=out, **options)


def prefill_launch(case: PagedCase, out=None, **options) -> torch.Tensor:
    from jupyter_qwen.model.kernels.prefill_attention import prefill_attention

    meta = case.meta
    return prefill_attention(case.query, case.k_cache, case.v_cache, meta.block_tables,
                             meta.seq_lens, meta.query_start_loc, SCALE, out=out, **options)


def mixed_launch(case: PagedCase, out=None, varlen_only: bool = False) -> torch.Tensor:
    """What TritonAttention.attend does for a mixed batch, or the varlen kernel alone."""
    from jupyter_qwen.model.kernels.decode_attention import decode_attention

    meta = case.meta
    out = prefill_launch(case, out=out, skip_single=not varlen_only)
    if not varlen_only:
        decode_attention(case.query, case.k_cache, case.v_cache, meta.block_tables,
                         meta.seq_lens, SCALE, out=out, query_start_loc=meta.query_start_loc)
    return out


DECODE_VARIANTS = {
    "default": {},
    "n32 s3": {"block_n": 32, "num_stages": 3},
    "n64 s2": {"block_n": 64, "num_stages": 2},
    "n128 s2": {"block_n": 128, "num_stages": 2},
    "n64 w8": {"block_n": 64, "num_warps": 8},
}
PREFILL_VARIANTS = {
    "default": {},
    "m128 n64 w8 s3": {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3},
    "m128 n128 w8 s2": {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2},
    "m64 n64 w4 s2": {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2},
    "m64 n64 w4 s3": {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3},
}


def decode_rows(ceilings: Ceilings) -> list[Row]:
    from jupyter_qwen.model.kernels.decode_attention import decode_num_splits

    rows = []
    for batch in DECODE_BATCHES:
        for context in DECODE_CONTEXTS:
            splits = decode_num_splits(batch, KV_HEADS, CAPACITY_TOKENS, torch.device(DEVICE))
            sweep = context == DECODE_CONTEXTS[-1] or (batch, context) == (1, DECODE_CONTEXTS[0])
            variants = DECODE_VARIANTS if sweep else {"default": {}}
            if sweep and splits > 1:
                variants = {**variants, f"splits {2 * splits}": {"num_splits": 2 * splits},
                            f"splits {max(1, splits // 2)}": {"num_splits": max(1, splits // 2)}}
            new = attention_rows("decode", [1] * batch, [context] * batch, decode_launch,
                                 variants, ceilings)
            for row in new:
                row.note = row.note or (f"auto splits {splits}" if row.variant == "default"
                                        else "")
            rows += new
    return rows


def prefill_rows(ceilings: Ceilings) -> list[Row]:
    rows = []
    for chunk in PREFILL_CHUNKS:
        for prefix in PREFILL_PREFIXES:
            rows += attention_rows("prefill", [chunk], [chunk + prefix], prefill_launch,
                                   PREFILL_VARIANTS, ceilings)
    for q_lens, seq_lens in MIXED_BATCHES:
        rows += attention_rows("mixed", q_lens, seq_lens, mixed_launch,
                               {"backend": {}, "varlen only": {"varlen_only": True}}, ceilings)
    return rows


def store_row(tokens: int, ceilings: Ceilings) -> Row:
    from jupyter_qwen.model.kernels.store_kv import store_kv

    row = Row("store_kv", "default", f"T={tokens}")
    blocks = max(4 * tokens // BLOCK_SIZE, (ROTATION_BYTES // 2) // (BLOCK_SIZE * 2048))
    k_cache, v_cache = (torch.randn(blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device=DEVICE,
                                    dtype=DTYPE) for _ in range(2))
    key, value = (torch.randn(tokens, KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
                  for _ in range(2))
    slots = [torch.randperm(blocks * BLOCK_SIZE, device=DEVICE)[:tokens] for _ in range(8)]
    store_kv(key, value, k_cache, v_cache, slots[0])
    row.rel_err = relative_error(k_cache.view(-1, KV_HEADS, HEAD_DIM)[slots[0]], key)
    calls = [lambda s=s: store_kv(key, value, k_cache, v_cache, s) for s in slots]
    moved = 2 * 2 * key.numel() * key.element_size() + tokens * 8
    return fill_rates(row, graph_seconds_per_call(calls), moved, 0.0, ceilings)


def store_rows(ceilings: Ceilings) -> list[Row]:
    rows = []
    for tokens in STORE_TOKENS:
        try:
            rows.append(store_row(tokens, ceilings))
        except Exception as error:
            rows.append(Row("store_kv", "default", f"T={tokens}",
                            note=f"{type(error).__name__}: {error}"[:100]))
    return rows


FUSED_TOKENS, HIDDEN, INTERMEDIATE = 16384, 1024, 3072


def fused_case(name: str, make: Callable[[], tuple], run: Callable, reference: Callable,
               moved: int, ceilings: Ceilings) -> list[Row]:
    sets = [make() for _ in range(4)]
    ours, torch_row = Row("fused", name, f"T={FUSED_TOKENS}"), Row("fused", name, "torch eager")

    def ours_seconds() -> float:
        want = reference(*sets[0])
        got = run(*sets[0])
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        ours.rel_err = max(relative_error(g, w) for g, w in zip(got, want, strict=True))
        return graph_seconds_per_call([lambda s=s: run(*s) for s in sets])

    guarded(ours, lambda: fill_rates(ours, ours_seconds(), moved, 0.0, ceilings))
    guarded(torch_row, lambda: fill_rates(torch_row, graph_seconds_per_call(
        [lambda s=s: reference(*s) for s in sets]), moved, 0.0, ceilings))
    return [ours, torch_row]


def fused_rows(ceilings: Ceilings) -> list[Row]:
    from jupyter_qwen.model.kernels import fused_ops as ops
    from jupyter_qwen.model.qwen3 import RotaryEmbedding

    tokens, element = FUSED_TOKENS, torch.finfo(DTYPE).bits // 8

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE, dtype=DTYPE)

    weight = rand(HIDDEN)
    rotary = RotaryEmbedding(HEAD_DIM, 40960, 1_000_000.0)
    rotary.build(torch.device(DEVICE))
    cos, sin = rotary.cos_cache, rotary.sin_cache

    def rope_inputs() -> tuple:
        positions = torch.randint(0, 40960, (tokens,), device=DEVICE)
        return positions, rand(tokens, HEADS, HEAD_DIM), rand(tokens, KV_HEADS, HEAD_DIM)

    def rope_ours(positions, q, k):
        ops.apply_rope_(positions, q, k, cos, sin)
        return q, k

    rope_bytes = 2 * tokens * (HEADS + KV_HEADS) * HEAD_DIM * element + tokens * HEAD_DIM * 4
    return [
        *fused_case("rms_norm", lambda: (rand(tokens, HIDDEN),),
                    lambda x: ops.rms_norm(x, weight, 1e-6),
                    lambda x: ops.rms_norm_reference(x, weight, 1e-6),
                    2 * tokens * HIDDEN * element, ceilings),
        *fused_case("add_rms_norm", lambda: (rand(tokens, HIDDEN), rand(tokens, HIDDEN)),
                    lambda x, r: ops.add_rms_norm(x, r, weight, 1e-6),
                    lambda x, r: ops.add_rms_norm_reference(x, r, weight, 1e-6),
                    4 * tokens * HIDDEN * element, ceilings),
        *fused_case("silu_and_mul", lambda: (rand(tokens, 2 * INTERMEDIATE),), ops.silu_and_mul,
                    ops.silu_and_mul_reference, 3 * tokens * INTERMEDIATE * element, ceilings),
        *fused_case("rope (q,k)", rope_inputs, rope_ours,
                    lambda p, q, k: ops.rope_reference(p, q, k, cos, sin), rope_bytes, ceilings),
    ]


def table(rows: list[Row]) -> list[str]:
    lines = [f"{'kernel':8s} {'variant':15s} {'shape':28s} {'us':>8s} {'GB/s':>5s} {'bw%':>4s} "
             f"{'TFLOP/s':>7s} {'mm%':>4s} {'rel err':>7s} note"]
    for r in rows:
        lines.append(
            f"{r.kernel:8s} {r.variant:15s} {r.shape[:28]:28s} {r.micros:8.1f} {r.gbps:5.0f} "
            f"{100 * r.bw_fraction:4.0f} {r.tflops:7.1f} {100 * r.mm_fraction:4.0f} "
            f"{r.rel_err:7.1e} {r.note}".replace("nan", "  -"))
    return lines


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    began = time.perf_counter()
    say(f"{torch.cuda.get_device_name()} torch {torch.__version__} "
        f"SMs {torch.cuda.get_device_properties(0).multi_processor_count}")
    import triton

    say(f"triton {triton.__version__}")
    ceilings = measure_ceilings()
    rows: list[Row] = []
    for section in (store_rows, decode_rows, prefill_rows, fused_rows):
        try:
            rows += section(ceilings)
        except Exception:
            traceback.print_exc()
        say(f"{section.__name__} done at {time.perf_counter() - began:.0f} s")
    lines = table(rows)
    say("\n".join(lines))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "kernels.txt").write_text("\n".join(LOG) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
