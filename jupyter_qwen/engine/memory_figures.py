"""Where one engine's memory goes, from its own accounting: weights, KV cache, CUDA-graph
pools, activations, and the process's figures (torch's allocator, NVML, RSS)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from jupyter_qwen.memory import process_gpu_bytes, process_rss


@dataclass(slots=True)
class MemoryFigures:
    """The figures of `engine["memory"]` in `/health`; None where the device has none."""

    device: str
    weights_bytes: int
    kv_cache_bytes: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_block_bytes: int
    activations_bytes: int | None
    cuda_graph_bytes: int | None
    torch_reserved_bytes: int | None
    torch_allocated_bytes: int | None
    process_gpu_bytes: int | None
    rss_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_name(device: torch.device) -> str:
    """`cuda:0` for the first GPU (also when the device was given as plain `cuda`), `cpu`."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each storage counted once (tied
    embeddings share one)."""
    storages: dict[tuple[str, int], int] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.numel() == 0:
            continue
        storage = tensor.untyped_storage()
        storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def reserved_bytes(device: torch.device) -> int | None:
    """torch's reserved CUDA memory on `device`, after the queued work finished."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.memory_reserved(device)


def memory_figures(runner, num_free_blocks: int) -> MemoryFigures:
    """The figures of `runner` (a ModelRunner) now, given the block manager's free count.

    On the GPU, activations are measured, not inferred: the scratch of the largest step the
    scheduler can make (its peak over what was allocated before it, taken when the engine
    sized its KV cache) and the sampler's penalty rows. Weights, KV cache, activations and
    graph pools then add up to torch's reserved memory only as far as the accounting is
    complete (`tests/test_gpu_lifecycle.py` holds them within 5 %). On the CPU the allocator
    keeps no count, so activations are None.
    """
    device = runner.device
    total_blocks = runner.num_kv_blocks
    kv_bytes = runner.kv_cache.numel() * runner.kv_cache.element_size()
    on_gpu = device.type == "cuda"
    allocated = torch.cuda.memory_allocated(device) if on_gpu else None
    reserved = torch.cuda.memory_reserved(device) if on_gpu else None
    graphs = runner.cuda_graph_bytes if on_gpu else None
    activations = runner.activation_bytes if on_gpu else None
    return MemoryFigures(
        device=device_name(device), weights_bytes=runner.weights_bytes,
        kv_cache_bytes=kv_bytes, kv_blocks_used=total_blocks - num_free_blocks,
        kv_blocks_total=total_blocks, kv_block_bytes=runner.kv_block_bytes,
        activations_bytes=activations, cuda_graph_bytes=graphs,
        torch_reserved_bytes=reserved, torch_allocated_bytes=allocated,
        process_gpu_bytes=process_gpu_bytes(), rss_bytes=process_rss())
