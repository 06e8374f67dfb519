"""Start/stop cycles on a CUDA GPU: after each stop torch's allocated memory is back at its
pre-serve value (within 1 MiB) and, after a clean, nothing stays reserved. Skipped without CUDA.

Prints one `RELIABILITY ...` line, quoted in RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
import torch

from jupyter_qwen.memory import MIB

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]
ROUNDS, REQUESTS = 10, 50


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The Qwen3-0.6B-shaped random checkpoint the GPU benchmarks share."""
    from jupyter_qwen.testing import make_tiny_qwen3

    folder = Path(tempfile.gettempdir()) / "jupyter_qwen_bench_qwen3-0.6b"
    if (folder / "config.json").is_file():
        return folder
    return make_tiny_qwen3(folder, shape="qwen3-0.6b")


async def chats(server, count: int) -> list[int]:
    body = {"model": server.served_model_name, "max_tokens": 16, "temperature": 0,
            "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(*(client.post(f"{server.url}/chat/completions", json=(
            body | {"messages": [{"role": "user", "content": f"request {index} " * 20}]}))
            for index in range(count)))
    return [response.json()["usage"]["completion_tokens"] for response in responses]


def test_serve_stop_clean_cycles_give_the_gpu_memory_back(checkpoint):
    from jupyter_qwen import clean, serve
    from jupyter_qwen.server import registry

    clean()
    threads = {thread.name for thread in threading.enumerate()}
    registry_files = set(registry.registry_dir().glob("server-*.json"))
    before = torch.cuda.memory_allocated()
    port, held, left, reserved_after_clean = None, [], [], []
    for _ in range(ROUNDS):
        server = serve(checkpoint, port=port, gpu_memory_utilization=0.5, max_model_len=2048,
                       progress=False)
        port = server.port
        held.append(torch.cuda.memory_allocated() - before)
        assert asyncio.run(chats(server, REQUESTS)) == [16] * REQUESTS
        server.stop()
        del server
        left.append(torch.cuda.memory_allocated() - before)
        clean()
        reserved_after_clean.append(torch.cuda.memory_reserved())
        assert {thread.name for thread in threading.enumerate()} <= threads
        assert set(registry.registry_dir().glob("server-*.json")) <= registry_files
    assert all(abs(delta) <= MIB for delta in left), left
    assert reserved_after_clean == [0] * ROUNDS
    print(f"\nRELIABILITY GPU start/stop cycles: device={torch.cuda.get_device_name()}, "
          f"rounds={ROUNDS}, requests={ROUNDS * REQUESTS}, port=same ({port}), "
          f"allocated_while_serving_MiB={max(held) / MIB:.0f}, "
          f"allocated_after_stop_vs_before_B={' '.join(str(delta) for delta in left)}, "
          f"reserved_after_clean_B={max(reserved_after_clean)}", flush=True)


def test_the_memory_figures_add_up_to_torch_reserved(checkpoint):
    """weights + KV cache + activations + CUDA-graph pools of /health are within 5 % of the
    process's torch-reserved memory once the server started, weights and KV cache match
    what the checkpoint and the block count say, and the stop report is this process's."""
    import json

    from safetensors import safe_open

    from jupyter_qwen import clean, serve
    from jupyter_qwen.model.loader import weight_files

    clean()
    server = serve(checkpoint, gpu_memory_utilization=0.5, max_model_len=2048, progress=False)
    try:
        assert asyncio.run(chats(server, 8)) == [16] * 8
        memory = httpx.get(f"{server.root_url}/health", timeout=30).json()["engine"]["memory"]
        reserved = torch.cuda.memory_reserved()
        itemsize = server.ctx.engine.engine.runner.dtype.itemsize
    finally:
        report = server.stop()
    config = json.loads((checkpoint / "config.json").read_text())
    elements = 0
    for file in weight_files(checkpoint):
        with safe_open(file, framework="pt") as reader:
            elements += sum(math.prod(reader.get_slice(name).get_shape())
                            for name in reader.keys())  # noqa: SIM118
    rotary_tables = 2 * config["max_position_embeddings"] * config["head_dim"] * 4
    assert memory["device"] == f"cuda:{torch.cuda.current_device()}"
    assert memory["weights_bytes"] == elements * itemsize + rotary_tables
    assert memory["kv_cache_bytes"] == memory["kv_blocks_total"] * memory["kv_block_bytes"]
    assert memory["cuda_graph_bytes"] > 0 and memory["activations_bytes"] > 0
    parts = (memory["weights_bytes"] + memory["kv_cache_bytes"]
             + memory["activations_bytes"] + memory["cuda_graph_bytes"])
    assert abs(parts - reserved) <= 0.05 * reserved, (memory, reserved)
    assert memory["torch_reserved_bytes"] >= memory["torch_allocated_bytes"] > 0
    if memory["process_gpu_bytes"] is not None:  # NVML sees this process's id
        assert memory["process_gpu_bytes"] >= memory["torch_reserved_bytes"]
    assert report.before.torch_reserved >= parts * 0.95
    assert report.after.torch_reserved < report.before.torch_reserved
    print(f"\nMEMORY FIGURES on {torch.cuda.get_device_name()}: "
          + ", ".join(f"{key}={value}" for key, value in memory.items())
          + f", torch_reserved_now={reserved}", flush=True)
