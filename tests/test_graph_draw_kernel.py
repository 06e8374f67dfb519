"""The captured draws' one-kernel finish (`window_kernel.graph_window_draw`) and the threshold
top-W (`topk_kernel.threshold_candidates`) against what they replace: the candidate lists hold
every one of a row's W largest logits (or say they lost keys), and the draw gives exactly the
tokens, unsettled rows and penalty counts of the split draw (`GraphSampler` with
draw_kernels="split"), step after step. Compiled on a GPU, the interpreter on CPU (small
vocabularies, chunks and widths keep it quick)."""

from __future__ import annotations

import pytest
import torch
from kernel_modes import HAVE_TRITON

from jupyter_qwen.engine.penalty_state import PenaltyState
from jupyter_qwen.engine.sequence import Sequence
from jupyter_qwen.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")

QWEN3 = {"temperature": 0.6, "top_k": 20, "top_p": 0.95}


def decoded(keys: torch.Tensor) -> tuple[list[float], list[int]]:
    high = (keys >> 32).to(torch.int32)
    bits = torch.where(high < 0, high ^ (2**31 - 1), high)
    return bits.view(torch.float32).tolist(), (~keys & (2**32 - 1)).tolist()


def test_threshold_lists_hold_each_rows_largest(mode, generator):
    from jupyter_qwen.engine.topk_kernel import ThresholdTiling, threshold_candidates

    width, vocab = 16, mode.pick(520, 151_936)
    tiling = ThresholdTiling(chunk=mode.pick(16, 1024), capacity=mode.pick(64, 512))
    device = torch.device(mode.device)
    noise = (torch.randn(3, vocab, generator=generator) * 3).bfloat16().float()
    tied = noise[1].clamp(max=1.0)
    tied[torch.randperm(vocab, generator=generator)[:3 * width]] = 2.0  # a run at the cut
    logits = torch.stack([noise[0], tied, torch.full((vocab,), float("-inf"))]).to(device)
    found = threshold_candidates(logits, width, tiling)
    counts = found.counts.cpu().tolist()
    assert counts[0] >= width and counts[0] <= tiling.capacity
    assert counts[2] > tiling.capacity  # all -inf: the list overflows, the draw redoes it
    order = logits.cpu().sort(dim=-1, descending=True, stable=True)
    for row in (0, 1):
        if counts[row] > tiling.capacity:
            continue
        values, tokens = decoded(found.keys[row, :counts[row]].cpu())
        assert len(set(tokens)) == len(tokens)
        assert set(tokens) >= set(order.indices[row, :width].tolist())
        assert all(logits[row, token].item() == value
                   for token, value in zip(tokens, values, strict=True))


def sequences(params: list[SamplingParams], prompts: list[list[int]]) -> list[Sequence]:
    return [Sequence(str(row), list(prompt), param)
            for row, (param, prompt) in enumerate(zip(params, prompts, strict=True))]


PARAMS = [SamplingParams(**QWEN3, seed=1, presence_penalty=1.5, repetition_penalty=1.05),
          SamplingParams(**QWEN3), SamplingParams(temperature=0.0, frequency_penalty=0.7)]


@pytest.mark.parametrize("kernels", ["fused", "threshold"])
def test_the_one_kernel_draw_equals_the_split_draw(mode, generator, kernels):
    """A penalised seeded row, an unseeded one, a penalised greedy one, a padding row, a
    tie run across the window's edge: the same tokens as the split draw
    from the same keys, the same penalty counts, the same seeded draw counters."""
    from jupyter_qwen.engine import graph_sampling
    from jupyter_qwen.engine.graph_sampling import GraphSampler
    from jupyter_qwen.engine.topk_kernel import ThresholdTiling

    device = torch.device(mode.device)
    vocab, size, steps = mode.pick(1030, 151_936), 4, mode.pick(1, 8)
    tilings = {64: ThresholdTiling(chunk=16, capacity=256)} if mode.device == "cpu" else None
    prompts = [torch.randint(0, vocab, (12,), generator=generator).tolist() for _ in PARAMS]
    states = [PenaltyState(vocab, device) for _ in range(2)]
    seqs = [sequences(PARAMS, prompts) for _ in range(2)]
    for state in states:
        state.reserve(size)
    for step in range(steps):
        logits = (torch.randn(size, vocab, generator=generator) * 3).bfloat16().float()
        if step == 0:  # a tie run across the window's edge at the top-k cut: redone
            logits[0] = torch.cat([torch.tensor([5.0]), torch.full((vocab - 1,), 1.0)])
        keys = torch.randint(0, 1 << 32, (size, 2), generator=generator)
        drawn = []
        for state, batch, which in zip(states, seqs, ("split", kernels), strict=True):
            sampler = GraphSampler({size: logits.to(device)}, device, state,
                                   draw_kernels=which, threshold_tilings=tilings)
            sampler.rng = FixedKeys(keys)
            drawn.append(sampler.draw(batch, size))
        assert drawn[0] == drawn[1], step
        for batch, tokens in zip(seqs, drawn, strict=True):
            for seq, token in zip(batch, tokens, strict=True):
                seq.token_ids.append(token)
    assert torch.equal(states[0].output_counts, states[1].output_counts)
    assert [seq.num_draws for seq in seqs[0]] == [seq.num_draws for seq in seqs[1]]
    assert size <= graph_sampling.THRESHOLD_MAX_ROWS


class FixedKeys:
    """Stands in for the sampler's generator: the same unseeded keys for both samplers."""

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.numpy()

    def integers(self, low: int, high: int, shape: tuple[int, int]):
        return self.keys[:shape[0]].copy()


@pytest.mark.parametrize("kernels", ["fused", "threshold"])
def test_adjusted_greedy_rows_take_the_adjusted_argmax(mode, generator, kernels):
    """A step with logit_bias on a greedy row beside sampled rows: the one-kernel draws give
    greedy rows the forward graph's argmax, which the adjustments must replace, so the tokens
    equal the split draw's (the argmax of the adjusted logits: the biased token)."""
    from jupyter_qwen.engine.graph_sampling import GraphSampler
    from jupyter_qwen.engine.logit_adjustments import build_logit_adjustments

    device = torch.device(mode.device)
    vocab, size = mode.pick(1030, 151_936), 4
    tilings = threshold_tilings_for(mode)
    params = [SamplingParams(temperature=0.0, logit_bias={17: 100.0}),
              SamplingParams(**QWEN3, seed=5), SamplingParams(temperature=0.0)]
    logits = (torch.randn(size, vocab, generator=generator) * 3).bfloat16().float()
    keys = torch.randint(0, 1 << 32, (size, 2), generator=generator)
    drawn = []
    for which in ("split", kernels):
        step_logits = logits.clone().to(device)  # adjusted in place by the draw
        seqs = sequences(params, [[1, 2, 3]] * len(params))
        sampler = GraphSampler({size: step_logits}, device, None,
                               greedy_tokens={size: step_logits.argmax(dim=-1)},
                               draw_kernels=which, threshold_tilings=tilings)
        sampler.rng = FixedKeys(keys)
        drawn.append(sampler.draw(seqs, size, lambda seqs=seqs: build_logit_adjustments(
            seqs, {0}, device)))
    assert drawn[0] == drawn[1]
    assert drawn[1][0] == 17 and drawn[1][2] == int(logits[2].argmax())


def threshold_tilings_for(mode):  # small tilings keep the interpreter quick
    from jupyter_qwen.engine.topk_kernel import ThresholdTiling

    return {64: ThresholdTiling(chunk=16, capacity=256)} if mode.device == "cpu" else None
