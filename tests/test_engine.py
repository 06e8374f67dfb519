"""Engine behaviour beyond greedy equality: caching, aborts, sampling, stops, errors, release."""

import gc
import random
import weakref

import pytest
import torch

from jupyter_qwen import LLM, EngineConfig, SamplingParams
from jupyter_qwen.engine.llm_engine import PromptTooLongError
from jupyter_qwen.model.loader import ModelNotFoundError


@pytest.fixture(scope="module")
def llm(tiny_model_path):
    with LLM(tiny_model_path, max_model_len=1024) as engine:
        yield engine


def random_prompt(llm, length, seed):
    rng = random.Random(seed)
    return [rng.randrange(llm.engine.vocab_size) for _ in range(length)]


def assert_idle(llm):
    stats = llm.engine.stats()
    assert stats.requests_running == stats.requests_waiting == 0
    assert stats.num_free_blocks == stats.num_kv_blocks


def test_repeated_prefix_is_not_recomputed(llm):
    prompt = random_prompt(llm, 200, seed=1)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    before = llm.engine.stats().computed_tokens_total
    [first] = llm.generate(prompt, params)
    first_cost = llm.engine.stats().computed_tokens_total - before
    [second] = llm.generate([*prompt, 5, 6, 7], params)
    second_cost = llm.engine.stats().computed_tokens_total - before - first_cost
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 192
    assert first_cost == 200 + 3
    assert second_cost == 203 - 192 + 3
    assert second.token_ids != [] and first.token_ids != []
    assert_idle(llm)


def test_fully_cached_prompt_still_computes_its_last_token(llm):
    prompt = random_prompt(llm, 64, seed=2)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    [first] = llm.generate(prompt, params)
    [again] = llm.generate(prompt, params)
    assert again.num_cached_tokens == 48
    assert again.token_ids == first.token_ids
    assert_idle(llm)


def test_aborted_requests_return_every_block(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    seqs = [engine.add_request(random_prompt(llm, 40 + i, seed=i), params) for i in range(6)]
    for _ in range(3):
        engine.step()
    assert engine.stats().num_free_blocks < engine.stats().num_kv_blocks
    aborted = engine.abort(seqs[2].request_id)
    assert aborted.finished and aborted.finish_reason == "abort"
    assert engine.abort("no-such-request") is None
    while engine.has_unfinished_requests():
        engine.step()
    assert seqs[2].num_output_tokens < 50
    assert all(seq.num_output_tokens == 50 for i, seq in enumerate(seqs) if i != 2)
    assert_idle(llm)


def test_abort_of_waiting_request(tiny_model_path):
    with LLM(tiny_model_path, max_num_seqs=1) as small:
        engine = small.engine
        params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
        first = engine.add_request([1, 2, 3], params)
        waiting = engine.add_request([4, 5, 6], params)
        engine.step()
        assert engine.stats().requests_waiting == 1
        engine.abort(waiting.request_id)
        while engine.has_unfinished_requests():
            engine.step()
        assert first.num_output_tokens == 5 and waiting.num_output_tokens == 0
        assert_idle(small)


def test_seeded_sampling_is_reproducible_across_batches(llm):
    prompt = random_prompt(llm, 30, seed=3)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=20,
                            ignore_eos=True)
    [alone] = llm.generate(prompt, params)
    others = [random_prompt(llm, 10 + i, seed=50 + i) for i in range(5)]
    batch = llm.generate([*others, prompt], [SamplingParams(temperature=1.0)] * 5 + [params])
    assert batch[-1].token_ids == alone.token_ids
    [other_seed] = llm.generate(prompt, SamplingParams(temperature=1.0, top_p=0.9, seed=99,
                                                        max_tokens=20, ignore_eos=True))
    assert other_seed.token_ids != alone.token_ids


def test_top_k_one_equals_greedy(llm):
    prompts = [random_prompt(llm, n, seed=n) for n in (5, 50, 120)]
    greedy = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    top1 = llm.generate(prompts, SamplingParams(temperature=0.8, top_k=1, max_tokens=16,
                                                ignore_eos=True))
    assert [o.token_ids for o in top1] == [o.token_ids for o in greedy]


def test_stop_strings_cut_the_text_exactly(llm):
    prompt = random_prompt(llm, 20, seed=4)
    base = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    [full] = llm.generate(prompt, base)
    text = full.text
    assert len(text) > 20
    stop = text[12:15]
    cut = text.find(stop)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop])
    [stopped] = llm.generate(prompt, params)
    assert stopped.text == text[:cut]
    assert stopped.finish_reason == "stop"
    assert len(stopped.token_ids) < len(full.token_ids)
    params.include_stop_str_in_output = True
    [kept] = llm.generate(prompt, params)
    assert kept.text == text[:cut + len(stop)]
    assert_idle(llm)


def test_logprobs_match_the_model_distribution(llm, tiny_model_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    prompt = random_prompt(llm, 25, seed=5)
    [out] = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, logprobs=3,
                                                ignore_eos=True))
    with torch.inference_mode():
        logits = hf(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1:-1]
    reference = logits.log_softmax(-1)
    assert len(out.logprobs) == 6
    for step, entry in enumerate(out.logprobs):
        assert entry.token_id == out.token_ids[step]
        assert entry.logprob == pytest.approx(reference[step, entry.token_id].item(), abs=1e-4)
        top_ids = reference[step].topk(3).indices.tolist()
        assert [token for token, _ in entry.top] == top_ids


def test_too_long_prompt_fails_alone(tiny_model_path):
    with LLM(tiny_model_path, max_model_len=64) as small:
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        outputs = small.generate([[1, 2, 3], list(range(100)), [4, 5]], params)
        assert outputs[1].finish_reason == "error"
        assert "max_model_len" in outputs[1].error and "100" in outputs[1].error
        assert [len(o.token_ids) for o in outputs] == [8, 0, 8]
        with pytest.raises(PromptTooLongError):
            small.engine.add_request(list(range(64)))
        [capped] = small.generate(list(range(60)), SamplingParams(max_tokens=50, ignore_eos=True))
        assert len(capped.token_ids) == 4 and capped.finish_reason == "length"
        assert_idle(small)


def test_bad_prompts_are_refused(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.engine.add_request([])
    with pytest.raises(ValueError, match="token ids"):
        llm.engine.add_request([1, llm.engine.vocab_size])
    with pytest.raises(ValueError, match="token ids"):
        llm.engine.add_request([1, -1])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_num_seqs", 0, r"max_num_seqs must be an integer in \[1, 4096\]"),
    ("gpu_memory_utilization", 1.5, r"gpu_memory_utilization must be a number in \(0, 1\]"),
    ("dtype", "int8", "dtype must be one of auto, bfloat16, float16, float32"),
    ("block_size", 12, "block_size must be one of 8, 16"),
    ("max_model_len", 1, r"max_model_len must be an integer in \[2, "),
    ("max_num_batched_tokens", 8, r"max_num_batched_tokens must be an integer in \[256, "),
    ("enforce_eager", "yes", "enforce_eager must be True or False"),
])
def test_engine_config_names_the_bad_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(model="some/model", **{field: value})


def test_unknown_engine_option_is_named():
    with pytest.raises(TypeError, match="max_num_seq"):
        EngineConfig.from_kwargs("some/model", max_num_seq=3)


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -3), ("min_p", 2.0),
    ("max_tokens", 0), ("max_tokens", -5), ("repetition_penalty", 0.0), ("logprobs", 50),
    ("presence_penalty", 3.0), ("seed", -1),
])
def test_sampling_params_name_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_unknown_model_gets_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a checkpoint folder"):
        LLM(str(tmp_path / "missing" / "here"))
    with pytest.raises(ModelNotFoundError, match=r"holds no config\.json"):
        LLM(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache") as caught:
        LLM("nobody/no-such-model-anywhere")
    assert "huggingface-cli download nobody/no-such-model-anywhere" in caught.value.hint


def test_kv_cache_too_small_for_max_model_len(tiny_model_path):
    with pytest.raises(ValueError, match="lower max_model_len"):
        LLM(tiny_model_path, max_model_len=1024, num_kv_blocks=10)


def test_close_releases_every_tensor(tiny_model_path):
    llm = LLM(tiny_model_path)
    llm.generate([[1, 2, 3]] * 3, SamplingParams(temperature=0.7, seed=1, max_tokens=4))
    runner = llm.engine.runner
    tensors = [*runner.model.parameters(), *runner.model.buffers(), runner.kv_cache]
    tensors += [a.k_cache for a in runner.model.attention_layers()]
    refs = [weakref.ref(t) for t in tensors]
    del tensors, runner
    llm.close()
    llm.close()
    gc.collect()
    alive = [ref() for ref in refs if ref() is not None]
    assert not alive, f"{len(alive)} engine tensors still alive after close()"
    assert llm.engine.runner is None
