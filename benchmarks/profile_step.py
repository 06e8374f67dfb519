"""Where a decode step's time goes: GPU replay time vs the engine's own CPU work.

    python benchmarks/profile_step.py [--model-dir DIR] [--batch 1,64,256] [--context 600]

For each batch size it fills the engine with that many sequences (random prompts of
`--context` tokens), then times:
- `graph`: one CUDA-graph replay of the model, by CUDA events (GPU time only);
- `step`: a whole `LLMEngine.step()` on the host clock (what the user gets);
- the host-side pieces of a step (schedule, input preparation, replay launch, wait for the
  GPU, sampling, bookkeeping), each measured with a synchronize at its end.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_qwen import LLM, SamplingParams
from jupyter_qwen.engine import model_runner as runner_module


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def fill(llm: LLM, batch: int, context: int) -> None:
    rng = random.Random(batch)
    params = SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True, detokenize=False)
    for _ in range(batch):
        llm.engine.add_request([rng.randrange(10000) for _ in range(context)], params)
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in llm.engine.requests.values()):
        llm.engine.step()


def graph_time(llm: LLM, batch: int) -> float:
    graphs = llm.engine.runner.graphs
    size = next(s for s in graphs.batch_sizes if s >= batch)
    graph = graphs.graphs[size]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(20):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1000)
    return median_ms(samples)


def step_times(llm: LLM, steps: int) -> list[float]:
    samples = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        llm.engine.step()
        samples.append(time.perf_counter() - start)
    return samples


class PhaseTimer:
    """Wraps engine methods so each phase ends with a synchronize and is timed."""

    def __init__(self, llm: LLM):
        self.times: dict[str, list[float]] = {}
        engine, runner = llm.engine, llm.engine.runner
        self.wrap(engine.scheduler, "schedule", "schedule")
        self.wrap(runner, "_replay_decode", "prepare+replay+gpu")
        self.wrap(runner_module, "sample", "sample")
        self.wrap(runner_module, "build_sampling_batch", "sampling batch")
        self.wrap(engine, "_append_token", "bookkeeping (per seq)")

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            torch.cuda.synchronize()
            start = time.perf_counter()
            result = original(*args, **kwargs)
            torch.cuda.synchronize()
            self.times.setdefault(label, []).append(time.perf_counter() - start)
            return result

        setattr(owner, name, timed)


def profile(llm: LLM, batch: int, context: int) -> dict:
    fill(llm, batch, context)
    step_times(llm, 5)
    steps = step_times(llm, 30)
    result = {"batch": batch, "graph_ms": graph_time(llm, batch), "step_ms": median_ms(steps)}
    llm.engine.abort_all()
    return result


def phases(model_dir: str, batch: int, context: int, opts: dict) -> dict:
    with LLM(model_dir, **opts) as llm:
        fill(llm, batch, context)
        timer = PhaseTimer(llm)
        step_times(llm, 20)
        per_step = {label: 1000 * sum(values) / 20 for label, values in timer.times.items()}
        llm.engine.abort_all()
    return per_step


def kernel_table(model_dir: str, batch: int, context: int) -> None:
    """The CUDA kernels of eager decode steps, by total GPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with LLM(model_dir, max_num_seqs=max(batch, 1), enforce_eager=True,
             gpu_memory_utilization=0.8) as llm:
        fill(llm, batch, context)
        step_times(llm, 3)
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            step_times(llm, 5)
        llm.engine.abort_all()
    print(f"kernels of 5 eager decode steps at batch {batch} (GPU time):")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18,
                                    max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir())
                                                   / "jupyter_qwen_bench_qwen3-0.6b"))
    parser.add_argument("--batch", default="1,64,256")
    parser.add_argument("--context", type=int, default=600)
    parser.add_argument("--kernels", action="store_true", help="also list kernel times")
    args = parser.parse_args()
    if not (Path(args.model_dir) / "config.json").is_file():
        from jupyter_qwen.testing import make_tiny_qwen3

        make_tiny_qwen3(args.model_dir, shape="qwen3-0.6b")
    batches = [int(b) for b in args.batch.split(",")]
    opts = {"max_num_seqs": max(batches), "gpu_memory_utilization": 0.8}
    with LLM(args.model_dir, **opts) as llm:
        results = [profile(llm, batch, args.context) for batch in batches]
    print(f"context {args.context} tokens; times are medians in ms")
    print(f"{'batch':>6}{'graph (GPU)':>14}{'engine step':>14}{'host overhead':>16}{'tok/s':>10}")
    for row in results:
        overhead = row["step_ms"] - row["graph_ms"]
        print(f"{row['batch']:>6}{row['graph_ms']:>14.3f}{row['step_ms']:>14.3f}"
              f"{overhead:>16.3f}{row['batch'] / row['step_ms'] * 1000:>10,.0f}")
    for batch in (batches[0], batches[-1]):
        print(f"phases per step at batch {batch} (each synchronized):")
        for label, ms in phases(args.model_dir, batch, args.context, opts).items():
            print(f"    {label:<24}{ms:8.3f} ms")
    if args.kernels:
        for batch in (batches[0], batches[-1]):
            kernel_table(args.model_dir, batch, args.context)


if __name__ == "__main__":
    main()
