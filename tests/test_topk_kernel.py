"""The sampler's top-W kernel (`engine/topk_kernel.py`) against `torch.topk`: the same values,
indices that point at them (the lowest among ties, in ascending order), across chunk and slab
edges, tie runs at the W-th value, -inf entries and a vocabulary not a multiple of the chunk;
on a GPU at Qwen3's vocabulary, and inside the captured draws. Compiled on a GPU, the
interpreter on CPU (small vocabularies and tiles keep it quick)."""

from __future__ import annotations

import pytest
import torch
from kernel_modes import HAVE_TRITON

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="needs triton")


def hard_rows(vocab: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Rows that test the selection: bf16-rounded noise (ties everywhere); a tie run of
    3 * width values at the width-th place; mostly -inf with fewer finite values than the
    width; all -inf; zeros of both signs at the top."""
    noise = (torch.randn(5, vocab, generator=generator) * 3).bfloat16().float()
    ties = noise[1].clamp(max=1.0)
    ties[torch.randperm(vocab, generator=generator)[:width // 2]] = 5.0
    ties[torch.randperm(vocab, generator=generator)[:3 * width]] = 2.0
    sparse = torch.full((vocab,), float("-inf"))
    sparse[torch.randperm(vocab, generator=generator)[:width // 3]] = noise[2, :width // 3]
    zeros = noise[4].clamp(max=-1.0)
    signed = torch.randperm(vocab, generator=generator)[:width]
    zeros[signed] = torch.where(torch.arange(width) % 2 == 0, 0.0, -0.0)
    return torch.stack([noise[0], ties, sparse, torch.full((vocab,), float("-inf")), zeros])


def check_against_torch(logits: torch.Tensor, width: int, tiling=None) -> None:
    from jupyter_qwen.engine.topk_kernel import many_program_topk

    values, indices = many_program_topk(logits, width, tiling)
    expected = logits.topk(width, dim=-1).values
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    assert torch.equal(values, expected)
    assert torch.equal(logits.gather(1, indices), values)
    # among equal values the lowest indices, ascending: a stable descending sort's order
    order = logits.cpu().sort(dim=-1, descending=True, stable=True).indices[:, :width]
    assert torch.equal(indices.cpu(), order)


@pytest.mark.parametrize("width,vocab,chunk,slab", [
    (64, 1000, 128, 128),  # 8 chunks, one cut short; 4 slabs in stage 2
    (64, 1030, 256, 512),  # a last chunk of 6 logits
    (256, 1100, 512, 256),  # 3 chunks; the slab is the width
])
def test_the_kernel_selects_what_torch_topk_selects(mode, generator, width, vocab, chunk, slab):
    from jupyter_qwen.engine.topk_kernel import TopkTiling

    logits = hard_rows(vocab, width, generator).to(mode.device)
    check_against_torch(logits, width, TopkTiling(chunk, 4, slab, 4))


def test_a_row_view_and_the_default_tiling(mode, generator):
    """A row slice of a wider buffer (the captured draws pass the padded batch's first rows)
    with the tiling the sampler uses."""
    vocab = mode.pick(2101, 151_937)  # a row start off 16-byte alignment
    logits = (torch.randn(3, vocab, generator=generator) * 3).bfloat16().float()
    check_against_torch(logits.to(mode.device)[1:2], 64)


def test_bad_widths_are_refused(mode):
    from jupyter_qwen.engine.topk_kernel import TopkTiling, many_program_topk

    with pytest.raises(ValueError, match="top 64"):
        many_program_topk(torch.zeros(1, 32, device=mode.device), 64)
    with pytest.raises(ValueError, match="top 256"):
        many_program_topk(torch.zeros(1, 4096, device=mode.device), 256, TopkTiling(128, 4, 256, 4))


def test_every_kernel_width_has_a_tiling_that_holds_it():
    from jupyter_qwen.engine.sampler import KERNEL_WIDTHS
    from jupyter_qwen.engine.topk_kernel import TILINGS

    assert set(KERNEL_WIDTHS) <= set(TILINGS)
    for width, tiling in TILINGS.items():
        for tile in (tiling.chunk, tiling.slab):
            assert tile >= width and tile & (tile - 1) == 0, (width, tiling)


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@CUDA_ONLY
@pytest.mark.parametrize("width", [64, 256])
def test_gpu_qwen3_vocabulary_for_small_batches(width):
    generator = torch.Generator().manual_seed(width)
    for rows in range(1, 9):
        logits = (torch.randn(rows, 151_936, generator=generator) * 3).bfloat16().float()
        logits[:, :1000] = float("-inf")
        check_against_torch(logits.cuda(), width)
        check_against_torch(hard_rows(151_936, width, generator).cuda()[:rows], width)


@pytest.mark.gpu
@CUDA_ONLY
def test_gpu_captured_draw_at_batch_one_equals_sample():
    """The captured draw (whose window comes from this kernel at batch 1) gives `sample`'s
    tokens for Qwen3's defaults and a top-p-only row, with the same seeds."""
    from jupyter_qwen.engine.graph_sampling import GraphSampler
    from jupyter_qwen.engine.sampler import build_sampling_batch, sample
    from jupyter_qwen.engine.sequence import Sequence
    from jupyter_qwen.sampling_params import SamplingParams

    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(5)
    buffer = torch.zeros(1, 151_936, device=device)
    sampler = GraphSampler({1: buffer}, device)
    sampler.capture()
    kinds = [{"temperature": 0.6, "top_k": 20, "top_p": 0.95}, {"temperature": 1.0,
                                                                "top_p": 0.9}]
    for step in range(40):
        buffer.copy_((torch.randn(1, 151_936, generator=generator) * 3).bfloat16().float())
        params = SamplingParams(**kinds[step % 2], seed=step)
        captured = sampler.draw([Sequence("a", [0], params)], 1)
        batch = build_sampling_batch([Sequence("b", [0], params)], 151_936, device)
        assert captured == sample(buffer.clone(), batch).token_ids
