"""Triton kernels against the torch reference.

Two modes run the same bodies: `cuda` (marked gpu; larger shapes) and `interpreter`
(small shapes on CPU; only when TRITON_INTERPRET=1 was set before triton was imported).
"""

from __future__ import annotations

import random

import pytest
import torch
from kernel_cases import (
    PagedCase,
    assert_replays_bitwise,
    exact_sum,
    random_paged_case,
    relative_error,
)
from kernel_modes import COMPILED_ONLY, HAVE_TRITON, TOLERANCE, Mode

from jupyter_qwen.model.attention import (
    TorchAttention,
    paged_attention_reference,
    store_kv_reference,
)

SCALE = 0.125


def reference(case: PagedCase) -> torch.Tensor:
    wide = torch.float64 if case.query.device.type == "cpu" else torch.float32
    ref = paged_attention_reference(case.query.to(wide), case.k_cache.to(wide),
                                    case.v_cache.to(wide), case.meta, SCALE)
    ref[case.padding_rows] = 0
    return ref


def poisoned(like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, float("nan"))


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert not out.isnan().any(), "output holds NaN (unwritten or broken rows)"
    error = relative_error(out, ref)
    assert error < TOLERANCE[dtype], f"relative error {error:.2e}"


STORE_SHAPES = [  # num_kv_heads, head_dim, block_size, dtype, slot dtype
    (2, 32, 16, torch.bfloat16, torch.int64),
    (8, 128, 16, torch.bfloat16, torch.int32),
    (1, 64, 8, torch.float32, torch.int64),
    (4, 64, 128, torch.float16, torch.int64),
]


@pytest.mark.parametrize("shape", STORE_SHAPES)
def test_store_kv_writes_only_live_slots(mode, generator, shape):
    from jupyter_qwen.model.kernels.store_kv import store_kv

    num_kv_heads, head_dim, block_size, dtype, slot_dtype = shape
    num_tokens = mode.pick(40, 3000)
    num_blocks = -(-2 * num_tokens // block_size)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens]
    slots[torch.rand(num_tokens, generator=generator) < 0.2] = -1
    key, value = (torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator)
                  .to(device=mode.device, dtype=dtype) for _ in range(2))
    k_cache, v_cache = (torch.randn(num_blocks, block_size, num_kv_heads, head_dim,
                                    generator=generator).to(device=mode.device, dtype=dtype)
                        for _ in range(2))
    slot_mapping = slots.to(device=mode.device, dtype=slot_dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv_reference(key, value, k_ref, v_ref, slot_mapping)
    store_kv(key, value, k_cache, v_cache, slot_mapping)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_store_kv_reads_strided_rows(mode, generator):
    from jupyter_qwen.model.kernels.store_kv import store_kv

    qkv = torch.randn(30, 4 + 2 + 2, 32, generator=generator).to(mode.device)
    key, value = qkv[:, 4:6], qkv[:, 6:]
    k_cache, v_cache = (torch.randn(4, 16, 2, 32, generator=generator).to(mode.device)
                        for _ in range(2))
    slot_mapping = torch.randperm(64, generator=generator)[:30].to(mode.device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv_reference(key, value, k_ref, v_ref, slot_mapping)
    store_kv(key, value, k_cache, v_cache, slot_mapping)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


PREFILL_SMALL = [  # heads, kv_heads, head_dim, block_size, dtype, q_lens, seq_lens
    (4, 2, 32, 16, torch.bfloat16, [37, 1, 5, 64], [37, 90, 200, 214]),
    (2, 2, 64, 8, torch.float32, [20, 1, 33], [20, 51, 133]),
    (8, 2, 32, 32, torch.float16, [1, 70], [300, 100]),
    (4, 2, 128, 128, torch.bfloat16, [3, 50], [130, 300]),
    (3, 1, 32, 16, torch.float32, [17, 2], [17, 40]),
]
PREFILL_LARGE = [
    (16, 8, 128, 16, torch.bfloat16, [512, 1, 1, 2048, 7, 300],
     [512, 3000, 17, 4096, 4000, 300]),
    (32, 8, 128, 32, torch.bfloat16, [1000, 1, 129], [3000, 2500, 129]),
    (8, 8, 64, 128, torch.float16, [777, 1, 64], [777, 1500, 2000]),
    (8, 2, 32, 8, torch.float32, [200, 1, 513], [1200, 33, 513]),
    (40, 8, 128, 16, torch.bfloat16, [300, 1], [900, 2000]),
]
PREFILL_TILINGS = [{}, {"block_m": 32, "block_n": 16, "num_warps": 4}]


@pytest.mark.parametrize("tiling", PREFILL_TILINGS, ids=["default", "small-tiles"])
@pytest.mark.parametrize("index", range(len(PREFILL_SMALL)))
def test_prefill_matches_reference(mode, generator, index, tiling):
    from jupyter_qwen.model.kernels.prefill_attention import prefill_attention

    shapes = mode.pick(PREFILL_SMALL, PREFILL_LARGE)
    heads, kv_heads, head_dim, block_size, dtype, q_lens, seq_lens = shapes[index]
    case = random_paged_case(q_lens, seq_lens, heads, kv_heads, head_dim, block_size, dtype,
                             mode.device, generator=generator)
    meta = case.meta
    out = prefill_attention(case.query, case.k_cache, case.v_cache, meta.block_tables,
                            meta.seq_lens, meta.query_start_loc, SCALE,
                            out=poisoned(case.query), **tiling)
    assert_close(out, reference(case), dtype)


DECODE_SMALL = [  # heads, kv_heads, head_dim, block_size, dtype, seq_lens
    (4, 2, 32, 16, torch.bfloat16, [1, 0, 77, 300, 16]),
    (2, 2, 64, 8, torch.float32, [130, 0, 0, 5]),
    (8, 2, 32, 32, torch.float16, [64, 200]),
    (4, 1, 128, 128, torch.bfloat16, [129, 0, 3]),
]
DECODE_LARGE = [
    (16, 8, 128, 16, torch.bfloat16, "mixed"),
    (32, 8, 128, 32, torch.bfloat16, "mixed"),
    (8, 8, 64, 8, torch.float16, "mixed"),
    (8, 2, 32, 128, torch.float32, "mixed"),
    (16, 8, 128, 256, torch.bfloat16, "mixed"),
]


def mixed_seq_lens(count: int, longest: int) -> list[int]:
    lens = [random.randrange(1, longest) for _ in range(count)]
    lens[0], lens[1], lens[-1] = longest, 1, 0
    print(f"seq_lens {lens}")
    return lens


@pytest.mark.parametrize("num_splits", [None, 1, 3, 16, 40])  # 40: the merge takes 3 tiles
@pytest.mark.parametrize("index", range(len(DECODE_SMALL)))
def test_decode_matches_reference(mode, generator, index, num_splits):
    from jupyter_qwen.model.kernels.decode_attention import decode_attention

    heads, kv_heads, head_dim, block_size, dtype, seq_lens = mode.pick(
        DECODE_SMALL, DECODE_LARGE)[index]
    if seq_lens == "mixed":
        seq_lens = mixed_seq_lens(64, 4000)
    case = random_paged_case([1] * len(seq_lens), seq_lens, heads, kv_heads, head_dim,
                             block_size, dtype, mode.device, generator=generator)
    meta = case.meta
    out = decode_attention(case.query, case.k_cache, case.v_cache, meta.block_tables,
                           meta.seq_lens, SCALE, num_splits=num_splits,
                           out=poisoned(case.query))
    assert_close(out, reference(case), dtype)
    assert torch.equal(out[case.padding_rows], torch.zeros_like(out[case.padding_rows]))


@pytest.mark.parametrize("num_splits", [None, 1, 4])
def test_mixed_batch_splits_rows_between_decode_and_varlen(mode, generator, num_splits):
    from jupyter_qwen.model.kernels.decode_attention import decode_attention
    from jupyter_qwen.model.kernels.prefill_attention import prefill_attention

    q_lens = mode.pick([1, 6, 1, 1, 30], [1, 700, 1, 1, 33, 1])
    seq_lens = mode.pick([90, 40, 1, 0, 200], [3000, 2000, 1, 0, 900, 4000])
    case = random_paged_case(q_lens, seq_lens, 8, 2, mode.pick(32, 128), 16, torch.bfloat16,
                             mode.device, generator=generator)
    meta = case.meta
    single = torch.repeat_interleave(torch.tensor([q == 1 for q in q_lens]),
                                     torch.tensor(q_lens)).to(mode.device)
    decoded = decode_attention(case.query, case.k_cache, case.v_cache, meta.block_tables,
                               meta.seq_lens, SCALE, num_splits=num_splits,
                               out=poisoned(case.query), query_start_loc=meta.query_start_loc)
    assert decoded[~single].isnan().all(), "decode wrote rows of multi-token sequences"
    prefilled = prefill_attention(case.query, case.k_cache, case.v_cache, meta.block_tables,
                                  meta.seq_lens, meta.query_start_loc, SCALE,
                                  out=poisoned(case.query), skip_single=True)
    assert prefilled[single].isnan().all(), "varlen wrote rows of one-token sequences"
    assert_close(torch.where(single[:, None, None], decoded, prefilled), reference(case),
                 torch.bfloat16)


def test_backend_store_then_attend_matches_torch_backend(mode, generator):
    from jupyter_qwen.model.kernels.backend import TritonAttention

    q_lens = mode.pick([9, 1, 1, 40], [1024, 1, 1, 300, 1])
    seq_lens = mode.pick([9, 50, 170, 140], [3072, 2000, 5, 300, 4095])
    for lens in (q_lens, [1] * len(seq_lens)):
        case = random_paged_case(lens, seq_lens, 16, 8, mode.pick(32, 128), 16,
                                 torch.bfloat16, mode.device, generator=generator)
        caches = (case.k_cache.clone(), case.v_cache.clone())
        backend, torch_backend = TritonAttention(), TorchAttention()
        backend.store_kv(case.key, case.value, case.k_cache, case.v_cache,
                         case.meta.slot_mapping)
        torch_backend.store_kv(case.key, case.value, *caches, case.meta.slot_mapping)
        assert torch.equal(case.k_cache, caches[0]) and torch.equal(case.v_cache, caches[1])
        out = backend.attend(case.query, case.k_cache, case.v_cache, case.meta, SCALE)
        assert_close(out, reference(case), torch.bfloat16)


@pytest.mark.parametrize("q_lens", [[1, 1, 1], [9, 1, 30]], ids=["decode", "mixed"])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_attention_hands_its_rows_over_quantized_as_the_o_product_would(mode, generator, q_lens,
                                                                         num_splits,
                                                                         monkeypatch):
    """fp8=True: the output rows [T, heads * 128] quantized per head (`Fp8Rows`) are the
    bits the FP8 o product's quantizing launch makes from the plain output, for decode
    steps (one split, written directly, or several and the merge) and mixed steps (the
    varlen kernel and flash-decoding writing one output); the torch reference and heads
    of other sizes refuse."""
    from jupyter_qwen.model.kernels import backend as backend_module
    from jupyter_qwen.model.kernels.backend import TritonAttention
    from jupyter_qwen.model.kernels.fused_ops import fp8_head_outputs
    from jupyter_qwen.model.kernels.quant_linear import _quantize_x
    from jupyter_qwen.model.quant.fp8 import Fp8Rows

    decode = backend_module.decode_attention
    monkeypatch.setattr(backend_module, "decode_attention",
                        lambda *a, **k: decode(*a, **k, num_splits=num_splits))
    case = random_paged_case(q_lens, [40, 170, 90], 4, 2, 128, 16, torch.bfloat16,
                             mode.device, generator=generator)
    backend = TritonAttention()
    plain = backend.attend(case.query, case.k_cache, case.v_cache, case.meta, SCALE)
    rows = backend.attend(case.query, case.k_cache, case.v_cache, case.meta, SCALE, fp8=True)
    assert isinstance(rows, Fp8Rows) and rows.dtype == torch.bfloat16
    values, scales = _quantize_x(plain.reshape(plain.shape[0], -1))
    assert torch.equal(rows.scales.cpu(), scales.cpu())
    assert torch.equal(rows.values.view(torch.uint8).cpu(), values.view(torch.uint8).cpu())
    with pytest.raises(ValueError, match="quantize"):
        TorchAttention().attend(case.query, case.k_cache, case.v_cache, case.meta, SCALE,
                                fp8=True)
    with pytest.raises(ValueError, match="head_dim 64"):
        fp8_head_outputs(3, 4, 64, torch.bfloat16, torch.device(mode.device))


@pytest.mark.gpu
@COMPILED_ONLY
def test_decode_replays_in_cuda_graph_with_new_lengths():
    from jupyter_qwen.model.kernels.backend import TritonAttention

    generator = torch.Generator().manual_seed(1)
    first = random_paged_case([1] * 8, [4000, 1, 300, 0, 17, 2048, 5, 999], 16, 8, 128, 16,
                              torch.bfloat16, "cuda", generator=generator)
    backend = TritonAttention()
    meta = first.meta
    backend.attend(first.query, first.k_cache, first.v_cache, meta, SCALE)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.attend(first.query, first.k_cache, first.v_cache, meta, SCALE)
    second = random_paged_case([1] * 8, [3, 0, 3900, 1, 0, 100, 2500, 64], 16, 8, 128, 16,
                               torch.bfloat16, "cuda", generator=generator)
    assert second.k_cache.shape[0] <= first.k_cache.shape[0]
    first.query.copy_(second.query)
    first.k_cache[:second.k_cache.shape[0]].copy_(second.k_cache)
    first.v_cache[:second.v_cache.shape[0]].copy_(second.v_cache)
    meta.seq_lens.copy_(second.meta.seq_lens)
    meta.block_tables.fill_(-1)
    width = second.meta.block_tables.shape[1]
    meta.block_tables[:, :width].copy_(second.meta.block_tables)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    second.k_cache, second.v_cache = first.k_cache[:second.k_cache.shape[0]], first.v_cache[
        :second.v_cache.shape[0]]
    assert_close(out, reference(second), torch.bfloat16)


FUSED_DTYPES = [torch.bfloat16, torch.float32]


def random_tensor(mode: Mode, generator: torch.Generator, *shape: int,
                  dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=generator).to(device=mode.device, dtype=dtype)


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("size", [128, 1024, 2560])
def test_rms_norm_and_add_rms_norm(mode, generator, dtype, size):
    from jupyter_qwen.model.kernels import fused_ops

    rows = mode.pick(5, 300)
    x, residual = (random_tensor(mode, generator, rows, size, dtype=dtype) for _ in range(2))
    weight = random_tensor(mode, generator, size, dtype=dtype)
    assert_close(fused_ops.rms_norm(x, weight, 1e-6),
                 fused_ops.rms_norm_reference(x, weight, 1e-6), dtype)
    normed, summed = fused_ops.add_rms_norm(x, residual, weight, 1e-6)
    ref_normed, ref_summed = fused_ops.add_rms_norm_reference(x, residual, weight, 1e-6)
    assert_close(summed, ref_summed, dtype)
    assert_close(normed, ref_normed, dtype)


def test_rms_norm_of_strided_heads(mode, generator):
    from jupyter_qwen.model.kernels import fused_ops

    qkv = random_tensor(mode, generator, 7, 4 * 64 + 2 * 2 * 64, dtype=torch.bfloat16)
    q = qkv[:, :4 * 64].view(7, 4, 64)
    weight = random_tensor(mode, generator, 64, dtype=torch.bfloat16)
    assert_close(fused_ops.rms_norm(q, weight, 1e-6),
                 fused_ops.rms_norm_reference(q, weight, 1e-6), torch.bfloat16)


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("heads", [(16, 8, 128), (4, 4, 64), (5, 1, 32)])
def test_apply_rope_in_place(mode, generator, dtype, heads):
    from jupyter_qwen.model.kernels import fused_ops
    from jupyter_qwen.model.qwen3 import RotaryEmbedding

    num_q_heads, num_k_heads, head_dim = heads
    tokens = mode.pick(6, 500)
    rotary = RotaryEmbedding(head_dim, 4096, 1_000_000.0)
    rotary.build(torch.device(mode.device))
    positions = torch.randint(0, 4096, (tokens,), generator=generator).to(mode.device)
    q = random_tensor(mode, generator, tokens, num_q_heads, head_dim, dtype=dtype)
    k = random_tensor(mode, generator, tokens, num_k_heads, head_dim, dtype=dtype)
    ref_q, ref_k = fused_ops.rope_reference(positions, q, k, rotary.cos_cache, rotary.sin_cache)
    fused_ops.apply_rope_(positions, q, k, rotary.cos_cache, rotary.sin_cache)
    assert_close(q, ref_q, dtype)
    assert_close(k, ref_k, dtype)


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("width", [96, 3072])
def test_silu_and_mul(mode, generator, dtype, width):
    from jupyter_qwen.model.kernels import fused_ops

    gate_up = random_tensor(mode, generator, mode.pick(3, 256), 2 * width, dtype=dtype)
    assert_close(fused_ops.silu_and_mul(gate_up), fused_ops.silu_and_mul_reference(gate_up),
                 dtype)


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("heads", [(16, 8, 128), (4, 4, 64), (5, 1, 32)])
def test_qk_norm_rope_store(mode, generator, dtype, heads):
    from jupyter_qwen.model.kernels import fused_ops
    from jupyter_qwen.model.qwen3 import RotaryEmbedding

    num_q_heads, num_kv_heads, head_dim = heads
    tokens, num_blocks, block_size = mode.pick(6, 300), mode.pick(4, 64), 16
    rotary = RotaryEmbedding(head_dim, 4096, 1_000_000.0)
    rotary.build(torch.device(mode.device))
    positions = torch.randint(0, 4096, (tokens,), generator=generator).to(mode.device)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:tokens]
    slots[::3] = -1
    slots = slots.to(mode.device)
    width = (num_q_heads + 2 * num_kv_heads) * head_dim
    qkv = random_tensor(mode, generator, tokens, width, dtype=dtype)
    q_weight, k_weight = (1 + random_tensor(mode, generator, head_dim, dtype=dtype)
                          for _ in range(2))
    caches = [random_tensor(mode, generator, num_blocks, block_size, num_kv_heads, head_dim,
                            dtype=dtype) for _ in range(2)]
    expected = [cache.clone() for cache in caches]
    args = (q_weight, k_weight, 1e-6, rotary.cos_cache, rotary.sin_cache)
    ref_q = fused_ops.qk_norm_rope_store_reference(qkv, positions, slots, *args, *expected)
    q = fused_ops.qk_norm_rope_store(qkv, positions, slots, *args, *caches)
    assert_close(q, ref_q, dtype)
    for cache, want in zip(caches, expected, strict=True):
        assert_close(cache, want, dtype)


# Small-M products (jupyter_qwen/model/kernels/gemv.py): y = x @ W.T with fused prologues.
SMALL_M_ROWS = [1, 2, 3, 8, 16]
SMALL_M_SHAPES_LARGE = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072), (7, 33)]
SMALL_M_SHAPES_SMALL = [(64, 48), (24, 80), (40, 40), (20, 136), (7, 33)]  # (N, K)


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("shape", range(len(SMALL_M_SHAPES_LARGE)))
@pytest.mark.parametrize("rows", SMALL_M_ROWS)
def test_linear_small_m(mode, generator, rows, shape, dtype):
    from jupyter_qwen.model.kernels import gemv

    n, k = mode.pick(SMALL_M_SHAPES_SMALL, SMALL_M_SHAPES_LARGE)[shape]
    x = random_tensor(mode, generator, rows, k, dtype=dtype)
    weight = random_tensor(mode, generator, n, k, dtype=dtype)
    bias = random_tensor(mode, generator, n, dtype=dtype) if (rows + shape) % 2 else None
    out = gemv.linear_small_m(x, weight, bias, out=poisoned(x.new_empty(rows, n)))
    assert_close(out, gemv.linear_reference(x, weight, bias), dtype)


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no-residual"])
@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("shape", range(len(SMALL_M_SHAPES_LARGE)))
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_rms_norm_linear(mode, generator, rows, shape, dtype, residual):
    from jupyter_qwen.model.kernels import gemv

    n, k = mode.pick(SMALL_M_SHAPES_SMALL, SMALL_M_SHAPES_LARGE)[shape]
    x = random_tensor(mode, generator, rows, k, dtype=dtype)
    res = random_tensor(mode, generator, rows, k, dtype=dtype) if residual else None
    norm_weight = 1 + 0.1 * random_tensor(mode, generator, k, dtype=dtype)
    weight = random_tensor(mode, generator, n, k, dtype=dtype)
    y, summed = gemv.rms_norm_linear(x, norm_weight, 1e-6, weight, res,
                                     out=poisoned(x.new_empty(rows, n)),
                                     residual_out=poisoned(x) if residual else None)
    ref_y, _ = gemv.rms_norm_linear_reference(x, norm_weight, 1e-6, weight, res)
    assert_close(y, ref_y, dtype)
    if residual:
        assert torch.equal(summed, exact_sum(x, res, mode))
    else:
        assert summed is x


@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("shape", range(len(SMALL_M_SHAPES_LARGE)))
@pytest.mark.parametrize("rows", [1, 2, 8, 16])
def test_silu_mul_linear(mode, generator, rows, shape, dtype):
    from jupyter_qwen.model.kernels import gemv

    n, k = mode.pick(SMALL_M_SHAPES_SMALL, SMALL_M_SHAPES_LARGE)[shape]
    gate_up = random_tensor(mode, generator, rows, 2 * k, dtype=dtype)
    weight = random_tensor(mode, generator, n, k, dtype=dtype)
    y = gemv.silu_mul_linear(gate_up, weight, out=poisoned(gate_up.new_empty(rows, n)))
    assert_close(y, gemv.silu_mul_linear_reference(gate_up, weight), dtype)


SMALL_M_TILINGS = [  # block_n, block_k, num_warps, num_stages, dot
    (4, 32, 4, 1, False), (16, 32, 2, 2, True), (8, 64, 4, 3, True), (32, 16, 1, 1, True),
]


@pytest.mark.parametrize("tiling", SMALL_M_TILINGS, ids=lambda t: "-".join(map(str, t)))
@pytest.mark.parametrize("rows", [1, 5])
def test_small_m_tilings_with_k_tails(mode, generator, rows, tiling):
    """Several K steps with a ragged last one, a ragged last N tile, every prologue."""
    from jupyter_qwen.model.kernels import gemv

    tiling = gemv.Tiling(*tiling)
    n, k = mode.pick((37, 100), (1031, 1000))
    dtype = torch.bfloat16
    x, res = (random_tensor(mode, generator, rows, k, dtype=dtype) for _ in range(2))
    weight = random_tensor(mode, generator, n, k, dtype=dtype)
    bias = random_tensor(mode, generator, n, dtype=dtype)
    norm_weight = random_tensor(mode, generator, k, dtype=dtype)
    y = gemv.linear_small_m(x, weight, bias, out=poisoned(x.new_empty(rows, n)), tiling=tiling)
    assert_close(y, gemv.linear_reference(x, weight, bias), dtype)
    y, summed = gemv.rms_norm_linear(x, norm_weight, 1e-6, weight, res, tiling=tiling,
                                     out=poisoned(x.new_empty(rows, n)),
                                     residual_out=poisoned(x))
    assert_close(y, gemv.rms_norm_linear_reference(x, norm_weight, 1e-6, weight, res)[0], dtype)
    assert torch.equal(summed, exact_sum(x, res, mode))
    gate_up = random_tensor(mode, generator, rows, 2 * k, dtype=dtype)
    y = gemv.silu_mul_linear(gate_up, weight, out=poisoned(x.new_empty(rows, n)), tiling=tiling)
    assert_close(y, gemv.silu_mul_linear_reference(gate_up, weight), dtype)


def test_small_m_takes_batched_and_strided_rows(mode, generator):
    from jupyter_qwen.model.kernels import gemv

    wide = random_tensor(mode, generator, 2, 3, 96, dtype=torch.bfloat16)
    x = wide[..., :64]  # rows 96 apart
    weight = random_tensor(mode, generator, 24, 64, dtype=torch.bfloat16)
    y = gemv.linear_small_m(x, weight)
    assert y.shape == (2, 3, 24)
    assert_close(y, gemv.linear_reference(x, weight), torch.bfloat16)
    with pytest.raises(ValueError):
        gemv.linear_small_m(random_tensor(mode, generator, 17, 64, dtype=torch.bfloat16),
                            weight)


@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
def test_use_small_m_dispatch():
    from jupyter_qwen.model.kernels import gemv

    assert gemv.use_small_m(1, 4096, 1024)
    assert not gemv.use_small_m(0, 4096, 1024)
    assert not gemv.use_small_m(gemv.MAX_M + 1, 4096, 1024)
    assert not gemv.use_small_m(512, 1024, 1024)


@pytest.mark.gpu
@COMPILED_ONLY
@pytest.mark.parametrize("rows", [1, 4])
def test_small_m_replays_in_cuda_graph_bitwise(rows):
    """Graph replay on new inputs gives exactly the eager result (no host reads, no atomics)."""
    from jupyter_qwen.model.kernels import gemv

    generator = torch.Generator().manual_seed(rows)
    mode = Mode("cuda", large=True)
    x, res = (random_tensor(mode, generator, rows, 1024, dtype=torch.bfloat16)
              for _ in range(2))
    gate_up = random_tensor(mode, generator, rows, 6144, dtype=torch.bfloat16)
    norm_weight = random_tensor(mode, generator, 1024, dtype=torch.bfloat16)
    w_qkv = random_tensor(mode, generator, 4096, 1024, dtype=torch.bfloat16)
    w_down = random_tensor(mode, generator, 1024, 3072, dtype=torch.bfloat16)
    w_o = random_tensor(mode, generator, 1000, 1024, dtype=torch.bfloat16)

    def step():
        y, summed = gemv.rms_norm_linear(x, norm_weight, 1e-6, w_qkv, res)
        return y, summed, gemv.silu_mul_linear(gate_up, w_down), gemv.linear_small_m(x, w_o)

    assert_replays_bitwise(step, (x, res, gate_up), generator)
