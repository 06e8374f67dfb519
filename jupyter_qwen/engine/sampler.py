"""Token selection for a batch of sequences, vectorised over the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jupyter_qwen.engine.sequence import Sequence, TokenLogprobs


@dataclass(slots=True)
class SamplingBatch:
    temperatures: torch.Tensor | None
    top_p: torch.Tensor | None
    top_k: torch.Tensor | None
    min_p: torch.Tensor | None
    penalties: PenaltyBatch | None
    generators: list[torch.Generator | None]
    greedy_rows: torch.Tensor | None
    num_logprobs: int | None

    @property
    def all_greedy(self) -> bool:
        return self.temperatures is None


@dataclass(slots=True)
class PenaltyBatch:
    repetition: torch.Tensor
    presence: torch.Tensor
    frequency: torch.Tensor
    output_counts: torch.Tensor
    seen_in_context: torch.Tensor


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def build_sampling_batch(seqs: list[Sequence], vocab_size: int,
                         device: torch.device) -> SamplingBatch:
    params = [seq.params for seq in seqs]
    requested = [p.logprobs for p in params if p.logprobs is not None]
    batch = SamplingBatch(None, None, None, None, None, [], None,
                          max(requested) if requested else None)
    if any(p.uses_penalties for p in params):
        batch.penalties = _penalty_batch(seqs, vocab_size, device)
    if all(p.greedy for p in params):
        return batch
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
    batch.temperatures = as_tensor([1.0 if p.greedy else p.temperature for p in params])
    batch.greedy_rows = torch.tensor([p.greedy for p in params], device=device)
    if any(p.top_p < 1.0 for p in params):
        batch.top_p = as_tensor([p.top_p for p in params])
    if any(p.top_k > 0 for p in params):
        batch.top_k = torch.tensor([p.top_k or vocab_size for p in params], device=device)
    if any(p.min_p > 0 for p in params):
        batch.min_p = as_tensor([p.min_p for p in params])
    batch.generators = [seq.generator for seq in seqs]
    return batch


def _penalty_batch(seqs: list[Sequence], vocab_size: int, device) -> PenaltyBatch:
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
    counts = torch.zeros(len(seqs), vocab_size, dtype=torch.float32, device=device)
    seen = torch.zeros(len(seqs), vocab_size, dtype=torch.bool, device=device)
    for row, seq in enumerate(seqs):
        outputs = torch.tensor(seq.output_token_ids, dtype=torch.long, device=device)
        counts[row].index_add_(0, outputs, torch.ones_like(outputs, dtype=torch.float32))
        seen[row, torch.tensor(seq.token_ids, dtype=torch.long, device=device)] = True
    return PenaltyBatch(
        repetition=as_tensor([seq.params.repetition_penalty for seq in seqs]),
        presence=as_tensor([seq.params.presence_penalty for seq in seqs]),
        frequency=as_tensor([seq.params.frequency_penalty for seq in seqs]),
        output_counts=counts, seen_in_context=seen)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    raw_logits = logits
    if batch.penalties is not None:
        logits = apply_penalties(logits.clone(), batch.penalties)
    token_ids = logits.argmax(dim=-1) if batch.all_greedy else _sample_random(logits, batch)
    logprobs = _logprobs(raw_logits, token_ids, batch.num_logprobs)
    return SamplerOutput(token_ids.tolist(), logprobs)


def apply_penalties(logits: torch.Tensor, penalties: PenaltyBatch) -> torch.Tensor:
    repetition = penalties.repetition[:, None]
    penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(penalties.seen_in_context, penalised, logits)
    logits -= penalties.presence[:, None] * (penalties.output_counts > 0)
    logits -= penalties.frequency[:, None] * penalties.output_counts
    return logits


def _sample_random(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    greedy_tokens = logits.argmax(dim=-1)
    logits = logits / batch.temperatures[:, None]
    if batch.top_k is not None:
        logits = apply_top_k(logits, batch.top_k)
    if batch.top_p is not None:
        logits = apply_top_p(logits, batch.top_p)
    probs = logits.softmax(dim=-1)
    if batch.min_p is not None:
        probs = apply_min_p(probs, batch.min_p)
    sampled = (probs / _exponential_noise(probs, batch.generators)).argmax(dim=-1)
    return torch.where(batch.greedy_rows, greedy_tokens, sampled)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(1, (top_k - 1).clamp(max=logits.shape[1] - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p[:, None]
    drop = torch.empty_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    threshold = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
    return probs.masked_fill(probs < threshold, 0.0)


def _exponential_noise(probs: torch.Tensor, generators: list) -> torch.Tensor:
    noise = torch.empty_like(probs).exponential_()
    for row, generator in enumerate(generators):
        if generator is not None:
            noise[row].exponential_(generator=generator)
    return noise


def _logprobs(logits: torch.Tensor, token_ids: torch.Tensor,
              num_top: int | None) -> list[TokenLogprobs | None]:
    if num_top is None:
        return [None] * len(token_ids)
    logprobs = logits.log_softmax(dim=-1)
    chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1).tolist()
    top = logprobs.topk(max(num_top, 1), dim=-1) if num_top else None
    top_ids = top.indices.tolist() if top else [[]] * len(chosen)
    top_values = top.values.tolist() if top else [[]] * len(chosen)
    return [TokenLogprobs(token, value, list(zip(ids, values, strict=True)))
            for token, value, ids, values in zip(token_ids.tolist(), chosen, top_ids, top_values,
                                                 strict=True)]
