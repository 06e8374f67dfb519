"""Kernel test cases: random paged-attention inputs (a KV cache with shuffled blocks and its
metadata), the error measure the tests and benchmarks compare with, and the interpreter fixes
the `interpreter` mode needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jupyter_qwen.model.attention import AttentionMetadata


@dataclass
class PagedCase:
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata

    @property
    def padding_rows(self) -> list[int]:
        starts = self.meta.query_start_loc_cpu
        return [starts[i] for i, n in enumerate(self.meta.seq_lens_cpu) if n == 0]


def random_paged_case(q_lens: list[int], seq_lens: list[int], num_heads: int, num_kv_heads: int,
                      head_dim: int, block_size: int, dtype: torch.dtype,
                      device: str | torch.device, spare_blocks: int = 3, spare_columns: int = 2,
                      generator: torch.Generator | None = None) -> PagedCase:
    """Sequence i has q_lens[i] new tokens at the end of a seq_lens[i]-token context.

    A row with seq_len 0 is a padding row (one query token, no context, slot -1).
    """
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    width = max(blocks_per_seq, default=0) + spare_columns
    order = torch.randperm(num_blocks, generator=generator).tolist()
    block_tables = torch.full((len(seq_lens), width), -1, dtype=torch.int32)
    slots: list[int] = []
    for i, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True)):
        table = [order.pop() for _ in range(blocks_per_seq[i])]
        block_tables[i, :len(table)] = torch.tensor(table, dtype=torch.int32)
        if seq_len == 0:
            slots.extend([-1] * q_len)
            continue
        positions = range(seq_len - q_len, seq_len)
        slots.extend(table[p // block_size] * block_size + p % block_size for p in positions)
    num_tokens = sum(q_lens)
    starts = [0]
    for q_len in q_lens:
        starts.append(starts[-1] + q_len)

    device = torch.device(device)
    seed = int(torch.randint(2**62, (1,), generator=generator))
    device_generator = torch.Generator(device).manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=device_generator, device=device).to(dtype)

    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts,
        seq_lens_cpu=list(seq_lens),
    )
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return PagedCase(
        query=rand(num_tokens, num_heads, head_dim),
        key=rand(num_tokens, num_kv_heads, head_dim),
        value=rand(num_tokens, num_kv_heads, head_dim),
        k_cache=rand(*cache_shape),
        v_cache=rand(*cache_shape),
        meta=meta,
    )


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.double(), ref.double()
    return float((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30))


def exact_sum(x: torch.Tensor, residual: torch.Tensor, mode) -> torch.Tensor:
    """x + residual as torch rounds it, or under the interpreter as it rounds (see
    `as_kernel_rounds`)."""
    if mode.device == "cuda" or x.dtype != torch.bfloat16:
        return x + residual
    return as_kernel_rounds(x.float() + residual.float(), torch.bfloat16, mode)


def as_kernel_rounds(wide: torch.Tensor, dtype: torch.dtype, mode) -> torch.Tensor:
    """float32 `wide` in `dtype` as a kernel's cast rounds it: Triton 3.6's interpreter
    truncates fp32 -> bf16 (compiled kernels round to nearest even, as torch does)."""
    if mode.device == "cuda" or dtype != torch.bfloat16:
        return wide.to(dtype)
    return (wide.float().contiguous().view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)


def fix_interpreter() -> None:
    """Work around gaps of Triton's CPU interpreter (3.6 to 3.9; use only under
    TRITON_INTERPRET=1).

    It keeps scalars as 1-element arrays and calls int() on them (loop bounds), which
    NumPy >= 2.4 refuses; its dot multiplies bfloat16 operands as raw uint16 bits; and
    (3.9) a comparison's result keeps its operands' type, so splatting it to a block makes
    an integer mask that loads and stores refuse.
    """
    import numpy as np
    from triton.runtime import interpreter

    if getattr(interpreter, "jupyter_qwen_fixed", False):
        return
    patch_tensor = interpreter._patch_lang_tensor
    builder = interpreter.InterpreterBuilder
    create_dot = builder.create_dot
    binary_op = getattr(builder, "binary_op", None)

    def patch_lang_tensor(tensor, scope) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    def widen(handle):
        if handle.dtype.scalar.name != "bf16":
            return handle
        data = (handle.data.astype(np.uint32) << 16).view(np.float32)
        return interpreter.TensorHandle(data, interpreter.tl.float32)

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    def typed_binary_op(self, lhs, rhs, op):
        result = binary_op(self, lhs, rhs, op)
        if result.data.dtype == np.bool_:
            result.dtype = interpreter.tl.int1
        return result

    interpreter._patch_lang_tensor = patch_lang_tensor
    builder.create_dot = dot
    if binary_op is not None:
        builder.binary_op = typed_binary_op
    interpreter.jupyter_qwen_fixed = True


def assert_replays_bitwise(step, inputs: tuple[torch.Tensor, ...],
                           generator: torch.Generator) -> None:
    """`step()` (a few kernel launches returning tensors) captured in a CUDA graph, replayed on
    fresh random `inputs` with its outputs poisoned first, equals an eager call bit for bit:
    no host reads, no atomics, every output written."""
    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for tensor in inputs:
        tensor.copy_(torch.randn(tensor.shape, generator=generator).to(tensor))
    for out in outs:
        out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outs, step(), strict=True):
        assert torch.equal(got, want)
