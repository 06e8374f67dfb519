"""A decoder layer's decode step for a few sequences in one persistent launch.

The small-batch path runs five kernels a layer (the qkv product with the input norm, the
one-launch attention step, o, gate/up with the post-attention norm, down with SiLU·mul),
and at batch 1 each costs ~6 us against 1-3 us of weights (BENCHMARKS.md, "Where the
batch-1 time goes"). Here the five are phases of one kernel: its programs (all resident at
once: a cooperative launch) work through each phase's tiles, `tile = pid, pid + programs,
...`, and meet at a grid barrier before the next phase reads what the last one wrote. A
phase's tile is exactly what one program of the separate kernel computes (`gemv.small_m_tile`
for bf16 products, `fp8_words.fp8_words_tile` for FP8 ones, `decode_step.decode_step_program`
for the attention), so the layer gives the same bits either way wherever the warps that
share a tile's sums are the same.

The barrier (`grid_barrier`): every program, once all its threads are past their stores,
adds one to the launch's counter with release semantics and spins on an acquire read until
the counter reaches programs x (phases passed); the last program out resets the counter
(and its own exit counter) to zero, so the next launch starts from zero. Programs that
could not all be resident would wait forever: the launch is cooperative (the driver refuses
a grid that does not fit) and `resident_programs` sizes it from the compiled kernel.

`FIRST_PHASE` / `LAST_PHASE` (constexpr) run part of the layer without barriers: Triton's
interpreter runs programs one after another, so there each phase is a launch of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import fp8_words, gemv, quant_gemv
from jupyter_qwen.model.kernels.decode_attention import BLOCK_N as ATTENTION_BLOCK_N
from jupyter_qwen.model.kernels.decode_attention import LOG2_E, decode_num_splits, dot_precision
from jupyter_qwen.model.kernels.decode_step import (
    MERGE_TILE_ELEMENTS,
    MIN_CHUNK,
    DecodeStepWorkspace,
    decode_step_program,
)
from jupyter_qwen.model.kernels.fp8_words import fp8_words_tile
from jupyter_qwen.model.kernels.gemv import small_m_tile
from jupyter_qwen.model.layer_weights import LayerShape, LayerWeights

PHASES = 5  # qkv, attention, o, gate_up, down
REGISTERS_PER_SM = 65536  # sm_80 to sm_90
_WORDS_VEC = tl.constexpr(fp8_words.VEC)


@triton.jit
def grid_barrier(counter_ptr, target):
    """Wait until `target` programs have arrived at `counter_ptr` (this one included), with
    every write before the barrier, of any program, visible after it."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while arrived < target:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.constexpr_function
def _power_of_two_at_least(n):
    return triton.next_power_of_2(n)


@triton.jit
def _prefetch_tiles(w_ptr, w_stride, pid, programs, N: tl.constexpr, K: tl.constexpr,
                    BLOCK_N: tl.constexpr, FP8: tl.constexpr, PREFETCH: tl.constexpr):
    """Ask L2 for the weights of this program's tiles of a product phase (PREFETCH 1: its
    first tile, 2: all of them), one `prefetch.global.L2` a 128-byte line, so that the
    phase's loads after the next barrier find them there. GPU builds only."""
    if PREFETCH > 0:
        LINE: tl.constexpr = 32 if FP8 else 64  # elements of a 128-byte line (words, bf16)
        LINES: tl.constexpr = (K // 4 if FP8 else K) // LINE
        last: tl.constexpr = N - 1
        lines = tl.minimum(tl.arange(0, _power_of_two_at_least(LINES)), LINES - 1)[None, :]
        tiles = tl.cdiv(N, BLOCK_N)
        end = tl.minimum(pid + 1, tiles) if PREFETCH == 1 else tiles
        for tile in range(pid, end, programs):
            rows = tl.minimum(tile * BLOCK_N + tl.arange(0, BLOCK_N), last)[:, None]
            tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l",
                                      [w_ptr + rows * w_stride + lines * LINE],
                                      dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _product_tile(tile, x_ptr, res_ptr, norm_ptr, xq_ptr, resq_ptr, normq_ptr, w_ptr, s_ptr,
                  srow_ptr, y_ptr, res_out_ptr, M, N, K, eps, x_stride, res_stride, xq_stride,
                  resq_stride, w_stride, s_stride, y_stride, res_out_stride,
                  PROLOGUE: tl.constexpr, FP8: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr,
                  EVEN_K: tl.constexpr, NORM_BLOCK: tl.constexpr, ASM: tl.constexpr):
    """One tile of a product: bf16 weights (`gemv`, register prefetch, FMAs at one row and
    the tensor cores above) or FP8 words (`fp8_words`, BLOCK_K = 4 x VEC x its lanes)."""
    if FP8:
        fp8_words_tile(tile, x_ptr, res_ptr, norm_ptr, xq_ptr, resq_ptr, normq_ptr, w_ptr,
                       s_ptr, srow_ptr, y_ptr, res_out_ptr, M, N, K, eps, x_stride,
                       res_stride, xq_stride, resq_stride, w_stride, s_stride, y_stride,
                       res_out_stride, PROLOGUE, BLOCK_M, BLOCK_N, BLOCK_K // (4 * _WORDS_VEC),
                       _WORDS_VEC, EVEN_N, EVEN_K, NORM_BLOCK, False, ASM)
    else:
        small_m_tile(tile, x_ptr, res_ptr, norm_ptr, w_ptr, x_ptr, y_ptr, res_out_ptr, M, N,
                     K, eps, x_stride, res_stride, w_stride, y_stride, res_out_stride,
                     PROLOGUE, False, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_M > 1, EVEN_N, EVEN_K,
                     "tf32", True, NORM_BLOCK, False)


@triton.jit(do_not_specialize=["table_stride", "num_splits", "programs"])
def _decode_layer_kernel(
        # the layer's input and residual stream: hidden (the last layer's down output, or
        # the embeddings), residual (None at the first layer: PROLOGUE 1), mid_residual
        # (hidden + residual), out_residual (mid_residual + o)
        hidden_ptr, hiddenq_ptr, res_ptr, resq_ptr, mid_res_ptr, mid_resq_ptr, out_res_ptr,
        in_norm_ptr, in_normq_ptr, post_norm_ptr, post_normq_ptr, eps,
        # the four products: weights (bf16, or FP8 words), FP8 block scales and scale rows
        qkv_w_ptr, qkv_s_ptr, qkv_srow_ptr, qkv_w_stride, qkv_s_stride,
        o_w_ptr, o_s_ptr, o_srow_ptr, o_w_stride, o_s_stride,
        gu_w_ptr, gu_s_ptr, gu_srow_ptr, gu_w_stride, gu_s_stride,
        down_w_ptr, down_s_ptr, down_srow_ptr, down_w_stride, down_s_stride,
        # the phases' outputs (rows of M)
        qkv_ptr, attn_ptr, attnq_ptr, o_ptr, oq_ptr, gu_ptr, guq_ptr, y_ptr,
        # the attention step (decode_step.py)
        positions_ptr, slots_ptr, q_weight_ptr, k_weight_ptr, cos_ptr, sin_ptr, k_cache_ptr,
        v_cache_ptr, block_tables_ptr, seq_lens_ptr, part_acc_ptr, part_max_ptr,
        part_sum_ptr, tickets_ptr, scale_log2, rope_stride, table_stride, cache_stride_b,
        cache_stride_s, cache_stride_h, num_splits, min_chunk,
        # the launch
        counters_ptr, programs, M,
        HIDDEN: tl.constexpr, QKV_N: tl.constexpr, Q_HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr, INTERMEDIATE: tl.constexpr, PROLOGUE: tl.constexpr,
        FP8: tl.constexpr, BLOCK_M: tl.constexpr,
        QKV_BN: tl.constexpr, QKV_BK: tl.constexpr, O_BN: tl.constexpr, O_BK: tl.constexpr,
        GU_BN: tl.constexpr, GU_BK: tl.constexpr, DOWN_BN: tl.constexpr,
        DOWN_BK: tl.constexpr, QKV_NORM_BLOCK: tl.constexpr, GU_NORM_BLOCK: tl.constexpr,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_H: tl.constexpr, ATTN_BN: tl.constexpr, BLOCK_G: tl.constexpr,
        SPLIT_TILE: tl.constexpr, PRECISION: tl.constexpr, ASM: tl.constexpr,
        PREFETCH: tl.constexpr, FIRST_PHASE: tl.constexpr, LAST_PHASE: tl.constexpr):
    """Phases FIRST_PHASE..LAST_PHASE of the layer (0 qkv, 1 attention, 2 o, 3 gate/up,
    4 down), grid barriers between them. Rows are M <= BLOCK_M sequences, one new token
    each. PREFETCH (GPU only): before each barrier a program asks L2 for its tiles of the
    next product phase still ahead (o before the attention, gate/up, down; 1: the first,
    2: all)."""
    pid = tl.program_id(0)
    q_size: tl.constexpr = Q_HEADS * HEAD_DIM
    if FIRST_PHASE <= 0 and LAST_PHASE >= 0:  # qkv = rms_norm(hidden + res) @ W_qkv
        for tile in range(pid, tl.cdiv(QKV_N, QKV_BN), programs):
            _product_tile(tile, hidden_ptr, res_ptr, in_norm_ptr, hiddenq_ptr, resq_ptr,
                          in_normq_ptr, qkv_w_ptr, qkv_s_ptr, qkv_srow_ptr, qkv_ptr,
                          mid_res_ptr, M, QKV_N, HIDDEN, eps, HIDDEN, HIDDEN, HIDDEN // 4,
                          HIDDEN // 4, qkv_w_stride, qkv_s_stride, QKV_N, HIDDEN, PROLOGUE,
                          FP8, BLOCK_M, QKV_BN, QKV_BK, QKV_N % QKV_BN == 0,
                          HIDDEN % QKV_BK == 0, QKV_NORM_BLOCK, ASM)
        if LAST_PHASE > 0:
            _prefetch_tiles(o_w_ptr, o_w_stride, pid, programs, HIDDEN, q_size, O_BN, FP8,
                            PREFETCH)
            grid_barrier(counters_ptr, programs)
    if FIRST_PHASE <= 1 and LAST_PHASE >= 1:  # attention over the paged cache
        units = M * KV_HEADS * num_splits
        for unit in range(pid, units, programs):
            decode_step_program(
                unit // (KV_HEADS * num_splits), (unit // num_splits) % KV_HEADS,
                unit % num_splits, qkv_ptr, positions_ptr, slots_ptr, q_weight_ptr,
                k_weight_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr,
                seq_lens_ptr, attn_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, tickets_ptr,
                eps, scale_log2, QKV_N, rope_stride, table_stride, cache_stride_b,
                cache_stride_s, cache_stride_h, Q_HEADS, KV_HEADS, num_splits, min_chunk,
                GROUP, HEAD_DIM, HEAD_DIM // 2, BLOCK_SIZE, BLOCK_H, ATTN_BN, BLOCK_G,
                SPLIT_TILE, PRECISION, False)
        if LAST_PHASE > 1:
            _prefetch_tiles(gu_w_ptr, gu_w_stride, pid, programs, 2 * INTERMEDIATE, HIDDEN,
                            GU_BN, FP8, PREFETCH)
            grid_barrier(counters_ptr, 2 * programs)
    if FIRST_PHASE <= 2 and LAST_PHASE >= 2:  # o = attn @ W_o
        for tile in range(pid, tl.cdiv(HIDDEN, O_BN), programs):
            _product_tile(tile, attn_ptr, attn_ptr, attn_ptr, attnq_ptr, attnq_ptr, attnq_ptr,
                          o_w_ptr, o_s_ptr, o_srow_ptr, o_ptr, o_ptr, M, HIDDEN, q_size, eps,
                          q_size, q_size, q_size // 4, q_size // 4, o_w_stride, o_s_stride,
                          HIDDEN, 0, 0, FP8, BLOCK_M, O_BN, O_BK, HIDDEN % O_BN == 0,
                          q_size % O_BK == 0, O_BK, ASM)
        if LAST_PHASE > 2:
            _prefetch_tiles(down_w_ptr, down_w_stride, pid, programs, HIDDEN, INTERMEDIATE,
                            DOWN_BN, FP8, PREFETCH)
            grid_barrier(counters_ptr, 3 * programs)
    if FIRST_PHASE <= 3 and LAST_PHASE >= 3:  # gate_up = rms_norm(o + mid_res) @ W_gu
        for tile in range(pid, tl.cdiv(2 * INTERMEDIATE, GU_BN), programs):
            _product_tile(tile, o_ptr, mid_res_ptr, post_norm_ptr, oq_ptr, mid_resq_ptr,
                          post_normq_ptr, gu_w_ptr, gu_s_ptr, gu_srow_ptr, gu_ptr,
                          out_res_ptr, M, 2 * INTERMEDIATE, HIDDEN, eps, HIDDEN, HIDDEN,
                          HIDDEN // 4, HIDDEN // 4, gu_w_stride, gu_s_stride,
                          2 * INTERMEDIATE, HIDDEN, 2, FP8, BLOCK_M, GU_BN, GU_BK,
                          (2 * INTERMEDIATE) % GU_BN == 0, HIDDEN % GU_BK == 0,
                          GU_NORM_BLOCK, ASM)
        if LAST_PHASE > 3:
            grid_barrier(counters_ptr, 4 * programs)
    if FIRST_PHASE <= 4 and LAST_PHASE >= 4:  # y = silu(gate) * up @ W_down
        for tile in range(pid, tl.cdiv(HIDDEN, DOWN_BN), programs):
            _product_tile(tile, gu_ptr, gu_ptr, gu_ptr, guq_ptr, guq_ptr, guq_ptr, down_w_ptr,
                          down_s_ptr, down_srow_ptr, y_ptr, y_ptr, M, HIDDEN, INTERMEDIATE,
                          eps, 2 * INTERMEDIATE, 0, INTERMEDIATE // 2, 0, down_w_stride,
                          down_s_stride, HIDDEN, 0, 3, FP8, BLOCK_M, DOWN_BN, DOWN_BK,
                          HIDDEN % DOWN_BN == 0, INTERMEDIATE % DOWN_BK == 0, DOWN_BK, ASM)
    if LAST_PHASE > FIRST_PHASE:  # the last program out sets both counters back to zero
        tl.debug_barrier()
        if tl.atomic_add(counters_ptr + 1, 1, sem="acq_rel", scope="gpu") == programs - 1:
            tl.atomic_xchg(counters_ptr, 0, sem="relaxed", scope="gpu")
            tl.atomic_xchg(counters_ptr + 1, 0, sem="relaxed", scope="gpu")


@dataclass
class LayerBuffers:
    """The phases' outputs for up to `rows` sequences, the two residuals and the barrier
    counters (zero between launches), allocated once (outside CUDA-graph capture): every
    layer of a step may share them, as their launches run one after another."""

    qkv: torch.Tensor
    attn: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    mid_residual: torch.Tensor
    counters: torch.Tensor

    @classmethod
    def allocate(cls, rows: int, shape: LayerShape, dtype: torch.dtype,
                 device: torch.device) -> LayerBuffers:
        def rows_of(width: int) -> torch.Tensor:
            return torch.empty(rows, width, dtype=dtype, device=device)

        return cls(qkv=rows_of(shape.qkv_width), attn=rows_of(shape.q_heads * shape.head_dim),
                   o=rows_of(shape.hidden), gate_up=rows_of(2 * shape.intermediate),
                   mid_residual=rows_of(shape.hidden),
                   counters=torch.zeros(2, dtype=torch.int32, device=device))


def product_tiling(weight, m: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) of a product's tiles: the separate kernel's tiling for the shape."""
    if isinstance(weight, torch.Tensor):
        n, k = weight.shape
        tiling = gemv.default_tiling(m, n, k)
        return tiling.block_n, min(tiling.block_k, max(16, triton.next_power_of_2(k)))
    tiling = quant_gemv.default_tiling("fp8", m, weight.out_features, weight.in_features)
    if tiling.unpack != "words":
        block_k = 256 * tiling.num_warps
        return min(tiling.block_n, fp8_words.SCALE_BLOCK), block_k
    return tiling.block_n, tiling.block_k


def check_layer(weights: LayerWeights, shape: LayerShape, m: int) -> None:
    """What the persistent layer takes: bf16 norms and rows, head_dim a power of two >= 32,
    at most gemv.MAX_M rows, and four bf16 products or four FP8 ones whose words tiles fit
    their shards (one scale row a tile, K a multiple of 4)."""
    if not 1 <= m <= gemv.MAX_M:
        raise ValueError(f"the persistent decode layer takes 1 to {gemv.MAX_M} rows, not {m}")
    if shape.head_dim < 32 or shape.head_dim & (shape.head_dim - 1):
        raise ValueError(f"head_dim {shape.head_dim}: a power of two >= 32 is needed")
    if weights.input_norm.dtype != torch.bfloat16:
        raise ValueError("the persistent decode layer runs bf16 models")
    for weight in weights.products():
        if isinstance(weight, torch.Tensor) == weights.fp8:
            raise ValueError("the persistent decode layer takes four bf16 products or four FP8")
        if not weights.fp8:
            if weight.dtype != torch.bfloat16:
                raise ValueError("the persistent decode layer runs bf16 models")
            continue
        if quant_gemv.format_of(weight) != "fp8":
            raise ValueError("the persistent decode layer takes FP8 projections, not AWQ")
        block_n, _ = product_tiling(weight, m)
        if weight.in_features % 4 or not quant_gemv.folds(tuple(weight.shard_sizes), block_n):
            raise ValueError("FP8 products of the persistent layer need K a multiple of 4 "
                             "and tiles of one scale row")


def resident_programs(compiled, device: torch.device) -> int:
    """Programs of a compiled kernel that an SM holds at once (threads, registers, shared
    memory and the 32-block limit), times the SMs."""
    props = torch.cuda.get_device_properties(device)
    threads = 32 * compiled.metadata.num_warps
    registers = max(1, compiled.n_regs)
    warp_registers = -(-registers * 32 // 256) * 256  # allocated 256 at a time
    by_registers = REGISTERS_PER_SM // (warp_registers * compiled.metadata.num_warps)
    by_threads = props.max_threads_per_multi_processor // threads
    shared = compiled.metadata.shared
    smem = props.shared_memory_per_multiprocessor
    by_shared = smem // (shared + 1024) if shared else 32
    return props.multi_processor_count * max(1, min(32, by_registers, by_threads, by_shared))


_PROGRAMS: dict[tuple, int] = {}


def _product_args(prefix: str, weight) -> dict:
    if isinstance(weight, torch.Tensor):
        return {f"{prefix}_w_ptr": weight, f"{prefix}_s_ptr": weight,
                f"{prefix}_srow_ptr": weight, f"{prefix}_w_stride": weight.stride(0),
                f"{prefix}_s_stride": 0}
    words = weight.weight.view(torch.int32)
    scales = weight.weight_scale_inv
    return {f"{prefix}_w_ptr": words, f"{prefix}_s_ptr": scales,
            f"{prefix}_srow_ptr": weight.scale_rows, f"{prefix}_w_stride": words.stride(0),
            f"{prefix}_s_stride": scales.stride(0)}


def _quads(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int64)


def decode_layer(hidden: torch.Tensor, residual: torch.Tensor | None, weights: LayerWeights,
                 shape: LayerShape, positions: torch.Tensor, slot_mapping: torch.Tensor,
                 block_tables: torch.Tensor, seq_lens: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor,
                 scale: float, *, buffers: LayerBuffers, workspace: DecodeStepWorkspace,
                 num_splits: int | None = None, min_chunk: int | None = None,
                 num_warps: int = 4, programs: int | None = None, cooperative: bool = True,
                 prefetch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder layer of a pure decode step (row i: the one new token of sequence i),
    as the small-batch path computes it -> (the down projection's rows, the residual
    stream after attention: hidden + residual + o). The new k and v land in the cache.
    hidden and residual: bf16 [M, hidden] with contiguous rows (residual None at the first
    layer). `programs`: the launch's programs (default: as many as the GPU holds at once);
    `cooperative`: launched as a cooperative grid (the driver checks that they all fit);
    `prefetch`: the kernel's PREFETCH (0: none; the interpreter takes none)."""
    m = hidden.shape[0]
    device = hidden.device
    check_layer(weights, shape, m)
    if hidden.dtype != torch.bfloat16 or not hidden.is_contiguous():
        raise ValueError("the persistent decode layer takes contiguous bf16 rows")
    if residual is not None and (residual.shape != hidden.shape or not residual.is_contiguous()):
        raise ValueError(f"residual {tuple(residual.shape)} does not match the hidden rows")
    _, block_size, kv_heads, head_dim = k_cache.shape
    if num_splits is None:
        num_splits = decode_num_splits(m, kv_heads, block_tables.shape[1] * block_size, device)
    if not workspace.holds(m, num_splits, shape.q_heads, kv_heads, head_dim):
        raise ValueError(f"the decode-step workspace is too small for {m} rows, "
                         f"{num_splits} splits")
    y = torch.empty_like(hidden)
    out_residual = torch.empty_like(hidden)
    mid_residual = buffers.mid_residual[:m] if residual is not None else hidden
    qkv, attn, o, gate_up = (buffers.qkv[:m], buffers.attn[:m], buffers.o[:m],
                             buffers.gate_up[:m])
    group = shape.q_heads // shape.kv_heads
    block_m = triton.next_power_of_2(m)
    (qkv_bn, qkv_bk), (o_bn, o_bk), (gu_bn, gu_bk), (down_bn, down_bk) = (
        product_tiling(weight, m) for weight in weights.products())
    fp8 = weights.fp8
    args = dict(
        hidden_ptr=hidden, hiddenq_ptr=_quads(hidden),
        res_ptr=residual if residual is not None else hidden,
        resq_ptr=_quads(residual if residual is not None else hidden),
        mid_res_ptr=mid_residual, mid_resq_ptr=_quads(mid_residual), out_res_ptr=out_residual,
        in_norm_ptr=weights.input_norm, in_normq_ptr=_quads(weights.input_norm),
        post_norm_ptr=weights.post_attention_norm,
        post_normq_ptr=_quads(weights.post_attention_norm), eps=weights.eps,
        **_product_args("qkv", weights.qkv), **_product_args("o", weights.o),
        **_product_args("gu", weights.gate_up), **_product_args("down", weights.down),
        qkv_ptr=qkv, attn_ptr=attn, attnq_ptr=_quads(attn), o_ptr=o, oq_ptr=_quads(o),
        gu_ptr=gate_up, guq_ptr=_quads(gate_up), y_ptr=y,
        positions_ptr=positions, slots_ptr=slot_mapping, q_weight_ptr=weights.q_norm,
        k_weight_ptr=weights.k_norm, cos_ptr=cos_cache, sin_ptr=sin_cache,
        k_cache_ptr=k_cache, v_cache_ptr=v_cache, block_tables_ptr=block_tables,
        seq_lens_ptr=seq_lens, part_acc_ptr=workspace.part_acc,
        part_max_ptr=workspace.part_max, part_sum_ptr=workspace.part_sum,
        tickets_ptr=workspace.tickets, scale_log2=scale * LOG2_E,
        rope_stride=cos_cache.stride(0), table_stride=block_tables.stride(0),
        cache_stride_b=k_cache.stride(0), cache_stride_s=k_cache.stride(1),
        cache_stride_h=k_cache.stride(2), num_splits=num_splits,
        min_chunk=MIN_CHUNK if min_chunk is None else min_chunk,
        counters_ptr=buffers.counters, M=m,
        HIDDEN=shape.hidden, QKV_N=shape.qkv_width, Q_HEADS=shape.q_heads,
        KV_HEADS=shape.kv_heads, INTERMEDIATE=shape.intermediate,
        PROLOGUE=gemv.RMS_NORM if residual is None else gemv.ADD_RMS_NORM, FP8=fp8,
        BLOCK_M=block_m, QKV_BN=qkv_bn, QKV_BK=qkv_bk, O_BN=o_bn, O_BK=o_bk, GU_BN=gu_bn,
        GU_BK=gu_bk, DOWN_BN=down_bn, DOWN_BK=down_bk,
        QKV_NORM_BLOCK=quant_gemv.norm_block(shape.hidden, qkv_bk, block_m, num_warps),
        GU_NORM_BLOCK=quant_gemv.norm_block(shape.hidden, gu_bk, block_m, num_warps),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_H=max(16, triton.next_power_of_2(group)), ATTN_BN=ATTENTION_BLOCK_N,
        BLOCK_G=triton.next_power_of_2(group),
        SPLIT_TILE=max(1, MERGE_TILE_ELEMENTS // (triton.next_power_of_2(group) * head_dim)),
        PRECISION=dot_precision(k_cache), ASM=fp8 and device.type == "cuda",
        PREFETCH=prefetch if device.type == "cuda" else 0, num_warps=num_warps, num_stages=1)
    if device.type != "cuda":  # the interpreter: one launch a phase, no barriers
        for phase in range(PHASES):
            _decode_layer_kernel[(programs or 4,)](programs=programs or 4, FIRST_PHASE=phase,
                                                   LAST_PHASE=phase, **args)
        return y, out_residual
    whole = dict(FIRST_PHASE=0, LAST_PHASE=PHASES - 1, launch_cooperative_grid=cooperative,
                 **args)
    if programs is None:
        programs = _resident(whole, device)
    _decode_layer_kernel[(programs,)](programs=programs, **whole)
    return y, out_residual


def _resident(args: dict, device: torch.device) -> int:
    """resident_programs of the kernel these arguments compile, kept per constexpr set."""
    key = (device, *(v for k, v in sorted(args.items()) if k.isupper() or k == "num_warps"),
           args["hidden_ptr"].dtype)
    if key not in _PROGRAMS:
        compiled = _decode_layer_kernel.warmup(programs=1, grid=(1,), **args)
        compiled._init_handles()
        _PROGRAMS[key] = resident_programs(compiled, device)
    return _PROGRAMS[key]
