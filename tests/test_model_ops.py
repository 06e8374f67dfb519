"""The kernel seam: one ops object, built once from the engine's config, chooses every kernel
the model runs (`model/ops.py`); the kernel options live in `EngineConfig.kernels`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_modes import HAVE_TRITON

from jupyter_qwen.config import EngineConfig, KernelOptions
from jupyter_qwen.model.attention import TorchAttention
from jupyter_qwen.model.ops import ModelOps, build_ops, reference_ops

MODEL_DIR = Path(__file__).resolve().parents[1] / "jupyter_qwen" / "model"
CPU = torch.device("cpu")


def test_kernel_options_default_and_pdl_from_the_environment(monkeypatch):
    monkeypatch.delenv("JUPYTER_QWEN_PDL", raising=False)
    options = EngineConfig(model="some/model").kernels
    assert options == KernelOptions(fused_decode_step=True, fused_decode_step_max_batch=1,
                                    pdl=True)
    assert options.decode_step_max_batch == 1
    monkeypatch.setenv("JUPYTER_QWEN_PDL", "0")
    assert KernelOptions().pdl is False
    assert EngineConfig(model="some/model").kernels.pdl is False
    monkeypatch.setenv("JUPYTER_QWEN_PDL", "1")
    assert KernelOptions().pdl is True


def test_kernel_options_reach_the_config_and_are_checked():
    options = KernelOptions(fused_decode_step=False, fused_decode_step_max_batch=8, pdl=False)
    assert EngineConfig.from_kwargs("some/model", kernels=options).kernels is options
    assert options.decode_step_max_batch == 0
    for bad in ({"fused_decode_step": 1}, {"pdl": "no"}, {"fused_decode_step_max_batch": 0},
                {"fused_decode_step_max_batch": True}):
        with pytest.raises(ValueError, match=r"kernels\."):
            KernelOptions(**bad)


def test_reference_ops_on_cpu_whatever_imports():
    for backend in ("auto", "torch"):
        ops = build_ops(backend, CPU, KernelOptions())
        assert isinstance(ops.attention, TorchAttention)
        assert ops.layers is None and not ops.compiled
    with pytest.raises(ValueError, match="needs a CUDA device"):
        build_ops("triton", CPU, KernelOptions())
    with pytest.raises(ValueError, match="unknown attention backend"):
        build_ops("flash", CPU, KernelOptions())


def test_reference_attention_never_fuses_the_decode_step():
    from jupyter_qwen.model.attention import AttentionMetadata

    empty = torch.empty(0)
    meta = AttentionMetadata(empty, empty, empty, empty, 1, 64, [0, 1], [64])
    assert not TorchAttention().fuses_decode_step(meta, 128)
    with pytest.raises(NotImplementedError):
        TorchAttention().attend_decode_step()


@pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")
def test_triton_ops_carry_the_options():
    from jupyter_qwen.model.ops import triton_ops

    ops = triton_ops(CPU, KernelOptions(fused_decode_step_max_batch=4, pdl=True))
    assert ops.compiled
    assert ops.attention.decode_step_max_batch == 4
    assert ops.attention.pdl is False and ops.layers.pdl is False, "no PDL off Hopper GPUs"
    off = triton_ops(CPU, KernelOptions(fused_decode_step=False, fused_decode_step_max_batch=4))
    assert off.attention.decode_step_max_batch == 0


def tiny_decoder(attention_bias: bool = False):
    from jupyter_qwen.model.qwen3 import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=32, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, max_position_embeddings=64, attention_bias=attention_bias)
    return Qwen3ForCausalLM(config)


class MarkerKernels:
    """Stands in for the Triton layer kernels: only its identity is checked."""


@pytest.mark.parametrize("attention_bias", [False, True])
def test_use_ops_hands_every_module_its_kernels(attention_bias):
    from jupyter_qwen.model.qwen3 import Qwen3Attention, Qwen3DecoderLayer, Qwen3MLP, RMSNorm

    model = tiny_decoder(attention_bias)
    attention, layers = TorchAttention(), MarkerKernels()
    model.use_ops(ModelOps(attention=attention, layers=layers, compiled=True))
    modules = list(model.modules())
    assert all(m.backend is attention for m in modules if isinstance(m, Qwen3Attention))
    assert all(m.fused is layers for m in modules
               if isinstance(m, RMSNorm | Qwen3Attention | Qwen3MLP))
    small_batch = None if attention_bias else layers
    assert all(m.gemv is small_batch for m in modules if isinstance(m, Qwen3DecoderLayer))
    assert model.gemv is layers
    model.use_ops(None)
    assert all(getattr(m, name, None) is None for m in modules
               for name in ("backend", "fused", "gemv"))


def test_reference_ops_run_the_model_on_cpu():
    from jupyter_qwen.model.attention import AttentionMetadata

    model = tiny_decoder().eval()
    model.use_ops(reference_ops())
    for attn in model.attention_layers():
        attn.k_cache = torch.zeros(4, 16, 1, 16)
        attn.v_cache = torch.zeros(4, 16, 1, 16)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(3), query_start_loc=torch.tensor([0, 3], dtype=torch.int32),
        seq_lens=torch.tensor([3], dtype=torch.int32),
        block_tables=torch.zeros(1, 1, dtype=torch.int32), max_query_len=3, max_seq_len=3,
        query_start_loc_cpu=[0, 3], seq_lens_cpu=[3])
    with torch.inference_mode():
        hidden = model(torch.tensor([1, 2, 3]), torch.arange(3), meta)
    assert hidden.shape == (3, 32) and hidden.isfinite().all()


def test_engine_on_cpu_runs_the_reference_ops(tiny_model_path):
    from jupyter_qwen import LLM

    with LLM(str(tiny_model_path), device="cpu", max_model_len=64, num_kv_blocks=8) as llm:
        ops = llm.engine.runner.ops
        assert isinstance(ops.attention, TorchAttention) and not ops.compiled
        assert llm.engine.runner.graphs is None


def test_the_model_reads_no_environment_and_attention_imports_no_kernels():
    kernel_choosers = [MODEL_DIR / name for name in ("qwen3.py", "attention.py", "ops.py")]
    sources = {path: path.read_text()
               for path in [*kernel_choosers, *(MODEL_DIR / "kernels").glob("*.py")]}
    assert [str(p) for p, text in sources.items() if "environ" in text or "getenv" in text] == []
    code = ("import sys, jupyter_qwen.model.attention, jupyter_qwen.model.ops, "
            "jupyter_qwen.model.qwen3; "
            "print(sorted(m for m in sys.modules if m.startswith('jupyter_qwen.model.kernels')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
