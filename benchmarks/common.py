"""Helpers shared by the benchmarks: environment, device ceilings, model cost and floors.

The floor model (bytes over measured copy bandwidth, FLOPs over the measured matmul rate)
is documented in `benchmarks/throughput.py`; `ModelCost` holds the counts it needs.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_device_memory(device: torch.device) -> None:
    """Collect garbage, drop compiled graphs and hand cached blocks back to the driver."""
    gc.collect()
    try:
        import torch._dynamo

        torch._dynamo.reset()
    except Exception:
        pass
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def memory_in_use(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (a length difference counts), None if equal."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def environment(device: torch.device, argv: list[str]) -> dict:
    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "gpu": None,
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                       f"{props.multi_processor_count} SMs")
    else:
        info["gpu"] = f"none (CPU: {platform.processor() or platform.machine()}, " \
                      f"{torch.get_num_threads()} threads)"
    return info


# --------------------------------------------------------------------------- ceilings


@dataclass
class Ceilings:
    copy_bytes_per_s: float
    matmul_flops_per_s: float
    copy_bytes: int
    matmul_size: int
    copy_samples_s: list[float] = field(default_factory=list)
    matmul_samples_s: list[float] = field(default_factory=list)


def event_seconds(fn) -> float:
    """One call of ``fn`` on the current CUDA stream, timed with CUDA events, in seconds."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _time_op(fn, device: torch.device, repeats: int) -> list[float]:
    fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            samples.append(event_seconds(fn))
        else:
            begin = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - begin)
    return samples


def _copy_samples(device: torch.device, nbytes: int, repeats: int) -> list[float]:
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    return _time_op(lambda: dst.copy_(src), device, repeats)


def _matmul_samples(device: torch.device, size: int, dtype: torch.dtype, sets: int,
                    repeats: int) -> list[float]:
    pairs = [(torch.randn(size, size, dtype=dtype, device=device),
              torch.randn(size, size, dtype=dtype, device=device)) for _ in range(sets)]
    out = torch.empty(size, size, dtype=dtype, device=device)
    turn = [0]

    def matmul():
        a, b = pairs[turn[0] % len(pairs)]
        turn[0] += 1
        torch.matmul(a, b, out=out)

    return _time_op(matmul, device, repeats)


def measure_ceilings(device: torch.device, quick: bool = False) -> Ceilings:
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate, medians.

    GPU: a 1 GiB buffer copied into another (2 GiB moved per copy), 20 copies; 8192^3 bf16
    matmul on random normal data, rotating over 3 input pairs, 20 products.
    CPU: 64 MiB copies and a 512^3 (quick) or 1024^3 float32 product (development only).
    """
    on_gpu = device.type == "cuda"
    nbytes = (1 << 30) if on_gpu else (64 << 20)
    copy_samples = _copy_samples(device, nbytes, 20 if on_gpu else 5)
    free_device_memory(device)
    size = 8192 if on_gpu else (512 if quick else 1024)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    mm_samples = _matmul_samples(device, size, dtype, 3 if on_gpu else 1, 20 if on_gpu else 3)
    free_device_memory(device)
    copy_s = statistics.median(copy_samples)
    mm_s = statistics.median(mm_samples)
    return Ceilings(copy_bytes_per_s=2 * nbytes / copy_s, matmul_flops_per_s=2 * size**3 / mm_s,
                    copy_bytes=2 * nbytes, matmul_size=size, copy_samples_s=copy_samples,
                    matmul_samples_s=mm_samples)


# --------------------------------------------------------------------------- model cost


@dataclass(frozen=True)
class ModelCost:
    """Parameter, byte and FLOP counts of a Qwen3 checkpoint (see throughput.py's docstring)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    elem_bytes: int

    @classmethod
    def from_folder(cls, folder: Path, elem_bytes: int = 2) -> ModelCost:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        return cls(layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
                   intermediate=cfg["intermediate_size"], heads=cfg["num_attention_heads"],
                   kv_heads=cfg["num_key_value_heads"],
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
                   vocab=cfg["vocab_size"], tied=bool(cfg.get("tie_word_embeddings", True)),
                   elem_bytes=elem_bytes)

    @property
    def linear_params(self) -> int:
        """Every decoder linear layer: q, k, v, o, gate, up, down (no biases in Qwen3)."""
        d, hd = self.hidden, self.head_dim
        per_layer = (d * self.heads * hd + 2 * d * self.kv_heads * hd + self.heads * hd * d
                     + 3 * d * self.intermediate)
        return self.layers * per_layer

    @property
    def head_params(self) -> int:
        """lm_head (the embedding matrix when tied)."""
        return self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return self.layers * (2 * self.hidden + 2 * self.head_dim) + self.hidden

    @property
    def total_params(self) -> int:
        embed = self.vocab * self.hidden
        head = 0 if self.tied else self.head_params
        return self.linear_params + self.norm_params + embed + head

    @property
    def weight_bytes(self) -> int:
        """Weight bytes one forward step reads: linears + lm_head + norms (not embedding rows)."""
        return self.elem_bytes * (self.linear_params + self.head_params + self.norm_params)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.elem_bytes

    @property
    def attn_flops_per_pair(self) -> int:
        """FLOPs of one (query, key) pair over all layers and heads: QK^T and PV, 2 each per dim."""
        return 4 * self.layers * self.heads * self.head_dim

    def prefill(self, new_tokens: list[int], cached_tokens: list[int] | None = None,
                ) -> tuple[float, float]:
        """(bytes, flops) of prefilling prompts (new_tokens[i] computed over cached_tokens[i])."""
        cached_tokens = cached_tokens or [0] * len(new_tokens)
        n, total = len(new_tokens), sum(new_tokens)
        pairs = sum(q * k + q * (q + 1) // 2
                    for q, k in zip(new_tokens, cached_tokens, strict=True))
        per_token = self.hidden * self.elem_bytes + self.kv_bytes_per_token
        nbytes = (self.weight_bytes + total * per_token
                  + sum(cached_tokens) * self.kv_bytes_per_token)
        flops = 2 * self.linear_params * total + 2 * self.head_params * n \
            + self.attn_flops_per_pair * pairs
        return float(nbytes), float(flops)


@dataclass
class Floor:
    time_s: float
    prefill_s: float
    decode_s: float
    decode_steps: int
    bytes_total: float
    kv_read_bytes: float
    weight_read_bytes: float
    flops_total: float
    output_tokens: int
    output_tokens_from_prefill: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.time_s if self.time_s > 0 else math.nan

    @property
    def decode_tokens_per_s(self) -> float:
        decoded = self.output_tokens - self.output_tokens_from_prefill
        return decoded / self.decode_s if self.decode_s > 0 else math.nan

    def as_dict(self) -> dict:
        out = asdict(self)
        out["tokens_per_s"] = self.tokens_per_s
        out["decode_tokens_per_s"] = self.decode_tokens_per_s
        return out


def schedule_floor(cost: ModelCost, ceilings: Ceilings, prompt_lens: list[int],
                   output_lens: list[int], cached_lens: list[int] | None = None) -> Floor:
    """Floor time of a workload where every request starts together and leaves when done.

    Prefill of all prompts is one lump (its FLOPs over the matmul rate, or its bytes over
    bandwidth, whichever is larger) that also yields each request's first output token.
    Decode step k (k = 1 .. max(out) - 1) runs every request with out_i > k; its time is
    max(bytes / bandwidth, flops / matmul rate), bytes = weights once + embedding rows +
    KV of every running context (in_i + k - 1 cached tokens) read + one token of KV written.
    """
    bw, mm = ceilings.copy_bytes_per_s, ceilings.matmul_flops_per_s
    cached_lens = cached_lens or [0] * len(prompt_lens)
    new = [p - c for p, c in zip(prompt_lens, cached_lens, strict=True)]
    pre_bytes, pre_flops = cost.prefill(new, cached_lens)
    prefill_s = max(pre_bytes / bw, pre_flops / mm)
    decode_s = kv_read = 0.0
    steps = 0
    bytes_total, flops_total = pre_bytes, pre_flops
    # Decode contexts grow by one per step; compute the step sums in closed form per step
    # using the running set, which shrinks as requests finish (sorted by output length).
    order = sorted(range(len(prompt_lens)), key=lambda i: output_lens[i])
    running_ctx = sum(prompt_lens)
    running = len(prompt_lens)
    finished_at = 0
    for k in range(1, max(output_lens, default=0)):
        while finished_at < len(order) and output_lens[order[finished_at]] <= k:
            i = order[finished_at]
            running -= 1
            running_ctx -= prompt_lens[i]
            finished_at += 1
        if running == 0:
            break
        cached = running_ctx + running * (k - 1)
        nbytes = (cost.weight_bytes + running * cost.hidden * cost.elem_bytes
                  + (cached + running) * cost.kv_bytes_per_token)
        flops = (2 * (cost.linear_params + cost.head_params) * running
                 + cost.attn_flops_per_pair * (cached + running))
        decode_s += max(nbytes / bw, flops / mm)
        bytes_total += nbytes
        flops_total += flops
        kv_read += cached * cost.kv_bytes_per_token
        steps += 1
    return Floor(time_s=prefill_s + decode_s, prefill_s=prefill_s, decode_s=decode_s,
                 decode_steps=steps, bytes_total=bytes_total, kv_read_bytes=kv_read,
                 weight_read_bytes=float(cost.weight_bytes * (steps + 1)),
                 flops_total=flops_total, output_tokens=sum(output_lens),
                 output_tokens_from_prefill=len(output_lens))


def engine_options(items: list[str], parser: argparse.ArgumentParser) -> dict:
    """``--engine-opt KEY=VALUE`` items as keyword arguments; a usage error for a bad item."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--engine-opt wants KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = parse_value(value.strip())
    return options


def parse_value(text: str):
    """An --engine-opt value: booleans, None, numbers, else the text itself."""
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def with_kernel_options(opts: dict) -> dict:
    """--engine-opt options with the `kernels.NAME` ones (e.g. kernels.pdl=off) gathered into
    EngineConfig's `kernels` option, a `KernelOptions`."""
    from jupyter_qwen.config import KernelOptions

    kernels = {key.removeprefix("kernels."): value for key, value in opts.items()
               if key.startswith("kernels.")}
    plain = {key: value for key, value in opts.items() if not key.startswith("kernels.")}
    return plain | {"kernels": KernelOptions(**kernels)} if kernels else plain
