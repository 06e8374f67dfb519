"""Sampler filters and penalties against plain per-row references."""

import math

import pytest
import torch

from jupyter_qwen.engine.sampler import (
    apply_min_p,
    apply_penalties,
    apply_top_k,
    apply_top_p,
    build_sampling_batch,
    sample,
)
from jupyter_qwen.engine.sequence import Sequence
from jupyter_qwen.sampling_params import SamplingParams

VOCAB = 50


def random_logits(rows, seed=0):
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_top_k_keeps_exactly_the_k_largest():
    logits = random_logits(4)
    top_k = torch.tensor([1, 5, 17, VOCAB])
    out = apply_top_k(logits, top_k)
    for row, k in enumerate(top_k.tolist()):
        kept = set(torch.isfinite(out[row]).nonzero().flatten().tolist())
        assert kept == set(logits[row].topk(k).indices.tolist())


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = random_logits(5, seed=1)
    top_p = torch.tensor([0.05, 0.3, 0.5, 0.9, 1.0])
    out = apply_top_p(logits, top_p)
    for row, p in enumerate(top_p.tolist()):
        probs = logits[row].softmax(-1)
        order = probs.argsort(descending=True).tolist()
        kept, mass = [], 0.0
        for token in order:
            kept.append(token)
            mass += probs[token].item()
            if mass >= p:
                break
        assert set(torch.isfinite(out[row]).nonzero().flatten().tolist()) == set(kept)


def test_min_p_drops_tokens_below_the_scaled_maximum():
    probs = random_logits(3, seed=2).softmax(-1)
    min_p = torch.tensor([0.0, 0.1, 0.5])
    out = apply_min_p(probs, min_p)
    for row, p in enumerate(min_p.tolist()):
        threshold = probs[row].max().item() * p
        assert torch.equal(out[row] > 0, probs[row] >= threshold)


def test_penalties_match_a_per_token_reference():
    seqs = [Sequence("a", [1, 2, 3, 3], SamplingParams(repetition_penalty=1.3,
                                                        presence_penalty=0.5,
                                                        frequency_penalty=0.25)),
            Sequence("b", [7, 8], SamplingParams(repetition_penalty=0.8))]
    seqs[0].num_prompt_tokens = 2
    seqs[1].num_prompt_tokens = 1
    logits = random_logits(2, seed=3)
    batch = build_sampling_batch(seqs, VOCAB, torch.device("cpu"))
    out = apply_penalties(logits.clone(), batch.penalties)
    expected = logits.clone()
    for row, seq in enumerate(seqs):
        params = seq.params
        for token in set(seq.token_ids):
            value = expected[row, token].item()
            r = params.repetition_penalty
            expected[row, token] = value / r if value > 0 else value * r
        for token in set(seq.output_token_ids):
            count = seq.output_token_ids.count(token)
            expected[row, token] -= params.presence_penalty + params.frequency_penalty * count
    torch.testing.assert_close(out, expected)


def test_temperature_sampling_follows_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -5.0]])
    params = SamplingParams(temperature=0.7, seed=5)
    seq = Sequence("s", [0], params)
    seq.generator = torch.Generator().manual_seed(5)
    draws = 20000
    counts = torch.zeros(5)
    for _ in range(draws):
        batch = build_sampling_batch([seq], 5, torch.device("cpu"))
        counts[sample(logits, batch).token_ids[0]] += 1
    expected = (logits[0] / 0.7).softmax(-1) * draws
    for observed, mean in zip(counts.tolist(), expected.tolist(), strict=True):
        assert abs(observed - mean) < 5 * math.sqrt(mean) + 1


def test_greedy_rows_stay_greedy_in_a_mixed_batch():
    logits = random_logits(6, seed=4)
    seqs = [Sequence(str(i), [0], SamplingParams(temperature=0.0 if i % 2 else 1.5))
            for i in range(6)]
    batch = build_sampling_batch(seqs, VOCAB, torch.device("cpu"))
    tokens = sample(logits, batch).token_ids
    for row in (1, 3, 5):
        assert tokens[row] == logits[row].argmax().item()


@pytest.mark.parametrize("num_top", [0, 1, 4])
def test_logprobs_are_log_softmax_of_the_raw_logits(num_top):
    logits = random_logits(3, seed=6)
    seqs = [Sequence(str(i), [0], SamplingParams(temperature=0, logprobs=num_top))
            for i in range(3)]
    out = sample(logits, build_sampling_batch(seqs, VOCAB, torch.device("cpu")))
    reference = logits.log_softmax(-1)
    for row, entry in enumerate(out.logprobs):
        assert entry.token_id == out.token_ids[row] == reference[row].argmax().item()
        assert entry.logprob == pytest.approx(reference[row].max().item(), abs=1e-6)
        assert [t for t, _ in entry.top] == reference[row].topk(max(num_top, 1)).indices.tolist()[
            :len(entry.top)]
