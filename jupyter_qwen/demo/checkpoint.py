"""Random Qwen3 checkpoints in Hugging Face format, written offline.

`make_tiny_qwen3(path)` writes one file (or family of files) per small function below:
config.json, generation_config.json, the tokenizer files with the chat template, and the
safetensors weights. With `script` the random weights are then taught those conversations
(see `jupyter_qwen.demo.teach`) and written again; that is the demo model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jupyter_qwen.demo.chat_template import chat_template_for
from jupyter_qwen.demo.shapes import Shape, config_fields, get_shape
from jupyter_qwen.demo.tokenizer import added_token_ids, train_tokenizer
from jupyter_qwen.demo.weights import DEFAULT_MAX_SHARD_BYTES, write_weights

if TYPE_CHECKING:
    from jupyter_qwen.demo.script import ScriptedTurn

# Bump when what the writer or the teaching loop produces changes: it names the demo cache.
GENERATOR_VERSION = 2
# Qwen3's rotary base, which Qwen3Config's default (10,000) does not match.
ROPE_PARAMETERS = {"rope_type": "default", "rope_theta": 1_000_000.0}
# The sampling defaults the published Qwen3 checkpoints ship in generation_config.json; the
# real-shape checkpoints carry them so that benchmarks see what users' requests get. The tiny
# shape (the demo model) stays greedy by default.
QWEN3_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
SHAPES_WITH_QWEN3_SAMPLING = ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b")
# config.json's quantization_config, as in Qwen/Qwen3-*-FP8 and Qwen/Qwen3-4B-AWQ.
QUANTIZATION_CONFIGS: dict[str | None, dict | None] = {
    None: None,
    "fp8": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
            "weight_block_size": [128, 128]},
    "awq": {"bits": 4, "group_size": 128, "modules_to_not_convert": None,
            "quant_method": "awq", "version": "gemm", "zero_point": True},
}


def make_tiny_qwen3(path: str | os.PathLike, shape: str = "tiny", seed: int = 0,
                    num_hidden_layers: int | None = None,
                    max_shard_bytes: int | None = None,
                    script: Sequence[ScriptedTurn] | None = None,
                    variant: str = "hybrid", quantization: str | None = None) -> Path:
    """Write a random Qwen3 checkpoint; with `script` (a list of ScriptedTurn, for example
    DEMO_SCRIPT), also teach it those turns: see `jupyter_qwen.demo.teach.teach`. Both are
    deterministic: the same arguments give byte-identical files on the same machine.
    `variant` picks the chat template: "hybrid" (Qwen3's thinking switch, the default),
    "instruct-2507" (never thinks) or "thinking-2507" (always thinks); see
    `jupyter_qwen.demo.chat_template`. `quantization` "fp8" or "awq" writes the decoder
    layers' projections in Qwen's FP8 (128 x 128 blocks) or AWQ (4-bit GEMM, groups of 128)
    format, with config.json's `quantization_config` as Qwen's checkpoints carry it."""
    if quantization not in QUANTIZATION_CONFIGS:
        raise ValueError(f"unknown quantization {quantization!r}; choose fp8, awq or None")
    template = chat_template_for(variant)
    chosen = get_shape(shape, num_hidden_layers)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    max_shard_bytes = max_shard_bytes or DEFAULT_MAX_SHARD_BYTES
    write_config(folder, chosen, QUANTIZATION_CONFIGS[quantization])
    write_generation_config(folder, chosen, qwen3_sampling=shape in SHAPES_WITH_QWEN3_SAMPLING)
    write_tokenizer_files(folder, chosen, template)
    write_weights(folder, chosen, seed, max_shard_bytes,
                  quantization=None if script is not None else quantization)
    if script is not None:
        from jupyter_qwen.demo.teach import teach

        weights, _ = teach(folder, script, seed=seed)
        write_weights(folder, chosen, seed, max_shard_bytes, weights, quantization)
    return folder


def write_config(folder: Path, shape: Shape, quantization_config: dict | None = None) -> None:
    """config.json: the shape's fields, Qwen3's rope base and token ids, and a quantized
    checkpoint's `quantization_config`; the rest is Qwen3Config's defaults."""
    from transformers import Qwen3Config

    token_ids = added_token_ids(shape.vocab_size)
    config = Qwen3Config(
        **config_fields(shape), max_window_layers=shape.num_hidden_layers,
        rope_parameters=dict(ROPE_PARAMETERS),
        bos_token_id=token_ids["<|endoftext|>"], eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"], architectures=["Qwen3ForCausalLM"])
    if quantization_config is not None:
        config.quantization_config = dict(quantization_config)
    config.save_pretrained(folder)


def write_generation_config(folder: Path, shape: Shape, qwen3_sampling: bool = False) -> None:
    """generation_config.json: stop at <|im_end|> or <|endoftext|>; greedy by default, or
    with `qwen3_sampling` the published checkpoints' sampling defaults (QWEN3_SAMPLING)."""
    from transformers import GenerationConfig

    token_ids = added_token_ids(shape.vocab_size)
    sampling = QWEN3_SAMPLING if qwen3_sampling else {"do_sample": False}
    GenerationConfig(bos_token_id=token_ids["<|endoftext|>"],
                     eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
                     pad_token_id=token_ids["<|endoftext|>"],
                     **sampling).save_pretrained(folder)


def write_tokenizer_files(folder: Path, shape: Shape, chat_template: str | None = None) -> None:
    """tokenizer.json, tokenizer_config.json and chat_template.jinja (the hybrid template
    unless `chat_template` is given)."""
    chat_template = chat_template or chat_template_for("hybrid")
    train_tokenizer(shape.vocab_size).save(str(folder / "tokenizer.json"))
    write_tokenizer_config(folder, shape, chat_template)
    write_chat_template(folder, chat_template)


def write_tokenizer_config(folder: Path, shape: Shape, chat_template: str) -> None:
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.max_position_embeddings,
        "chat_template": chat_template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")


def write_chat_template(folder: Path, chat_template: str) -> None:
    (folder / "chat_template.jinja").write_text(chat_template)
