"""benchmarks/throughput.py on CPU: a quick run end to end, its workloads and floor arithmetic."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_throughput():
    name = "benchmarks_throughput_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def qwen3_06b_cost():
    from benchmarks.common import ModelCost
    from jupyter_qwen.testing import SHAPES

    shape = SHAPES["qwen3-0.6b"]
    return ModelCost(layers=shape.num_hidden_layers, hidden=shape.hidden_size,
                     intermediate=shape.intermediate_size, heads=shape.num_attention_heads,
                     kv_heads=shape.num_key_value_heads, head_dim=shape.head_dim,
                     vocab=shape.vocab_size, tied=shape.tie_word_embeddings, elem_bytes=2)


def test_w256_reproduces_nano_vllm_request_set():
    bench = load_throughput()
    workloads = bench.make_workloads(bench.FULL, 10000)
    w256 = workloads["w256"]
    assert len(w256.prompts) == 256
    assert w256.prompt_tokens == 142_827
    assert w256.output_tokens == 133_966  # nano-vllm's published total
    assert all(100 <= len(p) <= 1024 for p in w256.prompts)
    prefix = workloads["prefix"]
    assert {tuple(p[:2048]) for p in prefix.prompts} == {tuple(prefix.prompts[0][:2048])}
    assert all(len(p) == 2080 for p in prefix.prompts)


def test_floor_arithmetic_for_qwen3_06b():
    bench = load_throughput()
    from benchmarks.common import Ceilings, schedule_floor
    from jupyter_qwen.testing import parameter_count

    cost = qwen3_06b_cost()
    assert cost.total_params == parameter_count("qwen3-0.6b")
    assert cost.weight_bytes == 1_192_099_840
    assert cost.kv_bytes_per_token == 114_688
    ceilings = Ceilings(copy_bytes_per_s=4.26e12, matmul_flops_per_s=800e12, copy_bytes=0,
                        matmul_size=0)
    assert 4.26e12 / cost.weight_bytes == pytest.approx(3574, abs=1)
    batch1 = schedule_floor(cost, ceilings, [128], [512])
    assert batch1.decode_steps == 511
    assert 3400 < batch1.decode_tokens_per_s < 3574
    w256 = bench.make_workloads(bench.FULL, 10000)["w256"]
    floor = schedule_floor(cost, ceilings, [len(p) for p in w256.prompts], w256.out_lens)
    assert floor.decode_steps == max(w256.out_lens) - 1
    assert 3.5 < floor.time_s < 4.1
    assert 13.5e12 < floor.kv_read_bytes < 14.2e12
    assert 33_000 < floor.tokens_per_s < 38_000


def test_quick_run_on_cpu(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    bench = load_throughput()
    result = bench.main(["--shape", "tiny", "--quick", "--workloads", "w256,batch1,prefix",
                         "--peers", "hf_generate", "--model-dir", str(tiny_model_path),
                         "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert (tmp_path / "throughput.md").read_text().startswith("# Throughput")
    assert saved["errors"] == []
    assert saved["ceilings"]["copy_bytes_per_s"] > 0
    assert saved["ceilings"]["matmul_flops_per_s"] > 0

    rows = {(r["workload"], r["system"], r["metric"]): r for r in saved["rows"]}
    expected = [("w256", "ours", "output tok/s"), ("w256", "hf_generate", "output tok/s"),
                ("batch1", "ours", "output tok/s"), ("batch1", "ours", "decode tok/s"),
                ("batch1", "hf_generate", "output tok/s"),
                ("batch1", "hf_generate", "decode tok/s")]
    for system in ("ours, prefix cache on", "ours, prefix cache off"):
        expected += [("prefix", system, m) for m in ("TTFT p50", "TTFT p99", "output tok/s")]
    for key in expected:
        assert key in rows, key
        value = rows[key]["value"]
        assert math.isfinite(value) and value > 0, (key, value)
        if key[2].endswith("tok/s"):
            assert rows[key]["floor_fraction"] > 0, key
    for key in [k for k in expected if k[1] == "hf_generate"]:
        assert rows[key]["ratio"] > 0, key
    assert rows[("prefix", "ours, prefix cache on", "TTFT p50")]["ratio"] > 0
    assert rows[("w256", "hf_generate", "output tok/s")]["same_workload"] == "adapted"
    assert rows[("batch1", "hf_generate", "output tok/s")]["same_workload"] == "same"

    ours = saved["first_tokens"]["ours/w256"]
    peer = saved["first_tokens"]["hf_generate/w256"]
    w256 = bench.make_workloads(bench.QUICK, bench.usable_id_high(Path(tiny_model_path), 10000))
    for index in range(2):
        assert len(ours[index]) == w256["w256"].out_lens[index]
        assert ours[index] == peer[index]
    assert saved["first_tokens"]["ours/batch1"] == saved["first_tokens"]["hf_generate/batch1"]
    checks = {(c["workload"], c["request"]): c["status"] for c in saved["token_checks"]
              if c["system"] == "hf_generate"}
    assert checks[("w256", 0)] == checks[("w256", 1)] == checks[("batch1", 0)] == "MATCH"
