"""The demo checkpoint's tokenizer: a byte-level BPE trained on a generated corpus.

The corpus mixes prose, code, numbers, tool-call JSON and non-Latin text, so English and
code compress and every UTF-8 string round-trips. Qwen3's ChatML markers and its think /
tool-call tags are added as single tokens at the top of the vocabulary.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_SEED = 1234
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TAG_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>",
              "<tool_response>", "</tool_response>")
ADDED_TOKENS = SPECIAL_TOKENS + TAG_TOKENS


def added_token_ids(vocab_size: int) -> dict[str, int]:
    """The added tokens' ids: the last ones of a vocabulary of `vocab_size`."""
    first = vocab_size - len(ADDED_TOKENS)
    return {token: first + index for index, token in enumerate(ADDED_TOKENS)}


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
