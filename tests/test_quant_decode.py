"""Small-batch products of quantized projections with fused prologues
(jupyter_qwen/model/kernels/quant_gemv.py) against the dequantizing reference: the prologue
in torch (`gemv`'s references: torch's add, the fused rms_norm's rounding, SiLU·mul rounded
once), then a float64 (CPU) / float32 (GPU) product with `QuantLinear.dequantize(x.dtype)`,
as the reference path multiplies.

Tolerances (relative 2-norm error of the whole output): kernel_modes.TOLERANCE, the output's
own rounding (fp32 1e-5, bf16 2e-2); FP8 with its scale folded into the operand rounds
a * s instead of q * s to bf16 for M > 1, an error of the same size. The AWQ half2 kinds
round x / 64 and each thread's four-row sums to fp16 whatever x's dtype: HALF2_TOLERANCE
(1e-3; 3-4e-4 measured) where that is above the output's own. Both modes: `cuda`
(Qwen3-0.6B / 4B shapes) and `interpreter` (small shapes on CPU). And a tiny quantized
Qwen3 decodes the same greedy tokens on these kernels (interpreter) as on the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_replays_bitwise, exact_sum, relative_error
from kernel_modes import COMPILED_ONLY, HAVE_TRITON, INTERPRET, TOLERANCE, Mode

from jupyter_qwen.model.quant.linear import AwqLinear, Fp8Linear, quantized_tensors

EPS = 1e-6
HALF2_TOLERANCE = 1e-3
PROLOGUES = ["plain", "norm", "add_norm", "silu"]
ROWS = [1, 2, 5, 16]
# (K, shards, tiling (block_n, block_k) or None for the default)
FP8_SMALL = {
    "folds": (200, [64, 32, 32], (16, 64)),  # q/k/v-like shards, partial K blocks
    "straddles": (160, [40, 24], (16, 32)),  # a program spans two shards: the fallback
    "n-tail": (96, [40], (16, 128)),  # N = 40 is not a multiple of 16
    "default": (256, [128, 64], None),
}
FP8_LARGE = {
    "0.6B qkv": (1024, [2048, 1024, 1024], None), "0.6B down": (3072, [1024], None),
    "4B gate_up": (2560, [9728, 9728], None), "4B o": (4096, [2560], None),
}
AWQ_SMALL = {
    "one group": (128, [64, 32], (32, 128)),
    "k-tail": (200, [24, 16], (16, 256)),  # a partial group; N = 40 not a multiple of 16
    "steps": (640, [48], (16, 256)),  # several K steps, the last one partial
    "default": (256, [64], None),
}
# the nibble-plane variant: (K, shards, (block_n, block_k, num_warps)), unpack="planes"
AWQ_PLANES_SMALL = {
    "n-tail": (200, [24, 16], (64, 256, 4)),  # N = 40 < BLOCK_N; a partial last group
    "steps": (640, [48, 16], (32, 256, 4)),  # 2 programs, the last stepping back; 3 K steps
    "wide": (384, [128, 64], (64, 128, 8)),  # 128 lanes along K, one group per step
    "one word": (130, [8], (8, 128, 4)),  # BLOCK_N 8; 2 rows in the last group
}
AWQ_PLANES_LARGE = {
    "0.6B gate_up": (1024, [3072, 3072], (256, 256, 8)), "0.6B o": (2048, [1024], (64, 512, 4)),
    "4B qkv": (2560, [4096, 1024, 1024], (128, 512, 4)), "4B down": (9728, [2560], (128, 256, 4)),
}
# K split over programs: (K, shards, (block_n, block_k, num_warps, split_k)), unpack="split"
AWQ_SPLIT_SMALL = {
    "odd splits": (640, [48, 16], (32, 128, 4, 3)),  # 5 groups in splits of 2, 2 and 1
    "k-tail": (200, [24, 16], (64, 128, 4, 2)),  # N = 40 < BLOCK_N; the 2nd split partial
    "steps": (900, [64], (64, 256, 4, 2)),  # 2 steps a split, the last one partial
    "n-tail": (384, [256, 64], (256, 128, 8, 5)),  # 3 steps (split_k capped); N = 320
}
AWQ_SPLIT_LARGE = {
    "0.6B qkv": (1024, [2048, 1024, 1024], (256, 128, 4, 8)),
    "0.6B down": (3072, [1024], (128, 128, 4, 24)),
    "4B gate_up": (2560, [9728, 9728], (256, 256, 8, 7)),
    "4B o": (4096, [2560], (128, 128, 4, 32)),
}
# nibble pairs by lop3, K split: (K, shards, (block_n, num_warps, split_k)), unpack="lop3"
AWQ_LOP3_SMALL = {
    "odd splits": (640, [48, 16], (64, 2, 3)),  # 5 groups in splits of 2, 2 and 1
    "k-tail": (200, [24, 16], (32, 1, 2)),  # N = 40 > BLOCK_N; the 2nd split a partial group
    "partial": (900, [64], (64, 2, 2)),  # 8 steps in splits of 4, the last group 4 rows
    "n-tail": (384, [96, 64], (128, 4, 5)),  # 3 steps (split_k capped); N = 160
    "one split": (300, [64, 32], (64, 2, 1)),  # no partials: y written by the product
}
AWQ_LOP3_LARGE = {
    "0.6B qkv": (1024, [2048, 1024, 1024], (128, 4, 4)),
    "0.6B down": (3072, [1024], (128, 4, 24)),
    "4B gate_up": (2560, [9728, 9728], (256, 8, 3)),
    "4B o": (4096, [2560], (128, 4, 8)),
    "4B gate_up, one split": (2560, [9728, 9728], (128, 4, 1)),
}
# unpacked to bf16 q - z for the tensor cores, K split: (K, shards, (block_n, num_warps,
# split_k)), unpack="mma"
AWQ_MMA_SMALL = {**AWQ_LOP3_SMALL, "partial": (900, [64], (64, 4, 2))}  # lop3's cases
AWQ_MMA_LARGE = {**AWQ_LOP3_LARGE, "0.6B down": (3072, [1024], (64, 4, 24))}
# FP8 as int32 words: (K, shards, (block_n, block_k, num_warps)), unpack="words"
FP8_WORDS_SMALL = {
    "one step": (256, [64, 32], (16, 256, 1)),  # 32 lanes x 8 inputs
    "k-tail": (200, [40, 24], (8, 256, 1)),  # one partial step and scale block
    "steps": (1280, [48, 16], (16, 512, 2)),  # 64 lanes; 2.5 steps
    "n-tail": (384, [40], (16, 256, 1)),  # N = 40 is not a multiple of 16
    "wide": (1024, [32], (32, 1024, 4)),  # 128 lanes, one step
}
FP8_WORDS_LARGE = {
    "0.6B qkv": (1024, [2048, 1024, 1024], (16, 512, 2)),
    "0.6B down": (3072, [1024], (8, 1024, 4)),
    "4B qkv": (2560, [4096, 1024, 1024], (16, 1024, 4)),  # 2.5 steps
    "4B down": (9728, [2560], (4, 1024, 4)),
    "4B o, 8 warps": (4096, [2560], (8, 2048, 8)),
}
AWQ_LARGE = {
    "0.6B gate_up": (1024, [3072, 3072], None), "0.6B o": (2048, [1024], None),
    "4B qkv": (2560, [4096, 1024, 1024], None), "4B down": (9728, [2560], None),
}


def fp8_layer(generator: torch.Generator, k: int, shards: list[int]) -> Fp8Linear:
    """A packed FP8 projection, each shard quantized on its own (as checkpoints are)."""
    layer = Fp8Linear(k, shards)
    for index, rows in enumerate(shards):
        tensors = quantized_tensors("fp8", torch.randn(rows, k, generator=generator))
        for suffix, tensor in tensors.items():
            layer.load(suffix, index, tensor)
    return layer


def awq_layer(generator: torch.Generator, k: int, shards: list[int]) -> AwqLinear:
    layer = AwqLinear(k, shards)
    for index, rows in enumerate(shards):
        for suffix, tensor in quantized_tensors("awq", torch.randn(rows, k, generator=generator)
                                                ).items():
            layer.load(suffix, index, tensor)
    return layer


def run_case(mode: Mode, generator: torch.Generator, layer, prologue: str, rows: int,
             dtype: torch.dtype, tiling, tolerance: float = 0.0) -> None:
    """One product through the kernel and the reference, compared (within the larger of
    `tolerance` and the dtype's); the add + norm prologue's new residual too."""
    from jupyter_qwen.model.kernels import gemv, quant_gemv

    k = layer.in_features
    layer = layer.to(mode.device)
    weight = layer.dequantize(dtype)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=mode.device, dtype=dtype)

    x, res, norm_weight = rand(rows, k), rand(rows, k), 1 + 0.1 * rand(k)
    out = torch.full((rows, layer.out_features), float("nan"), dtype=dtype, device=mode.device)
    if prologue == "plain":
        y = quant_gemv.linear_small_m(x, layer, out=out, tiling=tiling)
        ref = gemv.linear_reference(x, weight)
    elif prologue == "silu":
        gate_up = rand(rows, 2 * k)
        y = quant_gemv.silu_mul_linear(gate_up, layer, out=out, tiling=tiling)
        ref = gemv.silu_mul_linear_reference(gate_up, weight)
    else:
        residual = res if prologue == "add_norm" else None
        y, summed = quant_gemv.rms_norm_linear(x, norm_weight, EPS, layer, residual, out=out,
                                               tiling=tiling)
        ref = gemv.rms_norm_linear_reference(x, norm_weight, EPS, weight, residual)[0]
        if residual is not None:
            assert torch.equal(summed, exact_sum(x, res, mode))
    assert not y.isnan().any(), "unwritten outputs"
    error = relative_error(y.cpu(), ref.cpu())
    assert y.dtype == dtype and error < max(tolerance, TOLERANCE[dtype]), (
        f"relative error {error:.2e}")


def tiling_of(pair):
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    return DecodeTiling(*pair) if pair is not None else None


@pytest.mark.parametrize("prologue", PROLOGUES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("case", range(4))
def test_fp8_small_m_matches_the_dequantized_product(mode, generator, case, rows, prologue):
    k, shards, tiling = list(mode.pick(FP8_SMALL, FP8_LARGE).values())[case]
    dtype = torch.bfloat16 if (case + rows) % 2 or mode.large else torch.float32
    run_case(mode, generator, fp8_layer(generator, k, shards), prologue, rows, dtype,
             tiling_of(tiling))


@pytest.mark.parametrize("prologue", PROLOGUES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("case", range(4))
def test_awq_small_m_matches_the_dequantized_product(mode, generator, case, rows, prologue):
    k, shards, tiling = list(mode.pick(AWQ_SMALL, AWQ_LARGE).values())[case]
    dtype = torch.bfloat16 if (case + rows) % 2 or mode.large else torch.float32
    run_case(mode, generator, awq_layer(generator, k, shards), prologue, rows, dtype,
             tiling_of(tiling))


@pytest.mark.parametrize("prologue", PROLOGUES)
@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("case", range(4))
def test_awq_planes_matches_the_dequantized_product(mode, generator, case, rows, prologue):
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    k, shards, (block_n, block_k, warps) = list(
        mode.pick(AWQ_PLANES_SMALL, AWQ_PLANES_LARGE).values())[case]
    dtype = torch.bfloat16 if (case + rows) % 2 or mode.large else torch.float32
    run_case(mode, generator, awq_layer(generator, k, shards), prologue, rows, dtype,
             DecodeTiling(block_n, block_k, warps, unpack="planes"))


@pytest.mark.parametrize("prologue", PROLOGUES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("case", range(4))
def test_awq_split_k_matches_the_dequantized_product(mode, generator, case, rows, prologue):
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    k, shards, (block_n, block_k, warps, split_k) = list(
        mode.pick(AWQ_SPLIT_SMALL, AWQ_SPLIT_LARGE).values())[case]
    dtype = torch.bfloat16 if (case + rows) % 2 or mode.large else torch.float32
    run_case(mode, generator, awq_layer(generator, k, shards), prologue, rows, dtype,
             DecodeTiling(block_n, block_k, warps, unpack="split", split_k=split_k))


@pytest.mark.parametrize("prologue", PROLOGUES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("unpack", ["lop3", "lop3_one", "half2", "half2_one"])
def test_awq_lop3_matches_the_dequantized_product(mode, generator, unpack, case, rows,
                                                  prologue):
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    if unpack.startswith("half2") and rows == 4 and not mode.large:
        pytest.skip("rows 1-3 cover the half2 kinds' rows on CPU")
    k, shards, (block_n, warps, split_k) = list(
        mode.pick(AWQ_LOP3_SMALL, AWQ_LOP3_LARGE).values())[case]
    dtype = torch.bfloat16 if (case + rows) % 2 or mode.large else torch.float32
    run_case(mode, generator, awq_layer(generator, k, shards), prologue, rows, dtype,
             DecodeTiling(block_n, 128, warps, unpack=unpack, split_k=split_k),
             HALF2_TOLERANCE if unpack.startswith("half2") else 0.0)


@pytest.mark.parametrize("unpack", ["half2", "half2_one"])
def test_awq_half2_sums_keep_large_and_small_operands(mode, generator, unpack):
    """x / 64 in fp16 and four-row fp16 sums: rows of x near 60,000 (every product of a
    sum near fp16's largest, 65,504, when |q - z| is 15) stay finite, and rows near 0.01
    (x / 64 still a normal fp16) keep their precision, each row within the tolerance."""
    from jupyter_qwen.model.kernels import gemv, quant_gemv

    layer = awq_layer(generator, 640, [64, 64]).to(mode.device)
    x = torch.randn(3, 640, generator=generator)
    x = (x / x.abs().amax(1, keepdim=True) * torch.tensor([[6e4], [1e-2], [1.0]])).to(
        device=mode.device, dtype=torch.bfloat16)
    y = quant_gemv.linear_small_m(x, layer, tiling=quant_gemv.DecodeTiling(
        64, 128, 2, unpack=unpack, split_k=2))
    ref = gemv.linear_reference(x, layer.dequantize(torch.bfloat16))
    assert y.isfinite().all()
    for row in range(3):
        error = relative_error(y[row].cpu(), ref[row].cpu())
        assert error < TOLERANCE[torch.bfloat16], (row, f"{error:.2e}")


@pytest.mark.parametrize("prologue", PROLOGUES)
@pytest.mark.parametrize("rows", [1, 2, 5, 16])
@pytest.mark.parametrize("case", range(5))
def test_awq_mma_matches_the_dequantized_product(mode, generator, case, rows, prologue):
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    k, shards, (block_n, warps, split_k) = list(
        mode.pick(AWQ_MMA_SMALL, AWQ_MMA_LARGE).values())[case]
    dtype = torch.bfloat16 if (case + rows) % 2 or mode.large else torch.float32
    run_case(mode, generator, awq_layer(generator, k, shards), prologue, rows, dtype,
             DecodeTiling(block_n, 128, warps, unpack="mma", split_k=split_k))


@pytest.mark.parametrize("prologue", PROLOGUES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("case", range(5))
def test_fp8_words_match_the_dequantized_product(mode, generator, case, rows, prologue):
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    k, shards, (block_n, block_k, warps) = list(
        mode.pick(FP8_WORDS_SMALL, FP8_WORDS_LARGE).values())[case]
    run_case(mode, generator, fp8_layer(generator, k, shards), prologue, rows, torch.bfloat16,
             DecodeTiling(block_n, block_k, warps, unpack="words"))


def test_fp8_words_run_where_they_can_and_fall_back_elsewhere(mode, generator, monkeypatch):
    """bf16 x on folding shards takes the words kernel; fp32 x, or shards that put two scale
    rows in one program, take the first FP8 kernel's guessed tiling, with the right
    product either way."""
    from jupyter_qwen.model.kernels import fp8_words
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    launches = []
    real = fp8_words.launch
    monkeypatch.setattr(fp8_words, "launch", lambda *a, **kw: launches.append(1) or real(*a,
                                                                                       **kw))
    tiling = DecodeTiling(16, 256, 1, unpack="words")
    folding, straddling = fp8_layer(generator, 256, [64, 32]), fp8_layer(generator, 256, [40, 24])
    for layer, dtype, words in ((folding, torch.bfloat16, 1), (folding, torch.float32, 0),
                                (straddling, torch.bfloat16, 0)):
        launches.clear()
        run_case(mode, generator, layer, "norm", 2, dtype, tiling)
        assert len(launches) == words, (layer.shard_sizes, dtype)


def test_fp8_words_convert_every_byte_exactly(mode):
    """Every finite e4m3 value (zeros, subnormals, both signs) at every byte position of a
    word comes out of the words kernel unchanged: the weights are the 254 finite codes
    repeated (254 is not a multiple of 4, so each code meets every position), the scale 1
    and x the identity (bf16 holds every e4m3 value)."""
    from jupyter_qwen.model.kernels import quant_gemv

    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F].to(torch.uint8)  # 0x7F and 0xFF are NaN
    k, n = 256, 128
    weight = codes[torch.arange(n * k) % codes.numel()].view(n, k).view(torch.float8_e4m3fn)
    layer = Fp8Linear(k, [n])
    layer.load("weight", 0, weight)
    layer.load("weight_scale_inv", 0, torch.ones(1, 2))
    layer = layer.to(mode.device)
    identity = torch.eye(k, device=mode.device, dtype=torch.bfloat16)
    tiling = quant_gemv.DecodeTiling(16, 256, 1, unpack="words")
    got = torch.cat([quant_gemv.linear_small_m(identity[i:i + 16], layer, tiling=tiling)
                     for i in range(0, k, 16)])  # [input, output row]
    assert torch.equal(got.float().cpu(), weight.float().T)


@pytest.mark.parametrize("kinds", [("lop3", "lop3_one"), ("half2", "half2_one")])
def test_awq_lop3_one_launch_sums_as_the_second_launch_and_resets_its_counts(mode,
                                                                            generator,
                                                                            kinds):
    """The last split of each tile adds the partials in the sum kernel's order: the same
    bits as the two-launch product, again on a second launch (its counters back at 0)."""
    from jupyter_qwen.model.kernels import quant_gemv

    layer = awq_layer(generator, 640, [96, 64]).to(mode.device)
    x = torch.randn(3, 640, generator=generator).to(device=mode.device, dtype=torch.bfloat16)
    tiling = dict(block_n=64, block_k=128, num_warps=2, split_k=3)
    two = quant_gemv.linear_small_m(x, layer, tiling=quant_gemv.DecodeTiling(
        **tiling, unpack=kinds[0]))
    one = quant_gemv.DecodeTiling(**tiling, unpack=kinds[1])
    first = quant_gemv.linear_small_m(x, layer, tiling=one)
    assert torch.equal(layer._lop3_counts, torch.zeros_like(layer._lop3_counts))
    second = quant_gemv.linear_small_m(x, layer, tiling=one)
    assert torch.equal(first, two) and torch.equal(second, two)
    assert torch.equal(layer._lop3_counts, torch.zeros_like(layer._lop3_counts))


@pytest.mark.parametrize("unpack", ["lop3", "lop3_one", "half2_one", "mma"])
def test_awq_register_caps_change_no_bits(mode, generator, unpack):
    """A tiling whose registers are capped (`max_registers`: ptxas's maxnreg on the GPU,
    spilling if it must) gives the bits of the same tiling without, K in splits of 2, 2
    and 1 groups."""
    from jupyter_qwen.model.kernels import quant_gemv

    layer = awq_layer(generator, 640, [96, 64]).to(mode.device)
    x = torch.randn(2, 640, generator=generator).to(device=mode.device, dtype=torch.bfloat16)
    tiling = dict(block_n=64, block_k=128, num_warps=2 if unpack != "mma" else 4, split_k=3,
                  unpack=unpack)
    plain = quant_gemv.linear_small_m(x, layer, tiling=quant_gemv.DecodeTiling(**tiling))
    for cap in (168, 96):
        got = quant_gemv.linear_small_m(x, layer, tiling=quant_gemv.DecodeTiling(
            **tiling, max_registers=cap))
        assert torch.equal(got, plain), cap


@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
def test_awq_split_k_chunks_cover_k_in_whole_steps():
    from jupyter_qwen.model.kernels.quant_tiles import chunk_of

    for k in (100, 128, 200, 640, 2560, 9728):
        for block_k in (128, 256, 512):
            for split_k in (1, 2, 3, 7, 40, 1000):
                chunk = chunk_of(k, block_k, split_k)
                splits = -(-k // chunk)
                steps = -(-k // block_k)
                assert chunk % block_k == 0 and (splits - 1) * chunk < k <= splits * chunk
                assert splits <= min(split_k, steps), (k, block_k, split_k)
                assert splits >= min(split_k, steps) // 2, (k, block_k, split_k)


@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
def test_fp8_scale_folds_only_where_each_program_reads_one_scale_row():
    from jupyter_qwen.model.kernels.quant_gemv import folds
    from jupyter_qwen.model.quant.fp8 import scale_rows_of

    def one_row_per_program(shards: list[int], block_n: int) -> bool:
        rows = scale_rows_of(shards)
        return all(len(set(rows[i:i + block_n].tolist())) == 1
                   for i in range(0, len(rows), block_n))

    cases = [([2048, 1024, 1024], 16), ([64, 32, 32], 16), ([40, 24], 16), ([40], 16),
             ([200, 56], 8), ([200, 56], 16), ([256], 256), ([96, 32], 32), ([100, 28], 4)]
    for shards, block_n in cases:
        want = block_n <= 128 and one_row_per_program(shards, block_n)
        assert folds(tuple(shards), block_n) == want, (shards, block_n)


def test_small_m_products_refuse_what_they_cannot_take(mode, generator):
    from jupyter_qwen.model.kernels import quant_gemv

    layer = awq_layer(generator, 128, [16]).to(mode.device)
    with pytest.raises(ValueError, match="inputs"):
        quant_gemv.linear_small_m(torch.randn(1, 64, device=mode.device), layer)
    with pytest.raises(ValueError, match="at most"):
        quant_gemv.linear_small_m(torch.randn(17, 128, device=mode.device), layer)
    with pytest.raises(ValueError, match="multiple of 8"):
        quant_gemv.linear_small_m(torch.randn(1, 128, device=mode.device), layer,
                                  tiling=quant_gemv.DecodeTiling(12, 128))
    for bad, message in ((quant_gemv.DecodeTiling(96, 128, unpack="planes"), "power of two"),
                         (quant_gemv.DecodeTiling(64, 128, unpack="bytes"), "unpack"),
                         (quant_gemv.DecodeTiling(16, 128, unpack="split"), "power of two"),
                         (quant_gemv.DecodeTiling(64, 128, unpack="split", split_k=0),
                          "split_k"),
                         (quant_gemv.DecodeTiling(128, 256, unpack="lop3"), "one group"),
                         (quant_gemv.DecodeTiling(128, 128, 8, unpack="lop3"), "threads"),
                         (quant_gemv.DecodeTiling(96, 128, unpack="lop3"), "power of two"),
                         (quant_gemv.DecodeTiling(128, 128, 8, unpack="half2"), "threads")):
        with pytest.raises(ValueError, match=message):
            quant_gemv.linear_small_m(torch.randn(1, 128, device=mode.device), layer,
                                      tiling=bad)
    fp8 = fp8_layer(generator, 256, [32]).to(mode.device)
    for bad, message in ((quant_gemv.DecodeTiling(16, 512, 1, unpack="words"), "two words"),
                         (quant_gemv.DecodeTiling(24, 256, 1, unpack="words"), "power of two"),
                         (quant_gemv.DecodeTiling(16, 256, unpack="planes"), "unpack")):
        with pytest.raises(ValueError, match=message):
            quant_gemv.linear_small_m(torch.randn(1, 256, device=mode.device), fp8,
                                      tiling=bad)
    with pytest.raises(TypeError):
        quant_gemv.format_of(torch.nn.Linear(4, 4))
    for unpack, cap in (("split", 168), ("words", 168), ("lop3", 16), ("mma", 256)):
        with pytest.raises(ValueError, match="max_registers"):
            quant_gemv.DecodeTiling(128, 128, unpack=unpack, max_registers=cap)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    from jupyter_qwen.testing import make_tiny_qwen3

    root = tmp_path_factory.mktemp("quantized-decode")
    return {name: make_tiny_qwen3(root / name, quantization=name) for name in ("fp8", "awq")}


def greedy_decode(folder, ops, prompt: list[int], steps: int) -> list[int]:
    """Greedy tokens of one sequence: the prompt in one step, then one token per step (M = 1,
    the small-batch path where the ops have it)."""
    from jupyter_qwen.model.attention import AttentionMetadata
    from jupyter_qwen.model.loader import load_model

    model = load_model(folder, torch.float32, torch.device("cpu"))
    model.use_ops(ops)
    config = model.config
    for attn in model.attention_layers():
        attn.k_cache = torch.zeros(4, 16, config.num_key_value_heads, config.head_dim)
        attn.v_cache = torch.zeros(4, 16, config.num_key_value_heads, config.head_dim)
    tokens, done = list(prompt), 0
    with torch.inference_mode():
        for _ in range(steps):
            new, total = len(tokens) - done, len(tokens)
            meta = AttentionMetadata(
                slot_mapping=torch.arange(done, total),
                query_start_loc=torch.tensor([0, new], dtype=torch.int32),
                seq_lens=torch.tensor([total], dtype=torch.int32),
                block_tables=torch.arange(4, dtype=torch.int32)[None], max_query_len=new,
                max_seq_len=total, query_start_loc_cpu=[0, new], seq_lens_cpu=[total])
            hidden = model(torch.tensor(tokens[done:]), torch.arange(done, total), meta)
            tokens.append(int(model.compute_logits(hidden[-1:]).argmax(-1)))
            done = total
    return tokens[len(prompt):]


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_tiny_quantized_model_decodes_the_reference_tokens_on_the_fused_path(
        tiny_checkpoints, method, monkeypatch):
    if not (HAVE_TRITON and INTERPRET):
        pytest.skip("set TRITON_INTERPRET=1 to run the kernels on the CPU")
    from kernel_cases import fix_interpreter

    from jupyter_qwen.model.attention import TorchAttention
    from jupyter_qwen.model.kernels import quant_gemv
    from jupyter_qwen.model.kernels.layer_ops import TritonLayerKernels
    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels
    from jupyter_qwen.model.ops import ModelOps, reference_ops

    fix_interpreter()
    launches = []
    launch = quant_gemv._launch
    monkeypatch.setattr(quant_gemv, "_launch",
                        lambda prologue, x, *a, **kw: launches.append((prologue, x.shape[0]))
                        or launch(prologue, x, *a, **kw))
    prompt, steps = [5, 17, 300, 42, 9, 1000, 77], 5
    fused = ModelOps(attention=TorchAttention(), layers=TritonLayerKernels(),
                     quant=TritonQuantKernels(torch.device("cpu")))
    ours = greedy_decode(tiny_checkpoints[method], fused, prompt, steps)
    assert ours == greedy_decode(tiny_checkpoints[method], reference_ops(), prompt, steps)
    layers = 4  # the tiny shape's layers: four fused products each per decode step
    assert sorted(set(launches)) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert len(launches) == 4 * layers * (steps - 1)


def assert_decode_step_replays_bitwise(generator, build, tiling=None) -> None:
    """A 0.6B-shaped decode step's qkv (add + norm) and down (SiLU·mul) products on
    projections from `build`, replayed in a CUDA graph: the same bits every time."""
    from jupyter_qwen.model.kernels import quant_gemv

    qkv = build(generator, 1024, [2048, 1024, 1024]).cuda()
    down = build(generator, 3072, [1024]).cuda()
    x, res = (torch.randn(2, 1024, generator=generator).to(torch.bfloat16).cuda()
              for _ in range(2))
    gate_up = torch.randn(2, 6144, generator=generator).to(torch.bfloat16).cuda()
    norm_weight = torch.ones(1024, dtype=torch.bfloat16, device="cuda")

    def step():
        y, summed = quant_gemv.rms_norm_linear(x, norm_weight, EPS, qkv, res, tiling=tiling)
        return y, summed, quant_gemv.silu_mul_linear(gate_up, down, tiling=tiling)

    assert_replays_bitwise(step, (x, res, gate_up), generator)


@COMPILED_ONLY
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_quantized_small_m_replays_in_cuda_graphs_bitwise(generator, method):
    assert_decode_step_replays_bitwise(generator, fp8_layer if method == "fp8" else awq_layer)


@COMPILED_ONLY
@pytest.mark.gpu
def test_fp8_words_replay_in_cuda_graphs_bitwise(generator):
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    assert_decode_step_replays_bitwise(generator, fp8_layer,
                                       DecodeTiling(8, 1024, 4, unpack="words"))


@COMPILED_ONLY
@pytest.mark.gpu
@pytest.mark.parametrize("unpack", ["split", "lop3", "lop3_one", "half2_one"])
def test_awq_split_k_replays_in_cuda_graphs_bitwise(generator, unpack):
    from jupyter_qwen.model.kernels.quant_gemv import DecodeTiling

    assert_decode_step_replays_bitwise(generator, awq_layer,
                                       DecodeTiling(128, 128, 4, unpack=unpack, split_k=5))
