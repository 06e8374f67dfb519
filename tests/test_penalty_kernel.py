"""The one-pass penalty kernel (`engine/penalty_kernel.py`) against the torch path it replaces
(`PenaltyState.gather` + `apply_penalties`): bit for bit, since the kernel divides with
correct rounding and fuses no multiply-add. Compiled on a GPU, the interpreter on CPU; on a
GPU also the captured penalised draw against `sample` with the torch penalties."""

from __future__ import annotations

import pytest
import torch
from kernel_modes import COMPILED_ONLY, HAVE_TRITON
from test_graph_sampling import PENALISED, logits_of

from jupyter_qwen.engine import graph_sampling
from jupyter_qwen.engine.graph_sampling import GraphSampler
from jupyter_qwen.engine.penalty_state import PenaltyState
from jupyter_qwen.engine.sampler import (
    PenaltyBatch,
    apply_penalties,
    build_sampling_batch,
    penalise_rows,
    sample,
)
from jupyter_qwen.engine.sequence import Sequence

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")

PENALTIES = [  # repetition, presence, frequency: each kind alone, mixed, none
    (1.3, 0.0, 0.0), (0.8, 0.0, 0.0), (1.0, 1.5, 0.0), (1.0, 0.0, 0.7), (1.0, 0.0, -0.4),
    (1.05, 1.5, 0.0), (0.9, 0.3, 0.25), (1.0, 0.0, 0.0), (1.2, -0.5, 1.1),
]


def penalty_rows(count: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    chosen = [PENALTIES[row % len(PENALTIES)] for row in range(count)]
    return tuple(torch.tensor(column, dtype=torch.float32, device=device)
                 for column in zip(*chosen, strict=True))


def random_state(capacity: int, vocab: int, generator: torch.Generator,
                 device: torch.device) -> PenaltyState:
    """Sparse output counts (most tokens unseen, a few seen many times) and prompt marks."""
    state = PenaltyState(vocab, device)
    state.reserve(capacity)
    counts = torch.randint(1, 6, (capacity, vocab), generator=generator, dtype=torch.int32)
    counts *= torch.rand(capacity, vocab, generator=generator) < 0.1
    state.output_counts.copy_(counts)
    state.in_prompt.copy_(torch.rand(capacity, vocab, generator=generator) < 0.1)
    return state


def random_logits(rows: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Positive and negative logits, with exact zeros and bf16-rounded ties."""
    logits = (torch.randn(rows, vocab, generator=generator) * 4).bfloat16().float()
    return logits.masked_fill(torch.rand(rows, vocab, generator=generator) < 0.01, 0.0)


def random_slots(rows: int, capacity: int, generator: torch.Generator) -> torch.Tensor:
    """Distinct slots in random order, about a third of the rows without one (-1)."""
    slots = torch.randperm(capacity, generator=generator)[:rows]
    return slots.masked_fill(torch.rand(rows, generator=generator) < 0.35, -1)


def torch_path(logits: torch.Tensor, slots: torch.Tensor, params: tuple[torch.Tensor, ...],
               state: PenaltyState) -> torch.Tensor:
    """Today's path: gather the rows, then `apply_penalties`; rows without a slot copied."""
    counts, seen = state.gather(slots.clamp(min=0).long())
    penalised = apply_penalties(logits.clone(), PenaltyBatch(*params, counts, seen))
    return torch.where((slots >= 0)[:, None], penalised, logits)


@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_the_kernel_equals_the_torch_path_bit_for_bit(mode, generator, slot_dtype):
    from jupyter_qwen.engine.penalty_kernel import BLOCK, penalise_in_one_kernel

    device = torch.device(mode.device)
    rows, vocab = mode.pick((12, 3 * BLOCK - 77), (256, 151_936))
    assert vocab % BLOCK  # the last block of each row is partly outside the vocabulary
    capacity = rows + 5
    state = random_state(capacity, vocab, generator, device)
    logits = random_logits(rows, vocab, generator).to(device)
    slots = random_slots(rows, capacity, generator).to(device)
    params = penalty_rows(rows, device)
    out = torch.full_like(logits, float("nan"))  # every entry must be written
    got = penalise_in_one_kernel(logits, slots.to(slot_dtype), *params, state.output_counts,
                                 state.in_prompt, out)
    expected = torch_path(logits, slots, params, state)
    assert got is out
    assert torch.equal(got, expected), (got != expected).sum().item()
    assert not torch.equal(got[slots >= 0], logits[slots >= 0])  # penalties did apply


def test_rows_without_a_slot_stay_whatever_their_parameters(mode, generator):
    """A row with slot -1 is copied, even with non-neutral parameters; in place too."""
    from jupyter_qwen.engine.penalty_kernel import penalise_in_one_kernel

    device = torch.device(mode.device)
    rows, vocab = 9, mode.pick(1500, 151_936)
    state = random_state(4, vocab, generator, device)
    logits = random_logits(rows, vocab, generator).to(device)
    slots = torch.tensor([-1, 0, -1, 3, -1, -1, 2, -1, 1], device=device)
    params = penalty_rows(rows, device)
    expected = torch_path(logits, slots, params, state)
    original = logits.clone()
    got = penalise_in_one_kernel(logits, slots, *params, state.output_counts, state.in_prompt,
                                 out=logits)
    assert got is logits and torch.equal(got, expected)
    assert torch.equal(got[slots < 0], original[slots < 0])
    cpu_state = PenaltyState(vocab, torch.device("cpu"))
    cpu_state.reserve(4)
    cpu_state.output_counts.copy_(state.output_counts.cpu())
    cpu_state.in_prompt.copy_(state.in_prompt.cpu())
    on_cpu = penalise_rows(original.cpu(), slots.cpu(),
                           PenaltyBatch(*(p.cpu() for p in params), None, None), cpu_state)
    assert torch.equal(on_cpu, expected.cpu())  # the CPU path keeps the same contract


def test_bad_inputs_are_refused():
    from jupyter_qwen.engine.penalty_kernel import penalise_in_one_kernel

    state = PenaltyState(64, torch.device("cpu"))
    state.reserve(2)
    logits, slots = torch.zeros(2, 64), torch.tensor([0, 1])
    params = penalty_rows(2, torch.device("cpu"))
    for bad in (dict(logits=logits.double()), dict(slots=slots.float()),
                dict(logits=torch.zeros(2, 65)), dict(slots=torch.tensor([0, 1, 1]))):
        arguments = dict(logits=logits, slots=slots) | bad
        with pytest.raises(ValueError):
            penalise_in_one_kernel(arguments["logits"], arguments["slots"], *params,
                                   state.output_counts, state.in_prompt)


@pytest.mark.gpu
@COMPILED_ONLY
def test_captured_penalised_draws_equal_sample_with_the_torch_penalties(monkeypatch):
    """Several steps of penalised, plain and greedy rows at Qwen3's vocabulary: the captured
    draw (the kernel, inside a CUDA graph) and `sample` with a penalty state (the kernel,
    eagerly) give the tokens of `sample` with counts built from the token lists (the torch
    penalties), on the same GPU. One step's tie runs make the captured draw redo two rows
    (penalised again by the kernel, outside the graph); at this vocabulary the top-p-only
    row's mass often reaches past the window too, and is redone alike."""
    cuda = torch.device("cuda")
    vocab, size = 151_936, 8
    generator = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, vocab, (40,), generator=generator).tolist() for _ in PENALISED]
    graph, eager, reference = ([Sequence(str(i), list(p), q) for i, (p, q) in
                                enumerate(zip(prompts, PENALISED, strict=True))]
                               for _ in range(3))
    graph_state, eager_state = PenaltyState(vocab, cuda), PenaltyState(vocab, cuda)
    graph_state.reserve(size)
    logits = torch.empty(size, vocab, device=cuda)
    sampler = GraphSampler({size: logits}, cuda, graph_state)
    sampler.capture()
    redone = []
    original = graph_sampling.sorted_tokens
    monkeypatch.setattr(graph_sampling, "sorted_tokens",
                        lambda logits, rows, index: redone.append(index.tolist())
                        or original(logits, rows, index))
    for step in range(8):
        logits.copy_(logits_of(size, vocab, seed=20 + step))
        if step == 3:  # tie runs across the window's edge at the top-k cut
            logits[:2] = torch.cat([torch.tensor([5.0]), torch.full((vocab - 1,), 1.0)])
        redone.clear()
        drawn = sampler.draw(graph, size)
        assert step != 3 or {0, 1} <= set(*redone), redone
        rows = logits[:len(PENALISED)]
        expected = sample(rows.clone(), build_sampling_batch(reference, vocab, cuda)).token_ids
        with_state = build_sampling_batch(eager, vocab, cuda, eager_state)
        assert with_state.penalties.slots is not None  # the kernel path
        assert sample(rows.clone(), with_state).token_ids == expected, step
        assert drawn == expected, step
        for seqs in (graph, eager, reference):
            for seq, token in zip(seqs, drawn, strict=True):
                seq.token_ids.append(token)
    sampler.close()


def test_the_benchmark_checks_every_variant_before_timing_it(mode, monkeypatch):
    """benchmarks/penalty_kernel.py's check passes the kernel and reports a variant that
    computes something else (small vocabulary; the timing itself needs a GPU)."""
    from test_benchmarks import load_benchmark

    bench = load_benchmark("penalty_kernel")
    monkeypatch.setattr(bench, "DEVICE", mode.device)
    monkeypatch.setattr(bench, "VOCAB", mode.pick(2000, bench.VOCAB))
    state = bench.random_state()
    for rows in (1, 8):
        assert bench.check(rows, state, 1024) == ""
    kernel = bench.penalise_in_one_kernel
    monkeypatch.setattr(bench, "penalise_in_one_kernel",
                        lambda *args, **kwargs: kernel(*args, **kwargs).mul_(1.0001))
    assert "entries differ" in bench.check(8, state, 1024)
