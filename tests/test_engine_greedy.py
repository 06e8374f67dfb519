"""The engine's greedy tokens equal transformers' generate, whatever the scheduling."""

import random

import pytest
import torch

from jupyter_qwen import LLM, SamplingParams

NUM_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def hf_model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()


def hf_generate(hf_model, prompt: list[int], **kwargs) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                pad_token_id=0, **kwargs)
    return out[0, len(prompt):].tolist()


def hf_greedy(hf_model, prompt: list[int], num_new: int = NUM_NEW_TOKENS) -> list[int]:
    return hf_generate(hf_model, prompt, max_new_tokens=num_new, min_new_tokens=num_new,
                       eos_token_id=None)


@pytest.fixture(scope="module")
def mixed_prompts(hf_model):
    rng = random.Random(7)
    vocab = hf_model.config.vocab_size
    lengths = [1, 2, 3, 15, 16, 17, 31, 64, 100, 127, 128, 129, 200, 257, 301, 333]
    prompts = [[rng.randrange(vocab) for _ in range(n)] for n in lengths]
    return prompts, [hf_greedy(hf_model, p) for p in prompts]


@pytest.fixture(scope="module")
def shared_prefix_prompts(hf_model):
    rng = random.Random(11)
    vocab = hf_model.config.vocab_size
    system = [rng.randrange(vocab) for _ in range(150)]
    prompts = [system + [rng.randrange(vocab) for _ in range(rng.randint(1, 60))]
               for _ in range(16)]
    return prompts, [hf_greedy(hf_model, p) for p in prompts]


GREEDY = SamplingParams(temperature=0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True)

SCHEDULES = {
    "default": {},
    "few_seqs": {"max_num_seqs": 5},
    "chunked_prefill": {"max_num_batched_tokens": 48, "max_num_seqs": 16},
    "preemption": {"num_kv_blocks": 40, "max_model_len": 512},
    "no_prefix_cache_block_8": {"enable_prefix_caching": False, "block_size": 8},
    "everything_tight": {"max_num_seqs": 6, "max_num_batched_tokens": 40,
                         "num_kv_blocks": 36, "max_model_len": 512, "block_size": 16},
}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_greedy_matches_transformers(tiny_model_path, mixed_prompts, schedule):
    prompts, expected = mixed_prompts
    with LLM(tiny_model_path, **SCHEDULES[schedule]) as llm:
        outputs = llm.generate(prompts, GREEDY)
        stats = llm.engine.stats()
        assert stats.num_free_blocks == stats.num_kv_blocks
    for prompt, output, want in zip(prompts, outputs, expected, strict=True):
        assert output.token_ids == want, f"prompt of {len(prompt)} tokens diverged"
        assert output.finish_reason == "length"
    if "num_kv_blocks" in SCHEDULES[schedule]:
        assert stats.num_preemptions > 0, "the block budget was meant to force preemption"


def test_chunked_prefill_really_chunks(tiny_model_path, mixed_prompts):
    prompts, expected = mixed_prompts
    with LLM(tiny_model_path, max_num_batched_tokens=32, max_num_seqs=8) as llm:
        engine = llm.engine
        seq = engine.add_request(prompts[-1], GREEDY)
        chunk_sizes = []
        while seq.num_computed_tokens < len(prompts[-1]):
            before = seq.num_computed_tokens
            engine.step()
            chunk_sizes.append(seq.num_computed_tokens - before)
        assert max(chunk_sizes) <= 32 and len(chunk_sizes) >= len(prompts[-1]) // 32
        while engine.has_unfinished_requests():
            engine.step()
        assert seq.output_token_ids == expected[-1]


@pytest.mark.parametrize("schedule", ["default", "chunked_prefill", "preemption"])
def test_shared_system_prompt_hits_prefix_cache(tiny_model_path, shared_prefix_prompts,
                                                 schedule):
    prompts, expected = shared_prefix_prompts
    with LLM(tiny_model_path, **SCHEDULES[schedule]) as llm:
        first = llm.generate(prompts[:1], GREEDY)
        rest = llm.generate(prompts[1:], GREEDY)
        stats = llm.engine.stats()
        assert stats.num_free_blocks == stats.num_kv_blocks
    assert [o.token_ids for o in first + rest] == expected
    block = 16
    for output in rest:
        assert output.num_cached_tokens >= 150 // block * block
    assert stats.prefix_cache_hits >= 15 * (150 // block * block)


def test_eos_stops_like_transformers(tiny_model_path, hf_model, mixed_prompts):
    prompts, _ = mixed_prompts
    eos = hf_model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)
    want = [hf_generate(hf_model, p, max_new_tokens=64, eos_token_id=eos) for p in prompts]
    with LLM(tiny_model_path) as llm:
        outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=64))
    for output, expected in zip(outputs, want, strict=True):
        assert output.token_ids == expected
        assert output.finish_reason == ("stop" if expected[-1] in eos else "length")


def test_stop_token_ids_end_the_sequence_there(tiny_model_path, mixed_prompts):
    prompts, expected = mixed_prompts
    stop_at = {i: want[5 + i % 7] for i, want in enumerate(expected)}
    params = [SamplingParams(temperature=0, max_tokens=NUM_NEW_TOKENS, ignore_eos=True,
                             stop_token_ids=[stop_at[i]]) for i in range(len(prompts))]
    with LLM(tiny_model_path) as llm:
        outputs = llm.generate(prompts, params)
    for i, (output, want) in enumerate(zip(outputs, expected, strict=True)):
        cut = want.index(stop_at[i]) + 1
        assert output.token_ids == want[:cut]
        assert output.finish_reason == "stop"


def test_prompts_submitted_together_share_their_prefix_in_the_same_step(
        tiny_model_path, shared_prefix_prompts):
    prompts, expected = shared_prefix_prompts
    with LLM(tiny_model_path) as llm:
        outputs = llm.generate(prompts, GREEDY)
    assert [o.token_ids for o in outputs] == expected
    assert outputs[0].num_cached_tokens == 0
    assert all(o.num_cached_tokens >= 144 for o in outputs[1:])
