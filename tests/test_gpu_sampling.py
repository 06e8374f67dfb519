"""The sampler on a CUDA GPU: the same distribution and seeding checks as on the CPU, the GPU's
draws against the CPU's, and no kernel compiles after start-up with sampled batches. Skipped
without CUDA."""

from __future__ import annotations

import random

import pytest
import torch
from test_sampler_distribution import (
    CASES,
    chi2_critical,
    chi2_statistic,
    filtered_softmax,
    fixed_row,
)

from jupyter_qwen import LLM, SamplingParams
from jupyter_qwen.engine.sampler import build_sampling_batch, sample
from jupyter_qwen.engine.sequence import Sequence

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")
QWEN3 = {"temperature": 0.6, "top_k": 20, "top_p": 0.95}


def draw_on(device: torch.device, logits: torch.Tensor, params: SamplingParams,
            draws: int = 20_000) -> list[int]:
    seqs = [Sequence(str(row), [0], SamplingParams(
        temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
        min_p=params.min_p, seed=row)) for row in range(draws)]
    batch = build_sampling_batch(seqs, logits.shape[-1], device)
    return sample(logits.to(device).expand(draws, -1).contiguous(), batch).token_ids


@pytest.mark.parametrize("case", list(CASES))
def test_gpu_draws_follow_the_filtered_softmax_and_match_the_cpu(case):
    params = CASES[case]
    logits = fixed_row()
    on_gpu = draw_on(CUDA, logits, params)
    counts = torch.bincount(torch.tensor(on_gpu), minlength=logits.shape[-1])
    statistic, df = chi2_statistic(counts, filtered_softmax(logits, params))
    assert statistic < chi2_critical(df), (case, statistic, df)
    on_cpu = draw_on(torch.device("cpu"), logits, params)
    same = sum(a == b for a, b in zip(on_gpu, on_cpu, strict=True)) / len(on_cpu)
    assert same > 0.999, f"{case}: seeded draws agree on only {same:.4f} of rows"


def test_gpu_fallback_rows_and_real_vocabulary():
    """A Qwen3-sized vocabulary in bf16-rounded logits (ties are common): top-k 20 rows
    settle in the window, top-p-only rows of a flat distribution fall back; all follow the
    reference."""
    vocab = 151_936
    logits = (torch.randn(vocab, generator=torch.Generator().manual_seed(1)) * 3).bfloat16()
    logits = logits.float()
    for params in (SamplingParams(**QWEN3), SamplingParams(temperature=1.0, top_p=0.5)):
        counts = torch.bincount(torch.tensor(draw_on(CUDA, logits, params, 2000)),
                                minlength=vocab)
        statistic, df = chi2_statistic(counts, filtered_softmax(logits, params))
        assert statistic < chi2_critical(df), (params, statistic, df)


def test_gpu_seeded_request_alone_in_a_batch_and_after_preemption(tiny_model_path):
    """float32 weights keep the logits' batch variance far below the sampler's resolution;
    a divergence here means the sampler's draws depend on the batch."""
    rng = random.Random(3)
    prompt = [rng.randrange(2000) for _ in range(40)]
    seeded = SamplingParams(**QWEN3, seed=11, max_tokens=24, ignore_eos=True,
                            presence_penalty=1.5, repetition_penalty=1.05)
    others = [[rng.randrange(2000) for _ in range(rng.randint(20, 30))] for _ in range(64)]
    unseeded = SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True)
    with LLM(tiny_model_path, dtype="float32", max_model_len=512) as llm:
        [alone] = llm.generate(prompt, seeded)
        batch = llm.generate([*others, prompt], [unseeded] * 64 + [seeded])
    assert batch[-1].token_ids == alone.token_ids
    with LLM(tiny_model_path, dtype="float32", num_kv_blocks=40, max_model_len=512) as small:
        engine = small.engine
        for other in others[:16]:
            engine.add_request(other, unseeded)
        seq = engine.add_request(prompt, seeded)
        while engine.has_unfinished_requests():
            engine.step()
    assert seq.num_preemptions > 0 and seq.output_token_ids == alone.token_ids


def test_no_kernel_compiles_after_start_up_with_sampled_batches(tmp_path):
    from test_gpu import drop_compiled_kernels
    from triton import knobs

    from jupyter_qwen.testing import make_tiny_qwen3

    path = make_tiny_qwen3(tmp_path / "model", shape="qwen3-0.6b", num_hidden_layers=2)
    drop_compiled_kernels()
    compiled = []
    rng = random.Random(6)
    prompts = [[rng.randrange(10000) for _ in range(rng.randint(1, 1024))] for _ in range(64)]
    kinds = [{}, {"presence_penalty": 1.5, "repetition_penalty": 1.05}, {"seed": 5},
             {"logit_bias": {7: 5.0}, "min_tokens": 3}, {"top_k": 0, "top_p": 0.9},
             {"top_k": 0, "top_p": 1.0}]
    params = [SamplingParams(**{**QWEN3, **kinds[i % len(kinds)]},
                             max_tokens=rng.randint(3, 200), ignore_eos=True, detokenize=False)
              for i in range(len(prompts))]
    with LLM(str(path), dtype="bfloat16", max_model_len=2048, gpu_memory_utilization=0.3,
             max_num_seqs=256, max_num_batched_tokens=512) as llm:
        knobs.runtime.jit_cache_hook = lambda *, fn, **_: compiled.append(fn.name)
        try:
            llm.generate(prompts, params)
            llm.generate(prompts[:1], SamplingParams(**QWEN3, max_tokens=20, detokenize=False))
        finally:
            knobs.runtime.jit_cache_hook = None
    assert compiled == [], f"kernels compiled while serving sampled batches: {compiled}"


def test_gpu_captured_draws_equal_the_eager_sampler_in_the_engine(tiny_model_path):
    """Seeded requests of every captured shape, penalised or not, with logit adjustments
    (bias, min_tokens, allowed tokens, a grammar) or not, give the same tokens whether their
    decode steps draw inside the CUDA graphs or through `sample` on the same logits."""
    from jupyter_qwen.sampling_params import StructuredOutputs

    rng = random.Random(9)
    prompts = [[rng.randrange(2000) for _ in range(rng.randint(5, 60))] for _ in range(24)]
    kinds = [dict(QWEN3), {"temperature": 0.9, "top_p": 0.8}, {"temperature": 1.0, "top_k": 90},
             {**QWEN3, "min_p": 0.05}, {"temperature": 0.0},
             {**QWEN3, "presence_penalty": 1.5, "repetition_penalty": 1.05},
             {"temperature": 0.0, "frequency_penalty": 0.5},
             {**QWEN3, "logit_bias": {5: 3.0, 9: -2.0}, "min_tokens": 6},
             {"temperature": 0.0, "allowed_token_ids": list(range(100, 400))},
             {**QWEN3, "structured_outputs": StructuredOutputs(regex="[a-z ]{4,60}")},
             {"temperature": 0.0, "structured_outputs": StructuredOutputs(choice=["yes", "no"])}]
    params = [SamplingParams(**kinds[row % len(kinds)], seed=row, max_tokens=16,
                             ignore_eos=True) for row in range(len(prompts))]
    with LLM(tiny_model_path, dtype="float32", max_model_len=512) as llm:
        sampler = llm.engine.runner.graph_sampler
        assert sampler is not None and sampler.graphs
        drawn_in_graphs = []
        draw = sampler.draw
        sampler.draw = lambda seqs, size, *adjustments: drawn_in_graphs.append(len(seqs)) \
            or draw(seqs, size, *adjustments)
        captured = [out.token_ids for out in llm.generate(prompts, params)]
        sampler.draw = lambda seqs, size, *adjustments: None
        eager = [out.token_ids for out in llm.generate(prompts, params)]
    assert sum(drawn_in_graphs) > len(prompts) * 10
    assert captured == eager
