"""Quantized checkpoints: Qwen's FP8 (128 x 128 blocks) and AWQ (4-bit GEMM) formats.

- `config`: `QuantConfig`, read and checked from config.json's `quantization_config` or the
  `quantization` option (torch-free);
- `fp8`, `awq`: the formats in torch: quantize, pack, unpack, dequantize (the reference);
- `linear`: `Fp8Linear` and `AwqLinear`, the model's quantized projections, which run the
  dequantizing reference or the Triton kernels of `model/kernels/quant_linear.py`;
- `install`: swaps the model's projections for quantized ones before its weights load.
"""
