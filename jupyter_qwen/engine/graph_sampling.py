"""Sampled decode steps drawn inside CUDA graphs, beside the captured forward pass.

The requests users send most (a checkpoint's sampling defaults: temperature, top-k, top-p,
maybe min-p and a seed) need no per-request logits changes, so their draw is the same few
kernels every step: a window draw (`sampler.window_draw`) over the step's logits. This module
captures that draw once per padded batch size and window width, reading per-row parameters
from static buffers filled by one copy each step, and reads back the tokens with the rows it
could not settle; those few rows are redone exactly by the full sort, as `sample` does.

The tokens equal `sample`'s for the same rows and seeds: a settled window draw does not depend
on the window's width. Steps with penalties, logit adjustments, log probabilities, structured
output, full-vocabulary rows or a top-k above the widest window use `sample` instead.
"""

from __future__ import annotations

from collections.abc import Sequence as Rows
from dataclasses import dataclass

import numpy as np
import torch

from jupyter_qwen.engine.sampler import (
    MASK32,
    TIE_MARGIN,
    TOP_P_WINDOW,
    WindowRows,
    sorted_tokens,
    window_draw,
)
from jupyter_qwen.engine.sampling_noise import seeded_row_keys
from jupyter_qwen.engine.sequence import Sequence
from jupyter_qwen.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class DrawShape:
    """One captured window draw: its width, and whether it normalises top-p-only rows over
    the whole vocabulary."""

    width: int
    full_normaliser: bool

    def holds(self, top_k: int, top_p_only: bool) -> bool:
        return top_k + TIE_MARGIN <= self.width and (self.full_normaliser or not top_p_only)


DRAW_SHAPES = (DrawShape(64, False), DrawShape(TOP_P_WINDOW, True))
FLOAT_ROWS = 3  # temperature, top_p, min_p
INT_ROWS = 8  # top_k, greedy, seeded, seed low and high halves, draws, a random key (2)


def draw_shape(params: Rows[SamplingParams]) -> DrawShape | None:
    """The narrowest captured draw that samples every row as `sample` would; None when a
    row needs `sample` itself."""
    top_k, top_p_only = 0, False
    for param in params:
        if param.greedy:
            if not param.plain_greedy:
                return None
            continue
        if param.uses_penalties or param.adjusts_logits or param.logprobs is not None:
            return None
        if param.top_k == 0 and param.top_p >= 1.0:
            return None  # a full-vocabulary draw
        top_k, top_p_only = max(top_k, param.top_k), top_p_only or param.top_k == 0
    if top_k == 0 and not top_p_only:
        return None  # all greedy: the forward graph's argmax is the answer
    return next((shape for shape in DRAW_SHAPES if shape.holds(top_k, top_p_only)), None)


class GraphSampler:
    """Window draws over the forward graphs' logits buffers, one per batch size and shape.

    `logits` maps each padded batch size to the static logits its forward graph writes.
    Captured on a GPU (`capture`); on a CPU the same draw runs eagerly, which is how tests
    compare it with `sample`.
    """

    def __init__(self, logits: dict[int, torch.Tensor], device: torch.device):
        self.logits = logits
        self.device = device
        size = max(logits)
        pinned = device.type == "cuda"
        self.params_f = torch.zeros(FLOAT_ROWS, size, dtype=torch.float32, device=device)
        self.params_i = torch.zeros(INT_ROWS, size, dtype=torch.int64, device=device)
        self.host_f = torch.zeros(FLOAT_ROWS, size, dtype=torch.float32, pin_memory=pinned)
        self.host_i = torch.zeros(INT_ROWS, size, dtype=torch.int64, pin_memory=pinned)
        self.graphs: dict[tuple[int, DrawShape], torch.cuda.CUDAGraph] = {}
        self.results: dict[tuple[int, DrawShape], torch.Tensor] = {}
        self.rng = np.random.default_rng()

    def _rows(self, size: int) -> WindowRows:
        temperatures, top_p, min_p = self.params_f[:, :size]
        top_k, _, seeded, seed_low, seed_high, draws, *random_key = self.params_i[:, :size]
        seeded_keys = seeded_row_keys(torch.stack([seed_low, seed_high], dim=1), draws)
        keys = torch.where(seeded.bool()[:, None], seeded_keys, torch.stack(random_key, dim=1))
        return WindowRows(temperatures, top_k, top_p, min_p, keys)

    def _draw(self, size: int, shape: DrawShape) -> torch.Tensor:
        """[2, size]: the tokens, and whether each row is unsettled."""
        logits = self.logits[size]
        rows = self._rows(size)
        width = min(shape.width, logits.shape[-1])
        tokens, unsettled = window_draw(logits, rows, width, shape.full_normaliser)
        greedy = self.params_i[1, :size].bool()
        tokens = torch.where(greedy, logits.argmax(dim=-1), tokens)
        return torch.stack([tokens, (unsettled & ~greedy).long()])

    @torch.inference_mode()
    def capture(self) -> None:
        self._fill_padding(0, max(self.logits))
        self._copy(max(self.logits))
        pool = None
        for size in sorted(self.logits, reverse=True):
            for shape in DRAW_SHAPES:
                self._draw(size, shape)  # warm-up outside the graph
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.results[size, shape] = self._draw(size, shape)
                pool = graph.pool()
                self.graphs[size, shape] = graph
        torch.cuda.synchronize()

    def draw(self, seqs: list[Sequence], size: int) -> list[int] | None:
        """The tokens of these sequences from the logits of batch size `size` (already
        computed by its forward graph); None when a row needs `sample`. Counts the draw on
        seeded sequences."""
        shape = draw_shape([seq.params for seq in seqs])
        if shape is None:
            return None
        self._fill(seqs, size)
        if self.graphs:
            self.graphs[size, shape].replay()
            choice = self.results[size, shape]
        else:
            choice = self._draw(size, shape)
        tokens, unsettled = choice[:, :len(seqs)].tolist()
        redo = [row for row, flag in enumerate(unsettled) if flag]
        if redo:
            self._redo(tokens, redo, size)
        return tokens

    def _fill(self, seqs: list[Sequence], size: int) -> None:
        count = len(seqs)
        params = [seq.params for seq in seqs]
        seeded = [param.seed is not None and not param.greedy for param in params]
        seeds = [param.seed or 0 for param in params]
        self.host_f.numpy()[:, :count] = (
            [1.0 if param.greedy else param.temperature for param in params],
            [param.top_p for param in params], [param.min_p for param in params])
        self.host_i.numpy()[:INT_ROWS, :count] = (
            [param.top_k for param in params], [param.greedy for param in params], seeded,
            [seed & MASK32 for seed in seeds], [seed >> 32 for seed in seeds],
            [seq.num_draws for seq in seqs], *self.rng.integers(0, 1 << 32, (2, count)))
        for seq, is_seeded in zip(seqs, seeded, strict=True):
            seq.num_draws += is_seeded
        self._fill_padding(count, size)
        self._copy(size)

    def _fill_padding(self, begin: int, end: int) -> None:
        """Padding rows draw greedily: temperature 1, no filters, no seed."""
        self.host_f.numpy()[:, begin:end] = np.array([[1.0], [1.0], [0.0]])
        self.host_i.numpy()[:, begin:end] = np.array([[0], [1], [0], [0], [0], [0], [0], [0]])

    def _copy(self, size: int) -> None:
        """The host buffers to the device without waiting; the previous step's copies are
        done, since its tokens were read back."""
        self.params_f[:, :size].copy_(self.host_f[:, :size], non_blocking=True)
        self.params_i[:, :size].copy_(self.host_i[:, :size], non_blocking=True)

    def _redo(self, tokens: list[int], rows: list[int], size: int) -> None:
        """The rows the window could not settle, by the full sort (as `sample` does), with
        the same keys (the buffers still hold this step's parameters)."""
        index = torch.tensor(rows, dtype=torch.int64, device=self.device)
        redone = sorted_tokens(self.logits[size][:len(tokens)][index], self._rows(size), index)
        for row, token in zip(rows, redone.tolist(), strict=True):
            tokens[row] = token

    def close(self) -> None:
        self.graphs.clear()
        self.results.clear()
        self.logits = {}
