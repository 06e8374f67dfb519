"""The engine on a CUDA GPU: greedy tokens against transformers, the Triton path's accuracy,
and memory that comes back after close(). Skipped without CUDA."""

import gc
import math
import random
import tempfile
from pathlib import Path

import pytest
import torch

from jupyter_qwen import LLM, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]
NUM_NEW = 32
NEAR_TIE_ULPS = 8


@pytest.fixture(scope="module")
def checkpoint():
    """A Qwen3-0.6B-shaped random checkpoint, shared with benchmarks/throughput.py."""
    from jupyter_qwen.testing import make_tiny_qwen3

    folder = Path(tempfile.gettempdir()) / "jupyter_qwen_bench_qwen3-0.6b"
    if (folder / "config.json").is_file():
        return folder
    return make_tiny_qwen3(folder, shape="qwen3-0.6b")


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    return [[rng.randrange(10000) for _ in range(n)] for n in (1, 7, 64, 129, 300, 511, 777, 1000)]


def free_memory() -> None:
    """Back to what is held for good: cuBLAS's per-stream workspaces, which transformers'
    runs leave behind and closing the engine drops, are dropped here too."""
    from jupyter_qwen.engine.model_runner import release_cublas_workspaces

    gc.collect()
    release_cublas_workspaces()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module", autouse=True)
def deterministic_kernels():
    """Both sides run cuBLAS and attention kernels that give the same bits on every run."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def reference(checkpoint, prompts):
    """transformers in bf16: greedy tokens, and last-position logits of each prompt in bf16
    and in fp32 (the fp32 ones say how far bf16 arithmetic itself strays)."""
    from transformers import AutoModelForCausalLM

    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).cuda().eval()
        with torch.inference_mode():
            result[dtype] = [model(torch.tensor([p], device="cuda")).logits[0, -1].float().cpu()
                             for p in prompts]
            if dtype is torch.bfloat16:
                result["tokens"], result["step_logits"] = zip(
                    *(greedy_hf(model, p) for p in prompts), strict=True)
        del model
        free_memory()
    return result


def greedy_hf(model, prompt: list[int]) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy tokens and the logits it chose each one from."""
    ids = torch.tensor([prompt], device="cuda")
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=NUM_NEW, min_new_tokens=NUM_NEW, eos_token_id=None,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    step_logits = torch.stack([logits[0].float().cpu() for logits in out.logits])
    return out.sequences[0, len(prompt):].tolist(), step_logits


def bf16_ulp(value: float) -> float:
    return 2.0 ** (math.floor(math.log2(abs(value))) - 7) if value else 2.0 ** -133


GREEDY = SamplingParams(temperature=0, max_tokens=NUM_NEW, ignore_eos=True, detokenize=False)


def run_engine(checkpoint, prompts, **options):
    """Greedy tokens, first-step logits, and allocated memory before and after the engine."""
    free_memory()
    before = torch.cuda.memory_allocated()
    llm = LLM(checkpoint, dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.5,
              **options)
    tokens = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    logits = [first_logits(llm, prompt) for prompt in prompts]
    llm.close()
    del llm
    free_memory()
    return tokens, logits, before, torch.cuda.memory_allocated()


def first_logits(llm: LLM, prompt: list[int]) -> torch.Tensor:
    """The logits the sampler sees for the prompt's next token (asking for log probabilities
    sends even a greedy step through the sampler)."""
    from jupyter_qwen.engine import model_runner

    captured = []
    original = model_runner.sample
    model_runner.sample = lambda logits, batch: captured.append(logits[0].cpu()) or \
        original(logits, batch)
    try:
        llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, detokenize=False,
                                              logprobs=0))
    finally:
        model_runner.sample = original
    return captured[0]


def relative_error(ours: torch.Tensor, truth: torch.Tensor) -> float:
    return ((ours - truth).norm() / truth.norm()).item()


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def test_torch_reference_matches_transformers_and_gives_memory_back(checkpoint, prompts,
                                                                    reference):
    """One sequence at a time and no prefix cache, as transformers generates here: matrix
    products of the same shapes pick the same kernels, so the prompt's logits are bit for bit
    the same. Decode steps attend through a paged cache where transformers uses sdpa, so their
    sums round differently; random weights give near-ties among the top logits, and a
    sequence may part from transformers' where it picks the other side of one. Neither side
    is even the same twice: on the H200, with deterministic cuBLAS, a second run of
    transformers parted from its first on one of these eight prompts, and a second run of our
    reference path from its first on one or two (benchmarks/determinism.py). So where a
    sequence parts, transformers' own logits there must rate our token within NEAR_TIE_ULPS
    bf16 steps of its own: a near-tie, not a wrong computation, which would miss by far
    more. Run with CUBLAS_WORKSPACE_CONFIG=:4096:8."""
    tokens, logits, before, after = run_engine(checkpoint, prompts, attention_backend="torch",
                                               enforce_eager=True, max_num_seqs=1,
                                               enable_prefix_caching=False)
    for ours, theirs in zip(logits, reference[torch.bfloat16], strict=True):
        assert torch.equal(ours, theirs), "the reference path computes exactly as transformers"
    gaps = []
    for ours, theirs, step_logits in zip(tokens, reference["tokens"], reference["step_logits"],
                                         strict=True):
        index = first_divergence(ours, theirs)
        if index is not None:
            scores = step_logits[index]
            gap = (scores[theirs[index]] - scores[ours[index]]).item()
            gaps.append((index, gap / bf16_ulp(scores[theirs[index]].item())))
    print(f"identical: {len(prompts) - len(gaps)} of {len(prompts)} prompts; where one parts: "
          "(token index, transformers' logit gap in bf16 steps):", gaps)
    assert all(0 <= steps <= NEAR_TIE_ULPS for _, steps in gaps), gaps
    assert after == before, f"{after - before} bytes still allocated after close()"


def test_triton_path_is_as_accurate_as_transformers_bf16(checkpoint, prompts, reference):
    eager, eager_logits, before, after = run_engine(checkpoint, prompts,
                                                    attention_backend="triton",
                                                    enforce_eager=True)
    graphs, graph_logits, _, after_graphs = run_engine(checkpoint, prompts,
                                                       attention_backend="triton")
    _, chunked_logits, _, after_chunked = run_engine(
        checkpoint, prompts, attention_backend="triton", max_num_batched_tokens=256,
        max_num_seqs=4)
    assert graphs == eager, "decode steps replayed from CUDA graphs compute what eager ones do"
    truth = reference[torch.float32]
    errors = {name: [relative_error(o, t) for o, t in zip(logits, truth, strict=True)]
              for name, logits in (("ours, eager", eager_logits),
                                   ("ours, CUDA graphs", graph_logits),
                                   ("ours, chunked prefill", chunked_logits),
                                   ("transformers bf16", reference[torch.bfloat16]))}
    print("relative error of last-position logits to transformers fp32, per prompt:")
    for name, values in errors.items():
        print(f"  {name:<24}", [f"{e:.3f}" for e in values])
    budget = 1.25 * sum(errors["transformers bf16"])
    for name, values in errors.items():
        assert sum(values) <= budget, name
    assert after == before and after_graphs == before and after_chunked == before


def test_graph_steps_asked_for_logprobs_pick_the_tokens_plain_greedy_steps_pick(checkpoint,
                                                                              prompts):
    """Plain greedy graph steps read back the argmax taken inside the graph; steps that want
    log probabilities sample from the graph's logits instead. Both choose the same tokens."""
    llm = LLM(checkpoint, dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.5,
              enable_prefix_caching=False)
    try:
        plain = llm.generate(prompts, GREEDY)
        with_logprobs = llm.generate(prompts, SamplingParams(
            temperature=0, max_tokens=NUM_NEW, ignore_eos=True, detokenize=False, logprobs=2))
    finally:
        llm.close()
    assert [o.token_ids for o in plain] == [o.token_ids for o in with_logprobs]
    for output in with_logprobs:
        assert [entry.token_id for entry in output.logprobs] == output.token_ids
        assert all(entry.logprob == entry.top[0][1] for entry in output.logprobs)


def test_triton_path_gives_the_reference_paths_tokens_in_float32(tmp_path):
    """The tiny model in float32, where rounding cannot tip a choice: greedy tokens of the
    Triton path (CUDA graphs with the one-kernel decode step, and eager) equal those of the
    torch reference path, batched and one sequence at a time."""
    from jupyter_qwen.testing import make_tiny_qwen3

    path = make_tiny_qwen3(tmp_path / "tiny")
    rng = random.Random(1)
    tiny_prompts = [[rng.randrange(1000) for _ in range(n)] for n in (1, 7, 64, 300, 1000)]
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, detokenize=False)
    results = {}
    for name, options in (("reference", {"attention_backend": "torch", "enforce_eager": True}),
                          ("triton, graphs", {"attention_backend": "triton"}),
                          ("triton, eager", {"attention_backend": "triton",
                                             "enforce_eager": True})):
        with LLM(str(path), dtype="float32", max_num_seqs=8, max_model_len=2048,
                 gpu_memory_utilization=0.3, **options) as llm:
            batched = [o.token_ids for o in llm.generate(tiny_prompts, greedy)]
            alone = [llm.generate([p], greedy)[0].token_ids for p in tiny_prompts[:3]]
        results[name] = (batched, alone)
    assert results["triton, graphs"] == results["reference"]
    assert results["triton, eager"] == results["reference"]


def drop_compiled_kernels() -> None:
    """Forget this process's compiled kernels, so that the next launch of each asks Triton
    again (it then loads from its disk cache: cheap, but the hooks below see it)."""
    import importlib
    import pkgutil

    import triton

    from jupyter_qwen.model import kernels

    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, triton.runtime.JITFunction):
                value.device_caches.clear()


@pytest.mark.parametrize("eager, max_num_seqs", [(False, 256), (False, 16), (True, 16)],
                         ids=["graphs", "graphs, 16 seqs", "eager, 16 seqs"])
def test_no_kernel_compiles_after_start_up(tmp_path, eager, max_num_seqs):
    """Start-up reaches every kernel variant that requests need. The workload is W256's in
    small (prompts and outputs of random lengths, all at once), so chunked prefill runs
    beside decodes of every batch size and context; then one sequence alone. A compile in
    the middle of serving stalls every running request (up to a second each on a fresh
    machine), as mixed steps did before."""
    from triton import knobs

    from jupyter_qwen.testing import make_tiny_qwen3

    path = make_tiny_qwen3(tmp_path / "model", shape="qwen3-0.6b", num_hidden_layers=2)
    drop_compiled_kernels()
    compiled = []
    rng = random.Random(5)
    prompts = [[rng.randrange(10000) for _ in range(rng.randint(1, 1024))] for _ in range(64)]
    params = [SamplingParams(temperature=0, max_tokens=rng.randint(1, 200), ignore_eos=True,
                             detokenize=False) for _ in prompts]
    with LLM(str(path), dtype="bfloat16", max_model_len=2048, gpu_memory_utilization=0.3,
             max_num_seqs=max_num_seqs, max_num_batched_tokens=512,
             enforce_eager=eager) as llm:
        knobs.runtime.jit_cache_hook = lambda *, fn, **_: compiled.append(fn.name)
        try:
            llm.generate(prompts, params)
            llm.generate(prompts[:1], SamplingParams(max_tokens=20, detokenize=False))
        finally:
            knobs.runtime.jit_cache_hook = None
    assert compiled == [], f"kernels compiled while serving: {compiled}"
