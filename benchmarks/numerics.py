"""How far apart bf16 computations of the same model are, layer by layer (GPU).

    python benchmarks/numerics.py [--model-dir DIR]

Runs one prompt through transformers (fp32 and bf16) and through our model (bf16: torch
reference path, and the fused Triton path) and prints, for the rotary tables, every decoder
layer's output and the last position's logits, the largest difference to transformers bf16
and the relative error to transformers fp32.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_qwen.config import EngineConfig
from jupyter_qwen.engine.model_runner import ModelRunner


def hf_layers(model, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(
        lambda module, args, out: captured.append((out[0] if isinstance(out, tuple) else out)[0]))
        for layer in model.model.layers]
    with torch.inference_mode():
        logits = model(ids).logits[0, -1].float()
    for hook in hooks:
        hook.remove()
    return captured, logits


def our_layers(model_dir: Path, ids: list[int], backend: str) -> tuple[list, torch.Tensor]:
    config = EngineConfig(model=str(model_dir), dtype="bfloat16", attention_backend=backend,
                          enforce_eager=True, max_model_len=2048, num_kv_blocks=256)
    runner = ModelRunner(config, model_dir)
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda module, args, out: captured.append(out[0] + out[1]))
             for layer in runner.model.layers]
    from jupyter_qwen.engine.scheduler import ScheduledSeq
    from jupyter_qwen.engine.sequence import Sequence
    from jupyter_qwen.sampling_params import SamplingParams

    seq = Sequence("numerics", list(ids), SamplingParams(temperature=0))
    seq.block_table = list(range(-(-len(ids) // config.block_size)))
    with torch.inference_mode():
        inputs = runner.prepare([ScheduledSeq(seq, len(ids))])
        hidden = runner.model(inputs.input_ids, inputs.positions, inputs.meta)
        logits = runner.model.compute_logits(hidden[inputs.logits_rows])[0]
    for hook in hooks:
        hook.remove()
    runner.close()
    return captured, logits


def compare(name: str, ours: torch.Tensor, hf16: torch.Tensor, hf32: torch.Tensor) -> None:
    ours, hf16, hf32 = ours.float(), hf16.float(), hf32.float()
    same = torch.equal(ours, hf16)
    diff = (ours - hf16).abs().max().item()
    rel = ((ours - hf32).norm() / hf32.norm()).item()
    print(f"  {name:<12} identical to hf bf16: {same!s:<5}  max |diff| {diff:10.4g}  "
          f"rel err to hf fp32 {rel:9.3e}")


def main() -> None:
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir())
                                                   / "jupyter_qwen_bench_qwen3-0.6b"))
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        from jupyter_qwen.testing import make_tiny_qwen3

        make_tiny_qwen3(model_dir, shape="qwen3-0.6b")
    rng = random.Random(0)
    ids = [rng.randrange(10000) for _ in range(args.tokens)]
    tensor = torch.tensor([ids], device="cuda")
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()
        results[dtype] = hf_layers(hf, tensor)
        if dtype is torch.bfloat16:
            position_ids = torch.arange(len(ids), device="cuda")[None]
            x = torch.zeros(1, len(ids), 1, device="cuda", dtype=dtype)
            hf_cos, hf_sin = hf.model.rotary_emb(x, position_ids)
        del hf
        torch.cuda.empty_cache()
    (hf32_layers, hf32_logits), (hf16_layers, hf16_logits) = results[torch.float32], \
        results[torch.bfloat16]
    for backend in ("torch", "triton"):
        layers, logits = our_layers(model_dir, ids, backend)
        print(f"ours, {backend} path:")
        if backend == "torch":
            from jupyter_qwen.model.qwen3 import RotaryEmbedding

            rotary = RotaryEmbedding(hf_cos.shape[-1], len(ids), 1_000_000.0)
            rotary.build(torch.device("cuda"))
            compare("rotary cos", rotary.cos_cache.to(hf_cos.dtype), hf_cos[0], hf_cos[0])
            compare("rotary sin", rotary.sin_cache.to(hf_sin.dtype), hf_sin[0], hf_sin[0])
        for index in (0, 1, 2, len(layers) // 2, len(layers) - 1):
            compare(f"layer {index}", layers[index], hf16_layers[index], hf32_layers[index])
        compare("logits", logits, hf16_logits, hf32_logits)
        top = logits.float().topk(2).values
        print(f"  top-1 ours {logits.argmax().item()} hf bf16 {hf16_logits.argmax().item()} "
              f"hf fp32 {hf32_logits.argmax().item()}; "
              f"our top-2 gap {(top[0] - top[1]).item():.3f}")
    compare("hf bf16", hf16_logits, hf16_logits, hf32_logits)


if __name__ == "__main__":
    main()
