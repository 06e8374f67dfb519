"""Where a structured decode step's time goes, beside the same step unconstrained (GPU).

    python benchmarks/structured_probe.py [--model-dir DIR] [--rows 256] [--steps 30]

A random-weight Qwen3-0.6B-shaped engine (the checkpoint benchmarks/throughput.py makes)
takes `--rows` requests of W256-like prompt lengths, greedy, each either unconstrained or
with its own JSON schema (benchmarks/structured.py, as `throughput.py --sampling
greedy,structured` sends them; the schemas are compiled before the clock starts). Once every
prompt is in the cache it times pure decode steps under four variants, in this order:

- `structured-old`: structured rows the way the engine drew them before: `sample` on a copy
  of the logits, and the matcher advanced right after each step (serially, GPU idle);
- `structured-sample`: `sample`, with the matcher advanced at the next bitmask fill;
- `structured`: the engine as it is: the bitmask applied in place on the forward graph's
  logits and the argmax there, the matcher advanced at the fill;
- `greedy`: no constraint (the forward graph's own argmax).

Per step (medians, ms): `step` (host wall of `LLMEngine.step`), `forward` (the graph replay,
CUDA events), `fill` (host time filling the bitmask, the matcher catching up included; it
runs while the forward pass does), `draw` (GPU clock from the end of the forward pass to the
tokens on the host: bitmask apply, argmax or sample, read-back) and `outside` (host time of
the step outside the decode call: schedule, token bookkeeping; the GPU idles meanwhile).

Checks before the table: every structured output follows its grammar (a fresh matcher takes
it token by token), and the three structured variants produce the same tokens (greedy on the
same prompts and schemas). Then torch.profiler lists the top CUDA kernels of 20 steps,
structured and unconstrained. Prints a short table last; writes JSON under $OUT if set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.structured import STRUCTURED, follows_grammar, precompile
from benchmarks.throughput import (
    FULL,
    ensure_checkpoint,
    sampling_params,
    usable_id_high,
)

VARIANTS = ("structured-old", "structured-sample", "structured", "greedy")
WARM_STEPS = 3
PROFILED_STEPS = 20


class StepProbe:
    """Wraps the runner's decode call, graph replay and bitmask fill with timers."""

    def __init__(self, runner):
        self.runner = runner
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        self.fill_s = self.decode_s = 0.0
        self.samples = 0
        graphs_run, replay, fill = runner.graphs.run, runner._replay_decode, \
            runner.token_bitmasks.fill

        def run(*args):
            self.events[0].record()
            size = graphs_run(*args)
            self.events[1].record()
            return size

        def decode(seqs):
            begin = time.perf_counter()
            result = replay(seqs)
            self.events[2].record()
            self.decode_s += time.perf_counter() - begin
            return result

        def timed_fill(seqs):
            begin = time.perf_counter()
            result = fill(seqs)
            self.fill_s += time.perf_counter() - begin
            return result

        runner.graphs.run, runner._replay_decode = run, decode
        runner.token_bitmasks.fill = timed_fill

    def step(self, engine) -> dict:
        self.fill_s = self.decode_s = 0.0
        begin = time.perf_counter()
        engine.step()
        wall = time.perf_counter() - begin
        torch.cuda.synchronize()
        start, forward_end, back = self.events
        return {"step": 1e3 * wall, "forward": start.elapsed_time(forward_end),
                "fill": 1e3 * self.fill_s, "draw": forward_end.elapsed_time(back),
                "outside": 1e3 * (wall - self.decode_s)}


class Variant:
    """Patches that turn the engine into one variant while active."""

    def __init__(self, name: str, runner):
        self.name, self.runner, self.undo = name, runner, []

    def __enter__(self) -> Variant:
        from jupyter_qwen.engine.constraints import SequenceConstraint

        if self.name in ("structured-old", "structured-sample"):
            draw = self.runner.graph_sampler.draw
            self.runner.graph_sampler.draw = lambda seqs, size, adjustments=None: draw(seqs,
                                                                                     size)
            self.undo.append(lambda: delattr(self.runner.graph_sampler, "draw"))
        if self.name == "structured-old":
            accept = SequenceConstraint.accept

            def accept_now(constraint, token_id):
                accept(constraint, token_id)
                constraint.catch_up()

            SequenceConstraint.accept = accept_now
            self.undo.append(lambda: setattr(SequenceConstraint, "accept", accept))
        return self

    def __exit__(self, *exc) -> None:
        for undo in reversed(self.undo):
            undo()


def prompts(rows: int, id_high: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randint(0, id_high) for _ in range(rng.randint(*FULL.w256_in))]
            for _ in range(rows)]


def admit(llm, batch: list[list[int]], sampling: str) -> list:
    engine = llm.engine
    seqs = [engine.add_request(prompt, sampling_params(sampling, 1024, index))
            for index, prompt in enumerate(batch)]
    while any(seq.num_computed_tokens < seq.num_prompt_tokens for seq in seqs):
        engine.step()
    return seqs


def run_variant(llm, probe: StepProbe, name: str, batch: list[list[int]], steps: int) -> dict:
    sampling = "greedy" if name == "greedy" else STRUCTURED
    with Variant(name, llm.engine.runner):
        seqs = admit(llm, batch, sampling)
        for _ in range(WARM_STEPS):
            probe.step(llm.engine)
        samples = [probe.step(llm.engine) for _ in range(steps)]
    tokens = [list(seq.output_token_ids) for seq in seqs]
    follows = (all(follows_grammar(llm, index, ids) for index, ids in enumerate(tokens))
               if sampling == STRUCTURED else None)
    llm.engine.abort_all()
    medians = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    return {"variant": name, "rows": len(batch), "steps": steps, **medians,
            "tokens_per_s": len(batch) * 1e3 / medians["step"], "follows_grammar": follows,
            "tokens": tokens}


def kernel_table(llm, probe: StepProbe, name: str, batch: list[list[int]]) -> str:
    from torch.profiler import ProfilerActivity, profile

    sampling = "greedy" if name == "greedy" else STRUCTURED
    admit(llm, batch, sampling)
    probe.step(llm.engine)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_STEPS):
            probe.step(llm.engine)
    llm.engine.abort_all()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=12,
                                     max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-kernels", action="store_true", help="skip the profiler tables")
    args = parser.parse_args()
    from jupyter_qwen import LLM

    begin = time.perf_counter()
    model_dir = ensure_checkpoint(args.model_dir, "qwen3-0.6b")
    batch = prompts(args.rows, usable_id_high(model_dir, FULL.id_high))
    results, tables = [], {}
    with LLM(str(model_dir), max_num_seqs=args.rows, enable_prefix_caching=False) as llm:
        compiled = precompile(llm, args.rows)
        print(f"compiled {args.rows} schemas in {compiled['compile_wall_s']:.1f} s; "
              f"engine ready at {time.perf_counter() - begin:.0f} s", flush=True)
        probe = StepProbe(llm.engine.runner)
        for name in VARIANTS:
            results.append(run_variant(llm, probe, name, batch, args.steps))
            print(f"{name}: {results[-1]['step']:.3f} ms/step "
                  f"({time.perf_counter() - begin:.0f} s)", flush=True)
        if not args.no_kernels:
            for name in ("structured", "greedy"):
                tables[name] = kernel_table(llm, probe, name, batch)
                print(f"top CUDA kernels, {PROFILED_STEPS} decode steps, {name} "
                      f"({args.rows} rows):\n{tables[name]}", flush=True)
    reference = results[0]["tokens"]
    for result in results[1:3]:
        result["same_tokens_as_old"] = result["tokens"] == reference
    save(results, tables, args)
    print_table(results, time.perf_counter() - begin)


def save(results: list[dict], tables: dict, args) -> None:
    out = os.environ.get("OUT")
    if not out:
        return
    runs = [{key: value for key, value in result.items() if key != "tokens"}
            for result in results]
    Path(out, "structured_probe.json").write_text(json.dumps(
        {"args": vars(args), "device": torch.cuda.get_device_name(), "runs": runs,
         "kernel_tables": tables}, indent=2))


def print_table(results: list[dict], wall_s: float) -> None:
    greedy = next(r for r in results if r["variant"] == "greedy")
    print(f"\nper decode step at {greedy['rows']} rows, medians of {greedy['steps']} steps, "
          f"ms ({torch.cuda.get_device_name()}, {wall_s:.0f} s in all)")
    print(f"{'variant':<19}{'step':>8}{'forward':>9}{'fill':>7}{'draw':>7}{'outside':>9}"
          f"{'tok/s':>9}{'x greedy':>10}  checks")
    for r in results:
        checks = []
        if r["follows_grammar"] is not None:
            checks.append("grammar ok" if r["follows_grammar"] else "GRAMMAR BROKEN")
        if "same_tokens_as_old" in r:
            checks.append("tokens = old" if r["same_tokens_as_old"] else "TOKENS DIFFER")
        print(f"{r['variant']:<19}{r['step']:>8.3f}{r['forward']:>9.3f}{r['fill']:>7.3f}"
              f"{r['draw']:>7.3f}{r['outside']:>9.3f}{r['tokens_per_s']:>9,.0f}"
              f"{r['tokens_per_s'] / greedy['tokens_per_s']:>10.3f}  {', '.join(checks)}")


if __name__ == "__main__":
    main()
