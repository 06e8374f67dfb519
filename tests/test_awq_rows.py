"""AWQ projections in the rows layout (model/quant/awq.py `repack_rows`, `AwqLinear.to_rows`,
model/kernels/awq_rows.py): the repack holds the checkpoint's weights exactly; every product
that reads it (the decode kernel with each fused prologue, the tensor-core kernel, the
dequantize pass) matches the dequantizing reference; the model repacks the shapes that
prefer it and decodes the reference's greedy tokens on them.

Tolerances (relative 2-norm error of the whole output, kernel_modes.TOLERANCE: the output's
own rounding); `_rows_kernel` sums in f16x2 as the AWQ half2 kinds do (x / 64 and each word's
sum rounded to fp16): HALF2_TOLERANCE on top of bf16's. Interpreter: small shapes (K of
three groups, N not a multiple of the tiles); GPU: Qwen3-4B's qkv and o shapes."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import as_kernel_rounds, relative_error
from kernel_modes import COMPILED_ONLY, HAVE_TRITON, INTERPRET, TOLERANCE, Mode
from test_quant_decode import awq_layer, greedy_decode, run_case

from jupyter_qwen.model.quant.awq import dequantize_awq, dequantize_rows, quantize_awq, repack_rows
from jupyter_qwen.model.quant.linear import AwqLinear

EPS = 1e-6
HALF2_TOLERANCE = 1e-3
PROLOGUES = ["plain", "norm", "add_norm", "silu"]


def rows_layer(generator: torch.Generator, k: int, shards: list[int], device: str):
    """An AWQ projection repacked, and its weight dequantized before the repack (float32)."""
    layer = awq_layer(generator, k, shards).to(device)
    weight = layer.dequantize(torch.float32)
    layer.to_rows()
    return layer, weight


def test_repack_holds_the_checkpoints_weights(generator):
    qweight, qzeros, scales = quantize_awq(torch.randn(40, 384, generator=generator))
    expected = dequantize_awq(qweight, qzeros, scales, 128)
    assert torch.equal(dequantize_rows(*repack_rows(qweight, qzeros, scales)), expected)
    with pytest.raises(ValueError, match="whole groups of 128"):
        repack_rows(*quantize_awq(torch.randn(40, 200, generator=generator)))


def test_to_rows_replaces_the_checkpoint_tensors_and_keeps_the_values(generator):
    layer = awq_layer(generator, 256, [64, 32])
    weight = layer.dequantize(torch.float32)
    awq_bytes = sum(b.numel() * b.element_size() for b in layer.buffers())
    layer.to_rows()
    layer.to_rows()  # once only
    assert layer.rows and {name for name, _ in layer.named_buffers()} == {"words", "meta"}
    assert torch.equal(layer.dequantize(torch.float32), weight)
    x = torch.randn(3, 256, generator=generator)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, weight))
    # the words take qweight's bytes; a row's group one int32 (AWQ: 2.5 bytes)
    rows_bytes = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert rows_bytes - awq_bytes == 96 * 2 * 3 // 2
    with pytest.raises(ValueError, match="rows layout"):
        layer.load("qweight", 0, torch.zeros(256, 8, dtype=torch.int32))


def test_rows_dequantize_kernel_gives_the_references_bits(mode: Mode, generator):
    from jupyter_qwen.model.kernels.awq_rows import rows_dequantize

    k, shards = mode.pick((384, [24, 16]), (2560, [4096, 1024, 1024]))
    layer, weight = rows_layer(generator, k, shards, mode.device)
    for dtype in (torch.bfloat16, torch.float32):
        out = rows_dequantize(layer.words, layer.meta, dtype)
        assert torch.equal(out, as_kernel_rounds(weight, dtype, mode))


@pytest.mark.parametrize("rows", [1, 3, 17, 40])
def test_rows_linear_matches_the_dequantized_product(mode: Mode, generator, rows, monkeypatch):
    """The tensor-core kernel (M tiles of 16 up to 16 rows, the AWQ table's tiles above),
    and from AWQ_VIA_BF16_MIN_M rows (lowered to 40 here) W dequantized then F.linear."""
    from jupyter_qwen.model.kernels import awq_rows

    monkeypatch.setattr(awq_rows, "AWQ_VIA_BF16_MIN_M", 40)
    k, shards = mode.pick((384, [24, 16]), (4096, [2560]))
    layer, weight = rows_layer(generator, k, shards, mode.device)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(rows, k, generator=generator).to(mode.device, dtype)
        y = awq_rows.rows_linear(x, layer.words, layer.meta)
        ref = x.double() @ weight.to(dtype).double().T
        assert y.dtype == dtype and y.shape == (rows, weight.shape[0])
        assert relative_error(y.cpu(), ref.cpu()) < TOLERANCE[dtype]


@pytest.mark.parametrize("tiles", [(16, 16, 32, 4), (32, 16, 64, 4), (16, 32, 128, 2)])
def test_rows_linear_takes_every_k_step(mode: Mode, generator, tiles, monkeypatch):
    """Steps of a quarter, half or whole group (the AWQ table's block_k for the tiles)."""
    from jupyter_qwen.model.kernels import awq_rows

    monkeypatch.setattr(awq_rows, "dot_tiles", lambda m, n, k: tiles)
    k, shards = mode.pick((384, [24, 16]), (2560, [4096, 1024, 1024]))
    layer, weight = rows_layer(generator, k, shards, mode.device)
    x = torch.randn(20, k, generator=generator).to(mode.device, torch.bfloat16)
    y = awq_rows.rows_linear(x, layer.words, layer.meta)
    ref = x.double() @ weight.to(torch.bfloat16).double().T
    assert relative_error(y.cpu(), ref.cpu()) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("prologue", PROLOGUES)
@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_small_m_products_match_the_dequantized_product(mode: Mode, generator, prologue, rows,
                                                        dtype):
    """Up to GRID_ROWS_MAX_M rows of bf16 x: `_rows_kernel` (interpreter: 2 groups a step
    over 3 groups, N = 40 over tiles of 8 and 16); more rows, or fp32: fused_ops' prologue
    then the tensor-core kernel."""
    from jupyter_qwen.model.kernels.awq_rows import GRID_ROWS_MAX_M, RowsTiling

    k, shards, tiling = mode.pick((384, [24, 16], RowsTiling(16, 2, 1)),
                                  (2560, [4096, 1024, 1024], None))
    layer, _ = rows_layer(generator, k, shards, mode.device)
    fused = dtype == torch.bfloat16 and rows <= GRID_ROWS_MAX_M
    run_case(mode, generator, layer, prologue, rows, dtype, tiling if fused else None,
             TOLERANCE[dtype] + HALF2_TOLERANCE if fused else 0.0)


def test_small_m_products_refuse_an_awq_tiling(mode: Mode, generator):
    from jupyter_qwen.model.kernels import quant_gemv

    layer, _ = rows_layer(generator, 256, [32], mode.device)
    x = torch.randn(1, 256, generator=generator).to(mode.device, torch.bfloat16)
    with pytest.raises(ValueError, match="RowsTiling"):
        quant_gemv.linear_small_m(x, layer, tiling=quant_gemv.DecodeTiling(32, 128))


def test_kernels_repack_only_the_shapes_that_prefer_the_rows_layout(generator, monkeypatch):
    if not HAVE_TRITON:
        pytest.skip("needs triton")
    from jupyter_qwen.model.kernels import awq_rows
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels

    kernels = TritonQuantKernels(torch.device("cpu"))
    monkeypatch.setattr(awq_rows, "ROWS_TUNED", {(96, 256): awq_rows.RowsTiling(8, 2, 1)})
    preferred, other = awq_layer(generator, 256, [64, 32]), awq_layer(generator, 256, [64])
    for layer in (preferred, other):
        kernels.prepare(layer)
    assert preferred.rows and not other.rows


@pytest.fixture(scope="module")
def tiny_awq(tmp_path_factory):
    from jupyter_qwen.testing import make_tiny_qwen3

    return make_tiny_qwen3(tmp_path_factory.mktemp("rows") / "awq", quantization="awq")


def test_tiny_model_in_the_rows_layout_decodes_the_reference_tokens(tiny_awq, monkeypatch):
    """The tiny shape's o projection (64 x 128, the only one of whole groups) repacked."""
    if not (HAVE_TRITON and INTERPRET):
        pytest.skip("set TRITON_INTERPRET=1 to run the kernels on the CPU")
    from kernel_cases import fix_interpreter

    from jupyter_qwen.model.attention import TorchAttention
    from jupyter_qwen.model.kernels import awq_rows
    from jupyter_qwen.model.kernels.layer_ops import TritonLayerKernels
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels
    from jupyter_qwen.model.ops import ModelOps, reference_ops

    fix_interpreter()
    monkeypatch.setattr(awq_rows, "ROWS_TUNED", {(64, 128): awq_rows.RowsTiling(8, 1, 1)})
    repacked = []
    to_rows = AwqLinear.to_rows
    monkeypatch.setattr(AwqLinear, "to_rows", lambda self: repacked.append(self) or to_rows(self))
    prompt, steps = [5, 17, 300, 42, 9, 1000, 77], 5
    fused = ModelOps(attention=TorchAttention(), layers=TritonLayerKernels(),
                     quant=TritonQuantKernels(torch.device("cpu")))
    ours = greedy_decode(tiny_awq, fused, prompt, steps)
    assert len(repacked) == 4 and all(layer.in_features == 128 for layer in repacked)
    assert ours == greedy_decode(tiny_awq, reference_ops(), prompt, steps)


@COMPILED_ONLY
@pytest.mark.gpu
def test_rows_products_replay_in_cuda_graphs_bitwise(generator):
    from kernel_cases import assert_replays_bitwise

    from jupyter_qwen.model.kernels import quant_gemv

    qkv, _ = rows_layer(generator, 2560, [4096, 1024, 1024], "cuda")
    o, _ = rows_layer(generator, 4096, [2560], "cuda")
    x, res = (torch.randn(2, 2560, generator=generator).to(torch.bfloat16).cuda()
              for _ in range(2))
    attn = torch.randn(2, 4096, generator=generator).to(torch.bfloat16).cuda()
    norm_weight = torch.ones(2560, dtype=torch.bfloat16, device="cuda")

    def step():
        y, summed = quant_gemv.rms_norm_linear(x, norm_weight, EPS, qkv, res)
        return y, summed, quant_gemv.linear_small_m(attn, o)

    assert_replays_bitwise(step, (x, res, attn), generator)
