"""Programmatic dependent launch (`kernels/pdl.py`) changes when kernels start, never what
they compute: a decoder of the Qwen3-0.6B layer shape, one sequence decoding (each layer's
small-batch products and one-launch attention step, then the LM head), gives the same bits
with it on and off, eager and replayed from a CUDA graph on new inputs. A kernel that read its
input before the previous kernel had written it would see the last replay's values."""

from __future__ import annotations

import pytest
import torch
from kernel_modes import COMPILED_ONLY

from jupyter_qwen.model.attention import AttentionMetadata

pytestmark = [pytest.mark.gpu, COMPILED_ONLY]

BLOCK_SIZE = 16
TABLE_WIDTH = 256
STEPS = [(17, 600), (4001, 1), (9, 2048), (123, 65), (5, 3000)]  # (token id, context length)


@pytest.fixture(scope="module")
def decoder():
    return build_decoder()


def build_decoder():
    from jupyter_qwen.model.qwen3 import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=4096, hidden_size=1024, intermediate_size=3072,
                         num_hidden_layers=6, num_attention_heads=16, num_key_value_heads=8,
                         head_dim=128, max_position_embeddings=8192)
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = Qwen3ForCausalLM(config).to(device, torch.bfloat16).eval()
    model.rotary.build(device)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.add_(0.2 * torch.randn_like(parameter))
    use_pdl(model, True)
    num_blocks = TABLE_WIDTH + 1
    for attn in model.attention_layers():
        shape = (num_blocks, BLOCK_SIZE, config.num_key_value_heads, config.head_dim)
        attn.k_cache = torch.randn(shape, device=device, dtype=torch.bfloat16)
        attn.v_cache = torch.randn(shape, device=device, dtype=torch.bfloat16)
    model.initial_caches = [(a.k_cache.clone(), a.v_cache.clone())
                            for a in model.attention_layers()]
    return model


def use_pdl(model, pdl: bool) -> None:
    """The Triton ops with programmatic dependent launch on or off."""
    from jupyter_qwen.config import KernelOptions
    from jupyter_qwen.model.ops import triton_ops

    model.use_ops(triton_ops(torch.device("cuda"), KernelOptions(pdl=pdl)))


def restore_caches(model) -> None:
    """Each run starts from the same cache: a step writes its token's slot, which a later
    step (and the next run) reads."""
    for attn, (k_cache, v_cache) in zip(model.attention_layers(), model.initial_caches,
                                        strict=True):
        attn.k_cache.copy_(k_cache)
        attn.v_cache.copy_(v_cache)


def static_inputs(device: torch.device):
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(1, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor([0, 1], dtype=torch.int32, device=device),
        seq_lens=torch.zeros(1, dtype=torch.int32, device=device),
        block_tables=torch.randperm(TABLE_WIDTH, device=device).to(torch.int32)[None],
        max_query_len=1, max_seq_len=TABLE_WIDTH * BLOCK_SIZE, query_start_loc_cpu=[0, 1],
        seq_lens_cpu=[1])
    return torch.zeros(1, dtype=torch.int64, device=device), torch.zeros_like(meta.slot_mapping), \
        meta


def set_step(ids, positions, meta, token: int, context: int) -> None:
    position = context - 1
    block = int(meta.block_tables[0, position // BLOCK_SIZE])
    ids.fill_(token)
    positions.fill_(position)
    meta.seq_lens.fill_(context)
    meta.slot_mapping.fill_(block * BLOCK_SIZE + position % BLOCK_SIZE)


def decode(model, ids, positions, meta) -> torch.Tensor:
    return model.compute_logits(model(ids, positions, meta))


def run_eager(model, inputs) -> list[torch.Tensor]:
    restore_caches(model)
    results = []
    for token, context in STEPS:
        set_step(*inputs, token, context)
        results.append(decode(model, *inputs).clone())
    return results


def run_graph(model, inputs) -> list[torch.Tensor]:
    decode(model, *inputs)  # kernels compiled and the decode-step workspace made before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = decode(model, *inputs)
    restore_caches(model)
    results = []
    for token, context in STEPS:
        set_step(*inputs, token, context)
        graph.replay()
        results.append(logits.clone())
    torch.cuda.synchronize()
    return results


def differing_steps(results: list[torch.Tensor], truth: list[torch.Tensor]) -> list[int]:
    return [step for step, (ours, right) in enumerate(zip(results, truth, strict=True))
            if not torch.equal(ours, right)]


@torch.inference_mode()
def test_pdl_changes_no_bit_eager_or_replayed(decoder):
    inputs = static_inputs(torch.device("cuda"))
    use_pdl(decoder, False)
    plain = run_eager(decoder, inputs)
    assert len({int(step.argmax()) for step in plain}) > 1, "the steps must differ to tell"
    use_pdl(decoder, True)
    assert differing_steps(run_eager(decoder, inputs), plain) == []
    assert differing_steps(run_graph(decoder, inputs), plain) == []


@torch.inference_mode()
def test_a_product_that_skips_the_wait_is_caught(decoder, monkeypatch):
    """The control: small-batch products launched as dependents but not waiting for the
    kernel before them read stale inputs when replayed from a graph, and the check above
    sees it (on the H200, every step of the graph run differs)."""
    from jupyter_qwen.model.kernels import gemv

    inputs = static_inputs(torch.device("cuda"))
    use_pdl(decoder, False)
    plain = run_eager(decoder, inputs)
    use_pdl(decoder, True)
    monkeypatch.setattr(gemv, "_small_m_kernel", NoWait(gemv._small_m_kernel))
    assert differing_steps(run_graph(decoder, inputs), plain) != []


class NoWait:
    """A kernel whose launches keep `launch_pdl` but compile without the wait."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        return lambda *args, **options: launch(*args, **{**options, "USE_GDC": False})


def test_pdl_is_on_for_hopper_and_can_be_turned_off():
    from jupyter_qwen.config import KernelOptions
    from jupyter_qwen.model.ops import triton_ops

    def launches_pdl(device: torch.device, pdl: bool) -> tuple[bool, bool]:
        ops = triton_ops(device, KernelOptions(pdl=pdl))
        return ops.attention.pdl, ops.layers.pdl

    device = torch.device("cuda", torch.cuda.current_device())
    hopper = torch.cuda.get_device_capability(device)[0] >= 9
    assert launches_pdl(device, True) == (hopper, hopper)
    assert launches_pdl(torch.device("cpu"), True) == (False, False)
    assert launches_pdl(device, False) == (False, False)
