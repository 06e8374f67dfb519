"""Find a Qwen3 checkpoint (local folder or Hugging Face id) and load its weights."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from jupyter_qwen.model.config import Qwen3Config
from jupyter_qwen.model.errors import ModelNotFoundError, hub_error
from jupyter_qwen.model.quant.config import read_quant_config, resolve_quantization
from jupyter_qwen.model.quant.install import install_quantized_linears, shard_sizes
from jupyter_qwen.model.quant.linear import QuantLinear
from jupyter_qwen.model.qwen3 import Qwen3ForCausalLM

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
Progress = Callable[[str, float | None], None]
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"]


def resolve_model_path(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json",
                                     "give the checkpoint folder that holds config.json")
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelNotFoundError(f"model {model!r} is not a checkpoint folder "
                                 "nor a Hugging Face id like 'Qwen/Qwen3-0.6B'",
                                 "give a checkpoint folder or an id like Qwen/Qwen3-0.6B; "
                                 "--demo serves the tiny demo model")
    return _snapshot(model)


def _snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=CHECKPOINT_FILES,
                                      local_files_only=offline))
    except Exception as error:
        raise hub_error(repo_id, error) from None


def resolve_dtype(dtype: str, config: Qwen3Config, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    return DTYPES.get(str(config.torch_dtype).removeprefix("torch."), torch.bfloat16)


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / name for name in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{folder} holds no *.safetensors weights")
    return files


def load_model(folder: Path, dtype: torch.dtype, device: torch.device,
               progress: Progress | None = None,
               quantization: str = "none") -> Qwen3ForCausalLM:
    """The checkpoint's model on `device`: bf16 (or `dtype`) weights, or the checkpoint's
    quantized format (its config.json's `quantization_config`), or with `quantization`
    "fp8" a bf16 checkpoint's projections quantized to FP8 as they load."""
    config = Qwen3Config.from_folder(folder)
    quant = resolve_quantization(read_quant_config(folder), quantization)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config).to(dtype)
        if quant is not None:
            install_quantized_linears(model, quant)
    model = model.to_empty(device=device)
    model.quantization = quant
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.build(device)
    _fill_scale_rows(model)
    load_weights(model, folder, progress)
    return model.eval().requires_grad_(False)


def _fill_scale_rows(model: Qwen3ForCausalLM) -> None:
    """Buffers computed at construction (the FP8 scale-row index) lost their values on the
    meta device: recompute them in place."""
    from jupyter_qwen.model.quant.fp8 import scale_rows_of
    from jupyter_qwen.model.quant.linear import Fp8Linear

    for module in model.modules():
        if isinstance(module, Fp8Linear):
            module.scale_rows.copy_(scale_rows_of(module.shard_sizes))


def load_weights(model: Qwen3ForCausalLM, folder: Path, progress: Progress | None = None) -> None:
    targets = _Targets(model)
    loaded: set[str] = set()
    files = weight_files(folder)
    total = sum(file.stat().st_size for file in files)
    done = 0
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as reader:
            for name in reader.keys():  # noqa: SIM118
                tensor = reader.get_tensor(name)
                loaded.update(targets.copy(name, tensor))
                done += tensor.numel() * tensor.element_size()
                if progress:
                    progress("loading weights", min(1.0, done / total))
    missing = targets.expected() - loaded
    if missing:
        raise ValueError(f"checkpoint in {folder} lacks weights: {', '.join(sorted(missing))}")


class _Targets:
    """Where each checkpoint tensor goes: a parameter (a shard of a packed one for q/k/v and
    gate/up), or a quantized projection's buffers."""

    def __init__(self, model: Qwen3ForCausalLM):
        self.model = model
        self.params = dict(model.named_parameters())
        self.quantized = {name: module for name, module in model.named_modules()
                          if isinstance(module, QuantLinear)}

    def expected(self) -> set[str]:
        expected = set()
        for name in self.params:
            packed = [shard for packed, shard in self.model.packed_modules.values()
                      if f".{packed}." in name]
            expected |= {f"{name}#{shard}" for shard in packed} if packed else {name}
        for name, module in self.quantized.items():
            shards = range(len(module.shard_sizes))
            expected |= {f"{name}.{tensor}#{shard}" for tensor in module.tensors
                         for shard in shards}
        return expected

    def copy(self, name: str, tensor: torch.Tensor) -> list[str]:
        name = name.removeprefix("model.")
        if name == "lm_head.weight" and self.model.config.tie_word_embeddings:
            return [name]
        module_name, _, suffix = name.rpartition(".")
        target, shard = self._packed(module_name)
        if target in self.quantized:
            filled = self.quantized[target].load(suffix, shard, tensor)
            return [f"{target}.{done}#{shard}" for done in filled]
        if suffix not in ("weight", "bias") or f"{target}.{suffix}" not in self.params:
            raise ValueError(f"unexpected weight {name!r} in checkpoint")
        param = self.params[f"{target}.{suffix}"]
        if target == module_name:
            param.data.copy_(tensor)
            return [name]
        rows = shard_sizes(self.model.config, target.rpartition(".")[2])
        offset = sum(rows[:shard])
        param.data[offset:offset + rows[shard]].copy_(tensor)
        return [f"{target}.{suffix}#{shard}"]

    def _packed(self, module_name: str) -> tuple[str, int]:
        parent, _, leaf = module_name.rpartition(".")
        if leaf in self.model.packed_modules:
            packed, shard = self.model.packed_modules[leaf]
            return f"{parent}.{packed}", shard
        return module_name, 0
