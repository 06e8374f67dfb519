"""Steps with logit adjustments (logit_bias, min_tokens, allowed_token_ids, the token bitmask
of constrained rows) draw beside the decode graphs when the runner hands `GraphSampler.draw`
their adjustments: applied in place on the graph's logits, then the captured draw (or, for
greedy rows only, the argmax). The tokens equal `sample`'s for the same rows and seeds. The
bitmask itself is kept in `TokenBitmasks` from step to step: stale rows never leak into a
step's mask. On a CPU the draw runs without a graph."""

from __future__ import annotations

import pytest
import torch
from test_graph_sampling import QWEN3, logits_of

from jupyter_qwen.engine.constraints import apply_token_bitmask, new_token_bitmask
from jupyter_qwen.engine.graph_sampling import ARGMAX, DRAW_SHAPES, GraphSampler, draw_shape
from jupyter_qwen.engine.logit_adjustments import TokenBitmasks, build_logit_adjustments
from jupyter_qwen.engine.penalty_state import PenaltyState
from jupyter_qwen.engine.sampler import build_sampling_batch, sample
from jupyter_qwen.engine.sequence import Sequence
from jupyter_qwen.sampling_params import SamplingParams

CPU = torch.device("cpu")
VOCAB = 3000
EOS = {7, 11}


class RandomMask:
    """A stand-in constraint: each fill allows a fresh random half of the vocabulary (the
    same sequence of masks for two instances of one seed); `free_every`: every that many
    fills it leaves the row unconstrained, as reasoning does."""

    def __init__(self, seed: int, free_every: int = 0):
        self.generator = torch.Generator().manual_seed(seed)
        self.free_every = free_every
        self.fills = 0

    def fill(self, bitmask: torch.Tensor, row: int) -> bool:
        self.fills += 1
        words = torch.randint(-(1 << 31), 1 << 31, (bitmask.shape[1],),
                              generator=self.generator, dtype=torch.int64)
        if self.free_every and self.fills % self.free_every == 0:
            return False
        bitmask[row] = words.to(torch.int32)
        return True


ADJUSTED = [SamplingParams(temperature=0.0, logit_bias={5: 30.0, 9: -5.0}),
            SamplingParams(**QWEN3, seed=1, min_tokens=3),
            SamplingParams(temperature=0.9, top_p=0.8, seed=2, allowed_token_ids=[3, 7, 40]),
            SamplingParams(**QWEN3, seed=3),
            SamplingParams(temperature=0.0),
            SamplingParams(**QWEN3, seed=4, presence_penalty=1.2, logit_bias={2: 3.0})]
CONSTRAINED = {0: 10, 3: 11, 4: 12, 5: 13}  # row: its mask's seed


def sequences(params: list[SamplingParams], constrained: dict[int, int]) -> list[Sequence]:
    seqs = [Sequence(str(row), [1, 2, 3], param) for row, param in enumerate(params)]
    for row, seed in constrained.items():
        seqs[row].constraint = RandomMask(seed, free_every=3 if row == 3 else 0)
    return seqs


def adjustments_for(seqs: list[Sequence], bitmasks: TokenBitmasks):
    return lambda: build_logit_adjustments(seqs, EOS, CPU, bitmasks=bitmasks)


@pytest.mark.parametrize("size", [6, 8])
def test_adjusted_steps_draw_the_same_tokens_as_sample(size):
    """Several steps: biased, min_tokens, allowed-token, constrained (one of them free
    every third step), greedy and penalised rows; the drawn tokens are appended, so
    min_tokens lapses and the penalties grow as in the engine."""
    graph_seqs, eager_seqs = (sequences(ADJUSTED, CONSTRAINED) for _ in range(2))
    graph_state, eager_state = PenaltyState(VOCAB, CPU), PenaltyState(VOCAB, CPU)
    graph_state.reserve(size)
    bitmasks = TokenBitmasks(VOCAB, CPU, size)
    for step in range(5):
        logits = logits_of(size, VOCAB, seed=50 + step)
        reference = logits[:len(ADJUSTED)].clone()
        sampler = GraphSampler({size: logits}, CPU, graph_state)
        drawn = sampler.draw(graph_seqs, size, adjustments_for(graph_seqs, bitmasks))
        batch = build_sampling_batch(eager_seqs, VOCAB, CPU, eager_state, EOS)
        assert drawn == sample(reference, batch).token_ids, step
        assert not torch.equal(logits[:len(ADJUSTED)], logits_of(size, VOCAB, 50 + step)[:6])
        for seqs in (graph_seqs, eager_seqs):
            for seq, token in zip(seqs, drawn, strict=True):
                seq.token_ids.append(token)
    assert [seq.num_draws for seq in graph_seqs] == [seq.num_draws for seq in eager_seqs]


def test_greedy_adjusted_steps_take_the_argmax_of_the_adjusted_rows():
    params = [SamplingParams(temperature=0.0, logit_bias={4: 50.0}),
              SamplingParams(temperature=0.0), SamplingParams(temperature=0.0)]
    graph_seqs, eager_seqs = sequences(params, {1: 5}), sequences(params, {1: 5})
    bitmasks = TokenBitmasks(VOCAB, CPU, 4)
    for step in range(3):
        logits = logits_of(4, VOCAB, seed=70 + step)
        plain = logits.argmax(dim=-1).tolist()
        reference = logits[:3].clone()
        drawn = GraphSampler({4: logits}, CPU).draw(graph_seqs, 4,
                                                   adjustments_for(graph_seqs, bitmasks))
        assert drawn == sample(reference, build_sampling_batch(eager_seqs, VOCAB, CPU,
                                                               eos_token_ids=EOS)).token_ids
        assert drawn[0] == 4 and drawn[2] == plain[2]


def test_which_adjusted_steps_the_captured_draw_takes():
    narrow, wide, narrow_penalised, _ = DRAW_SHAPES
    shape = lambda *fields: draw_shape(  # noqa: E731
        [SamplingParams(**each) for each in fields], True, adjusted=True)
    assert shape({**QWEN3, "logit_bias": {3: 2.0}}, {"temperature": 0.0}) == narrow
    assert shape({"temperature": 1.0, "top_p": 0.9, "min_tokens": 2}) == wide
    assert shape({**QWEN3, "allowed_token_ids": [1, 2], "presence_penalty": 1.0}) == \
        narrow_penalised
    assert shape({"temperature": 0.0, "logit_bias": {3: 2.0}}, {"temperature": 0.0}) is ARGMAX
    assert shape({"temperature": 0.0}) is None  # nothing adjusted: the graph's argmax
    assert shape({"temperature": 0.0, "logit_bias": {3: 2.0}, "logprobs": 1}) is None
    assert shape({"temperature": 1.0, "logit_bias": {3: 2.0}}) is None  # whole vocabulary


def test_a_step_left_to_sample_leaves_the_logits_and_the_constraints_alone():
    params = [SamplingParams(temperature=1.0, logit_bias={3: 2.0}), SamplingParams(**QWEN3)]
    seqs = sequences(params, {1: 3})
    logits = logits_of(2, VOCAB, 0)
    before = logits.clone()
    assert GraphSampler({2: logits}, CPU).draw(seqs, 2, adjustments_for(
        seqs, TokenBitmasks(VOCAB, CPU))) is None
    assert torch.equal(logits, before) and seqs[1].constraint.fills == 0


def test_kept_bitmasks_mask_exactly_like_fresh_ones():
    """Steps of different sizes over one kept buffer (grown past its first size), rows
    constrained or free in turn: each step's masked logits equal a fresh buffer's."""
    bitmasks = TokenBitmasks(VOCAB, CPU, 2)
    for step, count in enumerate((2, 5, 3, 5)):
        kept = sequences([SamplingParams(temperature=0.0)] * count,
                         {row: 100 * step + row for row in range(count) if (row + step) % 2})
        fresh = sequences([SamplingParams(temperature=0.0)] * count,
                          {row: 100 * step + row for row in range(count) if (row + step) % 2})
        for seq in kept + fresh:
            if seq.constraint is not None:
                seq.constraint.free_every = 2 if int(seq.request_id) == 1 else 0
        filled = bitmasks.fill(kept)
        bits = new_token_bitmask(count, VOCAB)
        rows = [row for row, seq in enumerate(fresh)
                if seq.constraint is not None and seq.constraint.fill(bits, row)]
        logits = logits_of(count, VOCAB, seed=step)
        expected = logits.clone()
        if rows:
            apply_token_bitmask(expected, bits, torch.tensor(rows, dtype=torch.int32))
        if filled is None:
            assert not rows
            continue
        assert filled[1].tolist() == rows
        apply_token_bitmask(logits, *filled)
        assert torch.equal(logits, expected), step
    assert bitmasks.host.shape[0] == 5
