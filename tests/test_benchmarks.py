"""benchmarks/throughput.py on CPU: a quick run end to end, its workloads and floor arithmetic."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(script: str):
    name = f"benchmarks_{script}_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_throughput():
    return load_benchmark("throughput")


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


def load_serving():
    return load_benchmark("serving")


def test_serving_workload_and_arrivals():
    bench = load_serving()
    prompts = bench.make_prompts(500, 512, 10000, seed=0)
    assert len(prompts) == 500 and {len(p) for p in prompts} == {512}
    assert min(min(p) for p in prompts) >= 0 and max(max(p) for p in prompts) < 10000
    assert prompts == bench.make_prompts(500, 512, 10000, seed=0)
    assert bench.arrival_offsets(5, math.inf, 0) == [0.0] * 5
    offsets = bench.arrival_offsets(2000, 20.0, 0)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    assert offsets == bench.arrival_offsets(2000, 20.0, 0)
    assert 18 < len(offsets) / offsets[-1] < 22


def test_serving_quick_run_on_cpu(tiny_model_path, tmp_path):
    """The whole benchmark as a process: it must finish (no thread left hanging), every
    request must stream back exactly the requested tokens, and the JSON must hold the figures."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--quick",
         "--model-dir", str(tiny_model_path), "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    saved = json.loads((tmp_path / "serving.json").read_text())
    assert (tmp_path / "serving.md").read_text().startswith("# Serving")
    assert saved["failures"] == [] and saved["failed_requests"] == 0
    assert saved["threads_left"] == []
    runs = {r["name"]: r for r in saved["runs"]}
    assert set(runs) == {"rate-inf", "rate-20", "inf-openai-inproc", "inf-openai-1proc",
                         "inf-httpx", "inf-aiohttp", "engine-direct"}
    assert runs["rate-inf"]["where"] == "process x2" and runs["rate-inf"]["client_procs"] == 2
    for name, run in runs.items():
        assert run["requests"] == run["completed"] == 16, name
        assert run["failed"] == 0 and run["all_exact"], (name, run["error_samples"])
        assert run["expected_tokens_each"] == 8
        assert run["completion_tokens"] == 16 * 8, name
        assert run["output_tok_per_s"] > 0 and run["req_per_s"] > 0 and run["wall_s"] > 0
        for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            for q in ("p50", "p99"):
                assert math.isfinite(run[metric][q]) and run[metric][q] > 0, (name, metric, q)
        assert run["ttft_ms"]["n"] == 16
        assert run["engine"]["prefix_cache_hits"] == 0, name  # emptied before every run
        if name != "engine-direct":
            assert run["prompt_tokens"] == 16 * 32, name
    assert runs["rate-20"]["arrival_span_s"] > 0.2  # Poisson arrivals, not all at once
    assert saved["headline"]["run"] == "rate-inf"
    assert saved["headline"]["output_tok_per_s"] == runs["rate-inf"]["output_tok_per_s"]
    assert saved["headline"]["comparable"] is False
    assert saved["env"]["versions"]["openai"] and saved["server"]["load_s"] > 0
    assert "headline (rate-inf)" in done.stdout


def test_one_report_table_for_text_and_markdown(capsys):
    from benchmarks.report import TableReport, aligned_lines, markdown_lines

    table = [["run", "tok/s", "notes"], ["w256", "12,000", "a | b"], ["batch1", "380", ""]]
    assert aligned_lines(table) == ["run     tok/s   notes", "w256    12,000  a | b",
                                    "batch1  380     "]
    assert markdown_lines(table) == ["| run | tok/s | notes |", "|---|---|---|",
                                     "| w256 | 12,000 | a / b |", "| batch1 | 380 |  |"]

    class Report(TableReport):
        def header_lines(self):
            return ["header"]

        def table(self):
            return table

        def closing_lines(self):
            return ["ERROR none"]

    Report().print_table()
    assert capsys.readouterr().out.splitlines() == ["", "header", *aligned_lines(table),
                                                    "ERROR none"]


def test_throughput_sampling_modes_beside_greedy(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    bench = load_throughput()
    modes = ("qwen3", "penalties", "seeded")
    bench.main(["--shape", "tiny", "--quick", "--workloads", "w256,batch1", "--peers", "none",
                "--sampling", "greedy," + ",".join(modes), "--model-dir", str(tiny_model_path),
                "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["errors"] == []
    found = {(s["workload"], s["sampling"], s["metric"]): s for s in saved["sampling"]}
    assert set(found) == {(w, m, metric) for m in modes for w, metric in (
        ("w256", "output tok/s"), ("batch1", "output tok/s"), ("batch1", "decode tok/s"))}
    rows = {(r["workload"], r["system"], r["metric"]): r for r in saved["rows"]}
    for (workload, mode, metric), entry in found.items():
        greedy = rows[(workload, "ours", metric)]["value"]
        assert entry["greedy_tokens_per_s"] == greedy
        assert entry["ratio"] == pytest.approx(entry["tokens_per_s"] / greedy)
        assert rows[(workload, f"ours, {mode}", metric)]["ratio"] == entry["ratio"]
    for mode in modes:
        assert saved["runs"][f"ours/w256/{mode}"]["output_tokens"] == \
            saved["runs"]["ours/w256"]["output_tokens"]
    assert "## Sampling beside greedy" in (tmp_path / "throughput.md").read_text()


def test_throughput_sampling_modes_and_their_parameters():
    bench = load_throughput()
    qwen3 = bench.sampling_params("qwen3", 8, 3)
    assert (qwen3.temperature, qwen3.top_k, qwen3.top_p, qwen3.seed) == (0.6, 20, 0.95, None)
    penalties = bench.sampling_params("penalties", 8, 3)
    assert (penalties.presence_penalty, penalties.repetition_penalty) == (1.5, 1.05)
    assert bench.sampling_params("seeded", 8, 3).seed == 3
    assert bench.sampling_params("greedy", 8, 3).greedy
    with pytest.raises(SystemExit):
        bench.parse_args(["--sampling", "greedy,nucleus"])


def test_serving_default_sampling_requests_carry_no_sampling_fields():
    bench = load_serving()
    greedy = bench.request_body({"model": "m"}, [1, 2], 4)
    defaults = bench.request_body({"model": "m", "sampling": "defaults"}, [1, 2], 4)
    assert greedy["temperature"] == 0
    sampling_names = {"temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                      "frequency_penalty", "repetition_penalty"}
    assert not sampling_names & set(defaults) and defaults["ignore_eos"] is True


def test_serving_server_defaults_row_on_cpu(tiny_model_path, tmp_path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--quick", "--rates", "inf",
         "--compare", "none", "--sampling", "greedy,defaults", "--num-requests", "8",
         "--model-dir", str(tiny_model_path), "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    saved = json.loads((tmp_path / "serving.json").read_text())
    runs = {r["name"]: r for r in saved["runs"]}
    assert set(runs) == {"rate-inf", "rate-inf-server-defaults"}
    assert runs["rate-inf-server-defaults"]["sampling"] == "defaults"
    assert runs["rate-inf-server-defaults"]["all_exact"]
    defaults = saved["headline"]["server_defaults"]
    assert defaults["run"] == "rate-inf-server-defaults"
    assert defaults["ratio_to_greedy"] > 0 and defaults["sampling"] == {"temperature": 0.0}
    assert "headline with server-default sampling" in done.stdout


def test_throughput_structured_mode_beside_greedy(tiny_model_path, tmp_path, monkeypatch):
    """--structured: w256 and batch1 with a JSON schema per request beside greedy, the
    schemas compiled apart, outputs replayed through their grammar, a 20-field compile time."""
    pytest.importorskip("xgrammar")
    monkeypatch.delenv("OUT", raising=False)
    bench = load_throughput()
    bench.main(["--shape", "tiny", "--quick", "--workloads", "w256,batch1", "--peers", "none",
                "--structured", "--model-dir", str(tiny_model_path), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["errors"] == []
    found = {(s["workload"], s["metric"]) for s in saved["sampling"]
             if s["sampling"] == "structured"}
    assert found == {("w256", "output tok/s"), ("batch1", "output tok/s"),
                     ("batch1", "decode tok/s")}
    runs = saved["runs"]
    for name in ("w256", "batch1"):
        assert all(runs[f"ours/{name}/structured"]["grammar_check"])
        assert runs[f"ours/{name}/structured"]["output_tokens"] == \
            runs[f"ours/{name}"]["output_tokens"]
        assert runs[f"ours/{name}/structured_compile"]["schemas"] == \
            len(bench.make_workloads(bench.QUICK, 100)[name].prompts)
    assert runs["ours/structured/twenty_field_compile"]["first_compile_ms"] > 0
    rows = {(r["workload"], r["metric"]) for r in saved["rows"]}
    assert ("compile", "20-field schema, first request") in rows


def test_structured_benchmark_schemas_are_distinct_and_twenty_fields_wide():
    from benchmarks.structured import request_schema, twenty_field_schema

    assert len({json.dumps(request_schema(i)) for i in range(256)}) == 256
    assert len(twenty_field_schema(0)["properties"]) == 20
    assert twenty_field_schema(0) != twenty_field_schema(1)
    params = load_throughput().sampling_params("structured", 8, 5)
    assert params.temperature == 0 and params.ignore_eos
    assert params.structured_outputs.json == request_schema(5)


def test_quant_decode_applies_its_fastest_tilings_to_tuned(tmp_path, monkeypatch):
    """`quant_decode.py --apply` on a copy of quant_gemv.py: each swept product's fastest
    tiling replaces its TUNED entry (a long one wrapped under ruff's line length), bf16's
    layers write nothing, other entries are kept, and the file still imports."""
    from jupyter_qwen.model.kernels import gemv, quant_gemv
    from jupyter_qwen.model.kernels.quant_gemv import TUNED, DecodeTiling

    sweep = load_benchmark("quant_decode")
    path = tmp_path / "quant_gemv.py"
    path.write_text(Path(quant_gemv.__file__).read_text())
    chosen = {"qkv": DecodeTiling(128, 128, 4, unpack="half2_one", split_k=11,
                                  max_registers=128),
              "o": DecodeTiling(64, 128, 2, unpack="half2", split_k=20),
              "gate_up": DecodeTiling(16, 512, 2, dot=True),
              "down": DecodeTiling(128, 128, 4, unpack="lop3_one", split_k=26)}
    layers = [dict(model="4B", m=1, fmt="awq",
                   best_code={name: sweep.tiling_source(t) for name, t in chosen.items()}),
              dict(model="4B", m=1, fmt="bf16",
                   best_code={"qkv": sweep.tiling_source(gemv.default_tiling(1, 6144, 2560))}),
              dict(model="4B", m=2, fmt="awq", best_us=float("nan"))]  # a failed sweep
    assert sweep.apply_tuned(layers, path) == 4
    assert max(len(line) for line in path.read_text().split("\n")) <= sweep.LINE_LENGTH
    spec = importlib.util.spec_from_file_location("applied_quant_gemv", path)
    applied = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, applied)  # dataclasses look it up there
    spec.loader.exec_module(applied)
    table = {key: DecodeTiling(**asdict(t)) for key, t in applied.TUNED.items()}
    for name, tiling in chosen.items():
        n, k, _, _ = sweep.MODELS["4B"][name]
        assert table.pop(("awq", 1, n, k)) == tiling
    assert table == {key: t for key, t in TUNED.items() if key[:2] != ("awq", 1)
                     or key[2:] not in [sweep.MODELS["4B"][p][:2] for p in chosen]}
