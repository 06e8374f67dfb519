"""Token selection for a batch of sequences, vectorised over the batch.

Order per row: allowed_token_ids, min_tokens and logit_bias (`logit_adjustments`), then
repetition / presence / frequency penalties; greedy rows take the argmax of that. Sampled rows
divide by their temperature, keep the top-k tokens (every token tied with the k-th stays),
then the smallest set of those whose renormalised mass reaches top-p (with every token tied with
the last one kept, so that ties never depend on sort order), then the tokens whose
probability is at least min-p times the largest, and draw from what is left.

No full-vocabulary sort: rows with top-k or top-p work on a candidate window (`torch.topk` of
the largest top-k in the batch plus a margin for ties, or `TOP_P_WINDOW` for top-p alone) and
draw by a Gumbel race over it; a row whose kept set may reach past the window (a tie run
longer than the margin, top-p mass not inside the window, top-k beyond `MAX_WINDOW_TOP_K`)
is redone exactly with the full sort, alone. Rows with neither filter draw by inverse CDF
over the whole vocabulary. The noise is counter-based (`sampling_noise`): a seeded row's
draws depend only on its seed and on how many tokens it has drawn.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from jupyter_qwen.engine.host_copy import host_to_device, long_tensor
from jupyter_qwen.engine.logit_adjustments import (
    LogitAdjustments,
    TokenBitmasks,
    build_logit_adjustments,
)
from jupyter_qwen.engine.penalty_state import PenaltyState
from jupyter_qwen.engine.sampling_noise import (
    MASK32,
    random_row_keys,
    row_uniform,
    seeded_row_keys,
    token_gumbel,
)
from jupyter_qwen.engine.sequence import Sequence, TokenLogprobs

TIE_MARGIN = 32
TOP_P_WINDOW = 256
TOP_K_WINDOW = 64  # top-k up to 32 with its tie margin
KERNEL_WIDTHS = (TOP_K_WINDOW, TOP_P_WINDOW)  # windows the captured draws use; on a GPU
# these run as one kernel (`window_kernel`), a window of another width as torch steps
KERNEL_VARIANTS = ((TOP_K_WINDOW, False), (TOP_P_WINDOW, False), (TOP_P_WINDOW, True))
# (width, whole-vocabulary normaliser) of every one-kernel draw a step can reach
# per window width: on a GPU, batches up to this many rows take their window from
# `topk_kernel` (one row over many programs); larger ones, and every width not named, fill
# the GPU through torch.topk (benchmarks/topk_kernel.py, run 44 on an H100: at width 64 it
# beats torch.topk up to 4 rows, 44 against 59 us at one; at 256 never)
TOPK_KERNEL_MAX_ROWS = {TOP_K_WINDOW: 4}
MAX_WINDOW_TOP_K = 1024


@dataclass(slots=True)
class PenaltyBatch:
    """Each row's penalties, and what it has seen: gathered counts and marks (the torch path),
    or, on a GPU, each row's slot in a `PenaltyState` (-1 for none), read in place."""

    repetition: torch.Tensor
    presence: torch.Tensor
    frequency: torch.Tensor
    output_counts: torch.Tensor | None  # [rows, vocab] float32
    seen_in_context: torch.Tensor | None  # [rows, vocab] bool
    slots: torch.Tensor | None = None
    state: PenaltyState | None = None


@dataclass(slots=True)
class PenaltyRecord:
    """Where to count this step's sampled tokens once they are known."""

    state: PenaltyState
    seqs: list[Sequence]
    rows: torch.Tensor
    slots: torch.Tensor


@dataclass(slots=True)
class SamplingBatch:
    """Per-row parameters on the device, and the host-side plan of which path each row takes.

    `temperatures` is None when every row is greedy. `top_k` is 0 where off. Row kinds:
    greedy (argmax), window (top-k or top-p), full (neither), and `forced_fallback` rows
    (window rows whose top-k exceeds `MAX_WINDOW_TOP_K`).
    """

    temperatures: torch.Tensor | None
    top_p: torch.Tensor | None
    top_k: torch.Tensor | None
    min_p: torch.Tensor | None
    penalties: PenaltyBatch | None
    greedy_rows: torch.Tensor | None
    num_logprobs: int | None
    row_keys: torch.Tensor | None = None
    window_rows: torch.Tensor | None = None
    full_rows: torch.Tensor | None = None
    window_width: int = 0
    uses_full_normaliser: bool = False
    forced_fallback: list[int] | None = None
    adjustments: LogitAdjustments | None = None
    penalty_record: PenaltyRecord | None = None

    @property
    def all_greedy(self) -> bool:
        return self.temperatures is None


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def build_sampling_batch(seqs: list[Sequence], vocab_size: int, device: torch.device,
                         penalty_state: PenaltyState | None = None,
                         eos_token_ids: Collection[int] = (),
                         token_bitmasks: TokenBitmasks | None = None) -> SamplingBatch:
    """The batch for one draw of each sequence; counts the draw on seeded sequences.

    Without `penalty_state` the penalty counts are built from the token lists (a reference
    for tests); with it they come from the state's device buffers. Constrained rows fill
    `token_bitmasks` (or a buffer made for this batch).
    """
    params = [seq.params for seq in seqs]
    requested = [p.logprobs for p in params if p.logprobs is not None]
    batch = SamplingBatch(None, None, None, None, None, None,
                          max(requested) if requested else None)
    batch.adjustments = build_logit_adjustments(seqs, eos_token_ids, device, vocab_size,
                                                token_bitmasks)
    if any(p.uses_penalties for p in params):
        _add_penalties(batch, seqs, vocab_size, device, penalty_state)
    if not all(p.greedy for p in params):
        _add_sampling_rows(batch, seqs, vocab_size, device)
    return batch


def _add_sampling_rows(batch: SamplingBatch, seqs: list[Sequence], vocab_size: int,
                       device: torch.device) -> None:
    params = [seq.params for seq in seqs]
    window = [not p.greedy and (p.top_k > 0 or p.top_p < 1.0) for p in params]
    full = [not (p.greedy or in_window) for p, in_window in zip(params, window, strict=True)]
    floats = host_to_device(torch.tensor(
        [[1.0 if p.greedy else p.temperature for p in params], [p.top_p for p in params],
         [p.min_p for p in params]], dtype=torch.float32), device)
    seeds = [0 if p.seed is None else p.seed for p in params]
    seeded = [p.seed is not None and not p.greedy for p in params]
    ints = host_to_device(torch.tensor(
        [[p.top_k for p in params], [p.greedy for p in params], window, full, seeded,
         [seed & MASK32 for seed in seeds], [seed >> 32 for seed in seeds],
         [seq.num_draws for seq in seqs]], dtype=torch.int64), device)
    for seq, is_seeded in zip(seqs, seeded, strict=True):
        seq.num_draws += is_seeded
    batch.temperatures, batch.top_p, batch.min_p = floats
    batch.top_k = ints[0]
    batch.greedy_rows, batch.window_rows, full_rows, seeded_rows = ints[1:5].bool()
    batch.full_rows = full_rows if any(full) else None
    keys = random_row_keys(len(seqs), device)
    if any(seeded):
        keys = torch.where(seeded_rows[:, None], seeded_row_keys(ints[5:7].T, ints[7]), keys)
    batch.row_keys = keys
    widths = [p.top_k + TIE_MARGIN if p.top_k > 0 else TOP_P_WINDOW
              for p, in_window in zip(params, window, strict=True)
              if in_window and p.top_k <= MAX_WINDOW_TOP_K]
    widest = max(widths, default=0)  # rounded up to a power of two: the GPU's one-kernel draw
    batch.window_width = min(vocab_size, 1 << (widest - 1).bit_length() if widest else 0)
    batch.uses_full_normaliser = any(w and p.top_k == 0 for p, w in zip(params, window,
                                                                        strict=True))
    batch.forced_fallback = [row for row, (p, w) in enumerate(zip(params, window, strict=True))
                             if w and p.top_k > MAX_WINDOW_TOP_K]


def _add_penalties(batch: SamplingBatch, seqs: list[Sequence], vocab_size: int,
                   device: torch.device, state: PenaltyState | None) -> None:
    as_tensor = lambda values: host_to_device(  # noqa: E731
        torch.tensor(values, dtype=torch.float32), device)
    counts = seen = row_slots = None
    if state is None:
        counts, seen = _counts_from_token_lists(seqs, vocab_size, device)
    else:
        rows = [row for row, seq in enumerate(seqs) if seq.params.uses_penalties]
        penalised = [seqs[row] for row in rows]
        slot_numbers = state.slot_numbers(penalised)
        slots = long_tensor(slot_numbers, device)
        row_index = long_tensor(rows, device)
        if device.type == "cuda":  # the kernel reads the rows in place
            numbers = iter(slot_numbers)
            row_slots = long_tensor([next(numbers) if seq.params.uses_penalties else -1
                                     for seq in seqs], device)
        elif len(rows) == len(seqs):
            counts, seen = state.gather(slots)
        else:
            counts = torch.zeros(len(seqs), vocab_size, dtype=torch.float32, device=device)
            seen = torch.zeros(len(seqs), vocab_size, dtype=torch.bool, device=device)
            counts[row_index], seen[row_index] = state.gather(slots)
        batch.penalty_record = PenaltyRecord(state, penalised, row_index, slots)
    batch.penalties = PenaltyBatch(
        repetition=as_tensor([seq.params.repetition_penalty for seq in seqs]),
        presence=as_tensor([seq.params.presence_penalty for seq in seqs]),
        frequency=as_tensor([seq.params.frequency_penalty for seq in seqs]),
        output_counts=counts, seen_in_context=seen, slots=row_slots,
        state=state if row_slots is not None else None)


def _counts_from_token_lists(seqs: list[Sequence], vocab_size: int,
                             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.zeros(len(seqs), vocab_size, dtype=torch.float32, device=device)
    seen = torch.zeros(len(seqs), vocab_size, dtype=torch.bool, device=device)
    for row, seq in enumerate(seqs):
        outputs = torch.tensor(seq.output_token_ids, dtype=torch.long, device=device)
        counts[row].index_add_(0, outputs, torch.ones_like(outputs, dtype=torch.float32))
        seen[row, torch.tensor(seq.token_ids, dtype=torch.long, device=device)] = True
    return counts, seen


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    raw_logits = logits
    if batch.adjustments is not None:
        logits = batch.adjustments.apply(logits.clone())
    if batch.penalties is not None:
        logits = _penalise(logits, batch.penalties, in_place=logits is not raw_logits)
    token_ids, host_ids = _choose_tokens(logits, batch)
    if batch.penalty_record is not None:
        record = batch.penalty_record
        record.state.record(record.seqs, record.slots, token_ids[record.rows])
    logprobs = _logprobs(raw_logits, token_ids, batch.num_logprobs)
    return SamplerOutput(host_ids, logprobs)


def _penalise(logits: torch.Tensor, penalties: PenaltyBatch, in_place: bool) -> torch.Tensor:
    if penalties.slots is None:
        return apply_penalties(logits if in_place else logits.clone(), penalties)
    return penalise_rows(logits, penalties.slots, penalties, penalties.state,
                         out=logits if in_place else None)


def penalise_rows(logits: torch.Tensor, slots: torch.Tensor, penalties: PenaltyBatch,
                  state: PenaltyState, out: torch.Tensor | None = None) -> torch.Tensor:
    """The logits after the penalties of `penalties` (its counts unused) over the rows
    `slots` of `state` (-1: no row, the logits stay), into `out` (may be `logits`) or a new
    tensor. On a GPU one kernel (`penalty_kernel`) reads the rows in place; on a CPU they are
    gathered for `apply_penalties`."""
    if logits.is_cuda:
        from jupyter_qwen.engine.penalty_kernel import penalise_in_one_kernel

        return penalise_in_one_kernel(logits, slots, penalties.repetition, penalties.presence,
                                      penalties.frequency, state.output_counts,
                                      state.in_prompt, out)
    has_row = (slots >= 0)[:, None]
    counts, seen = state.gather(slots.clamp(min=0))
    gathered = PenaltyBatch(penalties.repetition, penalties.presence, penalties.frequency,
                            counts * has_row, seen & has_row)
    return apply_penalties(logits.clone() if out is None else out.copy_(logits), gathered)


def apply_penalties(logits: torch.Tensor, penalties: PenaltyBatch) -> torch.Tensor:
    """The reference penalties over gathered counts, in place."""
    repetition = penalties.repetition[:, None]
    penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(penalties.seen_in_context, penalised, logits)
    logits -= penalties.presence[:, None] * (penalties.output_counts > 0)
    logits -= penalties.frequency[:, None] * penalties.output_counts
    return logits


def _choose_tokens(logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, list[int]]:
    """The chosen tokens on the device and on the host (one read-back unless a row falls
    back to the full sort)."""
    token_ids = logits.argmax(dim=-1)
    if batch.all_greedy:
        return token_ids, token_ids.tolist()
    fallback = torch.zeros_like(batch.greedy_rows)
    if batch.window_width:
        window_ids, unresolved = _window_tokens(logits, batch)
        token_ids = torch.where(batch.window_rows, window_ids, token_ids)
        fallback = unresolved & batch.window_rows
    if batch.full_rows is not None:
        token_ids = torch.where(batch.full_rows, _full_vocab_tokens(logits, batch), token_ids)
    host = torch.stack([token_ids, fallback.long()]).tolist()
    rows = sorted({*batch.forced_fallback, *(r for r, flag in enumerate(host[1]) if flag)})
    if not rows:
        return token_ids, host[0]
    index = torch.tensor(rows, dtype=torch.int64, device=logits.device)
    redone = sorted_tokens(logits[index], batch, index)
    token_ids = token_ids.index_copy(0, index, redone)
    for row, token in zip(rows, redone.tolist(), strict=True):
        host[0][row] = token
    return token_ids, host[0]


def _window_tokens(logits: torch.Tensor, batch: SamplingBatch,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    return window_draw(logits, WindowRows(batch.temperatures, batch.top_k, batch.top_p,
                                          batch.min_p, batch.row_keys),
                       batch.window_width, batch.uses_full_normaliser)


@dataclass(slots=True)
class WindowRows:
    """The per-row filter parameters and noise keys of a window draw, on the device."""

    temperatures: torch.Tensor
    top_k: torch.Tensor  # 0 where off
    top_p: torch.Tensor
    min_p: torch.Tensor
    row_keys: torch.Tensor


def window_draw(logits: torch.Tensor, rows: WindowRows, width: int, full_normaliser: bool,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel race over the filtered candidate window (the `width` largest logits); also
    which rows it cannot settle. `full_normaliser`: top-p rows without top-k are in the batch
    and need the whole vocabulary's normaliser. The tokens do not depend on `width` for the
    rows it settles, so a draw here equals the full-sort draw. On a GPU, at the widths the
    captured draws use (`KERNEL_WIDTHS`), the steps after `topk` run as one kernel
    (`window_kernel`), and for a few rows `topk` itself is `topk_kernel`."""
    values, candidates = top_window(logits, width)
    if logits.is_cuda and width in KERNEL_WIDTHS:
        from jupyter_qwen.engine.window_kernel import window_draw_in_one_kernel

        full = torch.logsumexp(logits / rows.temperatures[:, None], dim=-1) \
            if full_normaliser else None
        return window_draw_in_one_kernel(values, candidates, rows.temperatures, rows.top_k,
                                         rows.top_p, rows.min_p, rows.row_keys, full,
                                         logits.shape[-1])
    scaled = values / rows.temperatures[:, None]
    uses_top_k = rows.top_k > 0
    kth = scaled.gather(1, (rows.top_k - 1).clamp(0, width - 1)[:, None])
    keep = ~uses_top_k[:, None] | (scaled >= kth)
    unresolved = torch.zeros_like(uses_top_k)
    if width < logits.shape[-1]:
        unresolved = uses_top_k & (scaled[:, -1] >= kth[:, 0])
    log_norm = torch.logsumexp(scaled.masked_fill(~keep, float("-inf")), dim=-1)
    if full_normaliser:
        full = torch.logsumexp(logits / rows.temperatures[:, None], dim=-1)
        log_norm = torch.where(uses_top_k, log_norm, full)
    probs = (scaled - log_norm[:, None]).exp().masked_fill(~keep, 0.0)
    cumulative = probs.cumsum(dim=-1)
    top_p = rows.top_p[:, None]
    floor = _tie_floor(scaled, keep & ((cumulative - probs < top_p) | (top_p >= 1.0)))
    keep &= scaled >= floor
    if width < logits.shape[-1]:
        unresolved |= ~uses_top_k & (cumulative[:, -1] < rows.top_p) & (rows.top_p < 1.0)
        unresolved |= scaled[:, -1] >= floor[:, 0]
    keep &= probs >= probs[:, :1] * rows.min_p[:, None]
    scores = (scaled + token_gumbel(rows.row_keys, candidates)).masked_fill(~keep,
                                                                            float("-inf"))
    return candidates.gather(1, scores.argmax(dim=-1, keepdim=True))[:, 0], unresolved


def top_window(logits: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `width` largest logits of each row and their token ids, descending: Triton's
    many-program top-W for few float32 rows on a GPU at the `KERNEL_WIDTHS`, else
    `torch.topk` (the same values; tied tokens may come in another order)."""
    if (logits.is_cuda and width in KERNEL_WIDTHS and logits.dtype == torch.float32
            and logits.shape[0] <= TOPK_KERNEL_MAX_ROWS.get(width, 0)):
        from jupyter_qwen.engine.topk_kernel import many_program_topk

        return many_program_topk(logits, width)
    return logits.topk(width, dim=-1)


def _full_vocab_tokens(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Inverse-CDF draw over the whole vocabulary (min-p applied), one uniform per row."""
    probs = (logits / batch.temperatures[:, None]).softmax(dim=-1)
    probs = apply_min_p(probs, batch.min_p)
    cdf = probs.to(torch.float64).cumsum(dim=-1)
    target = row_uniform(batch.row_keys) * cdf[:, -1]
    chosen = torch.searchsorted(cdf, target[:, None], right=True)[:, 0]
    return chosen.clamp(max=logits.shape[-1] - 1)


def sorted_tokens(logits: torch.Tensor, batch: SamplingBatch | WindowRows,
                   rows: torch.Tensor) -> torch.Tensor:
    """The exact path for a few rows: full-sort filters, then the same Gumbel race."""
    scaled = logits / batch.temperatures[rows, None]
    top_k = batch.top_k[rows]
    filtered = apply_top_k(scaled, torch.where(top_k > 0, top_k, logits.shape[-1]))
    filtered = apply_top_p(filtered, batch.top_p[rows])
    probs = apply_min_p(filtered.softmax(dim=-1), batch.min_p[rows])
    token_ids = torch.arange(logits.shape[-1], device=logits.device).expand_as(logits)
    scores = scaled + token_gumbel(batch.row_keys[rows], token_ids)
    return scores.masked_fill(probs <= 0, float("-inf")).argmax(dim=-1)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Reference top-k by full sort: keeps every token at least the k-th largest."""
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(1, (top_k - 1).clamp(max=logits.shape[1] - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Reference top-p by full sort: the smallest set of largest tokens reaching top_p, and
    every token tied with the last of them."""
    sorted_logits = logits.sort(dim=-1, descending=True).values
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    floor = _tie_floor(sorted_logits, mass_before < top_p[:, None])
    return logits.masked_fill(logits < floor, float("-inf"))


def _tie_floor(values: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The smallest kept value of each row, shape (rows, 1). Keeping every value at least this
    large makes a cut by position independent of how ties were ordered."""
    return values.masked_fill(~kept, float("inf")).amin(dim=-1, keepdim=True)


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    threshold = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
    return probs.masked_fill(probs < threshold, 0.0)


def _logprobs(logits: torch.Tensor, token_ids: torch.Tensor,
              num_top: int | None) -> list[TokenLogprobs | None]:
    if num_top is None:
        return [None] * len(token_ids)
    logprobs = logits.log_softmax(dim=-1)
    chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1).tolist()
    top = logprobs.topk(max(num_top, 1), dim=-1) if num_top else None
    top_ids = top.indices.tolist() if top else [[]] * len(chosen)
    top_values = top.values.tolist() if top else [[]] * len(chosen)
    return [TokenLogprobs(token, value, list(zip(ids, values, strict=True)))
            for token, value, ids, values in zip(token_ids.tolist(), chosen, top_ids, top_values,
                                                 strict=True)]
