"""The persistent decode layer (`kernels/decode_layer.py`) against the five kernels of the
small-batch path it merges: the qkv product with the input norm, the one-launch attention
step, o, gate/up with the post-attention norm, down with SiLU·mul (bf16 and FP8 words
products, each with the tiling the layer uses). The interpreter runs the layer a phase a
launch and must give the same bits; on the GPU (one cooperative launch, barriers between
the phases) the same bits where the kernels' warps match, and the same bits every launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from kernel_cases import random_paged_case, relative_error
from kernel_modes import COMPILED_ONLY, TOLERANCE, Mode

from jupyter_qwen.model.quant.linear import Fp8Linear, quantized_tensors

EPS = 1e-6
SCALE = 0.125


@dataclass
class LayerCase:
    weights: object  # decode_layer.LayerWeights
    shape: object  # decode_layer.LayerShape
    hidden: torch.Tensor
    residual: torch.Tensor | None
    positions: torch.Tensor
    case: object  # kernel_cases.PagedCase
    cos_cache: torch.Tensor
    sin_cache: torch.Tensor

    def cache_args(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple:
        meta = self.case.meta
        return (self.positions, meta.slot_mapping, meta.block_tables, meta.seq_lens, k_cache,
                v_cache, self.cos_cache, self.sin_cache, SCALE)


def fp8_projection(generator: torch.Generator, k: int, shards: list[int],
                   device: str) -> Fp8Linear:
    layer = Fp8Linear(k, shards)
    for index, rows in enumerate(shards):
        for suffix, tensor in quantized_tensors(
                "fp8", torch.randn(rows, k, generator=generator)).items():
            layer.load(suffix, index, tensor)
    return layer.to(device)


def layer_case(mode: Mode, generator: torch.Generator, rows: int, fmt: str,
               first: bool) -> LayerCase:
    from jupyter_qwen.model.kernels.decode_layer import LayerShape, LayerWeights
    from jupyter_qwen.model.qwen3 import RotaryEmbedding

    hidden, q_heads, kv_heads, head_dim, inner = mode.pick((256, 4, 2, 64, 256),
                                                           (1024, 16, 8, 128, 3072))
    shape = LayerShape(hidden, q_heads, kv_heads, head_dim, inner)
    device, dtype = mode.device, torch.bfloat16

    def rand(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*size, generator=generator)).to(device=device, dtype=dtype)

    shards = {"qkv": ([q_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], hidden),
              "o": ([hidden], q_heads * head_dim), "gate_up": ([inner, inner], hidden),
              "down": ([hidden], inner)}
    if fmt == "fp8":
        products = {name: fp8_projection(generator, k, sizes, device)
                    for name, (sizes, k) in shards.items()}
    else:
        products = {name: rand(sum(sizes), k, scale=k ** -0.5)
                    for name, (sizes, k) in shards.items()}
    weights = LayerWeights(input_norm=1 + rand(hidden, scale=0.2),
                           post_attention_norm=1 + rand(hidden, scale=0.2),
                           q_norm=1 + rand(head_dim, scale=0.2),
                           k_norm=1 + rand(head_dim, scale=0.2), eps=EPS, **products)
    seq_lens = [int(n) for n in torch.randint(1, mode.pick(90, 900), (rows,),
                                              generator=generator)]
    case = random_paged_case([1] * rows, seq_lens, q_heads, kv_heads, head_dim, 16, dtype,
                             device, generator=generator)
    rotary = RotaryEmbedding(head_dim, 4096, 1_000_000.0)
    rotary.build(torch.device(device))
    positions = torch.tensor([n - 1 for n in seq_lens], device=device)
    return LayerCase(weights, shape, rand(rows, hidden), None if first else rand(rows, hidden),
                     positions, case, rotary.cos_cache, rotary.sin_cache)


def five_kernels(layer: LayerCase, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 num_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The small-batch path's launches, each product with the persistent layer's tiling."""
    from jupyter_qwen.model.kernels import gemv, quant_gemv
    from jupyter_qwen.model.kernels.decode_layer import product_tiling
    from jupyter_qwen.model.kernels.decode_step import decode_step_attention

    weights, m = layer.weights, layer.hidden.shape[0]
    kernels = quant_gemv if weights.fp8 else gemv

    def tiling(weight):
        block_n, block_k = product_tiling(weight, m)
        if weights.fp8:
            return quant_gemv.DecodeTiling(block_n, block_k, block_k // 256, unpack="words")
        return gemv.Tiling(block_n, block_k, 4, 1, dot=m > 1)

    positions, slots, tables, seq_lens, *_ = layer.cache_args(k_cache, v_cache)
    qkv, mid = kernels.rms_norm_linear(layer.hidden, weights.input_norm, EPS, weights.qkv,
                                       layer.residual, tiling=tiling(weights.qkv))
    attn = decode_step_attention(qkv, positions, slots, weights.q_norm, weights.k_norm, EPS,
                                 layer.cos_cache, layer.sin_cache, k_cache, v_cache, tables,
                                 seq_lens, SCALE, num_splits=num_splits)
    o = kernels.linear_small_m(attn.reshape(m, -1), weights.o, tiling=tiling(weights.o))
    gate_up, out_residual = kernels.rms_norm_linear(o, weights.post_attention_norm, EPS,
                                                    weights.gate_up, mid,
                                                    tiling=tiling(weights.gate_up))
    return (kernels.silu_mul_linear(gate_up, weights.down, tiling=tiling(weights.down)),
            out_residual)


def persistent(layer: LayerCase, k_cache: torch.Tensor, v_cache: torch.Tensor,
               num_splits: int, **options) -> tuple[torch.Tensor, torch.Tensor]:
    from jupyter_qwen.model.kernels.decode_layer import LayerBuffers, decode_layer
    from jupyter_qwen.model.kernels.decode_step import DecodeStepWorkspace

    m, shape = layer.hidden.shape[0], layer.shape
    device = layer.hidden.device
    buffers = LayerBuffers.allocate(m, shape, torch.bfloat16, device)
    workspace = DecodeStepWorkspace.allocate(m, shape.q_heads, shape.kv_heads, shape.head_dim,
                                             device, num_splits=num_splits)
    y, out_residual = decode_layer(layer.hidden, layer.residual, layer.weights, shape,
                                   *layer.cache_args(k_cache, v_cache), buffers=buffers,
                                   workspace=workspace, num_splits=num_splits, **options)
    assert not buffers.counters.any(), "the barrier counters must be back at zero"
    assert not workspace.tickets.any(), "the attention's tickets must be back at zero"
    return y, out_residual


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
@pytest.mark.parametrize(("rows", "first"), [(1, False), (3, True)])
def test_the_persistent_layer_computes_what_the_five_kernels_do(mode, generator, fmt, rows,
                                                                first):
    layer = layer_case(mode, generator, rows, fmt, first)
    num_splits = 3
    caches = [(layer.case.k_cache.clone(), layer.case.v_cache.clone()) for _ in range(2)]
    y_ref, res_ref = five_kernels(layer, *caches[0], num_splits)
    y, res = persistent(layer, *caches[1], num_splits)
    assert torch.equal(res, res_ref), "the residual stream differs"
    assert torch.equal(caches[1][0], caches[0][0]) and torch.equal(caches[1][1], caches[0][1])
    if mode.device == "cpu" or fmt == "bf16":
        assert torch.equal(y, y_ref), f"{relative_error(y, y_ref):.2e} from the five kernels"
    else:  # FP8 words tiles tuned for 8 warps sum their lanes in another order at 4
        assert relative_error(y, y_ref) < TOLERANCE[torch.bfloat16]
        again = persistent(layer, layer.case.k_cache.clone(), layer.case.v_cache.clone(),
                           num_splits)[0]
        assert torch.equal(again, y), "two launches of the layer differ"


def test_the_persistent_layer_refuses_mixed_formats_and_too_many_rows(generator):
    from jupyter_qwen.model.kernels.decode_layer import check_layer

    layer = layer_case(Mode("cpu", large=False), generator, 1, "bf16", False)
    fp8 = fp8_projection(generator, layer.shape.hidden, [layer.shape.hidden], "cpu")
    mixed = type(layer.weights)(**{**vars(layer.weights), "o": fp8})
    with pytest.raises(ValueError, match="four bf16 products or four FP8"):
        check_layer(mixed, layer.shape, 1)
    with pytest.raises(ValueError, match="1 to 16 rows"):
        check_layer(layer.weights, layer.shape, 17)


def tiny_bf16_model(device: str, fp8: bool):
    """Qwen3 in bf16 with random norm weights; `fp8`: its projections quantized to FP8."""
    from jupyter_qwen.model.qwen3 import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=96, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=512, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(device=device, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.add_(0.2 * torch.randn_like(parameter))
    if fp8:
        sizes = {"qkv_proj": [128, 64, 64], "o_proj": [128], "gate_up_proj": [256, 256],
                 "down_proj": [128]}
        for layer in model.layers:
            for owner in (layer.self_attn, layer.mlp):
                for name, shards in sizes.items():
                    if hasattr(owner, name):
                        setattr(owner, name, fp8_copy(getattr(owner, name), shards))
    return model


def fp8_copy(linear: torch.nn.Linear, shards: list[int]) -> Fp8Linear:
    layer = Fp8Linear(linear.in_features, shards, online=True).to(linear.weight.device)
    for index, part in enumerate(linear.weight.detach().split(shards)):
        layer.load("weight", index, part)
    return layer


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_a_model_decode_step_is_the_same_with_whole_layer_launches(mode, fp8):
    """Tiny Qwen3 on the Triton ops, one sequence decoding: the persistent layers give the
    five kernels' hidden states and caches (bf16: the same bits; FP8: the words tiles
    against the default ones, to rounding)."""
    from jupyter_qwen.config import KernelOptions
    from jupyter_qwen.model.ops import triton_ops

    model = tiny_bf16_model(mode.device, fp8)
    generator = torch.Generator().manual_seed(5)
    case = random_paged_case([1], [77], 4, 2, 32, 16, torch.bfloat16, mode.device,
                             generator=generator)
    positions = torch.tensor([76], device=mode.device)
    outcomes = {}
    for persistent in (False, True):
        ops = triton_ops(torch.device(mode.device), KernelOptions(persistent_layers=persistent))
        model.use_ops(ops)
        assert all((layer.whole_layer is not None) == persistent for layer in model.layers)
        for attn in model.attention_layers():
            attn.k_cache, attn.v_cache = case.k_cache.clone(), case.v_cache.clone()
        with torch.inference_mode():
            hidden = model(torch.tensor([7], device=mode.device), positions, case.meta)
        assert bool(ops.layers.layer_buffers) == persistent
        outcomes[persistent] = (hidden, [(a.k_cache, a.v_cache)
                                         for a in model.attention_layers()])
    (old, old_caches), (new, new_caches) = outcomes[False], outcomes[True]
    if fp8:
        assert relative_error(new, old) < TOLERANCE[torch.bfloat16]
    else:
        assert torch.equal(new, old)
    for (k_old, v_old), (k_new, v_new) in zip(old_caches, new_caches, strict=True):
        assert torch.equal(v_new, v_old)
        assert torch.equal(k_new, k_old) or relative_error(k_new, k_old) < 1e-2


@pytest.mark.gpu
@COMPILED_ONLY
def test_engine_greedy_tokens_equal_with_and_without_whole_layer_launches(tmp_path):
    """bf16 tiny model, one sequence at a time (the steps that run whole-layer launches),
    CUDA graphs and eager: the same tokens as the five kernels a layer."""
    from jupyter_qwen import LLM, SamplingParams
    from jupyter_qwen.config import KernelOptions
    from jupyter_qwen.testing import make_tiny_qwen3

    path = make_tiny_qwen3(tmp_path / "tiny")
    prompts = [[(7 * i + 3) % 1000 for i in range(n)] for n in (1, 40, 700)]
    greedy = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, detokenize=False)
    tokens = {}
    for persistent, eager in ((False, False), (True, False), (True, True)):
        with LLM(str(path), dtype="bfloat16", max_num_seqs=4, max_model_len=1024,
                 gpu_memory_utilization=0.3, enforce_eager=eager,
                 kernels=KernelOptions(persistent_layers=persistent)) as llm:
            tokens[persistent, eager] = [llm.generate([p], greedy)[0].token_ids
                                         for p in prompts]
            layers = llm.engine.runner.model.layers
            assert all((layer.whole_layer is not None) == persistent for layer in layers)
    assert tokens[True, False] == tokens[False, False]
    assert tokens[True, True] == tokens[False, False]
