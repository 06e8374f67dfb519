"""Random Qwen3 checkpoints in Hugging Face format, built offline for tests, demos and benchmarks.

`make_tiny_qwen3(path)` writes config.json, safetensors weights, a byte-level BPE tokenizer
trained on a generated corpus, generation_config.json and our own ChatML chat template.
With `script=DEMO_SCRIPT` the random weights are then taught a few conversations (thinking,
a tool-call round trip, a longer answer) that greedy decoding replays token for token; that
is the demo model `demo_model_path()` caches. The script lives in `jupyter_qwen.demo_script`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from jupyter_qwen.demo_script import ScriptedTurn

GENERATOR_VERSION = 2
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
EMBEDDING_LOGIT_STD = 2.0
RESIDUAL_GAIN = 8.0
QK_NORM_SCALE = 2.0
FINAL_NORM_SCALE = 3.0
NORM_NOISE = 0.05
TOKENIZER_SEED = 1234

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TAG_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>",
              "<tool_response>", "</tool_response>")
ADDED_TOKENS = SPECIAL_TOKENS + TAG_TOKENS


@dataclass(frozen=True)
class Shape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    dtype: str

    def layer_parameters(self) -> int:
        attention_width = self.num_attention_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        attention = 2 * self.hidden_size * attention_width + 2 * self.hidden_size * kv_width
        mlp = 3 * self.hidden_size * self.intermediate_size
        norms = 2 * self.hidden_size + 2 * self.head_dim
        return attention + mlp + norms

    def parameter_count(self) -> int:
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embeddings
        layers = self.num_hidden_layers * self.layer_parameters()
        return embeddings + head + self.hidden_size + layers


SHAPES: dict[str, Shape] = {
    "tiny": Shape(vocab_size=2048, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  max_position_embeddings=4096, tie_word_embeddings=True, dtype="float32"),
    "qwen3-0.6b": Shape(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                        head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True,
                        dtype="bfloat16"),
    "qwen3-1.7b": Shape(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                        head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True,
                        dtype="bfloat16"),
    "qwen3-4b": Shape(vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                      num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True,
                      dtype="bfloat16"),
}

CHAT_TEMPLATE = r"""{#- jupyter_qwen ChatML template: system, user, assistant and tool turns. -#}
{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {{- content | selectattr("type", "equalto", "text") | map(attribute="text") | join("\n") -}}
    {%- endif -%}
{%- endmacro -%}
{%- set has_system = messages | length > 0 and messages[0].role == "system" -%}
{%- if tools -%}
    {{- "<|im_start|>system\n" -}}
    {%- if has_system -%}
        {{- text_of(messages[0].content) ~ "\n\n" -}}
    {%- endif -%}
    {{- "# Tools\n\nYou can use the functions listed below when they help with the request. "
        ~ "Each one is described by a JSON object on its own line inside <tools></tools>:"
        ~ "\n<tools>" -}}
    {%- for tool in tools -%}
        {{- "\n" ~ (tool | tojson) -}}
    {%- endfor -%}
    {{- "\n</tools>\n\nTo use a function, reply with its name and a JSON object of arguments "
        ~ "between <tool_call> and </tool_call>, one block per call:\n<tool_call>\n"
        ~ "{\"name\": <function name>, \"arguments\": <JSON object of arguments>}\n"
        ~ "</tool_call><|im_end|>\n" -}}
{%- elif has_system -%}
    {{- "<|im_start|>system\n" ~ text_of(messages[0].content) ~ "<|im_end|>\n" -}}
{%- endif -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for message in messages -%}
    {%- if message.role == "user" -%}
        {%- set ns.last_user = loop.index0 -%}
    {%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
    {%- if loop.first and message.role == "system" -%}
    {%- elif message.role == "assistant" -%}
        {%- set content = text_of(message.content) -%}
        {%- set reasoning = "" -%}
        {%- if message.reasoning_content is string -%}
            {%- set reasoning = message.reasoning_content -%}
        {%- endif -%}
        {%- if "</think>" in content -%}
            {%- set parts = content.split("</think>", 1) -%}
            {%- set head = parts[0].lstrip() -%}
            {%- if head.startswith("<think>") -%}
                {%- set head = head[7:] -%}
            {%- endif -%}
            {%- if not reasoning -%}
                {%- set reasoning = head -%}
            {%- endif -%}
            {%- set content = parts[1].lstrip() -%}
        {%- endif -%}
        {%- set reasoning = reasoning.strip() -%}
        {{- "<|im_start|>assistant\n" -}}
        {%- if loop.index0 > ns.last_user and reasoning -%}
            {{- "<think>\n" ~ reasoning ~ "\n</think>\n\n" -}}
        {%- endif -%}
        {{- content -}}
        {%- if message.tool_calls -%}
            {%- for call in message.tool_calls -%}
                {%- set function = call.function if call.function is defined else call -%}
                {%- if content or not loop.first -%}
                    {{- "\n" -}}
                {%- endif -%}
                {{- "<tool_call>\n{\"name\": " ~ (function.name | tojson) ~ ", \"arguments\": " -}}
                {%- if function.arguments is string -%}
                    {{- function.arguments -}}
                {%- else -%}
                    {{- function.arguments | tojson -}}
                {%- endif -%}
                {{- "}\n</tool_call>" -}}
            {%- endfor -%}
        {%- endif -%}
        {{- "<|im_end|>\n" -}}
    {%- elif message.role == "tool" -%}
        {%- if loop.first or loop.previtem.role != "tool" -%}
            {{- "<|im_start|>user" -}}
        {%- endif -%}
        {{- "\n<tool_response>\n" ~ text_of(message.content) ~ "\n</tool_response>" -}}
        {%- if loop.last or loop.nextitem.role != "tool" -%}
            {{- "<|im_end|>\n" -}}
        {%- endif -%}
    {%- else -%}
        {{- "<|im_start|>" ~ message.role ~ "\n" ~ text_of(message.content) ~ "<|im_end|>\n" -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\n" -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- "<think>\n\n</think>\n\n" -}}
    {%- endif -%}
{%- endif -%}
"""


def get_shape(shape: str, num_hidden_layers: int | None = None) -> Shape:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")
    chosen = SHAPES[shape]
    if num_hidden_layers is None:
        return chosen
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be at least 1, not {num_hidden_layers}")
    return replace(chosen, num_hidden_layers=num_hidden_layers)


def parameter_count(shape: str = "tiny", num_hidden_layers: int | None = None) -> int:
    return get_shape(shape, num_hidden_layers).parameter_count()


def added_token_ids(shape: str = "tiny") -> dict[str, int]:
    first = get_shape(shape).vocab_size - len(ADDED_TOKENS)
    return {token: first + index for index, token in enumerate(ADDED_TOKENS)}


def make_tiny_qwen3(path: str | os.PathLike, shape: str = "tiny", seed: int = 0,
                    num_hidden_layers: int | None = None,
                    max_shard_bytes: int | None = None,
                    script: Sequence[ScriptedTurn] | None = None) -> Path:
    """Write a random Qwen3 checkpoint; with `script` (a list of ScriptedTurn, for example
    DEMO_SCRIPT), also teach it those turns: see `jupyter_qwen.demo_script.teach`. Both are
    deterministic: the same arguments give byte-identical files on the same machine."""
    chosen = get_shape(shape, num_hidden_layers)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    token_ids = added_token_ids(shape)
    max_shard_bytes = max_shard_bytes or DEFAULT_MAX_SHARD_BYTES
    _write_config(folder, chosen, token_ids)
    _write_generation_config(folder, token_ids)
    _write_tokenizer(folder, chosen)
    _write_weights(folder, chosen, seed, max_shard_bytes)
    if script is not None:
        from jupyter_qwen.demo_script import teach

        weights, _ = teach(folder, script, seed=seed)
        _write_weights(folder, chosen, seed, max_shard_bytes, weights)
    return folder


def _write_config(folder: Path, shape: Shape, token_ids: dict[str, int]) -> None:
    from transformers import Qwen3Config

    config = Qwen3Config(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        max_window_layers=shape.num_hidden_layers, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=shape.tie_word_embeddings, attention_bias=False,
        use_sliding_window=False, sliding_window=None, hidden_act="silu",
        bos_token_id=token_ids["<|endoftext|>"], eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"], dtype=shape.dtype,
        architectures=["Qwen3ForCausalLM"])
    config.save_pretrained(folder)


def _write_generation_config(folder: Path, token_ids: dict[str, int]) -> None:
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=token_ids["<|endoftext|>"],
                     eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
                     pad_token_id=token_ids["<|endoftext|>"],
                     do_sample=False).save_pretrained(folder)


def _write_tokenizer(folder: Path, shape: Shape) -> None:
    tokenizer = train_tokenizer(shape.vocab_size)
    tokenizer.save(str(folder / "tokenizer.json"))
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
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE whose length, added tokens included, is exactly `vocab_size`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    learned_size = vocab_size - len(ADDED_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=learned_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(training_corpus(learned_size), trainer)
    if tokenizer.get_vocab_size() != learned_size:
        raise RuntimeError(f"BPE training reached {tokenizer.get_vocab_size()} tokens, "
                           f"not {learned_size}: the generated corpus is too small")
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token in TAG_TOKENS])
    return tokenizer


NOUNS = ("river", "garden", "window", "engine", "teacher", "city", "market", "question",
         "answer", "model", "kernel", "server", "notebook", "planet", "forest", "letter",
         "number", "table", "street", "island", "signal", "bridge", "coffee", "weather",
         "student", "doctor", "picture", "story", "machine", "language", "morning", "winter",
         "summer", "mountain", "friend", "family", "problem", "system", "memory", "token",
         "request", "battery", "library", "village", "ocean", "pencil", "camera", "rocket")
VERBS = ("finds", "builds", "reads", "writes", "moves", "opens", "closes", "carries", "counts",
         "paints", "answers", "follows", "watches", "sends", "keeps", "checks", "measures",
         "explains", "remembers", "changes", "starts", "stops", "joins", "sorts", "draws")
ADJECTIVES = ("quiet", "bright", "small", "large", "green", "early", "late", "careful",
              "simple", "strange", "warm", "cold", "happy", "busy", "old", "new", "quick",
              "slow", "gentle", "clever", "empty", "heavy", "light", "round", "tall")
LINKS = ("and", "but", "because", "while", "after", "before", "so", "although", "when")
PLACES = ("near the", "under the", "behind the", "inside the", "across the", "beside the")
NAMES = ("Ada", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jun")
UNICODE_WORDS = ("héllo", "wörld", "café", "naïve", "über", "façade", "smörgåsbord", "niño",
                 "日本語", "東京", "こんにちは", "안녕하세요", "привет", "мир", "γειά",
                 "مرحبا", "שלום", "नमस्ते", "🙂", "🚀", "✨", "€", "£", "°C", "→", "—")
KEYWORDS = ("def", "return", "if", "else", "for", "in", "import", "from", "class", "while",
            "print", "None", "True", "False", "self", "lambda", "yield", "with", "as")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def training_corpus(learned_size: int) -> Iterator[str]:
    rng = random.Random(TOKENIZER_SEED)
    for _ in range(1500):
        yield _prose_line(rng)
        yield _code_line(rng)
        yield _number_line(rng)
        yield _tool_line(rng)
        yield " ".join(rng.choice(UNICODE_WORDS) for _ in range(rng.randint(3, 8)))
    filler_words = 2 * learned_size // 3
    for _ in range(0, filler_words, 100):
        yield " ".join(_random_word(rng) for _ in range(100))


def _random_word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))


def _prose_line(rng: random.Random) -> str:
    def clause() -> str:
        return (f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
                f"a {rng.choice(NOUNS)} {rng.choice(PLACES)} {rng.choice(NOUNS)}")

    sentence = f"{clause()} {rng.choice(LINKS)} {rng.choice(NAMES)} {clause().removeprefix('the ')}"
    return sentence[0].upper() + sentence[1:] + rng.choice((".", "!", "?", "."))


def _code_line(rng: random.Random) -> str:
    name = f"{rng.choice(VERBS).removesuffix('s')}_{rng.choice(NOUNS)}"
    argument = rng.choice(NOUNS)
    return (f"{rng.choice(KEYWORDS)} {name}({argument}, n={rng.randint(0, 99)}):\n"
            f"    {argument}s = [x * {rng.randint(2, 9)} for x in range({argument})]\n"
            f"    return {{'{argument}': {argument}s, \"count\": len({argument}s)}}\n")


def _number_line(rng: random.Random) -> str:
    a, b = rng.randint(0, 9999), rng.randint(0, 999)
    return (f"{a} + {b} = {a + b}; {a} * {b % 50} = {a * (b % 50)}; "
            f"{rng.randint(1900, 2099)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
            f"{rng.random():.4f} {rng.randint(0, 255):#04x}")


def _tool_line(rng: random.Random) -> str:
    call = {"name": f"get_{rng.choice(NOUNS)}",
            "arguments": {rng.choice(NOUNS): rng.choice(NAMES), "limit": rng.randint(1, 20)}}
    return json.dumps(call, ensure_ascii=False)


@dataclass(frozen=True)
class _WeightSpec:
    name: str
    shape: tuple[int, ...]
    std: float
    mean: float = 0.0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _linear(name: str, rows: int, columns: int, gain: float = 1.0) -> _WeightSpec:
    return _WeightSpec(name, (rows, columns), gain / math.sqrt(columns))


def _norm(name: str, size: int, scale: float = 1.0) -> _WeightSpec:
    return _WeightSpec(name, (size,), NORM_NOISE * scale, scale)


def weight_specs(shape: Shape) -> list[_WeightSpec]:
    """Names, shapes and init of every tensor, scaled so that greedy decoding stays lively:
    residual branches outweigh the token embedding (tied heads otherwise echo the input),
    q/k norms sharpen attention, and the final norm puts the logits' std near six."""
    hidden, head_dim, intermediate = shape.hidden_size, shape.head_dim, shape.intermediate_size
    attention_width = shape.num_attention_heads * head_dim
    kv_width = shape.num_key_value_heads * head_dim
    embedding_std = EMBEDDING_LOGIT_STD / math.sqrt(hidden)
    specs = [_WeightSpec("model.embed_tokens.weight", (shape.vocab_size, hidden), embedding_std)]
    for layer in range(shape.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        specs += [
            _norm(f"{prefix}.input_layernorm.weight", hidden),
            _linear(f"{prefix}.self_attn.q_proj.weight", attention_width, hidden),
            _linear(f"{prefix}.self_attn.k_proj.weight", kv_width, hidden),
            _linear(f"{prefix}.self_attn.v_proj.weight", kv_width, hidden),
            _norm(f"{prefix}.self_attn.q_norm.weight", head_dim, QK_NORM_SCALE),
            _norm(f"{prefix}.self_attn.k_norm.weight", head_dim, QK_NORM_SCALE),
            _linear(f"{prefix}.self_attn.o_proj.weight", hidden, attention_width, RESIDUAL_GAIN),
            _norm(f"{prefix}.post_attention_layernorm.weight", hidden),
            _linear(f"{prefix}.mlp.gate_proj.weight", intermediate, hidden),
            _linear(f"{prefix}.mlp.up_proj.weight", intermediate, hidden),
            _linear(f"{prefix}.mlp.down_proj.weight", hidden, intermediate, RESIDUAL_GAIN),
        ]
    specs.append(_norm("model.norm.weight", hidden, FINAL_NORM_SCALE))
    if not shape.tie_word_embeddings:
        specs.append(_WeightSpec("lm_head.weight", (shape.vocab_size, hidden), embedding_std))
    return specs


def _random_tensor(spec: _WeightSpec, seed: int, dtype: torch.dtype) -> torch.Tensor:
    import torch

    digest = hashlib.sha256(f"{seed}/{spec.name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    values = torch.randn(spec.shape, generator=generator, dtype=torch.float32)
    return values.mul_(spec.std).add_(spec.mean).to(dtype)


def _plan_shards(specs: list[_WeightSpec], item_size: int,
                 max_shard_bytes: int) -> list[list[_WeightSpec]]:
    shards: list[list[_WeightSpec]] = [[]]
    shard_bytes = 0
    for spec in specs:
        size = spec.numel * item_size
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(spec)
        shard_bytes += size
    return shards


def _write_weights(folder: Path, shape: Shape, seed: int, max_shard_bytes: int,
                   weights: dict[str, torch.Tensor] | None = None) -> None:
    """Random weights, or the given ones (by HF name) cast to the shape's dtype."""
    import torch
    from safetensors.torch import save_file

    for stale in [*folder.glob("model*.safetensors"), folder / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    dtype = getattr(torch, shape.dtype)
    item_size = torch.empty((), dtype=dtype).element_size()
    specs = weight_specs(shape)
    shards = _plan_shards(specs, item_size, max_shard_bytes)
    count = len(shards)
    names = (["model.safetensors"] if count == 1 else
             [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)])
    for file_name, shard in zip(names, shards, strict=True):
        tensors = {spec.name: _random_tensor(spec, seed, dtype) if weights is None
                   else weights[spec.name].to(dtype).contiguous() for spec in shard}
        save_file(tensors, str(folder / file_name), metadata={"format": "pt"})
        (folder / file_name).chmod(0o644)
        del tensors
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(spec.numel for spec in specs) * item_size},
            "weight_map": {spec.name: file_name for file_name, shard
                           in zip(names, shards, strict=True) for spec in shard},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


_DEMO_LOCK = threading.Lock()


def demo_model_name() -> str:
    """The cache folder's name: generator version and a digest of the script it was taught
    (which holds the tool schema, so a LangChain that renders tools anew gets a new model)."""
    from jupyter_qwen.demo_script import DEMO_SCRIPT, script_digest

    return f"demo-tiny-v{GENERATOR_VERSION}-{script_digest(DEMO_SCRIPT)[:12]}"


def demo_model_path() -> Path:
    """The tiny demo checkpoint, taught DEMO_SCRIPT, built once (per process at a time) and
    cached under $JUPYTER_QWEN_CACHE or ~/.cache/jupyter_qwen."""
    from jupyter_qwen.demo_script import DEMO_SCRIPT

    root = Path(os.environ.get("JUPYTER_QWEN_CACHE") or Path.home() / ".cache" / "jupyter_qwen")
    folder = root / demo_model_name()
    with _DEMO_LOCK:
        if not folder.is_dir():
            _build_into(folder, DEMO_SCRIPT)
    return folder


def _build_into(folder: Path, script: Sequence[ScriptedTurn]) -> None:
    """Build in a temporary sibling and rename, so that racing processes never see half."""
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    try:
        make_tiny_qwen3(building, script=script)
        building.chmod(0o755)
        os.rename(building, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


def describe(shape: str, num_hidden_layers: int | None = None) -> str:
    chosen = get_shape(shape, num_hidden_layers)
    return (f"{shape}: {chosen.parameter_count():,} parameters, vocab {chosen.vocab_size:,}, "
            f"{chosen.num_hidden_layers} layers, {chosen.dtype}")


def add_make_tiny_model_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny-model", help="write a random Qwen3 checkpoint folder (no download)",
        description="Write a random Qwen3 checkpoint in Hugging Face format: config, "
                    "safetensors weights, byte-level BPE tokenizer and chat template.")
    parser.add_argument("dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-hidden-layers", type=int, default=None,
                        help="override the number of decoder layers")
    parser.add_argument("--demo-script", action="store_true",
                        help="teach it the demo conversations (what demo_model_path() builds)")
    parser.set_defaults(run=_run_make_tiny_model)


def _run_make_tiny_model(args: argparse.Namespace) -> int:
    script = None
    if args.demo_script:
        from jupyter_qwen.demo_script import DEMO_SCRIPT as script
    folder = make_tiny_qwen3(args.dir, shape=args.shape, seed=args.seed,
                             num_hidden_layers=args.num_hidden_layers, script=script)
    print(folder.resolve())
    print(describe(args.shape, args.num_hidden_layers))
    return 0


_DEMO_EXPORTS = ("DEMO_PROMPTS", "DEMO_SCRIPT", "DEMO_TOOLS", "ScriptedTurn", "get_weather")


def __getattr__(name: str):
    """The demo script's names, imported on first use (it imports langchain_core)."""
    if name in _DEMO_EXPORTS:
        from jupyter_qwen import demo_script

        return getattr(demo_script, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
