"""The draw captured beside the decode graphs (`GraphSampler`) picks the same tokens as
`sample` for the same rows and seeds, follows the filtered softmax, and hands every step it
cannot draw exactly back to `sample`. On a CPU the same draw runs without a graph."""

from __future__ import annotations

import pytest
import torch
from test_sampler_distribution import chi2_critical, chi2_statistic, filtered_softmax, fixed_row

from jupyter_qwen.engine import graph_sampling
from jupyter_qwen.engine.graph_sampling import DRAW_SHAPES, GraphSampler, draw_shape
from jupyter_qwen.engine.penalty_state import PenaltyState
from jupyter_qwen.engine.sampler import TOP_P_WINDOW, apply_penalties, build_sampling_batch, sample
from jupyter_qwen.engine.sequence import Sequence
from jupyter_qwen.sampling_params import SamplingParams

CPU = torch.device("cpu")
QWEN3 = {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
MIXED = [SamplingParams(**QWEN3, seed=1), SamplingParams(temperature=0.0),
         SamplingParams(temperature=0.9, top_p=0.8, seed=2),
         SamplingParams(temperature=1.1, top_k=60, min_p=0.05, seed=3),
         SamplingParams(**QWEN3, seed=2**40 + 7)]


def sequences(params: list[SamplingParams]) -> list[Sequence]:
    return [Sequence(str(row), [0], param) for row, param in enumerate(params)]


def logits_of(rows: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=generator) * 3).bfloat16().float()


@pytest.mark.parametrize("size", [5, 8])
def test_the_same_tokens_as_sample_step_after_step(size):
    """Seeded and greedy rows, over several steps (the seeded rows' draw counters advance
    alike), with padding rows when the graph is larger than the batch."""
    graph_seqs, eager_seqs = sequences(MIXED), sequences(MIXED)
    for step in range(4):
        logits = logits_of(size, 5000, seed=step)
        sampler = GraphSampler({size: logits}, CPU)
        drawn = sampler.draw(graph_seqs, size)
        batch = build_sampling_batch(eager_seqs, 5000, CPU)
        assert drawn == sample(logits[:len(MIXED)].clone(), batch).token_ids
    assert [seq.num_draws for seq in graph_seqs] == [seq.num_draws for seq in eager_seqs] \
        == [4, 0, 4, 4, 4]


def test_unseeded_rows_follow_the_filtered_softmax():
    torch.manual_seed(0)
    logits = fixed_row()
    params = SamplingParams(temperature=0.7, top_k=10, top_p=0.9, min_p=0.05)
    draws = 20_000
    sampler = GraphSampler({draws: logits.expand(draws, -1).contiguous()}, CPU)
    tokens = sampler.draw(sequences([params] * draws), draws)
    counts = torch.bincount(torch.tensor(tokens), minlength=logits.shape[-1])
    statistic, df = chi2_statistic(counts, filtered_softmax(logits, params))
    assert statistic < chi2_critical(df), (statistic, df)


def test_rows_the_window_cannot_settle_are_redone_exactly(monkeypatch):
    """A tie run across the captured window's edge at the top-k cut and at the top-p cut:
    the rows are redone by the full sort, with the keys the window would have used."""
    vocab = 4 * TOP_P_WINDOW
    tied_top_k = torch.cat([torch.tensor([4.0]), torch.full((vocab - 1,), 1.0)])
    tied_top_p = torch.cat([torch.tensor([6.0]), torch.full((vocab - 1,), 1.0)])
    top_p = float(tied_top_p.softmax(-1)[0]) + 0.01
    params = [SamplingParams(temperature=1.0, top_k=20, seed=5),
              SamplingParams(temperature=1.0, top_p=top_p, seed=6)]
    logits = torch.stack([tied_top_k, tied_top_p])
    redone = []
    original = graph_sampling.sorted_tokens
    monkeypatch.setattr(graph_sampling, "sorted_tokens",
                        lambda logits, rows, index: redone.append(index.tolist())
                        or original(logits, rows, index))
    graph_seqs, eager_seqs = sequences(params), sequences(params)
    for _ in range(3):
        drawn = GraphSampler({2: logits}, CPU).draw(graph_seqs, 2)
        assert drawn == sample(logits.clone(), build_sampling_batch(eager_seqs, vocab,
                                                                    CPU)).token_ids
    assert redone == [[0, 1]] * 3


def test_which_steps_the_captured_draw_takes():
    narrow, wide, narrow_penalised, wide_penalised = DRAW_SHAPES
    penalised = [{**QWEN3, "presence_penalty": 1.5}, {**QWEN3, "repetition_penalty": 1.1},
                 {"temperature": 0.0, "frequency_penalty": 1.0}]
    for with_penalties in (False, True):
        shape = lambda *fields, penalties=with_penalties: draw_shape(  # noqa: E731
            [SamplingParams(**each) for each in fields], penalties)
        assert shape(QWEN3, {"temperature": 0.0}) == narrow
        assert shape({**QWEN3, "seed": 3, "min_p": 0.1}) == narrow
        assert shape({"temperature": 1.0, "top_p": 0.9}) == wide
        assert shape({"temperature": 1.0, "top_k": 100}) == wide
        assert shape({"temperature": 0.0}) is None  # the forward graph's argmax is enough
        for fields in penalised:
            assert shape(QWEN3, fields) == (narrow_penalised if with_penalties else None)
        assert shape({"temperature": 1.0, "top_p": 0.9}, penalised[0]) == \
            (wide_penalised if with_penalties else None)
        needs_sample = [
            {"temperature": 1.0},  # the whole vocabulary
            {"temperature": 1.0, "top_k": 500},  # wider than any captured window
            {**QWEN3, "logit_bias": {3: 2.0}}, {**QWEN3, "min_tokens": 4},
            {**QWEN3, "allowed_token_ids": [1, 2, 3]},
            {**QWEN3, "logprobs": 2}, {"temperature": 0.0, "logprobs": 1},
        ]
        for fields in needs_sample:
            assert shape(QWEN3, fields) is None, fields
    seqs = sequences([SamplingParams(**QWEN3, seed=1), SamplingParams(**penalised[0])])
    assert GraphSampler({2: logits_of(2, 100, 0)}, CPU).draw(seqs, 2) is None
    assert [seq.num_draws for seq in seqs] == [0, 0]  # nothing drawn, nothing counted


PENALISED = [SamplingParams(**QWEN3, seed=1, presence_penalty=1.5, repetition_penalty=1.05),
             SamplingParams(**QWEN3, seed=2),
             SamplingParams(temperature=0.0, frequency_penalty=0.7),
             SamplingParams(temperature=0.8, top_p=0.9, seed=3, frequency_penalty=0.4,
                            presence_penalty=0.3),
             SamplingParams(temperature=0.0)]


def test_penalised_steps_equal_sample_and_keep_the_counts(monkeypatch):
    """Several steps of penalised, plain and greedy rows: the same tokens as `sample` with
    its own penalty state, the same counts in both states, and a row redone after the window
    moves its count to the redone token. Every step appends the drawn tokens, as the engine
    does, so later steps see the penalties of earlier ones."""
    vocab, size = 3000, 8
    rng = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, vocab, (12,), generator=rng).tolist() for _ in PENALISED]
    graph_seqs = [Sequence(str(i), list(p), q) for i, (p, q) in
                  enumerate(zip(prompts, PENALISED, strict=True))]
    eager_seqs = [Sequence(str(i), list(p), q) for i, (p, q) in
                  enumerate(zip(prompts, PENALISED, strict=True))]
    graph_state, eager_state = PenaltyState(vocab, CPU), PenaltyState(vocab, CPU)
    graph_state.reserve(size)
    redone = []
    original = graph_sampling.sorted_tokens
    monkeypatch.setattr(graph_sampling, "sorted_tokens",
                        lambda logits, rows, index: redone.append(index.tolist())
                        or original(logits, rows, index))
    for step in range(6):
        logits = logits_of(size, vocab, seed=10 + step)
        if step == 3:  # tie runs across the narrow window's edge at the top-k cut
            logits[:2] = torch.cat([torch.tensor([5.0]), torch.full((vocab - 1,), 1.0)])
        sampler = GraphSampler({size: logits}, CPU, graph_state)
        drawn = sampler.draw(graph_seqs, size)
        batch = build_sampling_batch(eager_seqs, vocab, CPU, eager_state)
        assert drawn == sample(logits[:len(PENALISED)].clone(), batch).token_ids, step
        for seq, other, token in zip(graph_seqs, eager_seqs, drawn, strict=True):
            seq.token_ids.append(token)
            other.token_ids.append(token)
    assert redone == [[0, 1]]
    penalised = [seq for seq in graph_seqs if seq.params.uses_penalties]
    for seq, other in zip(graph_seqs, eager_seqs, strict=True):
        if seq.params.uses_penalties:
            mine = graph_state.output_counts[graph_state.owners[seq].slot]
            theirs = eager_state.output_counts[eager_state.owners[other].slot]
            assert torch.equal(mine, theirs)
            assert int(mine.sum()) == 6
    assert graph_state.slot_numbers(penalised)  # up to date: no row rebuilt
    assert all(graph_state.owners[seq].num_counted_tokens == seq.num_tokens
               for seq in penalised)


def test_penalised_draws_step_aside_when_the_buffers_moved():
    """Captured draws read the reserved rows in place; if the state ever grew (more
    sequences than reserved), penalised steps go back to `sample`."""
    state = PenaltyState(100, CPU)
    state.reserve(2)
    sampler = GraphSampler({4: logits_of(4, 100, 0)}, CPU, state)
    params = [SamplingParams(**QWEN3, presence_penalty=1.0)] * 3
    assert sampler.draw(sequences(params[:2]), 4) is not None
    assert state.capacity == 2
    assert sampler.draw(sequences(params), 4) is None  # three more rows: the state grew
    assert state.capacity > 2
    assert sampler.draw(sequences(params[:2]), 4) is None
    assert sampler.draw(sequences([SamplingParams(**QWEN3)]), 4) is not None


def test_redone_rows_keep_their_own_penalties(monkeypatch):
    """Rows redone after the window, away from the batch's first rows, are penalised with
    their own slots and parameters: the full sort sees the reference penalised logits of
    exactly those rows, and the tokens equal `sample`'s."""
    vocab, size = 2000, 6
    params = [SamplingParams(**QWEN3, seed=1, presence_penalty=1.5),
              SamplingParams(**QWEN3, seed=2, repetition_penalty=0.7, frequency_penalty=0.3),
              SamplingParams(temperature=0.0, frequency_penalty=0.5),
              SamplingParams(**QWEN3, seed=3, repetition_penalty=1.4, presence_penalty=-0.5)]
    rng = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, vocab, (12,), generator=rng).tolist() for _ in params]
    graph_seqs, eager_seqs, reference_seqs = ([Sequence(str(i), list(p), q) for i, (p, q) in
                                               enumerate(zip(prompts, params, strict=True))]
                                              for _ in range(3))
    graph_state, eager_state = PenaltyState(vocab, CPU), PenaltyState(vocab, CPU)
    graph_state.reserve(size)
    seen = []
    original = graph_sampling.sorted_tokens
    monkeypatch.setattr(graph_sampling, "sorted_tokens",
                        lambda logits, rows, index: seen.append((index.tolist(), logits))
                        or original(logits, rows, index))
    tied = torch.cat([torch.tensor([2.0]), torch.full((vocab - 1,), 1.0)])
    for step in range(4):
        logits = logits_of(size, vocab, seed=30 + step)
        logits[1] = logits[3] = tied
        drawn = GraphSampler({size: logits}, CPU, graph_state).draw(graph_seqs, size)
        reference = build_sampling_batch(reference_seqs, vocab, CPU).penalties
        expected = apply_penalties(logits[:len(params)].clone(), reference)
        [(rows, redone_logits)] = seen
        assert rows == [1, 3] and torch.equal(redone_logits, expected[rows]), step
        batch = build_sampling_batch(eager_seqs, vocab, CPU, eager_state)
        assert drawn == sample(logits[:len(params)].clone(), batch).token_ids, step
        seen.clear()
        for seqs in (graph_seqs, eager_seqs, reference_seqs):
            for seq, token in zip(seqs, drawn, strict=True):
                seq.token_ids.append(token)
