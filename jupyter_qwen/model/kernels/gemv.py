"""y = x @ W.T for a few rows of x (decode batches, M <= 16), with fused prologues.

- `linear_small_m(x, weight, bias=None)`: the plain product (`F.linear`);
- `rms_norm_linear(x, norm_weight, eps, weight, residual=None)` -> (y, new_residual):
  h = x + residual (rounded to x's dtype, as torch adds; new_residual = h, or x itself
  when no residual is given), n = rms_norm(h) * norm_weight (fp32 inside, rounded once to
  the dtype, as `fused_ops.rms_norm`), y = n @ W.T;
- `silu_mul_linear(gate_up, weight)`: y = (silu(gate) * up) @ W.T for gate_up = [gate | up]
  (the operand rounded once to the dtype, as `fused_ops.silu_and_mul`);
- `use_small_m(M, N, K)`: whether these beat cuBLAS for that shape (decode steps only).

W is [N, K] with contiguous rows (bf16, fp16 or fp32); accumulation is fp32 and y has x's
dtype. Each program owns BLOCK_N rows of W (BLOCK_N outputs of every row of x) and streams
them once, so W is read exactly once from memory; x (M x K, a few KB) is re-read by every
program from L2. No atomics: each output is summed by one program in a fixed order, so
results are bitwise reproducible. The grid is (ceil(N / BLOCK_N),) and nothing is read on
the host, so launches are CUDA-graph safe. On Hopper the launch is a programmatic dependent
one (`pdl`, with `launch_pdl=True`): the first W tile is requested before waiting for the
kernel that wrote x.

Two inner products (`Tiling.dot`):
- dot: acc[BLOCK_N, BLOCK_M] += W_tile @ a_tile.T on the tensor cores (mma.sync; Triton
  pads BLOCK_N and BLOCK_M up to the instruction shape);
- fma (M == 1 only): acc[BLOCK_N] += sum_k W_tile * a (fp32 FMAs on W loaded straight into
  registers, reduced across the K threads once per K step).
W tiles [BLOCK_N, BLOCK_K] are read with 16-byte loads. With `num_stages` 1 the next tile is
loaded into registers by hand while the current one is used (two tiles in flight, the first
requested before the norm pass); with num_stages s > 1 (dot only) Triton pipelines them by
cp.async into shared memory, s - 1 tiles ahead. The operand tile (x, or the prologue's
result) is always computed one K step ahead, so the L2 latency of x is hidden too.
With the norm prologue, every program first recomputes the sum of squares of each row of
h (x is tiny; NORM_BLOCK columns at a time, one step for M = 1 and K <= 8192), then
normalises each K tile of the operand as it goes; program 0 also writes new_residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jupyter_qwen.model.kernels import pdl

PLAIN, RMS_NORM, ADD_RMS_NORM, SILU_MUL = 0, 1, 2, 3
MAX_M = 16


@dataclass(frozen=True)
class Tiling:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int = 1
    dot: bool = True

    def name(self) -> str:
        kind = f"dot s{self.num_stages}" if self.dot else "fma"
        return f"{kind} n{self.block_n} k{self.block_k} w{self.num_warps}"


@triton.jit
def _load_h(x_ptr, res_ptr, x_at, res_at, ks, mask, PROLOGUE: tl.constexpr):
    h = tl.load(x_ptr + x_at + ks, mask=mask, other=0.0)
    if PROLOGUE == 2:
        r = tl.load(res_ptr + res_at + ks, mask=mask, other=0.0)
        h = (h.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return h


@triton.jit
def _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ks, mask, inv_rms, K,
             PROLOGUE: tl.constexpr):
    """A tile of the left operand in x's dtype; x_at and res_at (row offsets), ks (columns),
    mask and inv_rms broadcast to the tile's shape."""
    dtype = x_ptr.dtype.element_ty
    if PROLOGUE == 3:
        gate = tl.load(x_ptr + x_at + ks, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + x_at + K + ks, mask=mask, other=0.0).to(tl.float32)
        a = (gate / (1.0 + tl.exp(-gate)) * up).to(dtype)
    elif PROLOGUE == 0:
        a = tl.load(x_ptr + x_at + ks, mask=mask, other=0.0)
    else:
        h = _load_h(x_ptr, res_ptr, x_at, res_at, ks, mask, PROLOGUE)
        weight = tl.load(norm_w_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)
        a = (h.to(tl.float32) * inv_rms * weight).to(dtype)
    return a


@triton.jit
def _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, x_at, res_at, res_out_stride, M, K, eps,
             writes_residual, PROLOGUE: tl.constexpr, BLOCK_M: tl.constexpr,
             NORM_BLOCK: tl.constexpr):
    """1 / rms of each row of h = x (+ residual) for the norm prologues (zeros otherwise),
    NORM_BLOCK columns at a time; where `writes_residual`, h is stored to res_out as well.
    rows: [BLOCK_M]; x_at, res_at: [BLOCK_M, 1] row offsets."""
    inv_rms = tl.zeros([BLOCK_M], tl.float32)
    if PROLOGUE == 1 or PROLOGUE == 2:
        row_ok = rows < M
        squares = tl.zeros([BLOCK_M], tl.float32)
        for k0 in range(0, K, NORM_BLOCK):
            ks = k0 + tl.arange(0, NORM_BLOCK)
            mask = row_ok[:, None] & (ks < K)[None, :]
            h = _load_h(x_ptr, res_ptr, x_at, res_at, ks[None, :], mask, PROLOGUE)
            if PROLOGUE == 2:
                tl.store(res_out_ptr + rows[:, None] * res_out_stride + ks[None, :], h,
                         mask=mask & writes_residual)
            h = h.to(tl.float32)
            squares += tl.sum(h * h, 1)
        inv_rms = tl.rsqrt(squares / K + eps)
    return inv_rms


@triton.jit
def _load_w(w_base, ks, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(w_base + ks[None, :])
    return tl.load(w_base + ks[None, :], mask=(ks < K)[None, :], other=0.0)


@triton.jit
def _small_m_kernel(x_ptr, res_ptr, norm_w_ptr, w_ptr, bias_ptr, y_ptr, res_out_ptr,
                    M, N, K, eps, x_stride, res_stride, w_stride, y_stride, res_out_stride,
                    PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
                    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
                    REG_PREFETCH: tl.constexpr, NORM_BLOCK: tl.constexpr,
                    USE_GDC: tl.constexpr):
    pid = tl.program_id(0)
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    # (the tail program re-reads row N - 1 rather than masking its loads)
    w_rows = ns if EVEN_N else tl.minimum(ns, N - 1)
    w_base = w_ptr + w_rows[:, None] * w_stride
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_at = rows[:, None] * x_stride
    res_at = rows[:, None] * res_stride

    if REG_PREFETCH:  # the first W tile is requested before the norm pass below
        w_next = _load_w(w_base, tl.arange(0, BLOCK_K), K, EVEN_K)
    pdl.after_previous_kernel(USE_GDC)

    inv_rms = _inv_rms(x_ptr, res_ptr, res_out_ptr, rows, x_at, res_at, res_out_stride, M, K,
                       eps, pid == 0, PROLOGUE, BLOCK_M, NORM_BLOCK)

    # The operand tile for step k0 + BLOCK_K loads while step k0 computes (x is read from L2,
    # whose latency would otherwise stall every step). W tiles are loaded one step ahead by
    # hand into registers (REG_PREFETCH), or else pipelined by Triton (cp.async into shared
    # memory, num_stages deep).
    ks = tl.arange(0, BLOCK_K)
    a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ks[None, :],
                      row_ok[:, None] & (ks < K)[None, :], inv_rms[:, None], K, PROLOGUE)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = a_next
        ks = k0 + tl.arange(0, BLOCK_K)
        ahead = ks + BLOCK_K
        a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ahead[None, :],
                          row_ok[:, None] & (ahead < K)[None, :], inv_rms[:, None], K,
                          PROLOGUE)
        if REG_PREFETCH:
            w = w_next
            w_next = _load_w(w_base, ahead, K, False)
        else:
            w = _load_w(w_base, ks, K, EVEN_K)
        if USE_DOT:
            acc = tl.dot(w, tl.trans(a), acc, input_precision=PRECISION)
        else:  # BLOCK_M == 1
            acc += tl.sum(w.to(tl.float32) * a.to(tl.float32), 1)[:, None]

    if HAS_BIAS:
        acc += tl.load(bias_ptr + w_rows).to(tl.float32)[:, None]
    out_mask = (ns < N)[:, None] & row_ok[None, :]
    tl.store(y_ptr + rows[None, :] * y_stride + ns[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=out_mask)


# Tilings measured on the H200 (benchmarks/gemv.py, 2026-11-21): key (M bucket, N, K).
TUNED: dict[tuple[int, int, int], Tiling] = {
    (1, 4096, 1024): Tiling(16, 512, 8, 1, dot=False),
    (2, 4096, 1024): Tiling(16, 256, 4, 1, dot=True),
    (4, 4096, 1024): Tiling(16, 256, 4, 1, dot=True),
    (8, 4096, 1024): Tiling(16, 256, 4, 1, dot=True),
    (16, 4096, 1024): Tiling(16, 256, 4, 1, dot=True),
    (1, 1024, 2048): Tiling(4, 1024, 4, 1, dot=False),
    (2, 1024, 2048): Tiling(8, 512, 4, 1, dot=True),
    (4, 1024, 2048): Tiling(8, 512, 4, 1, dot=True),
    (8, 1024, 2048): Tiling(8, 512, 4, 1, dot=True),
    (16, 1024, 2048): Tiling(8, 512, 4, 3, dot=True),
    (1, 6144, 1024): Tiling(4, 1024, 4, 1, dot=False),
    (2, 6144, 1024): Tiling(16, 256, 4, 1, dot=True),
    (4, 6144, 1024): Tiling(16, 256, 4, 1, dot=True),
    (8, 6144, 1024): Tiling(16, 256, 4, 1, dot=True),
    (16, 6144, 1024): Tiling(16, 256, 4, 1, dot=True),
    (1, 1024, 3072): Tiling(4, 1024, 4, 1, dot=False),
    (2, 1024, 3072): Tiling(8, 512, 4, 3, dot=True),
    (4, 1024, 3072): Tiling(8, 512, 4, 1, dot=True),
    (8, 1024, 3072): Tiling(8, 512, 4, 3, dot=True),
    (16, 1024, 3072): Tiling(8, 512, 4, 3, dot=True),
    (1, 6144, 2560): Tiling(4, 1024, 4, 1, dot=False),
    (2, 6144, 2560): Tiling(16, 256, 4, 4, dot=True),
    (4, 6144, 2560): Tiling(16, 256, 4, 4, dot=True),
    (8, 6144, 2560): Tiling(16, 256, 4, 4, dot=True),
    (16, 6144, 2560): Tiling(16, 256, 4, 1, dot=True),
    (1, 2560, 4096): Tiling(4, 1024, 4, 1, dot=False),
    (2, 2560, 4096): Tiling(8, 512, 4, 3, dot=True),
    (4, 2560, 4096): Tiling(8, 512, 4, 3, dot=True),
    (8, 2560, 4096): Tiling(8, 512, 4, 1, dot=True),
    (16, 2560, 4096): Tiling(16, 256, 4, 4, dot=True),
    (1, 19456, 2560): Tiling(4, 1024, 4, 1, dot=False),
    (2, 19456, 2560): Tiling(16, 256, 4, 4, dot=True),
    (4, 19456, 2560): Tiling(16, 256, 4, 4, dot=True),
    (8, 19456, 2560): Tiling(16, 256, 4, 4, dot=True),
    (16, 19456, 2560): Tiling(16, 256, 4, 4, dot=True),
    (1, 2560, 9728): Tiling(4, 1024, 4, 1, dot=False),
    (2, 2560, 9728): Tiling(8, 512, 4, 3, dot=True),
    (4, 2560, 9728): Tiling(8, 512, 4, 3, dot=True),
    (8, 2560, 9728): Tiling(8, 512, 4, 3, dot=True),
    (16, 2560, 9728): Tiling(16, 256, 4, 4, dot=True),
}
# Largest M for which a whole decoder layer is faster on these kernels, keyed by the layer's
# qkv projection (N, K) as the model asks; measured on the H200 for Qwen3-0.6B and 4B.
SMALL_M_CUTOFFS: dict[tuple[int, int], int] = {
    (4096, 1024): 2,  # Qwen3-0.6B
    (6144, 2560): 1,  # Qwen3-4B
}
SMALL_M_CUTOFF = 1


def m_bucket(m: int) -> int:
    return 1 if m <= 1 else triton.next_power_of_2(m)


def default_tiling(m: int, n: int, k: int) -> Tiling:
    """TUNED's tiling for the shape, else a guess: >= ~128 programs (an H200 has 132 SMs),
    each with 16-32 KB of W in flight."""
    tuned = TUNED.get((m_bucket(m), n, k))
    if tuned is not None:
        return tuned
    if m <= 1:
        return Tiling(8 if n >= 8 * 128 else 4, 1024, num_warps=4, dot=False)
    if n >= 16 * 192:
        return Tiling(16, 256, num_warps=4, num_stages=4)
    return Tiling(8, 512, num_warps=4, num_stages=3)


def use_small_m(m: int, n: int, k: int) -> bool:
    """Whether these kernels beat cuBLAS for an [m, k] x [n, k]^T product (with its fused
    prologue, where the model uses one): decode steps with small batches. Shapes only, so
    the answer is fixed for each captured batch size."""
    cutoff = SMALL_M_CUTOFFS.get((n, k), SMALL_M_CUTOFF)
    return 1 <= m <= min(cutoff, MAX_M) and n * k < 2**31


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    rows = t.reshape(-1, width)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _output(out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if out.shape != shape or out.dtype != like.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be a {like.dtype} tensor of shape {shape} "
                         "with contiguous rows")
    return out


def _launch(prologue: int, x: torch.Tensor, weight: torch.Tensor, k: int, y: torch.Tensor,
            bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
            res_out: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
            eps: float = 0.0, tiling: Tiling | None = None, launch_pdl: bool = False) -> None:
    """x: [M, K] ([M, 2K] for SILU_MUL) with contiguous rows; y: [M, N]. `launch_pdl`: a
    programmatic dependent launch (only where `pdl.supported`)."""
    m, n = x.shape[0], weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit an operand of width {k}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype} but x is {x.dtype}")
    if m > MAX_M:
        raise ValueError(f"{m} rows: the small-M kernels take at most {MAX_M} (see use_small_m)")
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    if n * weight.stride(0) >= 2**31:
        raise ValueError("weight too large for 32-bit offsets")
    if m == 0 or n == 0 or k == 0:
        if m and n:
            y.copy_(bias.expand_as(y) if bias is not None else torch.zeros_like(y))
        return
    tiling = tiling or default_tiling(m, n, k)
    use_dot = tiling.dot or m > 1
    block_m = triton.next_power_of_2(m) if use_dot else 1
    block_k = min(tiling.block_k, max(16, triton.next_power_of_2(k)))
    if use_dot and x.dtype == torch.float32:  # an fp32 ('ieee') dot is FMAs: keep it small
        block_k = min(block_k, 64)
    stages = tiling.num_stages if use_dot else 1
    residual = residual if residual is not None else x
    bias = bias.contiguous() if bias is not None else None
    norm_weight = norm_weight.contiguous() if norm_weight is not None else None
    _small_m_kernel[(triton.cdiv(n, tiling.block_n),)](
        x, residual, norm_weight if norm_weight is not None else x, weight,
        bias if bias is not None else x, y, res_out if res_out is not None else y,
        m, n, k, eps, x.stride(0), residual.stride(0), weight.stride(0), y.stride(0),
        res_out.stride(0) if res_out is not None else 0,
        PROLOGUE=prologue, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=tiling.block_n, BLOCK_K=block_k, USE_DOT=use_dot,
        EVEN_N=n % tiling.block_n == 0, EVEN_K=k % block_k == 0,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", REG_PREFETCH=stages == 1,
        NORM_BLOCK=min(triton.next_power_of_2(k),
                       max(block_k, 2048 * tiling.num_warps // block_m)),
        USE_GDC=launch_pdl, num_warps=tiling.num_warps, num_stages=stages,
        launch_pdl=launch_pdl,
    )


def linear_small_m(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   *, out: torch.Tensor | None = None, tiling: Tiling | None = None,
                   launch_pdl: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [..., K] with at most 16 rows; out: [..., N]."""
    k, n = x.shape[-1], weight.shape[0]
    y = _output(out, (*x.shape[:-1], n), x)
    _launch(PLAIN, _rows(x, k), weight, k, y.view(-1, n), bias=bias, tiling=tiling,
            launch_pdl=launch_pdl)
    return y


def rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, residual: torch.Tensor | None = None, *,
                    out: torch.Tensor | None = None, residual_out: torch.Tensor | None = None,
                    tiling: Tiling | None = None,
                    launch_pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) * norm_weight @ W.T, x + residual) for x [..., K]; without a
    residual, (rms_norm(x) * norm_weight @ W.T, x)."""
    k, n = x.shape[-1], weight.shape[0]
    rows = _rows(x, k)
    y = _output(out, (*x.shape[:-1], n), x)
    if residual is None:
        _launch(RMS_NORM, rows, weight, k, y.view(-1, n), norm_weight=norm_weight, eps=eps,
                tiling=tiling, launch_pdl=launch_pdl)
        return y, x
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    summed = _output(residual_out, tuple(x.shape), x)
    _launch(ADD_RMS_NORM, rows, weight, k, y.view(-1, n), residual=_rows(residual, k),
            res_out=summed.view(-1, k), norm_weight=norm_weight, eps=eps, tiling=tiling,
            launch_pdl=launch_pdl)
    return y, summed


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor, *,
                    out: torch.Tensor | None = None, tiling: Tiling | None = None,
                    launch_pdl: bool = False) -> torch.Tensor:
    """(silu(gate) * up) @ W.T for gate_up = [gate | up] of shape [..., 2K]."""
    k, n = gate_up.shape[-1] // 2, weight.shape[0]
    y = _output(out, (*gate_up.shape[:-1], n), gate_up)
    _launch(SILU_MUL, _rows(gate_up, 2 * k), weight, k, y.view(-1, n), tiling=tiling,
            launch_pdl=launch_pdl)
    return y


def linear_reference(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 (float64 on the CPU) product of the upcast inputs."""
    wide = torch.float64 if x.device.type == "cpu" else torch.float32
    y = x.to(wide) @ weight.to(wide).T
    return y + bias.to(wide) if bias is not None else y


def rms_norm_linear_reference(x, norm_weight, eps, weight, residual=None):
    """The unfused path: torch's add, the fused rms_norm's rounding, a wide product."""
    h = x + residual if residual is not None else x
    h32 = h.float()
    normed = (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)
              * norm_weight.float()).to(x.dtype)
    return linear_reference(normed, weight), h


def silu_mul_linear_reference(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.float().chunk(2, dim=-1)
    act = (gate * torch.sigmoid(gate) * up).to(gate_up.dtype)
    return linear_reference(act, weight)
