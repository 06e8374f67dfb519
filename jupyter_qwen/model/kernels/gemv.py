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
the host, so launches are CUDA-graph safe.

Two inner products (`Tiling.dot`):
- dot: acc[BLOCK_N, BLOCK_M] += W_tile @ a_tile.T on the tensor cores (mma.sync; Triton
  pads BLOCK_N and BLOCK_M up to the instruction shape); W tiles arrive by cp.async into
  shared memory, `num_stages` deep;
- fma (M == 1 only): acc[BLOCK_N, BLOCK_K] += W_tile * a (fp32 FMAs on 16-byte loads
  straight into registers), reduced over K once at the end; the next W tile is loaded
  before the current one is used, so two tiles are in flight per program.
With the norm prologue, every program first recomputes the sum of squares of each row of
h (x is tiny), then normalises each K tile of the operand as it goes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

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
def _load_w(w_base, ks, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(w_base + ks[None, :])
    return tl.load(w_base + ks[None, :], mask=(ks < K)[None, :], other=0.0)


@triton.jit
def _small_m_kernel(x_ptr, res_ptr, norm_w_ptr, w_ptr, bias_ptr, y_ptr, res_out_ptr,
                    M, N, K, eps, x_stride, res_stride, w_stride, y_stride, res_out_stride,
                    PROLOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
                    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if EVEN_N:
        w_rows = ns
    else:  # the tail program re-reads row N - 1 instead of masking its loads
        w_rows = tl.minimum(ns, N - 1)
    w_base = w_ptr + w_rows[:, None] * w_stride
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_at = rows[:, None] * x_stride
    res_at = rows[:, None] * res_stride

    if not USE_DOT:  # issue the first W tile before the norm pass below
        w_next = _load_w(w_base, tl.arange(0, BLOCK_K), K, EVEN_K)

    inv_rms = tl.zeros([BLOCK_M], tl.float32)
    if PROLOGUE == 1 or PROLOGUE == 2:
        squares = tl.zeros([BLOCK_M], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            mask = row_ok[:, None] & (ks < K)[None, :]
            h = _load_h(x_ptr, res_ptr, x_at, res_at, ks[None, :], mask, PROLOGUE)
            if PROLOGUE == 2:
                tl.store(res_out_ptr + rows[:, None] * res_out_stride + ks[None, :], h,
                         mask=mask & (pid == 0))
            h = h.to(tl.float32)
            squares += tl.sum(h * h, 1)
        inv_rms = tl.rsqrt(squares / K + eps)

    # The operand tile for step k0 + BLOCK_K loads while step k0 computes (x is read from L2,
    # whose latency would otherwise stall every step); W tiles are pipelined by Triton
    # (cp.async, num_stages deep) on the dot path and loaded one step ahead by hand on the
    # fma path.
    ks = tl.arange(0, BLOCK_K)
    a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ks[None, :],
                      row_ok[:, None] & (ks < K)[None, :], inv_rms[:, None], K, PROLOGUE)
    if USE_DOT:
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    else:
        acc = tl.zeros([BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = a_next
        ks = k0 + tl.arange(0, BLOCK_K)
        ahead = ks + BLOCK_K
        a_next = _operand(x_ptr, res_ptr, norm_w_ptr, x_at, res_at, ahead[None, :],
                          row_ok[:, None] & (ahead < K)[None, :], inv_rms[:, None], K,
                          PROLOGUE)
        if USE_DOT:
            w = _load_w(w_base, ks, K, EVEN_K)
            acc = tl.dot(w, tl.trans(a), acc, input_precision=PRECISION)
        else:  # BLOCK_M == 1
            w = w_next
            w_next = _load_w(w_base, ahead, K, False)
            acc += tl.sum(w.to(tl.float32) * a.to(tl.float32), 1)
    if not USE_DOT:
        acc = acc[:, None]

    if HAS_BIAS:
        acc += tl.load(bias_ptr + w_rows).to(tl.float32)[:, None]
    out_mask = (ns < N)[:, None] & row_ok[None, :]
    tl.store(y_ptr + rows[None, :] * y_stride + ns[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=out_mask)


# Tilings measured on the H200 (benchmarks/gemv.py prints this table): key (M bucket, N, K).
TUNED: dict[tuple[int, int, int], Tiling] = {}


def m_bucket(m: int) -> int:
    return 1 if m <= 1 else triton.next_power_of_2(m)


def default_tiling(m: int, n: int, k: int) -> Tiling:
    """The tiling used when none is given: TUNED if it holds the shape, else a heuristic
    that aims at >= ~128 programs (one per SM of an H200) with 16-32 KB of W in flight each."""
    tuned = TUNED.get((m_bucket(m), n, k))
    if tuned is not None:
        return tuned
    block_k = min(1024, max(16, triton.next_power_of_2(k)))
    if m <= 1:
        block_n = 8 if n >= 8 * 128 else 4
        return Tiling(block_n, block_k, num_warps=4 if block_n * block_k <= 8192 else 8,
                      dot=False)
    block_n = 16 if n >= 16 * 192 else 8
    return Tiling(block_n, min(block_k, 256), num_warps=4, num_stages=4, dot=True)


def use_small_m(m: int, n: int, k: int) -> bool:
    """Whether the kernels here beat cuBLAS for an [m, k] x [n, k]^T product (decode steps
    with small batches); set from benchmarks/gemv.py on the H200."""
    return 1 <= m <= SMALL_M_CUTOFF and k <= 16384


SMALL_M_CUTOFF = 8


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    rows = t.reshape(-1, width)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(prologue: int, x: torch.Tensor, weight: torch.Tensor, k: int,
            bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
            norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            tiling: Tiling | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x: [M, K] (or [M, 2K] for SILU_MUL) with contiguous rows. Returns (y, new_residual)."""
    m = x.shape[0]
    n = weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit an operand of width {k}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype} but x is {x.dtype}")
    if m > MAX_M:
        raise ValueError(f"{m} rows: the small-M kernels take at most {MAX_M} (see use_small_m)")
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(x) if prologue == ADD_RMS_NORM else None
    if m == 0 or n == 0:
        return y, res_out
    if k == 0:
        y.zero_()
        if bias is not None:
            y += bias
        return y, res_out
    if n * weight.stride(0) >= 2**31:
        raise ValueError("weight too large for 32-bit offsets")
    tiling = tiling or default_tiling(m, n, k)
    use_dot = tiling.dot or m > 1
    block_m = max(1, triton.next_power_of_2(m)) if use_dot else 1
    block_k = min(tiling.block_k, max(16, triton.next_power_of_2(k)))
    residual = residual if residual is not None else x
    _small_m_kernel[(triton.cdiv(n, tiling.block_n),)](
        x, residual, norm_weight if norm_weight is not None else x, weight,
        bias if bias is not None else x, y, res_out if res_out is not None else y,
        m, n, k, eps, x.stride(0), residual.stride(0), weight.stride(0), y.stride(0),
        res_out.stride(0) if res_out is not None else 0,
        PROLOGUE=prologue, HAS_BIAS=bias is not None, BLOCK_M=block_m,
        BLOCK_N=tiling.block_n, BLOCK_K=block_k, USE_DOT=use_dot,
        EVEN_N=n % tiling.block_n == 0, EVEN_K=k % block_k == 0,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=tiling.num_warps, num_stages=tiling.num_stages if use_dot else 1,
    )
    return y, res_out


def linear_small_m(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   *, tiling: Tiling | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [..., K] with at most 16 rows."""
    k = x.shape[-1]
    y, _ = _launch(PLAIN, _rows(x, k), weight, k, bias=bias, tiling=tiling)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, residual: torch.Tensor | None = None, *,
                    tiling: Tiling | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) @ W.T, x + residual); without a residual, (rms_norm(x) @ W.T, x)."""
    k = x.shape[-1]
    rows = _rows(x, k)
    res_rows = _rows(residual, k) if residual is not None else None
    if res_rows is not None and res_rows.shape != rows.shape:
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    y, res_out = _launch(ADD_RMS_NORM if residual is not None else RMS_NORM, rows, weight, k,
                         residual=res_rows, norm_weight=norm_weight, eps=eps, tiling=tiling)
    y = y.reshape(*x.shape[:-1], weight.shape[0])
    return y, (res_out.reshape(x.shape) if res_out is not None else x)


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor, *,
                    tiling: Tiling | None = None) -> torch.Tensor:
    """(silu(gate) * up) @ W.T for gate_up = [gate | up], [..., 2K]."""
    k = gate_up.shape[-1] // 2
    y, _ = _launch(SILU_MUL, _rows(gate_up, 2 * k), weight, k, tiling=tiling)
    return y.reshape(*gate_up.shape[:-1], weight.shape[0])


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
