"""Constrained requests where the engine is under pressure, on the demo model: preempted for
lack of KV blocks, prefilled in chunks beside decoding rows, aborted halfway, and batched
with other requests that each carry their own schema. Every finished output must match its
own grammar, and every block and grammar matcher must be given back."""

from __future__ import annotations

import gc
import json
import random
import weakref

import httpx
import jsonschema
import pytest
from server_waits import wait_idle

from jupyter_qwen import LLM, SamplingParams, serve
from jupyter_qwen.sampling_params import StructuredOutputs

pytest.importorskip("xgrammar")


def digits_schema(key: str, count: int) -> dict:
    """An object whose one field holds exactly `count` digits: long, bounded output."""
    return {"type": "object", "additionalProperties": False, "required": [key],
            "properties": {key: {"type": "array", "minItems": count, "maxItems": count,
                                 "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}


def constrained(schema: dict, seed: int, max_tokens: int = 400) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens,
                          structured_outputs=StructuredOutputs(json=schema))


def prompt(llm: LLM, length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(length)]


def assert_matches(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema)


def assert_idle(llm: LLM) -> None:
    stats = llm.engine.stats()
    assert stats.requests_running == stats.requests_waiting == 0
    assert stats.num_free_blocks == stats.num_kv_blocks


def test_preempted_constrained_requests_still_match_their_grammar(demo_model):
    """Eight requests of about 100 tokens each share 20 blocks of 16 tokens: some are
    preempted and recomputed, and their matchers carry on from the tokens they kept."""
    schemas = [digits_schema(f"k{i}", 30 + i) for i in range(8)]
    with LLM(demo_model, num_kv_blocks=20, max_model_len=256, max_num_seqs=8) as llm:
        engine = llm.engine
        seqs = [engine.add_request(prompt(llm, 20, i), constrained(schema, i))
                for i, schema in enumerate(schemas)]
        while engine.has_unfinished_requests():
            engine.step()
        assert engine.stats().num_preemptions > 0, "20 blocks were meant to force preemption"
        for seq, schema in zip(seqs, schemas, strict=True):
            assert seq.finish_reason == "stop", seq.finish_reason
            assert_matches(llm.tokenizer.decode(seq.output_token_ids,
                                                skip_special_tokens=True), schema)
        assert any(seq.num_preemptions for seq in seqs)
        assert_idle(llm)


def test_a_long_prompt_prefilled_in_chunks_keeps_its_schema(demo_model):
    """A 700-token prompt in chunks of at most 64 tokens, while two other constrained rows
    decode in the same steps: the chunks sample nothing, so its matcher starts at the first
    real token, and the rows' bitmasks stay on their own rows."""
    long_schema, short_schema = digits_schema("long", 12), digits_schema("short", 20)
    with LLM(demo_model, max_num_batched_tokens=64, max_num_seqs=8,
             max_model_len=1024) as llm:
        engine = llm.engine
        others = [engine.add_request(prompt(llm, 10, 100 + i), constrained(short_schema, i))
                  for i in range(2)]
        engine.step()
        seq = engine.add_request(prompt(llm, 700, 7), constrained(long_schema, 7))
        chunks = []
        while seq.num_computed_tokens < 700:
            before = seq.num_computed_tokens
            engine.step()
            chunks.append(seq.num_computed_tokens - before)
        assert max(chunks) <= 64 and len(chunks) >= 700 // 64
        while engine.has_unfinished_requests():
            engine.step()
        decode = lambda s: llm.tokenizer.decode(s.output_token_ids,  # noqa: E731
                                                skip_special_tokens=True)
        assert_matches(decode(seq), long_schema)
        for other in others:
            assert_matches(decode(other), short_schema)
        assert_idle(llm)


def test_an_aborted_constrained_request_gives_back_its_blocks_and_matcher(demo_model):
    schema = digits_schema("k", 60)
    with LLM(demo_model, max_model_len=512) as llm:
        engine = llm.engine
        seqs = [engine.add_request(prompt(llm, 40, i), constrained(schema, i))
                for i in range(3)]
        for _ in range(5):
            engine.step()
        matcher = weakref.ref(seqs[1].constraint.matcher)
        assert engine.abort(seqs[1].request_id).finish_reason == "abort"
        assert seqs[1].constraint is None
        gc.collect()
        assert matcher() is None, "the aborted request's grammar matcher is still alive"
        while engine.has_unfinished_requests():
            engine.step()
        for seq in (seqs[0], seqs[2]):
            assert_matches(llm.tokenizer.decode(seq.output_token_ids,
                                                skip_special_tokens=True), schema)
        assert_idle(llm)


def test_distinct_schemas_in_one_batch_each_keep_their_own(demo_model):
    """Twelve requests, twelve schemas (different keys, lengths, enums and nesting), all
    decoding in the same steps."""
    schemas = [{"type": "object", "additionalProperties": False,
                "required": [f"name{i}", "level", "inner"],
                "properties": {f"name{i}": {"type": "string", "maxLength": 3 + i},
                               "level": {"enum": [f"L{i}", f"M{i}"]},
                               "inner": digits_schema(f"d{i}", 2 + i % 4)}}
               for i in range(12)]
    with LLM(demo_model, max_model_len=512) as llm:
        engine = llm.engine
        seqs = [engine.add_request(prompt(llm, 16, i), constrained(schema, i, 200))
                for i, schema in enumerate(schemas)]
        engine.step()
        engine.step()
        assert engine.stats().requests_running == 12
        assert len({id(seq.constraint.matcher) for seq in seqs}) == 12
        while engine.has_unfinished_requests():
            engine.step()
        for seq, schema in zip(seqs, schemas, strict=True):
            assert seq.finish_reason == "stop"
            assert_matches(llm.tokenizer.decode(seq.output_token_ids,
                                                skip_special_tokens=True), schema)
        assert_idle(llm)


def test_a_client_that_leaves_a_constrained_stream_does_not_stop_the_server(demo_model):
    """A streamed constrained request dropped after a few chunks is aborted: its blocks come
    back, and the next constrained request is answered and valid."""
    schema = digits_schema("k", 80)
    server = serve(demo_model, max_model_len=1024, progress=False)
    try:
        body = {"model": server.served_model_name, "prompt": "numbers:", "max_tokens": 400,
                "stream": True, "structured_outputs": {"json": schema}}
        with httpx.stream("POST", f"{server.url}/completions", json=body, timeout=120) as r:
            for index, _ in enumerate(r.iter_lines()):
                if index == 4:
                    break
        stats = wait_idle(server)
        assert stats["num_free_blocks"] == stats["num_kv_blocks"]
        assert not server.ctx.engine.engine.requests, "the aborted sequence is still held"
        answer = httpx.post(f"{server.url}/completions", timeout=120, json={
            **body, "stream": False, "structured_outputs": {"json": digits_schema("k", 5)}})
        assert_matches(answer.json()["choices"][0]["text"], digits_schema("k", 5))
    finally:
        server.stop()


def test_a_finished_grammar_with_ignore_eos_allows_only_its_end(demo_model):
    """ignore_eos generates past the grammar's end: the row may then write only the stop
    token, and the step (with another request in it) goes on instead of failing."""
    with LLM(demo_model, max_model_len=256) as llm:
        engine = llm.engine
        done = engine.add_request([5, 6, 7], SamplingParams(
            temperature=1.0, seed=1, max_tokens=12, ignore_eos=True,
            structured_outputs=StructuredOutputs(regex="ab")))
        other = engine.add_request([8, 9], SamplingParams(temperature=0, max_tokens=12,
                                                          ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        assert done.finish_reason == other.finish_reason == "length"
        ids = done.output_token_ids
        end = next(i for i, token in enumerate(ids) if token in engine.eos_token_ids)
        assert llm.tokenizer.decode(ids[:end]) == "ab"
        assert set(ids[end:]) <= set(engine.eos_token_ids)
        assert other.num_output_tokens == 12
        assert_idle(llm)


def test_between_steps_the_matcher_has_not_taken_the_new_token(demo_model):
    """The engine notes each sampled token on the constraint and the matcher takes it at
    the next step's bitmask fill, beside that step's forward pass; the output still
    follows the grammar to its end."""
    schema = digits_schema("k", 6)
    with LLM(demo_model, max_model_len=256) as llm:
        engine = llm.engine
        seq = engine.add_request([5, 6, 7], constrained(schema, 3))
        noted = []
        while engine.has_unfinished_requests():
            engine.step()
            if seq.constraint is not None and seq.output_token_ids:
                noted.append(seq.constraint.pending == seq.output_token_ids[-1:])
        assert noted and all(noted)
        assert seq.finish_reason == "stop"
        assert_matches(llm.tokenizer.decode(seq.output_token_ids, skip_special_tokens=True),
                       schema)
