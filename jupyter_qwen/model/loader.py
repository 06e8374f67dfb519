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
               progress: Progress | None = None) -> Qwen3ForCausalLM:
    config = Qwen3Config.from_folder(folder)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    model = model.to_empty(device=device).to(dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.build(device)
    load_weights(model, folder, progress)
    return model.eval().requires_grad_(False)


def load_weights(model: Qwen3ForCausalLM, folder: Path, progress: Progress | None = None) -> None:
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    files = weight_files(folder)
    total = sum(file.stat().st_size for file in files)
    done = 0
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as reader:
            for name in reader.keys():  # noqa: SIM118
                tensor = reader.get_tensor(name)
                loaded.add(_copy_weight(model, params, name, tensor))
                done += tensor.numel() * tensor.element_size()
                if progress:
                    progress("loading weights", min(1.0, done / total))
    missing = _expected_weights(model, params) - loaded
    if missing:
        raise ValueError(f"checkpoint in {folder} lacks weights: {', '.join(sorted(missing))}")


def _expected_weights(model: Qwen3ForCausalLM, params: dict) -> set[str]:
    expected = set()
    for name in params:
        packed = [shard for packed, shard in model.packed_modules.values()
                  if f".{packed}." in name]
        expected |= {f"{name}#{shard}" for shard in packed} if packed else {name}
    return expected


def _copy_weight(model, params: dict, name: str, tensor: torch.Tensor) -> str:
    name = name.removeprefix("model.")
    if name == "lm_head.weight" and model.config.tie_word_embeddings:
        return name
    for source, (packed, shard) in model.packed_modules.items():
        if f".{source}." in name:
            target = name.replace(source, packed)
            param = params[target]
            rows = _shard_sizes(model.config, packed)
            offset = sum(rows[:shard])
            param.data[offset:offset + rows[shard]].copy_(tensor)
            return f"{target}#{shard}"
    if name not in params:
        raise ValueError(f"unexpected weight {name!r} in checkpoint")
    params[name].data.copy_(tensor)
    return name


def _shard_sizes(config: Qwen3Config, packed: str) -> list[int]:
    if packed == "gate_up_proj":
        return [config.intermediate_size] * 2
    kv = config.num_key_value_heads * config.head_dim
    return [config.num_attention_heads * config.head_dim, kv, kv]
