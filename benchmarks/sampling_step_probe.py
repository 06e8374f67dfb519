"""Where a sampled decode step's extra time goes, at batch 1 and 4 (GPU, ~1-2 min).

    python benchmarks/sampling_step_probe.py [--shape qwen3-0.6b] [--batches 1,4]

A random-weight checkpoint of `--shape` (benchmarks/throughput.py's `ensure_checkpoint`),
one engine (max_num_seqs 8). For each captured-draw variant (`GraphSampler.draw_kernels`:
split = the torch steps around the window kernel, fused = one kernel after the window,
threshold = that over the threshold top-W), captured beside the engine's decode graphs:
- check: every variant draws the split variant's tokens from the same logits and keys
  (Qwen3 defaults seeded, and with penalties; the penalty counts restored between draws);
  a variant that disagrees is reported and not timed;
- `decode graph`: one replay of the forward graph (CUDA events, median);
- `draw graph <shape>`: one replay of the captured draw, plain and penalised (narrow window);
- `kernels`: the CUDA kernels of one eager draw per variant (torch.profiler, device time);
- `host fill`: `_fill` + its copy on the host clock (unseeded, seeded, penalised rows);
- `step <sampling>`: a whole `LLMEngine.step()` on the host clock, median of 120 decode steps,
  greedy vs qwen3 (T 0.6, top-k 20, top-p 0.95) vs seeded vs penalties (+ presence 1.5,
  repetition 1.05), with each variant installed as the engine's sampler.
Printed last: one table; JSON under $OUT when set.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.throughput import SAMPLING_FIELDS, ensure_checkpoint
from jupyter_qwen import LLM, SamplingParams
from jupyter_qwen.config import KernelOptions
from jupyter_qwen.engine.graph_sampling import DRAW_KERNELS, DRAW_SHAPES, GraphSampler
from jupyter_qwen.engine.sequence import Sequence

SAMPLINGS = ("greedy", "qwen3", "seeded", "penalties")
NARROW, _, NARROW_PENALISED, _ = DRAW_SHAPES
PROMPT_LEN = 128
STEPS = 120
ROWS: list[list[str]] = []


def say(line: str = "") -> None:
    print(line, flush=True)


def params_of(sampling: str, index: int) -> SamplingParams:
    seed = 1000 + index if sampling == "seeded" else None
    return SamplingParams(**SAMPLING_FIELDS[sampling], seed=seed, max_tokens=100_000,
                          ignore_eos=True, detokenize=False)


def event_micros(run, repeats: int = 50) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000)
    return statistics.median(samples)


def host_micros(run, repeats: int = 200) -> float:
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        begin = time.perf_counter()
        run()
        samples.append((time.perf_counter() - begin) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(samples)


def samplers_of(runner) -> dict[str, GraphSampler]:
    """The engine's own sampler under its variant, and the others captured beside it."""
    own = runner.graph_sampler
    made = {own.draw_kernels: own}
    for kernels in DRAW_KERNELS:
        if kernels not in made:
            try:
                sampler = GraphSampler(runner.graphs.logits, runner.device,
                                       runner.penalty_state, runner.graphs.greedy_tokens,
                                       kernels)
                sampler.capture()
            except Exception as error:  # reported, the other variants still measured
                say(f"  {kernels}: capture failed: {error!r}"[:2000])
                continue
            made[kernels] = sampler
    return made


def probe_seqs(sampling: str, count: int, vocab: int, seed: int | None = None,
               ) -> list[Sequence]:
    """`count` sequences of `sampling`'s parameters; with `seed`, every row seeded."""
    rng = random.Random(count)
    params = [params_of(sampling, i) if seed is None else
              SamplingParams(**SAMPLING_FIELDS[sampling], seed=seed + i) for i in range(count)]
    return [Sequence(f"probe-{sampling}-{i}", [rng.randrange(vocab) for _ in range(PROMPT_LEN)],
                     param) for i, param in enumerate(params)]


def check(samplers: dict[str, GraphSampler], runner, size: int, vocab: int) -> dict[str, bool]:
    """Each variant's tokens against split's, for the same logits, seeds and counts."""
    agree = {name: True for name in samplers}
    state = runner.penalty_state
    for sampling in ("seeded", "penalties"):
        for trial in range(5):
            runner.graphs.logits[size].normal_(generator=None).mul_(3)
            runner.graphs.greedy_tokens[size].copy_(runner.graphs.logits[size].argmax(-1))
            counts = state.output_counts.clone()
            drawn = {}
            for name, sampler in samplers.items():
                seqs = probe_seqs(sampling, size, vocab, seed=7 * trial)
                drawn[name] = sampler.draw(seqs, size)
                state.output_counts.copy_(counts)
                for seq in seqs:
                    state.release(seq)
            for name, tokens in drawn.items():
                if tokens != drawn["split"]:
                    agree[name] = False
                    say(f"  MISMATCH {name} batch {size} {sampling}: {tokens} vs "
                        f"{drawn['split']}")
    return agree


def draw_replays(samplers: dict[str, GraphSampler], runner, size: int, vocab: int,
                 agree: dict[str, bool]) -> dict:
    out = {"decode_graph_us": event_micros(runner.graphs.graphs[size].replay)}
    for name, sampler in samplers.items():
        if not agree[name]:
            continue
        for shape, label in ((NARROW, "plain"), (NARROW_PENALISED, "penalties")):
            sampling = "penalties" if shape.penalties else "qwen3"
            seqs = probe_seqs(sampling, size, vocab)
            slots = runner.penalty_state.slot_numbers(seqs) if shape.penalties else []
            sampler._fill(seqs, size, iter(slots))
            counts = runner.penalty_state.output_counts.clone()
            out[f"{name}/draw_{label}_us"] = event_micros(sampler.graphs[size, shape].replay)
            runner.penalty_state.output_counts.copy_(counts)
            draw = functools.partial(sampler._draw, size, shape)
            out[f"{name}/kernels_{label}"] = kernel_table(draw)
            runner.penalty_state.output_counts.copy_(counts)
            for seq in seqs:
                runner.penalty_state.release(seq)
    return out


def kernel_table(run) -> list[tuple[str, float]]:
    """(kernel, device microseconds) of one eager call, after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        micros = getattr(event, "device_time_total", None) or getattr(event,
                                                                      "cuda_time_total", 0)
        if micros > 0 and event.count >= 5:
            rows.append((event.key[:60], micros / 5))
    return sorted(rows, key=lambda row: -row[1])


def fill_times(samplers: dict[str, GraphSampler], runner, size: int, vocab: int) -> dict:
    sampler = samplers["split"]
    out = {}
    for sampling in ("qwen3", "seeded", "penalties"):
        seqs = probe_seqs(sampling, size, vocab)
        slots = runner.penalty_state.slot_numbers(seqs) if sampling == "penalties" else []
        out[f"fill_{sampling}_us"] = host_micros(
            lambda seqs=seqs, slots=slots: sampler._fill(seqs, size, iter(slots)))
        for seq in seqs:
            runner.penalty_state.release(seq)
    return out


def step_times(llm: LLM, samplers: dict[str, GraphSampler], size: int, vocab: int) -> dict:
    engine, runner = llm.engine, llm.engine.runner
    own = runner.graph_sampler
    out = {}
    rng = random.Random(size)
    for name, sampler in samplers.items():
        runner.graph_sampler = sampler
        for sampling in SAMPLINGS:
            if sampling == "greedy" and name != "split":
                continue  # greedy steps never reach the sampler
            for index in range(size):
                engine.add_request([rng.randrange(vocab) for _ in range(PROMPT_LEN)],
                                   params_of(sampling, index))
            for _ in range(8):  # prefill and a few decode steps
                engine.step()
            samples = []
            for _ in range(STEPS):
                begin = time.perf_counter()
                engine.step()
                samples.append((time.perf_counter() - begin) * 1e6)
            engine.abort_all()
            label = "greedy" if sampling == "greedy" else f"{name}/{sampling}"
            out[f"step_{label}_us"] = statistics.median(samples)
    runner.graph_sampler = own
    return out


@torch.inference_mode()  # the graphs' buffers are inference tensors, refilled in place
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--batches", default="1,4")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    model_dir = ensure_checkpoint(args.model_dir, args.shape)
    # the engine captures the split draw (the old one); the others are captured beside it
    llm = LLM(str(model_dir), max_num_seqs=8, max_model_len=2048,
              kernels=KernelOptions(sampled_draw="split"))
    runner = llm.engine.runner
    vocab = runner.model_config.vocab_size
    samplers = samplers_of(runner)
    say(f"[{time.perf_counter() - begin:.0f}s] engine and {len(samplers)} samplers ready "
        f"({torch.cuda.get_device_name()})")
    results: dict = {"device": torch.cuda.get_device_name(), "shape": args.shape}
    for size in (int(b) for b in args.batches.split(",")):
        agree = check(samplers, runner, size, vocab)
        part = {"agree": agree, **draw_replays(samplers, runner, size, vocab, agree),
                **fill_times(samplers, runner, size, vocab),
                **step_times(llm, {k: v for k, v in samplers.items() if agree[k]}, size, vocab)}
        results[f"batch{size}"] = part
        say(f"[{time.perf_counter() - begin:.0f}s] batch {size} done")
    llm.close()
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "sampling_step_probe.json").write_text(
            json.dumps(results, indent=1))
    print_tables(results)
    return results


def print_tables(results: dict) -> None:
    for key, part in results.items():
        if not key.startswith("batch"):
            continue
        say(f"\n{key} kernels of one eager draw (us, device):")
        for name, rows in part.items():
            if name.endswith("kernels_plain") or name.endswith("kernels_penalties"):
                say(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[:8]))
    say(f"\n{results['device']}, {results['shape']}, medians in us")
    for key, part in results.items():
        if not key.startswith("batch"):
            continue
        say(f"{key}: decode graph {part['decode_graph_us']:.1f}; host fill qwen3 "
            f"{part['fill_qwen3_us']:.1f} seeded {part['fill_seeded_us']:.1f} penalties "
            f"{part['fill_penalties_us']:.1f}; greedy step {part['step_greedy_us']:.1f}")
        say("| variant | agree | draw plain | draw penalties | step qwen3 | step seeded "
            "| step penalties | qwen3 / greedy |")
        for name, ok in part["agree"].items():
            get = functools.partial(figure, part, name)
            step = part.get(f"step_{name}/qwen3_us", float("nan"))
            say(f"| {name} | {ok} | {get('draw_plain_us'):.1f} | {get('draw_penalties_us'):.1f} "
                f"| {step:.1f} | {part.get(f'step_{name}/seeded_us', float('nan')):.1f} "
                f"| {part.get(f'step_{name}/penalties_us', float('nan')):.1f} "
                f"| {part['step_greedy_us'] / step:.3f} |")


def figure(part: dict, name: str, label: str) -> float:
    return part.get(f"{name}/{label}", float("nan"))


if __name__ == "__main__":
    main()
