"""FP8 and AWQ checkpoints: the formats, the loader's checks, and the reference path's
logits against a plain model built from the dequantized weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from jupyter_qwen import LLM, SamplingParams
from jupyter_qwen.model.attention import AttentionMetadata, TorchAttention
from jupyter_qwen.model.errors import QuantizationError
from jupyter_qwen.model.loader import load_model
from jupyter_qwen.model.ops import ModelOps, reference_ops
from jupyter_qwen.model.quant import awq, fp8
from jupyter_qwen.model.quant.config import parse_quantization_config, resolve_quantization

CPU = torch.device("cpu")
PROMPTS = [[5, 17, 300, 42, 9, 1000, 77], [1, 2, 3]]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, detokenize=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The tiny checkpoint (seed 0) in bf16-style float32, FP8 and AWQ."""
    from jupyter_qwen.testing import make_tiny_qwen3

    root = tmp_path_factory.mktemp("quantized")
    return {name: make_tiny_qwen3(root / str(name), quantization=name)
            for name in (None, "fp8", "awq")}


def dequantized_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with each projection dequantized from its stored form, read
    straight from the files (not through the model's packing)."""
    with safe_open(folder / "model.safetensors", "pt") as reader:
        raw = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    out = {}
    for name, tensor in raw.items():
        if name.endswith(".weight_scale_inv") or name.endswith((".qzeros", ".scales")):
            continue
        if name.endswith(".qweight"):
            prefix = name.removesuffix(".qweight")
            out[f"{prefix}.weight"] = awq.dequantize_awq(
                tensor, raw[f"{prefix}.qzeros"], raw[f"{prefix}.scales"])
        elif tensor.dtype == fp8.FP8_DTYPE:
            out[name] = fp8.dequantize_fp8_blocks(tensor, raw[f"{name}_scale_inv"])
        else:
            out[name] = tensor
    return out


def plain_copy(folder: Path, target: Path) -> Path:
    """A plain float32 checkpoint of the quantized one's dequantized weights."""
    from jupyter_qwen.demo.shapes import get_shape
    from jupyter_qwen.demo.weights import write_weights

    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    del config["quantization_config"]
    (target / "config.json").write_text(json.dumps(config))
    write_weights(target, get_shape("tiny"), 0, 1 << 30, dequantized_tensors(folder))
    return target


def logits(folder: Path, ops: ModelOps | None = None, prompt=PROMPTS[0]) -> torch.Tensor:
    """Every position's logits of one prompt, on the reference ops unless given others."""
    model = load_model(folder, torch.float32, CPU)
    model.use_ops(ops or reference_ops())
    config = model.config
    for attn in model.attention_layers():
        attn.k_cache = torch.zeros(4, 16, config.num_key_value_heads, config.head_dim)
        attn.v_cache = torch.zeros(4, 16, config.num_key_value_heads, config.head_dim)
    n = len(prompt)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n), query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        seq_lens=torch.tensor([n], dtype=torch.int32),
        block_tables=torch.arange(4, dtype=torch.int32)[None], max_query_len=n,
        max_seq_len=n, query_start_loc_cpu=[0, n], seq_lens_cpu=[n])
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(prompt), torch.arange(n), meta))


def greedy(folder: Path, **options) -> list[list[int]]:
    with LLM(str(folder), device="cpu", max_model_len=64, num_kv_blocks=16, **options) as llm:
        return [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_reference_path_equals_the_plain_model_of_the_dequantized_weights(checkpoints, method,
                                                                         tmp_path):
    folder = checkpoints[method]
    plain = plain_copy(folder, tmp_path / "plain")
    ours, theirs = logits(folder), logits(plain)
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    assert greedy(folder) == greedy(plain)
    # quantizing changed the model (the comparison above is not between identical weights)
    assert not torch.equal(ours, logits(checkpoints[None]))


def test_tensor_names_dtypes_and_shapes_are_qwens(checkpoints):
    with safe_open(checkpoints["fp8"] / "model.safetensors", "pt") as reader:
        fp8_names = set(reader.keys())
        q = reader.get_tensor("model.layers.0.self_attn.q_proj.weight")
        s = reader.get_tensor("model.layers.0.self_attn.q_proj.weight_scale_inv")
        embed = reader.get_tensor("model.embed_tokens.weight")
    assert q.dtype == torch.float8_e4m3fn and q.shape == (128, 64)
    assert s.dtype == torch.float32 and s.shape == (1, 1)
    assert embed.dtype == torch.float32  # the tiny shape's dtype: embeddings stay unquantized
    assert "model.layers.3.mlp.down_proj.weight_scale_inv" in fp8_names
    with safe_open(checkpoints["awq"] / "model.safetensors", "pt") as reader:
        awq_names = set(reader.keys())
        qweight = reader.get_tensor("model.layers.0.mlp.gate_proj.qweight")
        qzeros = reader.get_tensor("model.layers.0.mlp.gate_proj.qzeros")
        scales = reader.get_tensor("model.layers.0.mlp.gate_proj.scales")
    assert (qweight.dtype, tuple(qweight.shape)) == (torch.int32, (64, 192 // 8))
    assert (qzeros.dtype, tuple(qzeros.shape)) == (torch.int32, (1, 192 // 8))
    assert (scales.dtype, tuple(scales.shape)) == (torch.float16, (1, 192))
    assert not any(name.endswith("_proj.weight") for name in awq_names)
    config = json.loads((checkpoints["awq"] / "config.json").read_text())
    assert config["quantization_config"] == {
        "bits": 4, "group_size": 128, "modules_to_not_convert": None, "quant_method": "awq",
        "version": "gemm", "zero_point": True}
    config = json.loads((checkpoints["fp8"] / "config.json").read_text())
    assert config["quantization_config"] == {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
        "weight_block_size": [128, 128]}


def test_awq_packs_eight_values_in_autoawqs_nibble_order():
    """Nibble i of each int32 holds column (0, 2, 4, 6, 1, 3, 5, 7)[i] of its eight."""
    packed = awq.pack_awq(torch.arange(8)[None])
    assert packed.item() & 0xFFFFFFFF == 0x75316420
    values = torch.randint(0, 16, (3, 32))
    assert torch.equal(awq.unpack_awq(awq.pack_awq(values)), values.int())


def test_fp8_blocks_scale_each_128_by_128_block_to_its_own_largest_value():
    weight = torch.ones(130, 129)
    weight[128:, 128] = 10.0  # the corner block (two elements) has its own scale
    values, scale = fp8.quantize_fp8_blocks(weight)
    assert scale.shape == (2, 2)
    assert torch.allclose(scale, torch.tensor([[1, 1], [1, 10]]) / 448)
    assert torch.equal(fp8.dequantize_fp8_blocks(values, scale), weight)


def test_online_fp8_equals_the_fp8_checkpoint_of_the_same_weights(checkpoints):
    online = greedy(checkpoints[None], quantization="fp8")
    assert online == greedy(checkpoints["fp8"])
    assert online != greedy(checkpoints[None])


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_weights_bytes_are_the_quantized_size(checkpoints, method):
    """The model's parameters and buffers (less the rotary tables and the FP8 scale-row index,
    which no checkpoint stores) add up to the checkpoint's tensors."""
    model = load_model(checkpoints[method], torch.float32, CPU)
    stored = _file_tensor_bytes(checkpoints[method])
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    held += sum(b.numel() * b.element_size() for name, b in model.named_buffers()
                if "rotary" not in name and not name.endswith("scale_rows"))
    assert held == stored
    plain = load_model(checkpoints[None], torch.float32, CPU)
    assert held < sum(p.numel() * p.element_size() for p in plain.parameters())


def _file_tensor_bytes(folder: Path) -> int:
    with safe_open(folder / "model.safetensors", "pt") as reader:
        return sum(reader.get_tensor(n).numel() * reader.get_tensor(n).element_size()
                   for n in reader.keys())  # noqa: SIM118


def test_quantized_kernels_in_the_model_match_the_reference(checkpoints):
    """The model's quantized projections on the Triton kernels (interpreter on CPU) give the
    reference path's logits."""
    from kernel_modes import HAVE_TRITON, INTERPRET

    if not (HAVE_TRITON and INTERPRET):
        pytest.skip("set TRITON_INTERPRET=1 to run the kernels on the CPU")
    from kernel_cases import fix_interpreter, relative_error

    from jupyter_qwen.model.kernels.quant_linear import TritonQuantKernels

    fix_interpreter()
    kernels = ModelOps(attention=TorchAttention(), quant=TritonQuantKernels(CPU))
    for method in ("fp8", "awq"):
        error = relative_error(logits(checkpoints[method], kernels), logits(checkpoints[method]))
        assert error < 1e-5, (method, error)


BAD_CONFIGS = [
    ({"quant_method": "awq", "bits": 8, "group_size": 128, "zero_point": True,
      "version": "gemm"}, "quantization_config.bits = 8"),
    ({"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
      "version": "gemm"}, "quantization_config.group_size = 64"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": False,
      "version": "gemm"}, "quantization_config.zero_point = false"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
      "version": "gemv"}, 'quantization_config.version = "gemv"'),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, 'quant_method = "gptq"'),
    ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]},
     'quantization_config.activation_scheme = "static"'),
    ({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]},
     'quantization_config.fmt = "e5m2"'),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"},
     "quantization_config.weight_block_size = null"),
    ({"quant_method": "fp8", "weight_block_size": [64, 64]},
     "quantization_config.weight_block_size = [64, 64]"),
]


@pytest.mark.parametrize(("raw", "named"), BAD_CONFIGS)
def test_unsupported_configs_name_the_key_and_what_is_supported(raw, named):
    with pytest.raises(QuantizationError, match="is not supported") as caught:
        parse_quantization_config(raw)
    assert named in str(caught.value) and caught.value.field == "quantization"
    assert "128" in str(caught.value)


@pytest.mark.parametrize(("raw", "named"), BAD_CONFIGS[::4])
def test_a_checkpoint_with_an_unsupported_config_fails_at_load(checkpoints, tmp_path, raw,
                                                               named):
    folder = shutil.copytree(checkpoints["awq"], tmp_path / "bad")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = raw
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationError, match=named.replace("[", r"\[")):
        LLM(str(folder), device="cpu", max_model_len=64, num_kv_blocks=16)


def test_online_fp8_refuses_an_awq_checkpoint_and_unknown_choices(checkpoints):
    with pytest.raises(QuantizationError, match="already quantized"):
        LLM(str(checkpoints["awq"]), device="cpu", quantization="fp8", num_kv_blocks=16)
    fp8_config = parse_quantization_config({"quant_method": "fp8",
                                            "weight_block_size": [128, 128]})
    assert resolve_quantization(fp8_config, "fp8") is fp8_config
    assert resolve_quantization(None, "fp8").online
    with pytest.raises(ValueError, match="quantization"):
        LLM(str(checkpoints[None]), device="cpu", quantization="awq")


def test_modules_to_not_convert_keep_projections_unquantized():
    from torch import nn

    from jupyter_qwen.model.quant.install import install_quantized_linears
    from jupyter_qwen.model.quant.linear import Fp8Linear
    from jupyter_qwen.model.qwen3 import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=32, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, max_position_embeddings=64)
    raw = {"quant_method": "fp8", "weight_block_size": [128, 128],
           "modules_to_not_convert": ["layers.1.mlp"]}
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
        assert install_quantized_linears(model, parse_quantization_config(raw)) == 6
    assert isinstance(model.layers[1].mlp.down_proj, nn.Linear)
    assert isinstance(model.layers[1].self_attn.qkv_proj, Fp8Linear)
    assert isinstance(model.lm_head, nn.Linear)
    raw["modules_to_not_convert"] = ["q_proj"]
    with torch.device("meta"), pytest.raises(QuantizationError, match="all or none"):
        install_quantized_linears(Qwen3ForCausalLM(config), parse_quantization_config(raw))


def test_transformers_reads_the_fp8_checkpoint_as_we_do(tmp_path):
    """transformers' fine-grained FP8 (dequantized on a machine without a GPU) gives our
    reference path's logits bit for bit, on the Qwen3-0.6B shape (whose projections are
    whole 128 x 128 blocks) with one layer."""
    pytest.importorskip("accelerate", reason="transformers loads FP8 checkpoints with accelerate")
    if torch.cuda.is_available():
        pytest.skip("on a GPU transformers runs its FP8 kernels: tests/test_gpu_quant.py")
    from transformers import AutoModelForCausalLM

    from jupyter_qwen.testing import make_tiny_qwen3

    folder = make_tiny_qwen3(tmp_path / "fp8", shape="qwen3-0.6b", num_hidden_layers=1,
                             quantization="fp8")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.inference_mode():
        theirs = model(torch.tensor([PROMPTS[0]])).logits[0]
    del model
    assert torch.equal(logits(folder), theirs)
