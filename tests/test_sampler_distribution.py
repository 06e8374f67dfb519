"""The sampler's draws follow the exact filtered softmax (chi-square, fixed seeds), on the
candidate window, on the full-vocabulary path and on the full-sort fallback."""

from __future__ import annotations

import math

import pytest
import torch

from jupyter_qwen.engine import sampler as sampler_module
from jupyter_qwen.engine.sampler import (
    TIE_MARGIN,
    TOP_P_WINDOW,
    apply_min_p,
    apply_top_k,
    apply_top_p,
    build_sampling_batch,
    sample,
)
from jupyter_qwen.engine.sequence import Sequence
from jupyter_qwen.sampling_params import SamplingParams

DRAWS = 20_000
Z_FOR_P_1E4 = 3.719  # one-sided normal quantile for p = 1e-4


def chi2_critical(df: int) -> float:
    """The chi-square quantile at p = 1e-4 (Wilson-Hilferty; within 1 % for df >= 3)."""
    h = 2 / (9 * df)
    return df * (1 - h + Z_FOR_P_1E4 * math.sqrt(h)) ** 3


def chi2_statistic(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic, categories with expected count < 5 pooled; (statistic, df).
    A draw where the reference gives probability 0 makes the statistic infinite."""
    expected = probs.double() * counts.sum()
    if (counts[expected == 0] > 0).any():
        return math.inf, 1
    small = expected < 5
    observed = torch.cat([counts[~small].double(), counts[small].double().sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    used = expected > 0
    observed, expected = observed[used], expected[used]
    return float(((observed - expected) ** 2 / expected).sum()), int(used.sum()) - 1


def filtered_softmax(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The reference: temperature, top-k, top-p, min-p by full sort, renormalised."""
    scaled = logits[None] / params.temperature
    vocab = logits.shape[-1]
    scaled = apply_top_k(scaled, torch.tensor([params.top_k or vocab]))
    scaled = apply_top_p(scaled, torch.tensor([params.top_p]))
    probs = apply_min_p(scaled.softmax(-1), torch.tensor([params.min_p]))[0]
    return probs / probs.sum()


def draw(logits: torch.Tensor, params: SamplingParams, draws: int = DRAWS,
         seeded: bool = True) -> torch.Tensor:
    """Token counts from `draws` rows of one batch, each its own request (seed = row)."""
    seqs = []
    for row in range(draws):
        row_params = SamplingParams(**{**_fields(params), "seed": row if seeded else None})
        seqs.append(Sequence(str(row), [0], row_params))
    batch = build_sampling_batch(seqs, logits.shape[-1], torch.device("cpu"))
    tokens = sample(logits.expand(draws, -1).contiguous(), batch).token_ids
    return torch.bincount(torch.tensor(tokens), minlength=logits.shape[-1])


def _fields(params: SamplingParams) -> dict:
    return {name: getattr(params, name) for name in ("temperature", "top_k", "top_p", "min_p")}


def fixed_row(vocab: int = 64, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * scale


CASES = {
    "temperature": SamplingParams(temperature=0.8),
    "top_k": SamplingParams(temperature=1.0, top_k=5),
    "top_p": SamplingParams(temperature=0.9, top_p=0.7),
    "min_p": SamplingParams(temperature=1.0, min_p=0.05),
    "top_k_top_p": SamplingParams(temperature=0.6, top_k=20, top_p=0.95),
    "top_k_min_p": SamplingParams(temperature=1.2, top_k=12, min_p=0.1),
    "top_p_min_p": SamplingParams(temperature=1.0, top_p=0.8, min_p=0.02),
    "all_three": SamplingParams(temperature=0.7, top_k=10, top_p=0.9, min_p=0.05),
}


@pytest.mark.parametrize("case", list(CASES))
def test_draws_follow_the_filtered_softmax(case):
    params = CASES[case]
    logits = fixed_row()
    counts = draw(logits, params)
    statistic, df = chi2_statistic(counts, filtered_softmax(logits, params))
    assert statistic < chi2_critical(df), (case, statistic, df)


def test_the_check_rejects_the_unfiltered_distribution():
    """The chi-square check has the power to see a missing filter."""
    logits = fixed_row()
    params = CASES["top_k_top_p"]
    counts = draw(logits, params)
    unfiltered = SamplingParams(temperature=params.temperature)
    statistic, df = chi2_statistic(counts, filtered_softmax(logits, unfiltered))
    assert statistic > chi2_critical(df)
    counts = draw(logits, unfiltered, seeded=False)
    statistic, df = chi2_statistic(counts, filtered_softmax(logits, params))
    assert statistic > chi2_critical(df)


def test_unseeded_rows_follow_the_filtered_softmax():
    torch.manual_seed(1)
    params = CASES["all_three"]
    logits = fixed_row(seed=3)
    statistic, df = chi2_statistic(draw(logits, params, seeded=False),
                                   filtered_softmax(logits, params))
    assert statistic < chi2_critical(df)


def count_fallbacks(monkeypatch) -> list[int]:
    calls = []
    original = sampler_module.sorted_tokens

    def spy(logits, batch, rows):
        calls.append(len(rows))
        return original(logits, batch, rows)

    monkeypatch.setattr(sampler_module, "sorted_tokens", spy)
    return calls


def test_top_p_mass_outside_the_window_falls_back_exactly(monkeypatch):
    """A flat row over a vocabulary wider than the top-p window: 0.9 of the mass is not
    inside the window, so each row is redone with the full sort."""
    calls = count_fallbacks(monkeypatch)
    logits = fixed_row(vocab=4 * TOP_P_WINDOW, seed=5, scale=0.3)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    counts = draw(logits, params, draws=8000)
    assert sum(calls) == 8000
    statistic, df = chi2_statistic(counts, filtered_softmax(logits, params))
    assert statistic < chi2_critical(df)


def test_top_p_inside_the_window_needs_no_fallback(monkeypatch):
    calls = count_fallbacks(monkeypatch)
    logits = fixed_row(vocab=4 * TOP_P_WINDOW, seed=6, scale=4.0)
    params = SamplingParams(temperature=1.0, top_p=0.8)
    counts = draw(logits, params)
    assert calls == []
    statistic, df = chi2_statistic(counts, filtered_softmax(logits, params))
    assert statistic < chi2_critical(df)


def test_a_tie_run_past_the_window_falls_back_and_keeps_every_tie(monkeypatch):
    """top-k keeps every token tied with the k-th; a tie run longer than the margin reaches
    past the window, so the row is redone with the full sort."""
    calls = count_fallbacks(monkeypatch)
    ties = 4 * TIE_MARGIN  # past top_k + TIE_MARGIN, even rounded up to a power of two
    logits = torch.cat([torch.tensor([3.0, 2.5]), torch.full((ties,), 1.0),
                        torch.full((30,), -1.0)])
    params = SamplingParams(temperature=1.0, top_k=3)
    counts = draw(logits, params, draws=10_000)
    assert sum(calls) == 10_000
    reference = filtered_softmax(logits, params)
    assert int((reference > 0).sum()) == ties + 2
    statistic, df = chi2_statistic(counts, reference)
    assert statistic < chi2_critical(df)


def test_top_k_one_and_tiny_top_p_equal_greedy():
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(7)) * 2
    greedy = logits.argmax(-1).tolist()
    for params in (SamplingParams(temperature=1.3, top_k=1),
                   SamplingParams(temperature=1.3, top_p=1e-6),
                   SamplingParams(temperature=0.9, top_k=40, top_p=1e-6),
                   SamplingParams(temperature=0.9, min_p=1.0)):
        seqs = [Sequence(str(i), [0], params) for i in range(64)]
        batch = build_sampling_batch(seqs, 300, torch.device("cpu"))
        assert sample(logits, batch).token_ids == greedy, params


def test_a_seeded_row_draws_the_same_whatever_the_batch():
    """The same seeded request alone, among 63 unseeded rows with other filters, and with a
    wider window (another row's larger top-k) draws the same tokens."""
    logits = fixed_row(vocab=600, seed=8, scale=3.0)
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.95, seed=77)

    def run(others: list[SamplingParams]) -> list[int]:
        seq = Sequence("seeded", [0], params)
        tokens = []
        for _ in range(30):
            seqs = [Sequence(str(i), [0], p) for i, p in enumerate(others)] + [seq]
            batch = build_sampling_batch(seqs, 600, torch.device("cpu"))
            tokens.append(sample(logits.expand(len(seqs), -1), batch).token_ids[-1])
        return tokens

    alone = run([])
    mixed = [SamplingParams(temperature=t, top_k=k, top_p=p)
             for t, k, p in zip([0.0, 0.5, 1.0, 1.5] * 16, [0, 5, 300, 50] * 16,
                                [1.0, 0.5, 0.9, 1.0] * 16, strict=True)][:63]
    assert run(mixed) == alone
    assert len(set(alone)) > 3


def test_seeded_keys_on_the_device_and_in_numpy_equal_the_python_reference():
    import numpy as np

    from jupyter_qwen.engine.sampling_noise import (
        MASK32,
        seeded_row_key,
        seeded_row_keys,
        seeded_row_keys_host,
    )

    seeds = [0, 1, 77, 2**32 - 1, 2**32, 2**63 + 12345, 2**64 - 1]
    draws = [0, 1, 5, 1000, 2**31, 7, 3]
    halves = torch.tensor([[s & MASK32, s >> 32] for s in seeds])
    keys = seeded_row_keys(halves, torch.tensor(draws)).tolist()
    assert keys == [list(seeded_row_key(s, d)) for s, d in zip(seeds, draws, strict=True)]
    assert len({tuple(k) for k in keys}) == len(keys)
    host = seeded_row_keys_host(np.array(seeds, dtype=np.uint64), np.array(draws, np.uint64))
    assert host.tolist() == keys


def test_every_seed_and_draw_has_its_own_noise():
    """Row keys for 64 seeds x 64 draws are distinct, and their uniforms look uniform."""
    from jupyter_qwen.engine.sampling_noise import row_uniform, seeded_row_key

    keys = torch.tensor([seeded_row_key(seed, draw) for seed in range(64) for draw in range(64)])
    assert len({tuple(k) for k in keys.tolist()}) == 64 * 64
    counts = torch.histc(row_uniform(keys).float(), bins=16, min=0, max=1)
    statistic, df = chi2_statistic(counts, torch.full((16,), 1 / 16))
    assert statistic < chi2_critical(df)


def test_a_top_p_cut_inside_a_tie_keeps_the_whole_tie():
    """Top-p reached halfway through a run of tied tokens keeps all of them, on the window, on
    the full-sort fallback and in the reference, and whatever order the ties are listed in;
    a cut by position would keep a sort-order-dependent subset."""
    tied = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, -1.0, -2.0] + [-4.0] * 57)
    probs = tied.softmax(-1)
    params = SamplingParams(temperature=1.0, top_p=float(probs[0] + 1.5 * probs[1]))
    for logits in (tied, tied.flip(0), tied[torch.randperm(64, generator=torch.Generator()
                                                           .manual_seed(2))]):
        reference = filtered_softmax(logits, params)
        assert int((reference > 0).sum()) == 5
        counts = draw(logits, params, draws=8000)
        statistic, df = chi2_statistic(counts, reference)
        assert statistic < chi2_critical(df), (statistic, df)
        kept = apply_top_p(logits[None], torch.tensor([params.top_p]))[0] > float("-inf")
        assert kept.tolist() == (logits >= 1.0).tolist()


def test_a_tie_run_past_the_top_p_window_falls_back(monkeypatch):
    """The tie at the top-p cut reaches past the window's last candidate: the window cannot
    know the whole run, so the row is redone with the full sort."""
    calls = count_fallbacks(monkeypatch)
    logits = torch.cat([torch.tensor([6.0]), torch.full((2 * TOP_P_WINDOW,), 1.0)])
    params = SamplingParams(temperature=1.0, top_p=float(logits.softmax(-1)[0]) + 0.01)
    counts = draw(logits, params, draws=2000)
    assert sum(calls) == 2000
    statistic, df = chi2_statistic(counts, filtered_softmax(logits, params))
    assert statistic < chi2_critical(df), (statistic, df)
