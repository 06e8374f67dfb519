"""Triton kernels for paged attention and the decoder layers (GPU).

Importing this package needs nothing beyond torch; `backend`, `layer_ops`, `store_kv`,
`prefill_attention`, `decode_attention`, `decode_step`, `gemv`, `quant_gemv` and `fused_ops` import
triton and raise ImportError where it is missing. The model reaches them only through the
ops object that `model/ops.py` builds; the test cases are tests/kernel_cases.py.
"""
