"""The loop that teaches a checkpoint scripted turns until greedy decoding replays them.

`teach()` fine-tunes in float32 on CPU, deterministically: the same checkpoint and script
give the same weights, byte for byte, on the same machine. Every distinct prefix of the
script is computed once per step: sorted turns that share a long prefix form a trie, tries
share packed rows, and a tree attention mask lets each token see only its ancestors.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from jupyter_qwen.demo.script import ScriptedTurn

# Changing these settings changes the demo weights: bump checkpoint.GENERATOR_VERSION
# (a changed script alone already renames the cache folder, see cache.demo_model_name).
LEARNING_RATE = 1e-2
ADAM_BETAS = (0.7, 0.9)
MAX_STEPS = 300
MIN_MARGIN = 2.0
MIN_SHARED_PREFIX = 32
ROW_TOKENS = 256
MIN_ROW_FILL = 0.75
_TEACH_LOCK = threading.Lock()
log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class _Example:
    ids: tuple[int, ...]
    prompt_len: int


def _examples(tokenizer, script: Sequence[ScriptedTurn]) -> list[_Example]:
    answers: dict[tuple[int, ...], tuple[int, ...]] = {}
    for turn in script:
        prompt, answer = tuple(turn.prompt_ids(tokenizer)), tuple(turn.answer_ids(tokenizer))
        if answers.setdefault(prompt, answer) != answer:
            raise ValueError(f"the script gives two answers to one prompt: {turn.messages!r}")
    return sorted(_Example(prompt + answer, len(prompt)) for prompt, answer in answers.items())


class _Trie:
    """The distinct prefixes of some examples, one node per token, parents before children;
    `targets` maps a node to the token it must predict, where an example's answer needs it."""

    def __init__(self, examples: Sequence[_Example] = ()):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.targets: dict[int, int] = {}
        self._nodes: dict[tuple[int, int], int] = {}
        for example in examples:
            self.add(example)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, example: _Example) -> None:
        path, node = [], -1
        for token in example.ids:
            child = self._nodes.get((node, token))
            if child is None:
                child = self._nodes[node, token] = len(self.tokens)
                self.tokens.append(token)
                self.parents.append(node)
                self.depths.append(len(path))
            node = child
            path.append(node)
        for position in range(example.prompt_len, len(example.ids)):
            token = example.ids[position]
            if self.targets.setdefault(path[position - 1], token) != token:
                raise ValueError("the script asks for two different tokens after one prefix")


def _packed_batches(examples: list[_Example]) -> list[list[_Trie]]:
    """Sorted neighbours that share a long prefix form a group (one trie); groups shorter
    than ROW_TOKENS share rows, first fit decreasing; rows of similar width form a batch."""
    groups: list[list[_Example]] = []
    for example in examples:
        if groups and _common_length(groups[-1][-1].ids, example.ids) >= MIN_SHARED_PREFIX:
            groups[-1].append(example)
        else:
            groups.append([example])
    sizes = [len(_Trie(group)) for group in groups]
    rows: list[list[_Example]] = []
    loads: list[int] = []
    for index in sorted(range(len(groups)), key=lambda i: (-sizes[i], i)):
        row = next((r for r, load in enumerate(loads)
                    if load + sizes[index] <= ROW_TOKENS), None)
        if row is None:
            rows.append([])
            loads.append(0)
            row = len(rows) - 1
        rows[row] += groups[index]
        loads[row] += sizes[index]
    tries = sorted((_Trie(row) for row in rows), key=len, reverse=True)
    batches: list[list[_Trie]] = []
    for trie in tries:
        if batches and len(trie) >= len(batches[-1][0]) * MIN_ROW_FILL:
            batches[-1].append(trie)
        else:
            batches.append([trie])
    return batches


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


class _Batch:
    """Tries packed as rows of one batch: a token attends to its ancestors and itself, so
    every distinct prefix of the script is computed once per step, as it would be alone."""

    def __init__(self, rows: list[_Trie], pad_id: int):
        import torch

        width = max(len(row) for row in rows)
        self.input_ids = torch.full((len(rows), width), pad_id)
        self.position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        self.attention_mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)
        self.attention_mask[:, 0].diagonal(dim1=-2, dim2=-1).fill_(True)
        picked_rows, picked_columns, targets = [], [], []
        for index, row in enumerate(rows):
            self.input_ids[index, :len(row)] = torch.tensor(row.tokens)
            self.position_ids[index, :len(row)] = torch.tensor(row.depths)
            mask = self.attention_mask[index, 0]
            for node, parent in enumerate(row.parents):
                if parent >= 0:
                    mask[node] |= mask[parent]
            for node in sorted(row.targets):
                picked_rows.append(index)
                picked_columns.append(node)
                targets.append(row.targets[node])
        self.rows, self.columns = torch.tensor(picked_rows), torch.tensor(picked_columns)
        self.targets = torch.tensor(targets)
        self.num_tokens = sum(len(row) for row in rows)

    def logits(self, model) -> torch.Tensor:
        hidden = model.model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                             position_ids=self.position_ids, use_cache=False)
        return model.lm_head(hidden.last_hidden_state[self.rows, self.columns])


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """One thread, deterministic kernels and a seeded RNG, all restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


@dataclass(frozen=True)
class TeachReport:
    steps: int
    loss: float
    min_margin: float
    examples: int
    trained_tokens: int
    packed_tokens: int
    seconds: float


def teach(folder: str | Path, script: Sequence[ScriptedTurn], seed: int = 0,
          max_steps: int = MAX_STEPS, learning_rate: float = LEARNING_RATE,
          min_margin: float = MIN_MARGIN) -> tuple[dict[str, torch.Tensor], TeachReport]:
    """Fine-tune the checkpoint in `folder` until greedy decoding replays every scripted turn.

    Float32, full batch, fixed order, AdamW, loss on the assistant tokens only. Training stops
    once, teacher-forced, each scripted token leads every other by `min_margin` logits (so
    small numeric differences elsewhere cannot flip a greedy choice), and fails after
    `max_steps`. Returns the float32 weights and a report; writes nothing.
    """
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = _examples(tokenizer, script)
    if not examples:
        raise ValueError("the script is empty")
    batches = [_Batch(rows, tokenizer.pad_token_id) for rows in _packed_batches(examples)]
    num_targets = sum(len(batch.targets) for batch in batches)
    with _TEACH_LOCK, _deterministic_torch(seed), _quiet_loading():
        model = Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=ADAM_BETAS,
                                      weight_decay=0.0)
        for step in range(max_steps + 1):
            loss = torch.zeros(())
            margin = math.inf
            for batch in batches:
                logits = batch.logits(model)
                loss = loss + torch.nn.functional.cross_entropy(
                    logits, batch.targets, reduction="sum") / num_targets
                margin = min(margin, _min_margin(logits.detach(), batch.targets))
            if margin >= min_margin:
                break
            if step == max_steps:
                raise RuntimeError(f"the script was not learnt in {max_steps} steps "
                                   f"(loss {loss.item():.4f}, worst margin {margin:.2f})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    report = TeachReport(step, loss.item(), margin, len(examples), num_targets,
                         sum(batch.num_tokens for batch in batches),
                         time.perf_counter() - started)
    log.info("taught %s: %s", folder, report)
    return weights, report


def _min_margin(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The smallest lead of a target's logit over the best other token."""
    import torch

    target = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], -torch.inf).amax(dim=1)
    return (target - others).min().item()
