"""Triton kernels for paged attention (GPU).

Importing this package needs nothing beyond torch; `backend`, `store_kv`,
`prefill_attention`, `decode_attention` and `fused_ops` import triton and raise
ImportError where it is missing. `cases` builds random paged-attention inputs for
tests and benchmarks.
"""
