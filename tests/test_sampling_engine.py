"""Sampling through the engine: seeds that survive batching and preemption, penalty state on
the device equal to the reference formulas, logit_bias, allowed_token_ids and min_tokens."""

from __future__ import annotations

import random

import pytest
import torch

from jupyter_qwen import LLM, SamplingParams
from jupyter_qwen.engine.penalty_state import PenaltyState
from jupyter_qwen.engine.sampler import apply_penalties, build_sampling_batch
from jupyter_qwen.engine.sequence import Sequence

SEEDED = SamplingParams(temperature=0.8, top_k=20, top_p=0.95, seed=2024, max_tokens=24,
                        ignore_eos=True, presence_penalty=0.5, repetition_penalty=1.1)


def prompts(count: int, vocab: int, seed: int, low: int = 20, high: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(low, high))] for _ in range(count)]


@pytest.fixture(scope="module")
def llm(tiny_model_path):
    with LLM(tiny_model_path, max_model_len=1024) as engine:
        yield engine


def test_a_seeded_request_gives_the_same_tokens_alone_in_a_batch_and_after_preemption(
        llm, tiny_model_path):
    prompt = prompts(1, llm.engine.vocab_size, seed=1, low=40, high=40)[0]
    [alone] = llm.generate(prompt, SEEDED)
    others = prompts(64, llm.engine.vocab_size, seed=2)
    unseeded = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
    batch = llm.generate([*others, prompt], [unseeded] * 64 + [SEEDED])
    assert batch[-1].token_ids == alone.token_ids
    assert len(set(alone.token_ids)) > 5
    with LLM(tiny_model_path, num_kv_blocks=40, max_model_len=512) as small:
        engine = small.engine
        for other in prompts(16, engine.vocab_size, seed=9, low=20, high=30):
            engine.add_request(other, unseeded)
        seq = engine.add_request(prompt, SEEDED)
        while engine.has_unfinished_requests():
            engine.step()
        assert seq.num_preemptions > 0, "the block budget was meant to preempt the newest"
        assert seq.output_token_ids == alone.token_ids
        assert engine.runner.penalty_state.owners == {}


def test_a_different_seed_gives_other_tokens(llm):
    prompt = prompts(1, llm.engine.vocab_size, seed=1)[0]
    [first] = llm.generate(prompt, SEEDED)
    other = SamplingParams(**{**_as_kwargs(SEEDED), "seed": 7})
    [second] = llm.generate(prompt, other)
    assert first.token_ids != second.token_ids


def _as_kwargs(params: SamplingParams) -> dict:
    return {name: getattr(params, name) for name in params.__slots__}


def reference_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Token by token, in float32, in the order the sampler applies them."""
    expected = logits.clone()
    for row, seq in enumerate(seqs):
        params = seq.params
        repetition = torch.tensor(params.repetition_penalty, dtype=torch.float32)
        for token in set(seq.token_ids):
            value = expected[row, token]
            expected[row, token] = value / repetition if value > 0 else value * repetition
        outputs = seq.output_token_ids
        for token in set(outputs):
            expected[row, token] -= torch.tensor(params.presence_penalty)
            expected[row, token] -= (torch.tensor(params.frequency_penalty)
                                     * torch.tensor(float(outputs.count(token))))
    return expected


def test_penalty_state_on_the_device_equals_the_reference_every_step():
    vocab = 300
    rng = random.Random(3)
    state = PenaltyState(vocab, torch.device("cpu"))
    params = [SamplingParams(repetition_penalty=1.3, presence_penalty=0.5,
                             frequency_penalty=0.25),
              SamplingParams(temperature=0.0),
              SamplingParams(repetition_penalty=0.8, frequency_penalty=-0.4),
              SamplingParams(presence_penalty=1.5, repetition_penalty=1.05)]
    seqs = [Sequence(str(i), [rng.randrange(vocab) for _ in range(5 + 3 * i)], p)
            for i, p in enumerate(params)]
    for step in range(12):
        logits = torch.randn(len(seqs), vocab, generator=torch.Generator().manual_seed(step)) * 4
        batch = build_sampling_batch(seqs, vocab, torch.device("cpu"), state)
        penalised = apply_penalties(logits.clone(), batch.penalties)
        assert torch.equal(penalised, reference_penalties(logits, seqs)), step
        new_tokens = torch.tensor([rng.randrange(40) for _ in seqs])
        record = batch.penalty_record
        state.record(record.seqs, record.slots, new_tokens[record.rows])
        for seq, token in zip(seqs, new_tokens.tolist(), strict=True):
            seq.token_ids.append(token)
        if step == 5:  # preempted: the state goes, and is rebuilt once from the tokens
            state.release(seqs[0])
    assert sorted(s.slot for s in state.owners.values()) == sorted(set(
        s.slot for s in state.owners.values()))
    for seq in seqs:
        state.release(seq)
    assert state.owners == {} and len(state.free_slots) == state.capacity


def test_penalties_from_the_device_state_equal_those_rebuilt_from_token_lists(
        llm, monkeypatch):
    """Through the engine (chunked into steps, a batch of three): the persistent state gives
    the tokens that rebuilding the counts from whole token lists each step gives."""
    batch = prompts(3, llm.engine.vocab_size, seed=4)
    params = [SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                             repetition_penalty=2.0, presence_penalty=1.5),
              SamplingParams(temperature=0.9, top_k=30, seed=5, max_tokens=30, ignore_eos=True,
                             frequency_penalty=1.0, repetition_penalty=1.05),
              SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)]
    with_state = [out.token_ids for out in llm.generate(batch, params)]
    assert llm.engine.runner.penalty_state.owners == {}
    plain = llm.generate(batch[0], SamplingParams(temperature=0, max_tokens=30,
                                                  ignore_eos=True))[0].token_ids
    assert with_state[0] != plain
    runner = llm.engine.runner
    rebuild = lambda seqs: build_sampling_batch(  # noqa: E731
        seqs, runner.model_config.vocab_size, runner.device)
    monkeypatch.setattr(runner, "_sampling_batch", rebuild)
    again = [SamplingParams(**_as_kwargs(p)) for p in params]
    assert [out.token_ids for out in llm.generate(batch, again)] == with_state


def test_logit_bias_of_100_forces_the_token(llm):
    prompt = prompts(1, llm.engine.vocab_size, seed=5)[0]
    for params in (SamplingParams(temperature=0, max_tokens=8, ignore_eos=True,
                                  logit_bias={17: 100.0}),
                   SamplingParams(temperature=1.0, top_k=20, max_tokens=8, ignore_eos=True,
                                  logit_bias={17: 100}, seed=3)):
        [out] = llm.generate(prompt, params)
        assert out.token_ids == [17] * 8


def test_logit_bias_of_minus_100_bans_the_greedy_token(llm):
    prompt = prompts(1, llm.engine.vocab_size, seed=6)[0]
    [plain] = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1))
    banned = plain.token_ids[0]
    [out] = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                                logit_bias={banned: -100}))
    assert banned not in out.token_ids


def test_allowed_token_ids_restrict_every_token(llm):
    prompt = prompts(1, llm.engine.vocab_size, seed=7)[0]
    allowed = [5, 99, 1000]
    for temperature in (0.0, 1.0):
        [out] = llm.generate(prompt, SamplingParams(temperature=temperature, max_tokens=12,
                                                    ignore_eos=True, seed=1,
                                                    allowed_token_ids=allowed))
        assert set(out.token_ids) <= set(allowed) and len(out.token_ids) == 12


def test_min_tokens_masks_eos_and_stop_token_ids_until_reached(llm):
    """With EOS forced by logit_bias, the request still produces min_tokens tokens first."""
    engine = llm.engine
    eos = min(engine.eos_token_ids)
    prompt = prompts(1, engine.vocab_size, seed=8)[0]
    [plain] = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20,
                                                  logit_bias={eos: 100}))
    assert plain.token_ids == [eos] and plain.finish_reason == "stop"
    params = SamplingParams(temperature=0, max_tokens=20, min_tokens=5, logit_bias={eos: 100})
    [held] = llm.generate(prompt, params)
    assert len(held.token_ids) == 6 and held.token_ids[-1] == eos
    assert eos not in held.token_ids[:5]
    [stopped] = llm.generate(prompt, SamplingParams(temperature=0.7, max_tokens=20, seed=4,
                                                    min_tokens=3, stop_token_ids=[33],
                                                    logit_bias={33: 100}))
    assert len(stopped.token_ids) == 4 and stopped.token_ids[-1] == 33


@pytest.mark.parametrize(("fields", "name"), [
    ({"logit_bias": {5: 101}}, "logit_bias"), ({"logit_bias": {-1: 1}}, "logit_bias"),
    ({"logit_bias": {5: "x"}}, "logit_bias"), ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": [1, -2]}, "allowed_token_ids"),
])
def test_bad_sampling_fields_name_the_field(fields, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        SamplingParams(**fields)


@pytest.mark.parametrize("fields", [{"logit_bias": {4096: 1.0}},
                                    {"allowed_token_ids": [1, 2048]}])
def test_token_ids_outside_the_vocabulary_are_refused(llm, fields):
    name = next(iter(fields))
    with pytest.raises(ValueError, match=f"^{name} holds token ids outside"):
        llm.engine.add_request([1, 2, 3], SamplingParams(**fields))
    [out] = llm.generate([1, 2, 3], SamplingParams(**fields))
    assert out.finish_reason == "error" and out.error.startswith(name)
