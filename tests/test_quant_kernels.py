"""The quantized products (jupyter_qwen/model/kernels/quant_linear.py) against the
dequantizing reference: x @ dequantize(W).T in float64 (CPU) / float32 (GPU) from the
weight dequantized to x's dtype, as `QuantLinear`'s reference path multiplies.

Tolerances (relative error of the whole output): kernel_modes.TOLERANCE per dtype (fp32
1e-5, bf16 2e-2: the output's own rounding), and FP8_DOT_TOLERANCE for the prefill path on
FP8 tensor cores, whose activations are quantized to e4m3 (3 mantissa bits) per row and
128 columns. Both modes: `cuda` (real shapes) and `interpreter` (small shapes, CPU)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import as_kernel_rounds, relative_error
from kernel_modes import COMPILED_ONLY, TOLERANCE

from jupyter_qwen.model.quant import awq, fp8

FP8_DOT_TOLERANCE = 5e-2
SMALL_SHAPES = [(96, 200), (256, 128), (40, 64)]  # N, K: partial blocks and groups
LARGE_SHAPES = [(4096, 1024), (1024, 2048), (19456, 2560), (2560, 9728)]  # 0.6B, 4B
ROWS = [1, 3, 16, 37]


def fp8_case(generator, n: int, k: int, shards: list[int] | None = None):
    """A packed FP8 projection of `shards` (each quantized on its own, as checkpoints are)."""
    shards = shards or [n]
    pieces = [fp8.quantize_fp8_blocks(torch.randn(rows, k, generator=generator))
              for rows in shards]
    values = torch.cat([v for v, _ in pieces])
    scales = torch.cat([s for _, s in pieces])
    return values, scales, fp8.scale_rows_of(shards)


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    wide = torch.float64 if x.device.type == "cpu" else torch.float32
    return x.to(wide) @ weight.to(x.dtype).to(wide).T


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", range(3))
def test_fp8_linear_matches_the_dequantized_product(mode, generator, dtype, rows, shape):
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear

    n, k = mode.pick(SMALL_SHAPES, LARGE_SHAPES)[shape]
    values, scales, scale_rows = fp8_case(generator, n, k)
    x = torch.randn(rows, k, generator=generator).to(dtype)
    weight = fp8.dequantize_fp8_blocks(values, scales, scale_rows)
    device = mode.device
    y = fp8_linear(x.to(device), values.to(device), scales.to(device), scale_rows.to(device))
    error = relative_error(y.cpu(), reference(x, weight))
    assert y.dtype == dtype and error < TOLERANCE[dtype], f"relative error {error:.2e}"


def test_fp8_linear_reads_the_scales_of_packed_shards(mode, generator):
    """q, k and v of sizes that are not multiples of 128 packed in one projection: each
    output row reads its own shard's scale row."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear

    shards = mode.pick([64, 32, 32], [2048, 1024, 1024])
    values, scales, scale_rows = fp8_case(generator, sum(shards), 128, shards)
    assert scales.shape[0] == sum(-(-rows // 128) for rows in shards)
    x = torch.randn(5, 128, generator=generator)
    y = fp8_linear(x.to(mode.device), values.to(mode.device), scales.to(mode.device),
                   scale_rows.to(mode.device))
    weight = fp8.dequantize_fp8_blocks(values, scales, scale_rows)
    assert relative_error(y.cpu(), reference(x, weight)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", range(3))
def test_awq_linear_matches_the_dequantized_product(mode, generator, dtype, rows, shape):
    from jupyter_qwen.model.kernels.quant_linear import awq_linear

    n, k = mode.pick(SMALL_SHAPES, LARGE_SHAPES)[shape]
    w = torch.randn(n, k, generator=generator)
    qweight, qzeros, scales = awq.quantize_awq(w)
    x = torch.randn(rows, k, generator=generator).to(dtype)
    device = mode.device
    y = awq_linear(x.to(device), qweight.to(device), qzeros.to(device), scales.to(device))
    weight = awq.dequantize_awq(qweight, qzeros, scales)
    error = relative_error(y.cpu(), reference(x, weight))
    assert y.dtype == dtype and error < TOLERANCE[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", range(3))
def test_awq_dequantize_equals_the_reference_bit_for_bit(mode, generator, dtype, shape):
    """The large-batch AWQ path's weights: every value as the reference dequantizes it
    (partial groups and N tiles included), so its product is the reference path's."""
    from jupyter_qwen.model.kernels.quant_linear import awq_dequantize

    n, k = mode.pick(SMALL_SHAPES, LARGE_SHAPES)[shape]
    packed = awq.quantize_awq(torch.randn(n, k, generator=generator))
    weight = awq_dequantize(*(t.to(mode.device) for t in packed), dtype=dtype)
    expected = as_kernel_rounds(awq.dequantize_awq(*packed), dtype, mode)
    assert weight.shape == (n, k) and torch.equal(weight.cpu(), expected)


def test_large_awq_batches_multiply_the_dequantized_weights(mode, generator):
    """From AWQ_VIA_BF16_MIN_M rows the product is F.linear on the reference's weights (as
    the kernel rounds them, in [N, K] order): the reference path's numbers; one row fewer
    (the dequantizing GEMM) within the output's rounding of them."""
    from jupyter_qwen.model.kernels.quant_linear import awq_linear
    from jupyter_qwen.model.kernels.quant_tiles import AWQ_VIA_BF16_MIN_M

    n, k = mode.pick(SMALL_SHAPES, LARGE_SHAPES)[0]
    packed = awq.quantize_awq(torch.randn(n, k, generator=generator))
    x = torch.randn(AWQ_VIA_BF16_MIN_M, k, generator=generator).to(torch.bfloat16)
    on = [t.to(mode.device) for t in (x, *packed)]
    y = awq_linear(*on)
    weight = as_kernel_rounds(awq.dequantize_awq(*on[1:]), x.dtype, mode).contiguous()
    expected = torch.nn.functional.linear(on[0], weight)
    assert torch.equal(y, expected)
    fewer = awq_linear(on[0][1:], *on[1:])
    assert relative_error(fewer.cpu(), reference(x[1:], awq.dequantize_awq(*packed))) < (
        TOLERANCE[torch.bfloat16])


def test_quantized_products_take_strided_and_batched_rows(mode, generator):
    from jupyter_qwen.model.kernels.quant_linear import awq_linear, fp8_linear

    wide = torch.randn(2, 3, 256, generator=generator)
    x = wide[..., :128]  # rows with a stride of 256
    values, scales, scale_rows = fp8_case(generator, 48, 128)
    qweight, qzeros, awq_scales = awq.quantize_awq(torch.randn(48, 128, generator=generator))
    on = lambda t: t.to(mode.device)  # noqa: E731
    y = fp8_linear(on(x), on(values), on(scales), on(scale_rows))
    assert y.shape == (2, 3, 48)
    assert relative_error(y.cpu(), reference(x, fp8.dequantize_fp8_blocks(
        values, scales, scale_rows))) < TOLERANCE[torch.float32]
    y = awq_linear(on(x), on(qweight), on(qzeros), on(awq_scales))
    assert relative_error(y.cpu(), reference(x, awq.dequantize_awq(
        qweight, qzeros, awq_scales))) < TOLERANCE[torch.float32]


@COMPILED_ONLY
@pytest.mark.gpu
@pytest.mark.parametrize("rows", [17, 256, 2048])
@pytest.mark.parametrize("shape", range(4))
def test_fp8_tensor_core_prefill_matches_the_reference(generator, rows, shape):
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear, fp8_tensor_cores

    if not fp8_tensor_cores(torch.device("cuda")):
        pytest.skip("needs FP8 tensor cores (compute capability 8.9 or later)")
    n, k = LARGE_SHAPES[shape]
    values, scales, scale_rows = fp8_case(generator, n, k)
    x = torch.randn(rows, k, generator=generator).to(torch.bfloat16)
    weight = fp8.dequantize_fp8_blocks(values, scales, scale_rows)
    y = fp8_linear(x.cuda(), values.cuda(), scales.cuda(), scale_rows.cuda(), fp8_dot=True)
    error = relative_error(y.float(), reference(x.cuda(), weight.cuda()))
    assert error < FP8_DOT_TOLERANCE, f"relative error {error:.2e}"


@COMPILED_ONLY
@pytest.mark.gpu
def test_quantized_products_replay_in_cuda_graphs_bitwise(generator):
    from jupyter_qwen.model.kernels.quant_linear import awq_linear, fp8_linear

    values, scales, scale_rows = (t.cuda() for t in fp8_case(generator, 4096, 1024))
    packed = [t.cuda() for t in awq.quantize_awq(torch.randn(4096, 1024, generator=generator))]
    x = torch.randn(4, 1024, generator=generator).to(torch.bfloat16).cuda()

    def step():
        return fp8_linear(x, values, scales, scale_rows), awq_linear(x, *packed)

    eager = step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(eager, captured, strict=True))


def quantized_rows(rows: torch.Tensor):
    """`rows` quantized as an FP8 product quantizes them in a launch of its own."""
    from jupyter_qwen.model.kernels.quant_linear import _quantize_x

    return _quantize_x(rows)


def same_fp8_rows(fused: fp8.Fp8Rows, rows: torch.Tensor) -> None:
    values, scales = quantized_rows(rows)
    assert fused.dtype == rows.dtype and fused.values.dtype == torch.float8_e4m3fn
    assert torch.equal(fused.scales.cpu(), scales.cpu())
    assert torch.equal(fused.values.view(torch.uint8).cpu(), values.view(torch.uint8).cpu())


@pytest.mark.parametrize("rows", [1, 5, 70])
@pytest.mark.parametrize("residual", [False, True])
def test_fused_norm_hands_rows_over_quantized_as_the_product_would(mode, generator, rows,
                                                                   residual):
    """`rms_norm` / `add_rms_norm` with fp8=True: the e4m3 values and scales the FP8
    product's own quantizing launch makes from the bf16 norm's rows, bit for bit, and the
    same sum; widths a power of two and not (the last scale group partial, some masked)."""
    from jupyter_qwen.model.kernels import fused_ops

    for size in mode.pick([256, 384, 200], [1024, 2560]):
        x = (torch.randn(rows, size, generator=generator) * 3).to(torch.bfloat16)
        added = torch.randn(rows, size, generator=generator).to(torch.bfloat16)
        weight = torch.rand(size, generator=generator).to(torch.bfloat16) + 0.5
        x, added, weight = (t.to(mode.device) for t in (x, added, weight))
        if residual:
            plain, plain_sum = fused_ops.add_rms_norm(x, added, weight, 1e-6)
            fused, fused_sum = fused_ops.add_rms_norm(x, added, weight, 1e-6, fp8=True)
            assert torch.equal(fused_sum, plain_sum)
        else:
            plain = fused_ops.rms_norm(x, weight, 1e-6)
            fused = fused_ops.rms_norm(x, weight, 1e-6, fp8=True)
        same_fp8_rows(fused, plain)


@pytest.mark.parametrize("rows", [1, 3])
def test_fused_silu_mul_hands_rows_over_quantized_as_the_product_would(mode, generator,
                                                                       rows):
    """`silu_and_mul(fp8=True)`: the FP8 product's quantization of the bf16 SiLU·mul rows,
    bit for bit; widths over several programs a row, the last partial."""
    from jupyter_qwen.model.kernels import fused_ops

    for width in mode.pick([256, 640, 200], [3072, 9728]):
        gate_up = (torch.randn(rows, 2 * width, generator=generator) * 4).to(torch.bfloat16)
        gate_up = gate_up.to(mode.device)
        same_fp8_rows(fused_ops.silu_and_mul(gate_up, fp8=True),
                      fused_ops.silu_and_mul(gate_up))


def test_fused_kernels_refuse_rows_too_narrow_to_quantize(mode):
    from jupyter_qwen.model.kernels import fused_ops

    x = torch.ones(2, 64, dtype=torch.bfloat16, device=mode.device)
    with pytest.raises(ValueError, match="too narrow"):
        fused_ops.rms_norm(x, x[0], 1e-6, fp8=True)


@pytest.mark.parametrize("rows", [37, 70])
def test_fp8_products_take_rows_quantized_beforehand(mode, generator, rows):
    """A `quantize_x` tiling given `Fp8Rows` computes the bits it computes from the rows
    themselves (plain and `tile_scale`); a tiling that quantizes inside its K loop refuses
    them, and `quantizes_x` says which is which."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear, quantizes_x
    from jupyter_qwen.model.kernels.quant_tiles import QuantTiling

    n, k = mode.pick((256, 384), (4096, 1024))
    values, scales, scale_rows = (t.to(mode.device) for t in fp8_case(generator, n, k))
    x = torch.randn(rows, k, generator=generator).to(torch.bfloat16).to(mode.device)
    given = fp8.Fp8Rows(*quantized_rows(x), x.dtype)
    for tiling in (QuantTiling(32, 64, 128, quantize_x=True),
                   QuantTiling(32, 128, 128, quantize_x=True, tile_scale=True)):
        assert quantizes_x(tiling, [n], fp8_dot=True)
        assert not quantizes_x(tiling, [n], fp8_dot=False)
        own = fp8_linear(x, values, scales, scale_rows, tiling=tiling, fp8_dot=True,
                         shard_sizes=[n])
        taken = fp8_linear(given, values, scales, scale_rows, tiling=tiling, fp8_dot=True,
                           shard_sizes=[n])
        assert taken.dtype == x.dtype and torch.equal(taken, own)
    inside = QuantTiling(32, 64, 128)
    assert not quantizes_x(inside, [n], fp8_dot=True)
    with pytest.raises(ValueError, match="quantizes_x"):
        fp8_linear(given, values, scales, scale_rows, tiling=inside, fp8_dot=True,
                   shard_sizes=[n])


@pytest.mark.parametrize("split_k", [2, 3])
def test_fp8_products_split_over_k_add_the_splits_and_leave_their_counts_zero(
        mode, generator, split_k):
    """K split over programs (`split_k`): in fp32 the product of the unsplit tiling up to
    the order of the sums, the same bits on a second launch with the same counters (each
    launch sets them back to 0); counters too few for the grid are not used. In bf16 with
    rows quantized beforehand (the engine's form), the unsplit product to bf16 rounding."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear
    from jupyter_qwen.model.kernels.quant_tiles import QuantTiling

    n, k, rows = mode.pick((160, 640, 70), (1024, 3072, 256))
    values, scales, scale_rows = (t.to(mode.device) for t in fp8_case(generator, n, k))
    x = torch.randn(rows, k, generator=generator).to(mode.device)
    plain = QuantTiling(32, 64, 128, fp8_dot=False)
    split = QuantTiling(32, 64, 128, fp8_dot=False, split_k=split_k)
    counts = torch.zeros(-(-rows // 32) * -(-n // 64), dtype=torch.int32, device=mode.device)
    whole = fp8_linear(x, values, scales, scale_rows, tiling=plain)
    first = fp8_linear(x, values, scales, scale_rows, tiling=split, split_counts=counts)
    assert torch.equal(counts, torch.zeros_like(counts))
    second = fp8_linear(x, values, scales, scale_rows, tiling=split, split_counts=counts)
    assert torch.equal(first, second) and not torch.equal(first, torch.zeros_like(first))
    assert relative_error(first.cpu(), whole.cpu()) < 1e-6
    too_few = torch.zeros(1, dtype=torch.int32, device=mode.device)
    assert torch.equal(fp8_linear(x, values, scales, scale_rows, tiling=split,
                                  split_counts=too_few), first)

    x = x.to(torch.bfloat16)
    given = fp8.Fp8Rows(*quantized_rows(x), x.dtype)
    engine = QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True)
    whole = fp8_linear(given, values, scales, scale_rows, tiling=engine, fp8_dot=True,
                       shard_sizes=[n])
    parts = fp8_linear(given, values, scales, scale_rows, fp8_dot=True, shard_sizes=[n],
                       tiling=QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True,
                                          split_k=split_k))
    assert relative_error(parts.float().cpu(), whole.float().cpu()) < 1e-2


def test_awq_products_split_over_k_add_the_splits_and_leave_their_counts_zero(mode,
                                                                              generator):
    """AWQ's `split_k` tilings as FP8's: in fp32 the unsplit product up to the order of the
    sums, the same bits again, counters back at 0; swap_ab tilings refuse to split."""
    from jupyter_qwen.model.kernels.quant_linear import awq_linear
    from jupyter_qwen.model.kernels.quant_tiles import QuantTiling

    n, k, rows = mode.pick((160, 640, 70), (2560, 9728, 128))
    packed = [t.to(mode.device) for t in awq.quantize_awq(torch.randn(n, k, generator=generator))]
    x = torch.randn(rows, k, generator=generator).to(mode.device)
    counts = torch.zeros(-(-rows // 32) * -(-n // 64), dtype=torch.int32, device=mode.device)
    split = QuantTiling(32, 64, 128, split_k=3)
    whole = awq_linear(x, *packed, tiling=QuantTiling(32, 64, 128))
    first = awq_linear(x, *packed, tiling=split, split_counts=counts)
    second = awq_linear(x, *packed, tiling=split, split_counts=counts)
    assert torch.equal(first, second) and torch.equal(counts, torch.zeros_like(counts))
    # fp32 sums of the same products in another order: 1.7e-6 on an H100 (K = 9728, 76
    # groups, each scaled before it is added); a split lost or added twice is ~0.3
    assert relative_error(first.cpu(), whole.cpu()) < 1e-5
    with pytest.raises(ValueError, match="swap_ab"):
        awq_linear(x, *packed, tiling=QuantTiling(32, 64, 128, swap_ab=True, split_k=2))


def test_an_fp8_projection_keeps_its_split_counters(mode, generator, monkeypatch):
    """`TritonQuantKernels` hands a `split_k` tiling the projection's own counters
    (`split_counts_for`, made once, zero after every launch) and none to a tiling that
    does not split K; the product is the reference's."""
    from jupyter_qwen.model.kernels import quant_tiles
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels, split_counts_for
    from jupyter_qwen.model.quant.linear import Fp8Linear

    n, k, rows = mode.pick((128, 384, 40), (1024, 2048, 256))
    layer = Fp8Linear(k, [n], online=True)
    weight = torch.randn(n, k, generator=generator).to(torch.bfloat16)
    layer.load("weight", 0, weight)
    layer = layer.to(mode.device)
    layer.kernels = TritonQuantKernels(torch.device(mode.device))
    x = torch.randn(rows, k, generator=generator).to(torch.bfloat16).to(mode.device)
    assert split_counts_for(layer, rows, x.device) is None
    split = quant_tiles.QuantTiling(32, 64, 128, fp8_dot=False, split_k=3)
    monkeypatch.setattr(quant_tiles, "LARGE_M_TILES",
                        {("fp8", quant_tiles.m_bucket(rows), n, k): split})
    counts = split_counts_for(layer, rows, x.device)
    assert counts is split_counts_for(layer, rows, x.device) and int(counts.abs().sum()) == 0
    y = layer.kernels.linear(x, layer)
    assert layer._split_counts is counts and int(counts.abs().sum()) == 0
    error = relative_error(y.float().cpu(), reference(x, layer.dequantize(x.dtype)).float().cpu())
    assert error < TOLERANCE[torch.bfloat16], f"relative error {error:.2e}"


@COMPILED_ONLY
@pytest.mark.gpu
def test_split_k_products_give_the_same_bits_every_launch_and_replay(generator):
    """The last split of each tile to finish adds the partials in split order, whichever
    it is: 20 launches and a CUDA-graph replay give one result."""
    from jupyter_qwen.model.kernels.quant_linear import fp8_linear
    from jupyter_qwen.model.kernels.quant_tiles import QuantTiling

    values, scales, scale_rows = (t.cuda() for t in fp8_case(generator, 1024, 3072))
    x = torch.randn(256, 3072, generator=generator).to(torch.bfloat16).cuda()
    tiling = QuantTiling(64, 64, 128, quantize_x=True, tile_scale=True, split_k=4)
    counts = torch.zeros(64, dtype=torch.int32, device="cuda")

    def product():
        return fp8_linear(x, values, scales, scale_rows, tiling=tiling, fp8_dot=True,
                          shard_sizes=[1024], split_counts=counts)

    first = product()
    assert all(torch.equal(product(), first) for _ in range(20))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = product()
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, first)
    assert int(counts.abs().sum()) == 0


def test_an_fp8_mlp_takes_its_rows_quantized_where_they_are_made(mode, generator,
                                                                  monkeypatch):
    """Qwen3's MLP with FP8 gate/up and down projections on the Triton kernels, at a batch
    whose table tilings quantize their rows in a launch of their own: SiLU·mul hands down
    its rows quantized (`Fp8Rows`), and the output is the bits of the MLP whose products
    quantize them themselves; the reference norm refuses fp8=True."""
    from jupyter_qwen.model.config import Qwen3Config
    from jupyter_qwen.model.kernels import fused_ops, quant_tiles
    from jupyter_qwen.model.kernels.layer_ops import TritonLayerKernels
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels
    from jupyter_qwen.model.quant.linear import Fp8Linear, QuantLinear
    from jupyter_qwen.model.qwen3 import Qwen3MLP, RMSNorm

    hidden, inner, rows = mode.pick((256, 384, 40), (1024, 3072, 200))
    config = Qwen3Config(vocab_size=8, hidden_size=hidden, intermediate_size=inner,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=128, max_position_embeddings=64)
    device = torch.device(mode.device)
    kernels = TritonQuantKernels(device)
    kernels.fp8_dot = True  # the interpreter runs the FP8 tensor-core path on the CPU
    mlp = Qwen3MLP(config)
    mlp.gate_up_proj = Fp8Linear(hidden, [inner, inner], online=True)
    mlp.down_proj = Fp8Linear(inner, [hidden], online=True)
    for projection, shards in ((mlp.gate_up_proj, [inner, inner]), (mlp.down_proj, [hidden])):
        for shard, size in enumerate(shards):
            weight = torch.randn(size, projection.in_features, generator=generator)
            projection.load("weight", shard, weight.to(torch.bfloat16))
        projection.kernels = kernels
    mlp = mlp.to(device)
    mlp.fused = TritonLayerKernels()
    tiling = quant_tiles.QuantTiling(32, 64, 128, quantize_x=True)
    bucket = quant_tiles.m_bucket(rows)
    monkeypatch.setattr(quant_tiles, "LARGE_M_TILES", {
        ("fp8", bucket, 2 * inner, hidden): tiling, ("fp8", bucket, hidden, inner): tiling})
    handed = []
    make = fused_ops._fp8_outputs
    monkeypatch.setattr(fused_ops, "_fp8_outputs", lambda *a: handed.append(a[:2]) or make(*a))
    x = torch.randn(rows, hidden, generator=generator).to(torch.bfloat16).to(device)
    fused = mlp(x)
    assert handed == [(rows, inner)]
    monkeypatch.setattr(QuantLinear, "takes_fp8_rows", lambda self, m: False)
    assert torch.equal(mlp(x), fused) and len(handed) == 1
    with pytest.raises(ValueError, match="fp8"):
        RMSNorm(hidden, 1e-6)(x.cpu(), fp8=True)


def test_fp8_attention_hands_its_o_projection_rows_quantized(mode, generator, monkeypatch):
    """Qwen3's attention with an FP8 o projection on the Triton kernels, at a batch whose
    table tiling quantizes its rows in a launch of its own: the attention kernels hand the
    product its rows quantized (`Fp8Rows`), and the output is the bits of the layer whose
    o product quantizes them itself."""
    from kernel_cases import random_paged_case

    from jupyter_qwen.model.config import Qwen3Config
    from jupyter_qwen.model.kernels import fused_ops, quant_tiles
    from jupyter_qwen.model.kernels.backend import TritonAttention
    from jupyter_qwen.model.kernels.layer_ops import TritonLayerKernels
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels
    from jupyter_qwen.model.quant.linear import Fp8Linear, QuantLinear
    from jupyter_qwen.model.qwen3 import Qwen3Attention, RotaryEmbedding

    hidden, heads, kv_heads = 256, 4, 2
    config = Qwen3Config(vocab_size=8, hidden_size=hidden, intermediate_size=384,
                         num_hidden_layers=1, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, head_dim=128, max_position_embeddings=512)
    device = torch.device(mode.device)
    with torch.device(device):
        attn = Qwen3Attention(config, RotaryEmbedding(128, 512, 1e6)).to(torch.bfloat16)
    kernels = TritonQuantKernels(device)
    kernels.fp8_dot = True  # the interpreter runs the FP8 tensor-core path on the CPU
    attn.o_proj = Fp8Linear(heads * 128, [hidden], online=True)
    attn.o_proj.load("weight", 0, torch.randn(hidden, heads * 128, generator=generator)
                     .to(torch.bfloat16))
    attn = attn.to(device)
    attn.o_proj.kernels, attn.fused, attn.backend = kernels, TritonLayerKernels(), TritonAttention()
    case = random_paged_case([30, 1, 9], [30, 120, 60], heads, kv_heads, 128, 16,
                             torch.bfloat16, device, generator=generator)
    attn.k_cache, attn.v_cache = case.k_cache, case.v_cache
    rows = case.query.shape[0]
    positions = torch.cat([torch.arange(n - q, n) for q, n in ((30, 30), (1, 120), (9, 60))])
    monkeypatch.setattr(quant_tiles, "LARGE_M_TILES", {
        ("fp8", quant_tiles.m_bucket(rows), hidden, heads * 128):
            quant_tiles.QuantTiling(32, 64, 128, quantize_x=True)})
    handed = []
    make = fused_ops._fp8_outputs
    monkeypatch.setattr(fused_ops, "_fp8_outputs", lambda *a: handed.append(a[:2]) or make(*a))
    x = torch.randn(rows, hidden, generator=generator).to(torch.bfloat16).to(device)
    caches = (case.k_cache.clone(), case.v_cache.clone())
    fused = attn(positions.to(device), x, case.meta)
    assert handed == [(rows, heads * 128)]
    monkeypatch.setattr(QuantLinear, "takes_fp8_rows", lambda self, m: False)
    attn.k_cache, attn.v_cache = caches
    assert torch.equal(attn(positions.to(device), x, case.meta), fused) and len(handed) == 1
