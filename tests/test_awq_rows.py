"""benchmarks/awq_rows.py, the AWQ decode product over words repacked along K (a layout
measured before the model adopts it): the repacked words hold the checkpoint's weights
exactly, and the product with each fused prologue matches the dequantizing reference
(float64 on CPU, float32 on the GPU, of the exact dequantized weights), within bf16's
output tolerance. Interpreter: N = 24 (three tiles of 8), K = 384 (three groups: a step of
two groups reads past the last one); GPU: Qwen3-4B's qkv shape."""

from __future__ import annotations

import pytest
import torch
from kernel_modes import TOLERANCE, Mode

from jupyter_qwen.model.quant.awq import dequantize_awq, quantize_awq

PROLOGUES = ["plain", "norm", "add_norm", "silu"]


def awq_weights(n: int, k: int, device: str, generator: torch.Generator):
    weight = torch.randn(n, k, generator=generator) * k**-0.5
    return [t.to(device) for t in quantize_awq(weight)]


def test_repack_holds_the_checkpoints_weights(generator):
    from benchmarks.awq_rows import dequantize_rows, repack

    qweight, qzeros, scales = awq_weights(40, 384, "cpu", generator)
    expected = dequantize_awq(qweight, qzeros, scales, 128).float()
    assert torch.equal(dequantize_rows(repack(qweight, qzeros, scales)), expected)


@pytest.mark.parametrize("prologue", PROLOGUES)
def test_rows_product_matches_the_reference(mode: Mode, generator, prologue):
    from benchmarks.awq_rows import RowsTiling, repack, rows_product

    n, k, tiling = mode.pick((24, 384, RowsTiling(8, 2, 1)), (6144, 2560, RowsTiling(8, 4, 1)))
    qweight, qzeros, scales = awq_weights(n, k, mode.device, generator)
    weights = repack(qweight, qzeros, scales)
    exact = dequantize_awq(qweight, qzeros, scales, 128).double()
    wide = torch.float64 if mode.device == "cpu" else torch.float32

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(mode.device, torch.bfloat16)

    x, residual, gate_up = rand(1, k), rand(1, k), rand(1, 2 * k)
    norm_weight = 1 + 0.1 * rand(k)
    if prologue == "silu":
        y = rows_product("silu", weights, gate_up, tiling=tiling)
        gate, up = gate_up.double().chunk(2, dim=-1)
        operand = (gate * torch.sigmoid(gate) * up).to(torch.bfloat16)
    elif prologue == "plain":
        y = rows_product("plain", weights, x, tiling=tiling)
        operand = x
    else:
        res = residual if prologue == "add_norm" else None
        y = rows_product(prologue, weights, x, residual=res, norm_weight=norm_weight,
                         tiling=tiling)
        h = (x + res if res is not None else x).double()
        operand = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
                   * norm_weight.double()).to(torch.bfloat16)
    ref = operand.to(wide) @ exact.to(wide).T
    error = ((y.to(wide) - ref).norm() / ref.norm()).item()
    assert error < TOLERANCE[torch.bfloat16], error
