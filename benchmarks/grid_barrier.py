"""What a decode step pays between kernels, against what a persistent kernel would pay.

    python benchmarks/grid_barrier.py [--steps 140] [--programs 0]

A batch-1 decode step of Qwen3-0.6B runs five kernels a layer (140 in all) at about 6 us
each against 1-3 us of bytes (BENCHMARKS.md, "Where the batch-1 time goes"). One kernel for
the whole step would replace each boundary by a grid-wide barrier. Measured here, in CUDA
graphs, per boundary (us):

- `launch`: a chain of --steps tiny kernels (one program an SM, each loading and storing a
  float), plain launches;
- `launch_pdl`: the same chain launched as programmatic dependent launches (`pdl.py`), each
  kernel waiting for the one before it;
- `barrier`: one persistent kernel (one program an SM, all resident) running --steps rounds
  of the same work, the rounds separated by a grid barrier (a release add on one counter,
  then an acquire spin until every program has arrived), minus the same kernel with no
  rounds.

--programs: programs of the persistent kernel (0: one an SM; more than the GPU holds at
once would never finish, so it is capped at the SM count). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernels import graph_micros_per_call
from jupyter_qwen.model.kernels import pdl


@triton.jit
def _tick_kernel(values_ptr, USE_GDC: tl.constexpr):
    """One boundary's worth of work: each program adds one to its float."""
    pid = tl.program_id(0)
    pdl.after_previous_kernel(USE_GDC)
    tl.store(values_ptr + pid, tl.load(values_ptr + pid) + 1.0)


@triton.jit(do_not_specialize=["rounds"])
def _rounds_kernel(values_ptr, counter_ptr, rounds, programs):
    """`rounds` ticks separated by grid barriers; each round also reads a neighbour's float,
    written before the barrier (what the barrier orders)."""
    pid = tl.program_id(0)
    value = tl.load(values_ptr + pid)
    for r in range(rounds):
        value = value + 1.0
        tl.store(values_ptr + pid, value)
        tl.debug_barrier()
        tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
        target = (r + 1) * programs
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        while arrived < target:
            arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        neighbour = tl.load(values_ptr + (pid + 1) % programs, cache_modifier=".cg")
        value = value + neighbour * 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=140)
    parser.add_argument("--programs", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("grid_barrier.py times GPU kernels: it needs a CUDA GPU")
    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = min(args.programs or sms, sms)
    values = torch.zeros(programs, device=device)
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    use_gdc = pdl.supported(device)

    def chain(pdl_launch: bool):
        def run():
            for _ in range(args.steps):
                _tick_kernel[(programs,)](values, USE_GDC=pdl_launch, launch_pdl=pdl_launch)
        return run

    def persistent(rounds: int):
        def run():
            counter.zero_()
            _rounds_kernel[(programs,)](values, counter, rounds, programs)
        return run

    launch = graph_micros_per_call([chain(False)]) / args.steps
    launch_pdl = graph_micros_per_call([chain(True)]) / args.steps if use_gdc else None
    rounds = graph_micros_per_call([persistent(args.steps)])
    barrier = (rounds - graph_micros_per_call([persistent(0)])) / args.steps
    before = values.clone()
    persistent(3)()
    torch.cuda.synchronize()
    assert torch.equal(values, before + 3), "a round was lost: the barrier does not hold"
    result = {"device": torch.cuda.get_device_name(), "programs": programs,
              "steps": args.steps, "launch_us": launch, "launch_pdl_us": launch_pdl,
              "barrier_us": barrier}
    print(json.dumps(result, indent=1))
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "grid_barrier.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
