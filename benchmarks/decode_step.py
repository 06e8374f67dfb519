"""The one-launch decode step against the three-kernel path, per layer and in the engine.

    python benchmarks/decode_step.py [--variants 64,128,256] [--best-out FILE]
    python benchmarks/decode_step.py --no-kernels --engine three,64
    python benchmarks/decode_step.py --throughput on|off [--variant 64] THROUGHPUT_ARGS...

Kernels: Qwen3-0.6B attention (16 q heads, 8 kv heads, head_dim 128, bf16, block 16, a
block table as wide as the engine's for max_model_len 40960). Each layer of LAYERS has its
own KV cache and qkv row; one CUDA graph runs all layers; the median replay over LAYERS is
the time of one layer's attention: `three` = qk_norm_rope_store + split + merge kernels,
then decode_step_attention with each `min_chunk` (see Variant), each checked against the
three-kernel path first. `on` below means the fused step for pure decode steps of any
batch size (the engine's default, `KernelOptions.fused_decode_step_max_batch`, stops at 1);
the engine runs get it through their config (`kernels=`), as in `fused_step_options`.

`--engine`: the 0.6B engine with each listed path (`three`, or a fused variant): GPU time of
one decode step's graph replay and of a whole engine step (benchmarks/profile_step.py's
measure) at batch 1 and 8, and the greedy tokens of one prompt against the first path
listed. `--throughput on|off`: benchmarks/throughput.py with
the rest of the arguments and the switch set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernel_setup import launch_pdl, relative_error
from benchmarks.kernels import graph_micros_per_call
from jupyter_qwen.config import KernelOptions
from jupyter_qwen.model.kernels import decode_step

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 16, 8, 128, 16, torch.bfloat16
TABLE_WIDTH = 40960 // BLOCK_SIZE
LAYERS = 28
REPLAYS = 30
SCALE = HEAD_DIM**-0.5
EPS = 1e-6


class Layer:
    """One layer's decode inputs: KV cache, block tables, qkv rows, norm weights."""

    def __init__(self, batch: int, context: int, rotary, generator: torch.Generator):
        blocks_per_seq = -(-context // BLOCK_SIZE)
        shape = (batch * blocks_per_seq, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
        self.k_cache = torch.randn(shape, device="cuda", dtype=DTYPE, generator=generator)
        self.v_cache = torch.randn(shape, device="cuda", dtype=DTYPE, generator=generator)
        order = torch.randperm(shape[0], device="cuda", generator=generator).to(torch.int32)
        self.block_tables = torch.full((batch, TABLE_WIDTH), -1, dtype=torch.int32,
                                       device="cuda")
        self.block_tables[:, :blocks_per_seq] = order.view(batch, blocks_per_seq)
        last = context - 1
        self.positions = torch.full((batch,), last, dtype=torch.int64, device="cuda")
        self.slots = (self.block_tables[:, last // BLOCK_SIZE].long() * BLOCK_SIZE
                      + last % BLOCK_SIZE)
        self.seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
        self.qkv = torch.randn(batch, width, device="cuda", dtype=DTYPE, generator=generator)
        self.q_weight = 1 + 0.2 * torch.randn(HEAD_DIM, device="cuda", generator=generator)
        self.k_weight = 1 + 0.2 * torch.randn(HEAD_DIM, device="cuda", generator=generator)
        self.q_weight, self.k_weight = self.q_weight.to(DTYPE), self.k_weight.to(DTYPE)
        self.rotary = rotary

    def three_kernels(self) -> torch.Tensor:
        from jupyter_qwen.model.kernels.decode_attention import decode_attention
        from jupyter_qwen.model.kernels.fused_ops import qk_norm_rope_store

        q = qk_norm_rope_store(self.qkv, self.positions, self.slots, self.q_weight,
                               self.k_weight, EPS, self.rotary.cos_cache,
                               self.rotary.sin_cache, self.k_cache, self.v_cache)
        return decode_attention(q, self.k_cache, self.v_cache, self.block_tables,
                                self.seq_lens, SCALE)

    def fused(self, workspace, min_chunk: int | None = None) -> torch.Tensor:
        return decode_step.decode_step_attention(
            self.qkv, self.positions, self.slots, self.q_weight, self.k_weight, EPS,
            self.rotary.cos_cache, self.rotary.sin_cache, self.k_cache, self.v_cache,
            self.block_tables, self.seq_lens, SCALE, workspace=workspace,
            launch_pdl=launch_pdl(), min_chunk=min_chunk)


def check(layer: Layer, workspace, min_chunk: int | None = None) -> tuple[float, float, bool]:
    """(output error, new-k error, v equal) of the fused step against the three kernels."""
    k_before, v_before = layer.k_cache.clone(), layer.v_cache.clone()
    want = layer.three_kernels()
    k_want, v_want = layer.k_cache.clone(), layer.v_cache.clone()
    layer.k_cache.copy_(k_before)
    layer.v_cache.copy_(v_before)
    got = layer.fused(workspace, min_chunk)
    torch.cuda.synchronize()
    rows = layer.slots // BLOCK_SIZE, layer.slots % BLOCK_SIZE
    clean = workspace.tickets.count_nonzero().item() == 0
    return (relative_error(got, want), relative_error(layer.k_cache[rows], k_want[rows]),
            torch.equal(layer.v_cache, v_want) and clean)


@dataclass(frozen=True)
class Variant:
    """A launch choice of the fused step: the shortest chunk a split takes."""

    min_chunk: int

    @classmethod
    def parse(cls, text: str) -> Variant:
        return cls(int(text))

    def __str__(self) -> str:
        return str(self.min_chunk)



ANY_BATCH = 4096  # the most `kernels.fused_decode_step_max_batch` takes


def fused_step_options(enabled: bool, variant: Variant | None = None) -> KernelOptions:
    """The engine's kernel options with the switch: the fused step for pure decode steps of
    any batch size when enabled (launched as `variant` says), never otherwise."""
    return KernelOptions(fused_decode_step=enabled, fused_decode_step_max_batch=ANY_BATCH,
                         decode_step_min_chunk=variant.min_chunk if variant else None)


def fused_step_engine_opts(enabled: bool, variant: Variant | None = None) -> list[str]:
    """The same switch as benchmarks/throughput.py's `--engine-opt` arguments."""
    chunk = ["--engine-opt", f"kernels.decode_step_min_chunk={variant.min_chunk}"] \
        if variant else []
    return ["--engine-opt", f"kernels.fused_decode_step={'on' if enabled else 'off'}",
            "--engine-opt", f"kernels.fused_decode_step_max_batch={ANY_BATCH}", *chunk]


def kernel_table(batches: list[int], contexts: list[int], variants: list[Variant]) -> Variant:
    """Prints the table; returns the variant fastest at batch 1 over contexts <= 600."""
    from jupyter_qwen.model.qwen3 import RotaryEmbedding

    rotary = RotaryEmbedding(HEAD_DIM, 40960, 1_000_000.0)
    rotary.build(torch.device("cuda"))
    generator = torch.Generator("cuda").manual_seed(0)
    print(f"per-layer attention of a decode step, us (median of {REPLAYS} graph replays "
          f"of {LAYERS} layers); fused variants by min_chunk; check = output error, new-k "
          "error, v and counters exact", flush=True)
    print(f"{'batch':>6}{'context':>9}{'three':>9}"
          + "".join(f"{v!s:>9}" for v in variants) + "   worst check", flush=True)
    batch1 = dict.fromkeys(variants, 0.0)
    for batch in batches:
        workspace = decode_step.DecodeStepWorkspace.allocate(batch, HEADS, KV_HEADS, HEAD_DIM,
                                                             torch.device("cuda"))
        for context in contexts:
            layers = [Layer(batch, context, rotary, generator) for _ in range(LAYERS)]
            three = graph_micros_per_call([layer.three_kernels for layer in layers], REPLAYS)
            times, checks = [], []
            for variant in variants:
                checks.append(check(layers[0], workspace, variant.min_chunk))
                times.append(graph_micros_per_call([partial(layer.fused, workspace,
                                                            variant.min_chunk)
                                                    for layer in layers], REPLAYS))
                if batch == 1 and context <= 600:
                    batch1[variant] += times[-1]
            error = max(c[0] for c in checks)
            k_error = max(c[1] for c in checks)
            exact = all(c[2] for c in checks)
            print(f"{batch:>6}{context:>9}{three:>9.2f}"
                  + "".join(f"{t:>9.2f}" for t in times)
                  + f"   {error:.1e} {k_error:.1e} {exact}", flush=True)
            del layers
            torch.cuda.empty_cache()
    best = min(variants, key=lambda v: (batch1[v], v.min_chunk)) if any(batch1.values()) \
        else variants[0]
    print(f"fastest at batch 1, contexts <= 600: {best}", flush=True)
    return best


def engine_table(model_dir: str, context: int, variants: list[Variant | None]) -> None:
    """`None` in variants: the three-kernel path."""
    from benchmarks.profile_step import profile
    from jupyter_qwen import LLM, SamplingParams
    from jupyter_qwen.testing import make_tiny_qwen3

    if not (Path(model_dir) / "config.json").is_file():
        make_tiny_qwen3(model_dir, shape="qwen3-0.6b")
    greedy = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, detokenize=False)
    prompt = [(i * 7919) % 10000 for i in range(300)]
    print(f"engine decode steps, Qwen3-0.6B shape, context {context}", flush=True)
    baseline = None
    for variant in variants:
        kernels = fused_step_options(variant is not None, variant)
        name = "three" if variant is None else f"fused {variant}"
        with LLM(model_dir, max_num_seqs=64, gpu_memory_utilization=0.8,
                 kernels=kernels) as llm:
            tokens = llm.generate([prompt], greedy)[0].token_ids
            for batch in (1, 8):
                row = profile(llm, batch, context)
                print(f"    {name:<12} batch {batch:>2}: graph {row['graph_ms']:.3f} ms,"
                      f" engine step {row['step_ms']:.3f} ms,"
                      f" {batch / row['step_ms'] * 1000:,.0f} tok/s", flush=True)
        baseline = baseline or tokens
        same = next((i for i, (a, b) in enumerate(zip(baseline, tokens, strict=True))
                     if a != b), None)
        print(f"    {name:<12} vs first: greedy tokens first differ at {same}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--contexts", default="128,600,2048")
    parser.add_argument("--variants", default="64,128,256",
                        help="fused launch choices to time (min_chunk)")
    parser.add_argument("--best-out", help="write the fastest variant at batch 1 here")
    parser.add_argument("--engine", help="engine runs: 'three' and/or variants, e.g. three,64")
    parser.add_argument("--no-kernels", action="store_true")
    parser.add_argument("--context", type=int, default=600, help="engine context")
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir())
                                                   / "jupyter_qwen_bench_qwen3-0.6b"))
    parser.add_argument("--throughput", choices=["on", "off"])
    parser.add_argument("--variant", type=Variant.parse, help="fused launch choice, e.g. 64")
    args, rest = parser.parse_known_args()
    if args.throughput:
        from benchmarks import throughput

        throughput.main(rest + fused_step_engine_opts(args.throughput == "on", args.variant))
        return
    if not args.no_kernels:
        best = kernel_table([int(b) for b in args.batches.split(",")],
                            [int(c) for c in args.contexts.split(",")],
                            [Variant.parse(v) for v in args.variants.split(",")])
        if args.best_out:
            Path(args.best_out).write_text(str(best))
    if args.engine:
        engine_table(args.model_dir, args.context,
                     [None if v == "three" else Variant.parse(v)
                      for v in args.engine.split(",")])


if __name__ == "__main__":
    main()
