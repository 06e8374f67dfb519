"""The AWQ small-M product with K split across programs (`DecodeTiling(..., unpack="split")`,
launched by quant_gemv): enough programs for every SM on products whose N alone gives too
few, each streaming a [BLOCK_K, BLOCK_N / 8] tile of qweight words per step with 16-byte
loads (the warp's threads along a row's words: BLOCK_N 256 puts 8 threads x 16 bytes on
each row, a whole 128-byte line).

The grid is (N tiles, K splits). Split s owns input rows [s * K_CHUNK, (s + 1) * K_CHUNK)
(whole steps of BLOCK_K, so whole groups) and writes its [M, BLOCK_N] partial sums in fp32
to partials[s, :, n]; a second launch (`_sum_splits_kernel`) adds the splits up in a fixed
order and rounds to y's dtype. So results are bitwise reproducible (no atomics, no counter
to reset), every launch is CUDA-graph safe (the partials are an ordinary allocation of the
caching allocator, captured like any other), and the cost is one small launch reading
SPLITS x M x N floats from L2.

The body is the nibble-plane step (`_awq_plane`, defined here and shared with quant_gemv's
`_awq_planes_kernel`, which has no K split): the tile is loaded as [GROUPS,
REPEAT, LANES, WORDS] (input row 128 g + LANES r + l), nibble j of word w is column
8 w + j' (AWQ's order) taken in place, sums over a thread's own rows stay in its
registers, the group's scale and zero are applied once per group and column to the
lanes' partial sums, and lanes are added once per program. The 8 planes' sums are joined
back into column order in registers before one store. The prologue (RMS norm, add + norm,
SiLU·mul) is computed per split on the split's own rows; the norm's sum of squares needs
the whole row, so every program takes it (M rows of K, from L2), and program (0, 0) alone
writes the add + norm residual.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import pdl
from jupyter_qwen.model.kernels.gemv import _inv_rms, _operand
from jupyter_qwen.model.kernels.quant_tiles import chunk_of

GROUP = 128
SUM_TILE = 4096  # elements of partials one program of the sum adds per row of x


@triton.jit
def _nibble_plane(packed, NIBBLE: tl.constexpr):
    """(nibble NIBBLE of each word) * 16**P as float32, P = NIBBLE - SHIFT / 4: masked in
    place (nibbles 0-4, bits below 2**20) or shifted down by 20 bits first (5-7), then or-ed
    into the mantissa of 2**23 (0x4B000000, whose low 23 bits hold an integer exactly) and
    2**23 taken off: a logic op and an add instead of an int -> float convert."""
    SHIFT: tl.constexpr = 0 if NIBBLE < 5 else 20
    bits = ((packed >> SHIFT) & (0xF << (4 * NIBBLE - SHIFT))) | 0x4B000000
    return bits.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, J: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """Column 8 w + J of every word w: the step's [BLOCK_M, LANES, WORDS] partial sums,
    sum over the step's groups of s * (sum_k q * a - z * sum_k a), the k sums taken over
    the rows each lane holds (axis 1 of the [GROUPS, REPEAT, LANES, WORDS] tile; a_sums:
    [BLOCK_M, GROUPS, LANES], those sums of a)."""
    NIBBLE: tl.constexpr = (J // 2) + (J % 2) * 4  # AWQ's nibble of column J of eight
    P: tl.constexpr = NIBBLE if NIBBLE < 5 else NIBBLE - 5
    FACTOR: tl.constexpr = 1.0 / (1 << (4 * P))
    q = _nibble_plane(packed, NIBBLE)  # [GROUPS, REPEAT, LANES, WORDS], q * 16**P
    z = ((zw >> (4 * NIBBLE)) & 0xF).to(tl.float32)[:, None, :]  # [GROUPS, 1, WORDS]
    s = tl.load(sc_row + J, mask=g_ok, other=0.0).to(tl.float32)[:, None, :]
    out = tl.zeros([BLOCK_M, a.shape[3], q.shape[3]], tl.float32)
    for m in tl.static_range(BLOCK_M):
        a_m = tl.sum(tl.where((rows == m)[:, None, None, None], a, 0.0), 0)  # [G, R, L]
        qa = tl.sum(q * a_m[:, :, :, None], 1)  # [GROUPS, LANES, WORDS]
        a_sum = tl.sum(tl.where((rows == m)[:, None, None], a_sums, 0.0), 0)[:, :, None]
        part = tl.sum(s * (qa * FACTOR - z * a_sum), 0)  # [LANES, WORDS]
        out += tl.where((rows == m)[:, None, None], part[None, :, :], 0.0)
    return out


@triton.jit
def _load_split_words(q_base, ks, stride, k_end):
    """The [GROUPS, REPEAT, LANES, WORDS] tile of qweight for input rows ks, rows past the
    split's end masked (their operand is masked to 0 as well)."""
    return tl.load(q_base + ks[:, :, :, None] * stride, mask=(ks < k_end)[:, :, :, None],
                   other=0)


@triton.jit
def _columns_in_order(s0, s1, s2, s3, s4, s5, s6, s7):
    """[BLOCK_M, WORDS] sums of columns 8 w + j (s_j) -> [BLOCK_M, 8 WORDS] in column
    order: three nested joins put j = 4 a + 2 b + c on the new axes (a, b, c)."""
    low = tl.join(tl.join(s0, s4), tl.join(s2, s6))  # c = 0: j = 0, 4, 2, 6
    high = tl.join(tl.join(s1, s5), tl.join(s3, s7))  # c = 1: j = 1, 5, 3, 7
    joined = tl.join(low, high)  # [BLOCK_M, WORDS, 2 (a), 2 (b), 2 (c)]
    return tl.reshape(joined, [s0.shape[0], s0.shape[1] * 8])


@triton.jit(do_not_specialize=["M"])
def _awq_split_kernel(x_ptr, res_ptr, norm_w_ptr, qw_ptr, qz_ptr, sc_ptr, part_ptr,
                      res_out_ptr, M, N, K, K_CHUNK, eps, x_stride, res_stride, qw_stride,
                      qz_stride, sc_stride, res_out_stride, PROLOGUE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
                      LANES: tl.constexpr, EVEN_N: tl.constexpr, NORM_BLOCK: tl.constexpr,
                      USE_GDC: tl.constexpr):
    GROUP: tl.constexpr = 128
    WORDS: tl.constexpr = BLOCK_N // 8
    REPEAT: tl.constexpr = GROUP // LANES
    BLOCK_K: tl.constexpr = GROUPS * GROUP
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    k_begin = split * K_CHUNK
    k_end = tl.minimum(k_begin + K_CHUNK, K)
    word_count = N // 8
    if EVEN_N:
        first = pid_n * WORDS
        words = first + tl.arange(0, WORDS)
    else:  # the last tile steps back to stay contiguous; it stores only its own columns
        first = tl.maximum(tl.minimum(pid_n * WORDS, word_count - WORDS), 0)
        words = tl.minimum(first + tl.arange(0, WORDS), word_count - 1)
    step_ks = (tl.arange(0, GROUPS)[:, None, None] * GROUP
               + tl.arange(0, REPEAT)[None, :, None] * LANES
               + tl.arange(0, LANES)[None, None, :])  # [GROUPS, REPEAT, LANES]
    q_base = qw_ptr + words[None, None, None, :]
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_at = rows[:, None] * x_stride
    res_at = rows[:, None] * res_stride
    x_at4 = rows[:, None, None, None] * x_stride
    res_at4 = rows[:, None, None, None] * res_stride
    groups = tl.cdiv(k_end, GROUP)

    q_next = _load_split_words(q_base, k_begin + step_ks, qw_stride, k_end)
    pdl.after_previous_kernel(USE_GDC)
    inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, x_at, res_at, res_out_stride, M, K,
                       eps, (pid_n == 0) & (split == 0), PROLOGUE, BLOCK_M, NORM_BLOCK)
    inv_rms4 = inv_rms[:, None, None, None]
    row_ok4 = row_ok[:, None, None, None]
    ks = (k_begin + step_ks)[None, :, :, :]
    a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at4, res_at4, ks, row_ok4 & (ks < k_end),
                      inv_rms4, K, PROLOGUE)
    acc0 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc1 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc2 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc3 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc4 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc5 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc6 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    acc7 = tl.zeros([BLOCK_M, LANES, WORDS], tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        a = a_next.to(tl.float32)  # [BLOCK_M, GROUPS, REPEAT, LANES]
        ahead = k0 + BLOCK_K + step_ks
        a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at4, res_at4, ahead[None, :, :, :],
                          row_ok4 & (ahead < k_end)[None, :, :, :], inv_rms4, K, PROLOGUE)
        a_sums = tl.sum(a, 2)  # [BLOCK_M, GROUPS, LANES], shared by the eight planes
        packed = q_next
        q_next = _load_split_words(q_base, ahead, qw_stride, k_end)
        gs = k0 // GROUP + tl.arange(0, GROUPS)
        g_ok = (gs < groups)[:, None]
        zw = tl.load(qz_ptr + gs[:, None] * qz_stride + words[None, :], mask=g_ok, other=0)
        sc_row = sc_ptr + gs[:, None] * sc_stride + words[None, :] * 8  # [GROUPS, WORDS]
        acc0 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 0, BLOCK_M)
        acc1 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 1, BLOCK_M)
        acc2 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 2, BLOCK_M)
        acc3 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 3, BLOCK_M)
        acc4 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 4, BLOCK_M)
        acc5 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 5, BLOCK_M)
        acc6 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 6, BLOCK_M)
        acc7 += _awq_plane(packed, zw, sc_row, g_ok, a, a_sums, rows, 7, BLOCK_M)

    sums = _columns_in_order(tl.sum(acc0, 1), tl.sum(acc1, 1), tl.sum(acc2, 1),
                             tl.sum(acc3, 1), tl.sum(acc4, 1), tl.sum(acc5, 1),
                             tl.sum(acc6, 1), tl.sum(acc7, 1))  # [BLOCK_M, BLOCK_N]
    columns = first * 8 + tl.arange(0, BLOCK_N)
    store_ok = row_ok[:, None] & ((columns >= pid_n * BLOCK_N) & (columns < N))[None, :]
    tl.store(part_ptr + (split * M + rows[:, None]) * N + columns[None, :], sums,
             mask=store_ok)


@triton.jit(do_not_specialize=["M", "SPLITS"])
def _sum_splits_kernel(part_ptr, y_ptr, M, N, SPLITS, y_stride, SPLITS_P2: tl.constexpr,
                       BLOCK: tl.constexpr, USE_GDC: tl.constexpr):
    """y[m, n] = sum over s of partials[s, m, n] (a fixed tree over s), in y's dtype."""
    pid = tl.program_id(0)
    columns = pid * BLOCK + tl.arange(0, BLOCK)
    splits = tl.arange(0, SPLITS_P2)
    ok = (splits < SPLITS)[:, None] & (columns < N)[None, :]
    at = splits[:, None] * M * N + columns[None, :]
    pdl.after_previous_kernel(USE_GDC)
    for m in range(M):
        part = tl.load(part_ptr + at + m * N, mask=ok, other=0.0)
        tl.store(y_ptr + m * y_stride + columns, tl.sum(part, 0).to(y_ptr.dtype.element_ty),
                 mask=columns < N)


def split_lanes(words: int, num_warps: int) -> int:
    """The threads Triton's default layout puts along K for a [..., WORDS] int32 tile with
    contiguous words (4 words, 16 bytes, a thread; as quant_gemv.planes_lanes)."""
    across_words = min(32, max(1, words // 4))
    return min(GROUP, 32 // across_words * num_warps)


def launch(args: dict, layer, tiling, m: int, k: int, groups: int, norm_block: int) -> None:
    """The split product then the sum of its splits; args as quant_gemv._launch builds
    them (x, residual, norm weight, strides, prologue, BLOCK_M, PDL, warps)."""
    words = tiling.block_n // 8
    if words < 4 or words & (words - 1):
        raise ValueError(f"AWQ split tiles need block_n a power of two, 32 to 1024, not "
                         f"{tiling}")
    if tiling.split_k < 1:
        raise ValueError(f"split_k is at least 1, not {tiling}")
    n, y = layer.out_features, args["y_ptr"]
    block_k = groups * GROUP
    chunk = chunk_of(k, block_k, tiling.split_k)
    splits = triton.cdiv(k, chunk)
    partials = torch.empty((splits, m, n), device=y.device, dtype=torch.float32)
    use_gdc = args["USE_GDC"]
    split_args = {key: value for key, value in args.items()
                  if key not in ("y_ptr", "y_stride")}
    _awq_split_kernel[(triton.cdiv(n, tiling.block_n), splits)](
        qw_ptr=layer.qweight, qz_ptr=layer.qzeros, sc_ptr=layer.scales, part_ptr=partials,
        K_CHUNK=chunk, qw_stride=layer.qweight.stride(0), qz_stride=layer.qzeros.stride(0),
        sc_stride=layer.scales.stride(0), BLOCK_N=tiling.block_n, GROUPS=groups,
        LANES=split_lanes(words, tiling.num_warps), EVEN_N=n % tiling.block_n == 0,
        NORM_BLOCK=norm_block, **split_args)
    splits_p2 = triton.next_power_of_2(splits)
    block = max(32, min(1024, SUM_TILE // splits_p2))
    _sum_splits_kernel[(triton.cdiv(n, block),)](
        partials, y, m, n, splits, y.stride(0), SPLITS_P2=splits_p2, BLOCK=block,
        USE_GDC=use_gdc, num_warps=4, num_stages=1, launch_pdl=args["launch_pdl"])
