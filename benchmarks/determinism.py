"""Does greedy decoding on the GPU give the same tokens twice? transformers and our torch
reference path, each run twice in one process on the Qwen3-0.6B shape (random bf16 weights),
the same eight prompts as tests/test_gpu.py.

Run on a CUDA machine: CUBLAS_WORKSPACE_CONFIG=:4096:8 python3 benchmarks/determinism.py
"""

from __future__ import annotations

import gc
import random

import torch

from jupyter_qwen import LLM, SamplingParams
from jupyter_qwen.testing import make_tiny_qwen3

NUM_NEW = 32
PROMPT_LENGTHS = (1, 7, 64, 129, 300, 511, 777, 1000)


def transformers_tokens(folder, prompts: list[list[int]]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
    tokens = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device="cuda")
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NUM_NEW, min_new_tokens=NUM_NEW,
                                 eos_token_id=None, pad_token_id=0)
            tokens.append(out[0, len(prompt):].tolist())
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return tokens


def reference_path_tokens(folder, prompts: list[list[int]]) -> list[list[int]]:
    greedy = SamplingParams(temperature=0, max_tokens=NUM_NEW, ignore_eos=True,
                            detokenize=False)
    with LLM(folder, dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.5,
             attention_backend="torch", enforce_eager=True, max_num_seqs=1,
             enable_prefix_caching=False) as llm:
        return [output.token_ids for output in llm.generate(prompts, greedy)]


def same(a: list[list[int]], b: list[list[int]]) -> str:
    return f"{sum(x == y for x, y in zip(a, b, strict=True))} of {len(a)} prompts identical"


def main() -> None:
    import tempfile
    from pathlib import Path

    torch.use_deterministic_algorithms(True, warn_only=True)
    folder = Path(tempfile.gettempdir()) / "jupyter_qwen_bench_qwen3-0.6b"
    if not (folder / "config.json").is_file():
        make_tiny_qwen3(folder, shape="qwen3-0.6b")
    rng = random.Random(0)
    prompts = [[rng.randrange(10000) for _ in range(n)] for n in PROMPT_LENGTHS]
    theirs = [transformers_tokens(folder, prompts) for _ in range(2)]
    ours = [reference_path_tokens(folder, prompts) for _ in range(2)]
    print("transformers, run 1 vs run 2:", same(*theirs))
    print("ours (torch reference path), run 1 vs run 2:", same(*ours))
    print("ours run 1 vs transformers run 1:", same(ours[0], theirs[0]))


if __name__ == "__main__":
    main()
