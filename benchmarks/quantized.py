"""bf16 against FP8 and AWQ checkpoints of the same random weights, in one call.

    python benchmarks/quantized.py --shape qwen3-0.6b                   # bf16, fp8, awq
    python benchmarks/quantized.py --shape qwen3-4b --quantization fp8,awq,fp8-online
    python benchmarks/quantized.py --shape tiny --quick                 # CPU smoke run

For each format: `make_tiny_qwen3(dir, shape, quantization=...)` (bf16: none; "fp8-online":
the bf16 folder served with `quantization="fp8"`), one engine (bf16 activations on the GPU,
CUDA graphs, defaults otherwise), the workloads of throughput.py: batch1 (one request, 128
prompt and 512 output tokens; decode tok/s after the first token) and w256 (nano-vllm's 256
requests). Reported per format: the weights' bytes on the device (the model's parameters and
buffers), the KV blocks the same memory budget gives, and each workload's tok/s with its
ratio to bf16. Must-show (issue #18, H200): batch1 decode FP8 >= 1.4x and AWQ (4B) >= 1.8x
bf16; w256 FP8 >= 1.0x bf16. Writes quantized.json and quantized.md to $OUT (or --out).
Checkpoints are reused from $TMPDIR/jupyter_qwen_bench_<shape>[_<format>].
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, free_device_memory
from report import markdown_lines, say
from throughput import (
    FULL,
    QUICK,
    make_workloads,
    ours_generate,
    ours_stepped,
    usable_id_high,
    warmup_workload,
)

FORMATS = ("bf16", "fp8", "awq", "fp8-online", "fp8-own-x", "awq-own-layout")
# "fp8-own-x": the FP8 checkpoint with every FP8 product quantizing its activations in a
# launch of its own (none handed over quantized by the fused norms and SiLU·mul);
# "awq-own-layout": the AWQ checkpoint with every projection kept in AWQ's layout (none
# repacked into the rows layout, model/kernels/awq_rows.py)


def checkpoint(shape: str, fmt: str, layers: int | None) -> Path:
    from jupyter_qwen.testing import make_tiny_qwen3

    method = {"fp8": "fp8", "awq": "awq", "fp8-own-x": "fp8", "awq-own-layout": "awq"}.get(fmt)
    suffix = f"_{method}" if method else ""
    depth = f"_{layers}l" if layers else ""
    folder = Path(tempfile.gettempdir()) / f"jupyter_qwen_bench_{shape}{depth}{suffix}"
    if not (folder / "config.json").is_file():
        begin = time.perf_counter()
        make_tiny_qwen3(folder, shape=shape, num_hidden_layers=layers, quantization=method)
        say(f"checkpoint {folder} made in {time.perf_counter() - begin:.1f} s")
    return folder


def weights_bytes(llm) -> int:
    model = llm.engine.runner.model
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def run_format(shape: str, fmt: str, args, workloads: dict, warmup) -> dict:
    with products_quantize_their_rows(fmt == "fp8-own-x"), awq_kept_in_its_layout(
            fmt == "awq-own-layout"):
        return run_engine(shape, fmt, args, workloads, warmup)


@contextlib.contextmanager
def awq_kept_in_its_layout(own: bool):
    """With `own`, no AWQ projection is repacked into the rows layout (no shape prefers it)."""
    from jupyter_qwen.model.kernels import awq_rows

    original = dict(awq_rows.ROWS_TUNED)
    if own:
        awq_rows.ROWS_TUNED.clear()
    try:
        yield
    finally:
        awq_rows.ROWS_TUNED.update(original)


@contextlib.contextmanager
def products_quantize_their_rows(own: bool):
    """With `own`, no FP8 projection takes its rows quantized beforehand (`Fp8Rows`)."""
    from jupyter_qwen.model.quant.linear import QuantLinear

    original = QuantLinear.takes_fp8_rows
    if own:
        QuantLinear.takes_fp8_rows = lambda self, m: False
    try:
        yield
    finally:
        QuantLinear.takes_fp8_rows = original


def run_engine(shape: str, fmt: str, args, workloads: dict, warmup) -> dict:
    from jupyter_qwen.llm import LLM

    options = {"quantization": "fp8"} if fmt == "fp8-online" else {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        options |= {"dtype": "bfloat16", "gpu_memory_utilization": args.gpu_memory_utilization}
    else:
        options |= {"num_kv_blocks": 256, "max_model_len": 2048}
    folder = checkpoint(shape, fmt, args.layers)
    say(f"{fmt}: loading {folder}")
    begin = time.perf_counter()
    llm = LLM(str(folder), **options)
    result = {"format": fmt, "load_s": time.perf_counter() - begin,
              "weights_bytes": weights_bytes(llm),
              "kv_blocks": llm.engine.runner.num_kv_blocks}
    try:
        ours_generate(llm, warmup)
        if "batch1" in workloads:
            run = ours_stepped(llm, workloads["batch1"])
            result["batch1_decode_tok_s"] = run["decode_tokens_per_s"]
            result["batch1_tokens"] = run["tokens"]
        if "w256" in workloads:
            run = ours_generate(llm, workloads["w256"])
            result["w256_tok_s"] = run["tokens_per_s"]
    finally:
        llm.close()
        del llm
        free_device_memory(torch.device(device))
    say(f"    {json.dumps({k: v for k, v in result.items() if not k.endswith('tokens')})}")
    return result


def table(results: list[dict]) -> list[list[str]]:
    base = next((r for r in results if r["format"] == "bf16"), None)
    rows = [["format", "weights GB", "KV blocks", "KV gained", "batch1 decode tok/s",
             "x bf16", "w256 tok/s", "x bf16"]]

    def ratio(result: dict, key: str) -> str:
        if base is None or key not in result or key not in base:
            return "–"
        return f"{result[key] / base[key]:.2f}"

    for r in results:
        gained = f"{r['kv_blocks'] - base['kv_blocks']:+,}" if base else "–"
        rows.append([r["format"], f"{r['weights_bytes'] / 1e9:.3f}", f"{r['kv_blocks']:,}",
                     gained, f"{r.get('batch1_decode_tok_s', float('nan')):,.0f}",
                     ratio(r, "batch1_decode_tok_s"), f"{r.get('w256_tok_s', float('nan')):,.0f}",
                     ratio(r, "w256_tok_s")])
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--quantization", default="fp8,awq",
                        help=f"formats beside bf16, comma-separated: {', '.join(FORMATS[1:])}")
    parser.add_argument("--workloads", default="batch1,w256")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (smoke runs)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    formats = ["bf16", *(f for f in args.quantization.split(",") if f and f != "bf16")]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise SystemExit(f"unknown format(s) {', '.join(sorted(unknown))}; choose from {FORMATS}")
    sizes = QUICK if args.quick else FULL
    bf16_folder = checkpoint(args.shape, "bf16", args.layers)
    id_high = usable_id_high(bf16_folder, 10000)
    names = args.workloads.split(",")
    workloads = {k: v for k, v in make_workloads(sizes, id_high).items() if k in names}
    warmup = warmup_workload(sizes, id_high)
    out_dir = Path(os.environ.get("OUT") or args.out or "out/quantized")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device, ["benchmarks/quantized.py", *(argv or sys.argv[1:])])
    results = []
    for fmt in formats:
        results.append(run_format(args.shape, fmt, args, workloads, warmup))
        lines = ["# Quantized checkpoints", "", f"- shape {args.shape}",
                 *(f"- {k}: {v}" for k, v in env.items()), "", *markdown_lines(table(results))]
        (out_dir / "quantized.md").write_text("\n".join(lines) + "\n")
        (out_dir / "quantized.json").write_text(json.dumps(
            {"environment": env, "args": vars(args), "results": results}, indent=2,
            default=str))
    for line in markdown_lines(table(results)):
        say(line)
    return results


if __name__ == "__main__":
    main()
