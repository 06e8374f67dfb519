"""The one-kernel window draw (`engine/window_kernel.py`) against the torch steps it replaces:
the same tokens and the same unsettled rows, for every filter, the whole-vocabulary
normaliser and tie runs across the window's edge. Compiled on a GPU, the interpreter on CPU."""

from __future__ import annotations

import pytest
import torch
from kernel_modes import HAVE_TRITON

from jupyter_qwen.engine.sampler import WindowRows, window_draw
from jupyter_qwen.engine.sampling_noise import random_row_keys

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")

FILTERS = [  # temperature, top_k, top_p, min_p
    (0.6, 20, 0.95, 0.0), (1.0, 5, 1.0, 0.0), (0.9, 0, 0.7, 0.0), (1.2, 12, 1.0, 0.1),
    (0.7, 10, 0.9, 0.05), (1.0, 0, 0.5, 0.02), (0.3, 40, 0.8, 0.0), (1.0, 1, 1.0, 0.0),
]


def rows_for(count: int, device: torch.device, generator: torch.Generator) -> WindowRows:
    chosen = [FILTERS[i % len(FILTERS)] for i in range(count)]
    temperatures, top_k, top_p, min_p = (torch.tensor(column, device=device)
                                         for column in zip(*chosen, strict=True))
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=generator)))
    return WindowRows(temperatures.float(), top_k.long(), top_p.float(), min_p.float(),
                      random_row_keys(count, device))


def draw_both(logits: torch.Tensor, rows: WindowRows, width: int, full: bool):
    from jupyter_qwen.engine.window_kernel import window_draw_in_one_kernel

    values, candidates = logits.topk(width, dim=-1)
    log_norm = torch.logsumexp(logits / rows.temperatures[:, None], dim=-1) if full else None
    kernel = window_draw_in_one_kernel(values, candidates, rows.temperatures, rows.top_k,
                                       rows.top_p, rows.min_p, rows.row_keys, log_norm,
                                       logits.shape[-1])
    cpu_rows = WindowRows(*(t.cpu() for t in (rows.temperatures, rows.top_k, rows.top_p,
                                              rows.min_p, rows.row_keys)))
    return kernel, window_draw(logits.cpu(), cpu_rows, width, full)


@pytest.mark.parametrize("width,full", [(64, False), (256, True), (64, True)])
def test_the_kernel_draws_what_the_torch_steps_draw(mode, generator, width, full):
    count, vocab = (64, 4096) if mode.device == "cpu" else (512, 151_936)
    device = torch.device(mode.device)
    logits = (torch.randn(count, vocab, generator=generator) * 3).bfloat16().float().to(device)
    rows = rows_for(count, device, generator)
    (tokens, unsettled), (expected, expected_unsettled) = draw_both(logits, rows, width, full)
    assert unsettled.cpu().tolist() == expected_unsettled.tolist()
    settled = ~expected_unsettled
    agree = (tokens.cpu()[settled] == expected[settled]).float().mean().item()
    assert agree > 0.99, agree  # the last bit of a logarithm may decide a rare race


def test_tie_runs_across_the_window_edge_are_unsettled(mode):
    device = torch.device(mode.device)
    vocab = 1024
    tied = torch.cat([torch.tensor([5.0]), torch.full((vocab - 1,), 1.0)])
    flat_top_p = torch.cat([torch.tensor([6.0]), torch.full((vocab - 1,), 1.0)])
    logits = torch.stack([tied, flat_top_p, torch.linspace(8, 0, vocab)]).to(device)
    rows = WindowRows(torch.ones(3, device=device), torch.tensor([20, 0, 20], device=device),
                      torch.tensor([1.0, float(flat_top_p.softmax(-1)[0]) + 0.01, 0.95],
                                   device=device),
                      torch.zeros(3, device=device), random_row_keys(3, device))
    (tokens, unsettled), (expected, expected_unsettled) = draw_both(logits, rows, 64, True)
    assert unsettled.cpu().tolist() == expected_unsettled.tolist() == [True, True, False]
    assert int(tokens[2]) == int(expected[2])
