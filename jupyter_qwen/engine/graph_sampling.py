"""Sampled decode steps drawn inside CUDA graphs, beside the captured forward pass.

The requests users send most (a checkpoint's sampling defaults: temperature, top-k, top-p,
maybe min-p, a seed, repetition / presence / frequency penalties) need no per-request change to
the logits beyond the penalties, so their draw is the same few kernels every step: penalties
from the device-side token counts (`PenaltyState`, reserved at start-up so its buffers never
move; on a GPU one kernel, `penalty_kernel`, reads them in place), then a window draw
(`sampler.window_draw`). This module captures that draw once per padded batch size, window
width and with or without penalties, reading per-row parameters from static buffers filled by
one copy each step, and reads back the tokens with the rows it could not settle; those few
rows are redone exactly by the full sort, as `sample` does.

Rows with logit adjustments (logit_bias, allowed tokens, min_tokens, the token bitmask of
structured output) draw here too when the caller passes them to `draw`: they are applied in
place on the forward graph's logits buffer first (the next replay overwrites it), which is
what `sample` does to its copy; a step of greedy rows only then takes the argmax of the
adjusted rows.

The tokens equal `sample`'s for the same rows and seeds: a settled window draw does not depend
on the window's width. Steps with log probabilities, full-vocabulary rows or a top-k above the
widest window use `sample`, and so do adjusted rows when `draw` is not given the adjustments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Sequence as Rows
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from jupyter_qwen.engine.penalty_state import PenaltyState
from jupyter_qwen.engine.sampler import (
    TIE_MARGIN,
    TOP_K_WINDOW,
    TOP_P_WINDOW,
    PenaltyBatch,
    WindowRows,
    penalise_rows,
    sorted_tokens,
    top_window,
    window_draw,
)
from jupyter_qwen.engine.sampling_noise import seeded_row_keys_host
from jupyter_qwen.engine.sequence import Sequence
from jupyter_qwen.sampling_params import SamplingParams

if TYPE_CHECKING:
    from jupyter_qwen.engine.logit_adjustments import LogitAdjustments
    from jupyter_qwen.engine.topk_kernel import ThresholdTiling


@dataclass(frozen=True, slots=True)
class DrawShape:
    """One captured window draw: its width, whether it normalises top-p-only rows over the
    whole vocabulary, and whether it applies penalties first."""

    width: int
    full_normaliser: bool
    penalties: bool = False

    def holds(self, top_k: int, top_p_only: bool) -> bool:
        return top_k + TIE_MARGIN <= self.width and (self.full_normaliser or not top_p_only)


WINDOWS = ((TOP_K_WINDOW, False), (TOP_P_WINDOW, True))
DRAW_SHAPES = tuple(DrawShape(width, full, penalties) for penalties in (False, True)
                    for width, full in WINDOWS)
# per-row parameters, as rows of the static buffers
TEMPERATURE, TOP_P, MIN_P, REPETITION, PRESENCE, FREQUENCY = range(6)
TOP_K, GREEDY, KEY_LOW, KEY_HIGH, SLOT = range(5)  # a row's noise key, made on the host
PADDING_FLOATS = (1.0, 1.0, 0.0, 1.0, 0.0, 0.0)  # a greedy row with no filter, no penalty
PADDING_INTS = (0, 1, 0, 0, -1)
ARGMAX = DrawShape(0, False)  # greedy rows without penalties: the argmax of adjusted logits


def draw_shape(params: Rows[SamplingParams], penalties: bool,
               adjusted: bool = False) -> DrawShape | None:
    """The narrowest captured draw that samples every row as `sample` would; None when a
    row needs `sample` itself. `penalties`: whether penalised draws were captured;
    `adjusted`: whether the rows' logit adjustments are applied to the logits before the
    draw (without, a row that has any needs `sample`)."""
    top_k, top_p_only, penalised, sampled, adjusts = 0, False, False, False, False
    for param in params:
        if param.logprobs is not None or (param.adjusts_logits and not adjusted):
            return None
        adjusts |= param.adjusts_logits
        penalised |= param.uses_penalties
        if param.greedy:
            continue
        if param.top_k == 0 and param.top_p >= 1.0:
            return None  # a full-vocabulary draw
        sampled = True
        top_k, top_p_only = max(top_k, param.top_k), top_p_only or param.top_k == 0
    if penalised and not penalties:
        return None
    if not (sampled or penalised):  # the forward graph's argmax, unless adjusted
        return ARGMAX if adjusts else None
    return next((shape for shape in DRAW_SHAPES
                 if shape.penalties == penalised and shape.holds(top_k, top_p_only)), None)


DRAW_KERNELS = ("split", "fused", "threshold")
THRESHOLD_MAX_ROWS = 8  # larger batches take their window from torch.topk


class GraphSampler:
    """Window draws over the forward graphs' logits buffers, one per batch size and shape.

    `logits` maps each padded batch size to the static logits its forward graph writes, and
    `greedy_tokens` (optional) to the argmax the forward graph took of them. `penalty_state`,
    when given, has reserved rows for every sequence that can run at once; penalised steps
    then draw here too. Captured on a GPU (`capture`); on a CPU the same draw runs eagerly,
    which is how tests compare it with `sample`.

    `draw_kernels` picks how a draw runs: "split" is `window_draw` and torch steps around it
    (about a dozen launches at batch 1); "fused" is one kernel after the window
    (`window_kernel.graph_window_draw`: greedy rows, the result, the penalty counts);
    "threshold" is that kernel over `topk_kernel`'s threshold candidate lists for batches up
    to `THRESHOLD_MAX_ROWS` and the split draw above (where it was measured: at batch 1 the
    threshold draw takes 22 us against the split draw's 76, at 256 rows the split draw kept
    sampled steps within 1-5 % of greedy). The default: "threshold" on a GPU, "split"
    elsewhere; the kernels run on a CPU only under Triton's interpreter (tests).
    """

    def __init__(self, logits: dict[int, torch.Tensor], device: torch.device,
                 penalty_state: PenaltyState | None = None,
                 greedy_tokens: dict[int, torch.Tensor] | None = None,
                 draw_kernels: str | None = None,
                 threshold_tilings: dict[int, ThresholdTiling] | None = None):
        draw_kernels = draw_kernels or ("threshold" if device.type == "cuda" else "split")
        if draw_kernels not in DRAW_KERNELS:
            raise ValueError(f"draw_kernels must be one of {DRAW_KERNELS}, got {draw_kernels!r}")
        self.draw_kernels = draw_kernels
        self.threshold_tilings = threshold_tilings or {}
        self.greedy_tokens = greedy_tokens or {}
        self.logits = logits
        self.device = device
        self.penalty_state = penalty_state
        self.penalty_counts = None if penalty_state is None else penalty_state.output_counts
        size = max(logits)
        pinned = device.type == "cuda"
        self.floats = torch.zeros(len(PADDING_FLOATS), size, dtype=torch.float32, device=device)
        self.ints = torch.zeros(len(PADDING_INTS), size, dtype=torch.int64, device=device)
        self.host_floats = torch.zeros_like(self.floats, device="cpu", pin_memory=pinned)
        self.host_ints = torch.zeros_like(self.ints, device="cpu", pin_memory=pinned)
        self.graphs: dict[tuple[int, DrawShape], torch.cuda.CUDAGraph] = {}
        self.results: dict[tuple[int, DrawShape], torch.Tensor] = {}
        self.rng = np.random.default_rng()

    @property
    def shapes(self) -> tuple[DrawShape, ...]:
        return tuple(shape for shape in DRAW_SHAPES
                     if not shape.penalties or self.penalty_counts is not None)

    def _rows(self, size: int) -> WindowRows:
        temperatures, top_p, min_p = self.floats[TEMPERATURE:MIN_P + 1, :size]
        keys = self.ints[KEY_LOW:KEY_HIGH + 1, :size].T
        return WindowRows(temperatures, self.ints[TOP_K, :size], top_p, min_p, keys)

    def _penalised(self, logits: torch.Tensor, size: int,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
        """The logits after each row's penalties (rows without any are unchanged), as a new
        tensor; with `rows`, `logits` holds only those rows of the batch, penalised in place."""
        params, slots = self.floats[REPETITION:FREQUENCY + 1, :size], self.ints[SLOT, :size]
        if rows is not None:
            params, slots = params.index_select(1, rows), slots.index_select(0, rows)
        return penalise_rows(logits, slots, PenaltyBatch(*params, None, None),
                             self.penalty_state, out=None if rows is None else logits)

    def _draw(self, size: int, shape: DrawShape) -> torch.Tensor:
        """[2, size]: the tokens, and whether each row is unsettled. A penalised draw also
        counts its tokens in the penalty state (rows without penalties add nothing)."""
        logits = self.logits[size]
        if shape.penalties:
            logits = self._penalised(logits, size)
        if self.draw_kernels == "fused" or (self.draw_kernels == "threshold"
                                            and size <= THRESHOLD_MAX_ROWS):
            return self._draw_in_one_kernel(logits, size, shape)
        rows = self._rows(size)
        width = min(shape.width, logits.shape[-1])
        tokens, unsettled = window_draw(logits, rows, width, shape.full_normaliser)
        greedy = self.ints[GREEDY, :size].bool()
        tokens = torch.where(greedy, logits.argmax(dim=-1), tokens)
        if shape.penalties:
            self._add_counts(self.ints[SLOT, :size], tokens, 1)
        return torch.stack([tokens, (unsettled & ~greedy).long()])

    def _draw_in_one_kernel(self, logits: torch.Tensor, size: int,
                            shape: DrawShape) -> torch.Tensor:
        """`_draw` after the penalties as one kernel past the window (see the class)."""
        from jupyter_qwen.engine.topk_kernel import threshold_fits
        from jupyter_qwen.engine.window_kernel import GraphDrawRows, graph_window_draw

        greedy = None if shape.penalties else self.greedy_tokens.get(size)
        if greedy is None:  # penalised greedy rows take the argmax of penalised logits
            greedy = logits.argmax(dim=-1)
        rows = GraphDrawRows(*self.floats[TEMPERATURE:MIN_P + 1, :size],
                             *self.ints[TOP_K:KEY_HIGH + 1, :size], self.ints[SLOT, :size])
        counts = self.penalty_state.output_counts if shape.penalties else None
        width = min(shape.width, logits.shape[-1])
        tiling = self.threshold_tilings.get(width)
        window = None
        if not (self.draw_kernels == "threshold" and size <= THRESHOLD_MAX_ROWS
                and threshold_fits(logits.shape[-1], width, tiling)):
            window = top_window(logits, width)
        return graph_window_draw(logits, rows, width, shape.full_normaliser, greedy, counts,
                                 window, tiling)

    def _add_counts(self, slots: torch.Tensor, tokens: torch.Tensor, step: int) -> None:
        """Count each row's token `step` times in its penalty row (slot -1: no row)."""
        added = (slots >= 0).int() * step
        self.penalty_state.output_counts.index_put_((slots.clamp(min=0), tokens), added,
                                                    accumulate=True)

    @torch.inference_mode()
    def capture(self) -> None:
        self._fill_padding(0, max(self.logits))
        self._copy(max(self.logits))
        pool = None
        for size in sorted(self.logits, reverse=True):
            for shape in self.shapes:
                self._draw(size, shape)  # warm-up outside the graph (no slot: counts nothing)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.results[size, shape] = self._draw(size, shape)
                pool = graph.pool()
                self.graphs[size, shape] = graph
        torch.cuda.synchronize()

    def draw(self, seqs: list[Sequence], size: int,
             adjustments: Callable[[], LogitAdjustments | None] | None = None,
             ) -> list[int] | None:
        """The tokens of these sequences from the logits of batch size `size` (already
        computed by its forward graph); None when a row needs `sample`, and then nothing was
        changed. Counts the draw on seeded sequences and the tokens of penalised ones, as
        `sample` does. `adjustments` builds the step's logit adjustments (called only when
        the draw happens here), applied in place on the logits buffer before the draw."""
        shape = draw_shape([seq.params for seq in seqs], self._penalties_in_place(),
                           adjustments is not None)
        if shape is None:
            return None
        penalised = [seq for seq in seqs if seq.params.uses_penalties]
        slots = self.penalty_state.slot_numbers(penalised) if penalised else []
        if penalised and not self._penalties_in_place():
            return None  # the rows grew past the reservation; `sample` reads them anew
        adjusted = adjustments() if adjustments is not None else None
        if adjusted is not None:
            self._adjust(adjusted, seqs, size)
        if shape is ARGMAX:
            return self.logits[size][:len(seqs)].argmax(dim=-1).tolist()
        self._fill(seqs, size, iter(slots))
        if self.graphs:
            self.graphs[size, shape].replay()
            choice = self.results[size, shape]
        else:
            choice = self._draw(size, shape)
        tokens, unsettled = choice[:, :len(seqs)].tolist()
        redo = [row for row, flag in enumerate(unsettled) if flag]
        if redo:
            self._redo(tokens, redo, size, shape)
        if penalised:
            self.penalty_state.mark_recorded(penalised)
        return tokens

    def _adjust(self, adjusted: LogitAdjustments, seqs: list[Sequence], size: int) -> None:
        """Apply the step's adjustments to the logits buffer in place; the forward graph's
        argmax, which the one-kernel draws give greedy rows, is taken again from them."""
        logits = self.logits[size][:len(seqs)]
        adjusted.apply(logits)
        greedy = self.greedy_tokens.get(size)
        if greedy is not None and any(seq.params.greedy for seq in seqs):
            greedy[:len(seqs)] = logits.argmax(dim=-1)

    def _penalties_in_place(self) -> bool:
        """Penalised draws read the buffers captured with them: only while those stay."""
        return (self.penalty_counts is not None
                and self.penalty_state.output_counts is self.penalty_counts)

    def _fill(self, seqs: list[Sequence], size: int, slots: Iterator[int]) -> None:
        """The step's parameters into the static buffers (`slots`: the penalty rows of the
        penalised sequences, in order)."""
        count = len(seqs)
        params = [seq.params for seq in seqs]
        seeded = [param.seed is not None and not param.greedy for param in params]
        keys = self.rng.integers(0, 1 << 32, (count, 2))
        if any(seeded):
            rows = np.flatnonzero(seeded)
            seeds = np.array([params[row].seed for row in rows], dtype=np.uint64)
            draws = np.array([seqs[row].num_draws for row in rows], dtype=np.uint64)
            keys[rows] = seeded_row_keys_host(seeds, draws)
        self.host_floats.numpy()[:, :count] = (
            [1.0 if param.greedy else param.temperature for param in params],
            [param.top_p for param in params], [param.min_p for param in params],
            [param.repetition_penalty for param in params],
            [param.presence_penalty for param in params],
            [param.frequency_penalty for param in params])
        self.host_ints.numpy()[:, :count] = (
            [param.top_k for param in params], [param.greedy for param in params], *keys.T,
            [next(slots) if param.uses_penalties else -1 for param in params])
        for seq, is_seeded in zip(seqs, seeded, strict=True):
            seq.num_draws += is_seeded
        self._fill_padding(count, size)
        self._copy(size)

    def _fill_padding(self, begin: int, end: int) -> None:
        self.host_floats.numpy()[:, begin:end] = np.array(PADDING_FLOATS)[:, None]
        self.host_ints.numpy()[:, begin:end] = np.array(PADDING_INTS)[:, None]

    def _copy(self, size: int) -> None:
        """The host buffers to the device without waiting; the previous step's copies are
        done, since its tokens were read back."""
        self.floats[:, :size].copy_(self.host_floats[:, :size], non_blocking=True)
        self.ints[:, :size].copy_(self.host_ints[:, :size], non_blocking=True)

    def _redo(self, tokens: list[int], rows: list[int], size: int, shape: DrawShape) -> None:
        """The rows the window could not settle, by the full sort (as `sample` does), with
        the same keys (the buffers still hold this step's parameters). A penalised draw
        counted the window's token for them: that count moves to the redone token."""
        index = torch.tensor(rows, dtype=torch.int64, device=self.device)
        logits = self.logits[size].index_select(0, index)
        slots = self.ints[SLOT].index_select(0, index)
        if shape.penalties:
            counted = torch.tensor([tokens[row] for row in rows], device=self.device)
            self._add_counts(slots, counted, -1)
            logits = self._penalised(logits, size, index)
        redone = sorted_tokens(logits, self._rows(size), index)
        if shape.penalties:
            self._add_counts(slots, redone, 1)
        for row, token in zip(rows, redone.tolist(), strict=True):
            tokens[row] = token

    def close(self) -> None:
        self.graphs.clear()
        self.results.clear()
        self.logits = {}
        self.penalty_state = self.penalty_counts = None
