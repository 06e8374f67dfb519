"""The one-launch decode step (`kernels/decode_step.py`) against the torch reference: q/k
norm, RoPE and KV store (`qk_norm_rope_store_reference`), then paged attention.

Two modes run the same bodies, as in test_kernels.py: `cuda` (marked gpu; larger shapes)
and `interpreter` (small shapes on CPU; only when TRITON_INTERPRET=1 was set before triton
was imported).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from kernel_cases import PagedCase, random_paged_case, relative_error
from kernel_modes import COMPILED_ONLY, HAVE_TRITON, TOLERANCE, Mode

from jupyter_qwen.model.attention import AttentionMetadata, paged_attention_reference

SCALE = 0.125
EPS = 1e-6
MAX_POSITIONS = 8192


@dataclass
class DecodeStep:
    """One pure decode step: the cache and metadata of `random_paged_case`, a qkv
    projection row per sequence, norm weights and RoPE tables."""

    case: PagedCase
    qkv: torch.Tensor
    positions: torch.Tensor
    q_weight: torch.Tensor
    k_weight: torch.Tensor
    cos_cache: torch.Tensor
    sin_cache: torch.Tensor

    @property
    def meta(self) -> AttentionMetadata:
        return self.case.meta

    def rope_args(self) -> tuple:
        return (self.q_weight, self.k_weight, EPS, self.cos_cache, self.sin_cache)

    def redraw_qkv(self, generator: torch.Generator) -> None:
        fresh = torch.randn(self.qkv.shape, generator=generator)
        self.qkv.copy_(fresh.to(self.qkv))


def random_step(seq_lens: list[int], num_heads: int, num_kv_heads: int, head_dim: int,
                block_size: int, dtype: torch.dtype, device: str,
                generator: torch.Generator) -> DecodeStep:
    from jupyter_qwen.model.qwen3 import RotaryEmbedding

    case = random_paged_case([1] * len(seq_lens), seq_lens, num_heads, num_kv_heads, head_dim,
                             block_size, dtype, device, generator=generator)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    rotary = RotaryEmbedding(head_dim, MAX_POSITIONS, 1_000_000.0)
    rotary.build(torch.device(device))

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    positions = torch.tensor([max(n - 1, 0) for n in seq_lens], device=device)
    return DecodeStep(case, rand(len(seq_lens), width), positions, 1 + 0.2 * rand(head_dim),
                      1 + 0.2 * rand(head_dim), rotary.cos_cache, rotary.sin_cache)


def reference(step: DecodeStep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(attention output, k cache, v cache) after the step, by the torch reference."""
    from jupyter_qwen.model.kernels.fused_ops import qk_norm_rope_store_reference

    case = step.case
    k_cache, v_cache = case.k_cache.clone(), case.v_cache.clone()
    query = qk_norm_rope_store_reference(step.qkv, step.positions, case.meta.slot_mapping,
                                         *step.rope_args(), k_cache, v_cache)
    wide = torch.float64 if query.device.type == "cpu" else torch.float32
    out = paged_attention_reference(query.to(wide), k_cache.to(wide), v_cache.to(wide),
                                    case.meta, SCALE)
    out[case.padding_rows] = 0
    return out, k_cache, v_cache


def run_kernel(step: DecodeStep, workspace, **options) -> torch.Tensor:
    from jupyter_qwen.model.kernels.decode_step import decode_step_attention

    case = step.case
    return decode_step_attention(step.qkv, step.positions, case.meta.slot_mapping,
                                 *step.rope_args(), case.k_cache, case.v_cache,
                                 case.meta.block_tables, case.meta.seq_lens, SCALE,
                                 workspace=workspace, **options)


def poisoned_workspace(step: DecodeStep, num_splits: int | None):
    from jupyter_qwen.model.kernels.decode_step import DecodeStepWorkspace

    batch, (_, _, num_kv_heads, head_dim) = step.qkv.shape[0], step.case.k_cache.shape
    num_heads = step.case.query.shape[1]
    workspace = DecodeStepWorkspace.allocate(batch, num_heads, num_kv_heads, head_dim,
                                             step.qkv.device, num_splits=num_splits)
    for partial in (workspace.part_acc, workspace.part_max, workspace.part_sum):
        partial.fill_(float("nan"))
    return workspace


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert not out.isnan().any(), f"{what} holds NaN (unwritten or broken rows)"
    error = relative_error(out, ref)
    assert error < TOLERANCE[dtype], f"{what}: relative error {error:.2e}"


def assert_step_matches(step: DecodeStep, workspace, dtype: torch.dtype, **options) -> None:
    """The output, the new k/v in their slots, every other slot untouched, counters at 0."""
    out_ref, k_ref, v_ref = reference(step)
    k_before, v_before = step.case.k_cache.clone(), step.case.v_cache.clone()
    out = run_kernel(step, workspace, **options)
    assert_close(out, out_ref, dtype, "attention output")
    slots = step.meta.slot_mapping[step.meta.slot_mapping >= 0]
    written = torch.zeros(k_before[..., 0, 0].numel(), dtype=torch.bool, device=slots.device)
    written[slots] = True
    written = written.view(k_before.shape[:2])
    for cache, before in ((step.case.k_cache, k_before), (step.case.v_cache, v_before)):
        assert torch.equal(cache[~written], before[~written]), "a slot not in slot_mapping changed"
    assert_close(step.case.k_cache[written], k_ref[written], dtype, "new k in the cache")
    assert torch.equal(step.case.v_cache[written], v_ref[written]), "new v in the cache"
    assert workspace.tickets.count_nonzero() == 0, "counters not reset after the launch"


DECODE_SMALL = [  # heads, kv_heads, head_dim, block_size, dtype, seq_lens
    (4, 2, 32, 16, torch.bfloat16, [1, 0, 77, 300, 16, 65]),
    (2, 2, 64, 8, torch.float32, [130, 0, 2, 17]),
    (8, 2, 32, 32, torch.float16, [64, 200, 1]),
    (4, 1, 32, 128, torch.bfloat16, [129, 3]),
]
DECODE_LARGE = [
    (16, 8, 128, 16, torch.bfloat16, "mixed"),
    (16, 8, 128, 16, torch.bfloat16, [4000]),
    (16, 8, 128, 16, torch.bfloat16, [600]),
    (32, 8, 128, 32, torch.bfloat16, "mixed"),
    (8, 8, 64, 8, torch.float16, "mixed"),
    (8, 2, 32, 128, torch.float32, "mixed"),
    (16, 4, 128, 256, torch.bfloat16, "mixed"),
]


def mixed_seq_lens(count: int, longest: int) -> list[int]:
    lens = [random.randrange(1, longest) for _ in range(count)]
    lens[0], lens[1], lens[2], lens[-1] = longest, 1, 65, 0
    print(f"seq_lens {lens}")
    return lens


def shape_case(mode: Mode, index: int) -> tuple:
    heads, kv_heads, head_dim, block_size, dtype, seq_lens = mode.pick(
        DECODE_SMALL, DECODE_LARGE)[index]
    if seq_lens == "mixed":
        seq_lens = mixed_seq_lens(64, 4000)
    return heads, kv_heads, head_dim, block_size, dtype, seq_lens


@pytest.mark.parametrize("num_splits", [None, 1, 3, 16])
@pytest.mark.parametrize("index", range(len(DECODE_SMALL)))
def test_decode_step_matches_reference_twice(mode, generator, index, num_splits):
    """Two launches in a row on one workspace: the second starts from clean counters."""
    heads, kv_heads, head_dim, block_size, dtype, seq_lens = shape_case(mode, index)
    step = random_step(seq_lens, heads, kv_heads, head_dim, block_size, dtype, mode.device,
                       generator)
    workspace = poisoned_workspace(step, num_splits)
    block_n = mode.pick(16, 64)
    for _ in range(2):
        assert_step_matches(step, workspace, dtype, num_splits=num_splits, block_n=block_n)
        step.redraw_qkv(generator)


@pytest.mark.parametrize("min_chunk", [64, 100, 256])
def test_chunk_floor(mode, generator, min_chunk):
    """Longer chunks (fewer live splits, a direct write when one is left): the same step."""
    seq_lens = mode.pick([1, 255, 257, 64, 0, 65], mixed_seq_lens(64, 4000))
    step = random_step(seq_lens, 8, mode.pick(2, 4), mode.pick(32, 128), 16, torch.bfloat16,
                       mode.device, generator)
    workspace = poisoned_workspace(step, mode.pick(8, None))
    for _ in range(mode.pick(1, 2)):
        assert_step_matches(step, workspace, torch.bfloat16, num_splits=mode.pick(8, None),
                            min_chunk=min_chunk)
        step.redraw_qkv(generator)


@pytest.mark.parametrize("tile_elements", [64, 512])
def test_merge_over_several_split_tiles(mode, generator, monkeypatch, tile_elements):
    """More live splits than one merge tile holds: the merge runs over tiles."""
    from jupyter_qwen.model.kernels import decode_step

    monkeypatch.setattr(decode_step, "MERGE_TILE_ELEMENTS", tile_elements)
    seq_lens = mode.pick([300, 41, 0, 161], [4000, 3000, 1, 0, 129])
    step = random_step(seq_lens, 8, 2, mode.pick(32, 128), 16, torch.bfloat16, mode.device,
                       generator)
    workspace = poisoned_workspace(step, 24)
    assert_step_matches(step, workspace, torch.bfloat16, num_splits=24, block_n=16)


def test_default_splits_fit_the_default_workspace(mode, generator):
    """`allocate` without num_splits has room for every batch up to its max_batch."""
    from jupyter_qwen.model.kernels.decode_step import DecodeStepWorkspace

    head_dim = mode.pick(32, 128)
    step = random_step(mode.pick([70, 1], [2048, 1]), 8, 2, head_dim, 16, torch.bfloat16,
                       mode.device, generator)
    workspace = DecodeStepWorkspace.allocate(5, 8, 2, head_dim, step.qkv.device)
    assert workspace.covers(2, 8, 2, head_dim, step.qkv.device)
    assert_step_matches(step, workspace, torch.bfloat16)


@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
def test_backend_fuses_only_small_pure_decode_steps():
    from jupyter_qwen.config import KernelOptions
    from jupyter_qwen.model.ops import triton_ops

    def meta(query_lens: list[int]) -> AttentionMetadata:
        starts = [0]
        for length in query_lens:
            starts.append(starts[-1] + length)
        empty = torch.empty(0)
        return AttentionMetadata(empty, empty, empty, empty, max(query_lens), 64, starts,
                                 [64] * len(query_lens))

    cpu = torch.device("cpu")
    triton_backend = triton_ops(cpu, KernelOptions(fused_decode_step_max_batch=2)).attention
    assert triton_backend.fuses_decode_step(meta([1]), 128)
    assert triton_backend.fuses_decode_step(meta([1, 1]), 128)
    assert not triton_backend.fuses_decode_step(meta([1, 1, 1]), 128)
    assert not triton_backend.fuses_decode_step(meta([2]), 128)
    assert not triton_backend.fuses_decode_step(meta([1]), 16)
    triton_backend = triton_ops(cpu, KernelOptions(fused_decode_step=False,
                                                   fused_decode_step_max_batch=2)).attention
    assert not triton_backend.fuses_decode_step(meta([1]), 128)


def tiny_model(device: str):
    """Qwen3 in float32 with random norm weights, its ops not yet chosen."""
    from jupyter_qwen.model.qwen3 import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=512, torch_dtype="float32")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(device).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def test_model_decode_step_matches_three_kernel_path(mode, generator):
    """Qwen3 with fused ops and the Triton backend: the switch changes kernels, not results."""
    from jupyter_qwen.config import KernelOptions
    from jupyter_qwen.model.ops import triton_ops

    model = tiny_model(mode.device)
    seq_lens = [5, 1, 140, 0]
    caches = {}
    for fused in (False, True):
        options = KernelOptions(fused_decode_step=fused,
                                fused_decode_step_max_batch=len(seq_lens))
        step = random_step(seq_lens, 4, 2, 32, 16, torch.float32, mode.device,
                           torch.Generator().manual_seed(7))
        ops = triton_ops(torch.device(mode.device), options)
        model.use_ops(ops)
        triton_backend = ops.attention
        for attn in model.attention_layers():
            attn.k_cache, attn.v_cache = step.case.k_cache.clone(), step.case.v_cache.clone()
        ids = torch.arange(len(seq_lens), device=mode.device) + 3
        with torch.inference_mode():
            hidden = model(ids, step.positions, step.meta)
        caches[fused] = (hidden, [(a.k_cache, a.v_cache) for a in model.attention_layers()])
        assert (triton_backend.decode_workspace is not None) == fused
    (old, old_caches), (new, new_caches) = caches[False], caches[True]
    assert_close(new, old, torch.float32, "hidden states")
    for (k_old, v_old), (k_new, v_new) in zip(old_caches, new_caches, strict=True):
        assert_close(k_new, k_old, torch.float32, "k cache")
        assert_close(v_new, v_old, torch.float32, "v cache")


@pytest.mark.gpu
@COMPILED_ONLY
def test_decode_step_replays_in_cuda_graph():
    """Captured once, replayed on new inputs and lengths: right each time, counters at 0."""
    from jupyter_qwen.model.kernels.decode_step import DecodeStepWorkspace

    generator = torch.Generator().manual_seed(3)
    first_lens = [4000, 1, 300, 0, 17, 2048, 5, 999]
    step = random_step(first_lens, 16, 8, 128, 16, torch.bfloat16, "cuda", generator)
    workspace = DecodeStepWorkspace.allocate(8, 16, 8, 128, torch.device("cuda"))
    run_kernel(step, workspace)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run_kernel(step, workspace)
    for lens in ([3, 0, 3900, 1, 65, 100, 2500, 64], [1, 1, 1, 1, 0, 0, 4000, 129]):
        fresh = random_step(lens, 16, 8, 128, 16, torch.bfloat16, "cuda", generator)
        count = fresh.case.k_cache.shape[0]
        step.case.k_cache[:count].copy_(fresh.case.k_cache)
        step.case.v_cache[:count].copy_(fresh.case.v_cache)
        fresh.case.k_cache = step.case.k_cache[:count]
        fresh.case.v_cache = step.case.v_cache[:count]
        for static, given in ((step.qkv, fresh.qkv), (step.positions, fresh.positions),
                              (step.q_weight, fresh.q_weight), (step.k_weight, fresh.k_weight)):
            static.copy_(given)
        step.meta.seq_lens.copy_(fresh.meta.seq_lens)
        step.meta.slot_mapping.copy_(fresh.meta.slot_mapping)
        step.meta.block_tables.fill_(-1)
        width = fresh.meta.block_tables.shape[1]
        step.meta.block_tables[:, :width].copy_(fresh.meta.block_tables)
        out_ref, k_ref, v_ref = reference(fresh)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, out_ref, torch.bfloat16, "replayed output")
        assert_close(fresh.case.k_cache, k_ref, torch.bfloat16, "k cache")
        assert torch.equal(fresh.case.v_cache, v_ref)
        assert workspace.tickets.count_nonzero() == 0


@pytest.mark.gpu
@COMPILED_ONLY
def test_engine_greedy_tokens_equal_with_and_without_the_fused_step(tmp_path):
    """float32 tiny model, batched and one at a time, graphs and eager: the same tokens."""
    from jupyter_qwen import LLM, SamplingParams
    from jupyter_qwen.config import KernelOptions
    from jupyter_qwen.testing import make_tiny_qwen3

    path = make_tiny_qwen3(tmp_path / "tiny")
    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(n)] for n in (1, 7, 64, 300, 1000)]
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, detokenize=False)
    tokens = {}
    for fused, eager in ((False, False), (True, False), (True, True)):
        kernels = KernelOptions(fused_decode_step=fused, fused_decode_step_max_batch=8)
        with LLM(str(path), max_num_seqs=8, max_model_len=2048, gpu_memory_utilization=0.3,
                 enforce_eager=eager, kernels=kernels) as llm:
            batched = [o.token_ids for o in llm.generate(prompts, greedy)]
            alone = [llm.generate([p], greedy)[0].token_ids for p in prompts[:2]]
        tokens[fused, eager] = (batched, alone)
    assert tokens[True, False] == tokens[False, False]
    assert tokens[True, True] == tokens[False, False]
