"""Structured-output pieces of benchmarks/throughput.py `--structured`: each request's own JSON
schema, compiling a workload's schemas before the timed run, the compile time of a 20-field
schema, and a check that constrained outputs really follow their grammar."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

STRUCTURED = "structured"
TWENTY_FIELD_SAMPLES = 5


def request_schema(index: int) -> dict:
    """Request `index`'s own schema: distinct property names and enum values, an array and a
    free string last, so the grammar stays active for a whole random-weight output."""
    return {"type": "object", "additionalProperties": False,
            "required": [f"id_{index}", "kind", "tags", "note"],
            "properties": {f"id_{index}": {"type": "integer", "minimum": 0},
                           "kind": {"enum": [f"k{index}a", f"k{index}b", "other"]},
                           "tags": {"type": "array",
                                    "items": {"type": "string", "maxLength": 16}},
                           "note": {"type": "string"}}}


def twenty_field_schema(variant: int) -> dict:
    """Twenty fields of every common kind (bounded strings, ranges, enums, arrays, a nested
    object, a pattern); `variant` renames them so no compile is served from a cache."""
    kinds = [{"type": "string", "maxLength": 32}, {"type": "integer", "minimum": 0,
                                                  "maximum": 1000},
             {"type": "number"}, {"type": "boolean"},
             {"enum": ["red", "green", "blue", f"v{variant}"]},
             {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
             {"type": "object", "properties": {"x": {"type": "number"},
                                               "y": {"type": "number"}},
              "required": ["x", "y"]},
             {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}]
    names = [f"f{variant}_{k}" for k in range(20)]
    return {"type": "object", "required": names, "additionalProperties": False,
            "properties": {name: kinds[k % len(kinds)] for k, name in enumerate(names)}}


def structured_outputs(index: int):
    from jupyter_qwen.sampling_params import StructuredOutputs

    return StructuredOutputs(json=request_schema(index))


def precompile(llm, count: int, workers: int = 2) -> dict:
    """Compile requests 0..count-1's schemas into the engine's cache (as a server does before
    queueing each request); the timed run then measures decoding under the constraint."""
    grammars = llm.engine.constraints.grammars
    begin = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: grammars.compile(structured_outputs(i)), range(count)))
    wall = time.perf_counter() - begin
    return {"schemas": count, "compile_wall_s": wall, "workers": workers,
            "compile_ms_per_schema": 1e3 * wall * workers / max(count, 1)}


def twenty_field_compile(llm) -> dict:
    """First-request cost: the compiler's vocabulary set-up (once per engine), then one
    20-field schema cold, then the median of further distinct 20-field schemas."""
    from jupyter_qwen.engine.constraints import GrammarCache
    from jupyter_qwen.sampling_params import StructuredOutputs

    engine = llm.engine
    cache = GrammarCache(engine.tokenizer, engine.vocab_size, sorted(engine.eos_token_ids),
                         timeout=600)
    try:
        begin = time.perf_counter()
        _ = cache.compiler
        setup_s = time.perf_counter() - begin
        times = []
        for variant in range(TWENTY_FIELD_SAMPLES):
            begin = time.perf_counter()
            cache.compile(StructuredOutputs(json=twenty_field_schema(variant)))
            times.append(time.perf_counter() - begin)
    finally:
        cache.close()
    return {"compiler_setup_ms": 1e3 * setup_s, "first_compile_ms": 1e3 * times[0],
            "median_compile_ms": 1e3 * statistics.median(times), "samples": len(times)}


def follows_grammar(llm, index: int, token_ids: list[int]) -> bool:
    """Whether request `index`'s output is accepted token by token by a fresh matcher of its
    schema (a prefix of a valid document when max_tokens cut it)."""
    import xgrammar

    compiled = llm.engine.constraints.grammars.compile(structured_outputs(index))
    matcher = xgrammar.GrammarMatcher(compiled)
    for token in token_ids:
        if matcher.is_terminated():
            if token not in llm.engine.eos_token_ids:
                return False
        elif not matcher.accept_token(token):
            return False
    return True
