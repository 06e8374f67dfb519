"""Run a benchmark with every Triton compile logged on the benchmark's own clock.

    TRITON_CACHE_DIR=$(mktemp -d) python3 benchmarks/compile_watch.py benchmarks/throughput.py \\
        --shape qwen3-0.6b --workloads w256 --peers none

Prints `COMPILE [  t s] took d s <kernel>` for each kernel variant this process had not yet
built (with a warm disk cache d is a load, a few ms). The engine compiles every variant at
start-up; a line after the benchmark's "ours: <workload>" stamp is a stall inside the timed
run. The script must define START (its clock) and main(argv).
"""

from __future__ import annotations

import runpy
import sys
import time

from triton import knobs


def watch(start: float) -> None:
    began: dict[tuple[int, str], float] = {}

    def before(*, key, fn, **_) -> bool:
        began[id(fn.jit_function), str(key)] = time.perf_counter()
        return False

    def after(*, key, fn, **_) -> None:
        now = time.perf_counter()
        took = now - began.pop((id(fn.jit_function), str(key)), now)
        print(f"COMPILE [{now - start:6.1f}s] took {took:6.3f}s {fn.name}", flush=True)

    knobs.runtime.jit_cache_hook = before
    knobs.runtime.jit_post_compile_hook = after


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    bench = runpy.run_path(sys.argv[1], run_name="watched")
    watch(bench["START"])
    bench["main"](sys.argv[2:])


if __name__ == "__main__":
    main()
