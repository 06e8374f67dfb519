"""Decode steps replayed from CUDA graphs captured once per padded batch size."""

from __future__ import annotations

import numpy as np
import torch

from jupyter_qwen.model.attention import AttentionMetadata
from jupyter_qwen.model.qwen3 import Qwen3ForCausalLM


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8, *range(16, max_num_seqs + 16, 16)]
    return sorted({size for size in sizes if size < max_num_seqs} | {max_num_seqs})


STEP_INPUT_ROWS = 4


class DecodeGraphs:
    """Static input buffers, one captured graph per batch size, inputs padded up to it.

    A step's token ids, positions, slots and sequence lengths travel together in one copy;
    each graph also takes the greedy choice of every row, so an all-greedy step reads back
    only its token ids. Padding rows have sequence length 0 and slot -1, so they neither read
    nor write the KV cache.
    """

    def __init__(self, model: Qwen3ForCausalLM, max_num_seqs: int, max_blocks_per_seq: int,
                 device: torch.device):
        self.model = model
        self.batch_sizes = graph_batch_sizes(max_num_seqs)
        size = self.batch_sizes[-1]
        self.step_inputs = torch.zeros(STEP_INPUT_ROWS, size, dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.slot_mapping, self.step_seq_lens = self.step_inputs
        self.slot_mapping.fill_(-1)
        self.seq_lens = torch.zeros(size, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(size, max_blocks_per_seq, dtype=torch.int32,
                                        device=device)
        self.query_start_loc = torch.arange(size + 1, dtype=torch.int32, device=device)
        self.host_inputs = torch.zeros(STEP_INPUT_ROWS, size, dtype=torch.int64,
                                       pin_memory=True)
        self.host_tables = torch.zeros(size, max_blocks_per_seq, dtype=torch.int32,
                                       pin_memory=True)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.greedy_tokens: dict[int, torch.Tensor] = {}

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], query_start_loc=self.query_start_loc[:size + 1],
            seq_lens=self.seq_lens[:size], block_tables=self.block_tables[:size],
            max_query_len=1, max_seq_len=self.block_tables.shape[1],
            query_start_loc_cpu=list(range(size + 1)), seq_lens_cpu=[0] * size)

    def _forward(self, size: int) -> torch.Tensor:
        self.seq_lens[:size].copy_(self.step_seq_lens[:size])
        hidden = self.model(self.input_ids[:size], self.positions[:size], self._meta(size))
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        for size in reversed(self.batch_sizes):
            self._forward(size)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[size] = self._forward(size)
                self.greedy_tokens[size] = self.logits[size].argmax(dim=-1)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def run(self, input_ids: list[int], positions: list[int], slots: list[int],
            block_tables: np.ndarray) -> int:
        """Replay the graph for the smallest captured batch that holds these sequences;
        return that batch size (`logits` and `greedy_tokens` hold the results).

        The inputs travel in two copies from pinned host buffers; the previous step's
        copies are complete, since its sampled tokens were read back before this step.
        """
        count, width = len(input_ids), block_tables.shape[1]
        size = next(s for s in self.batch_sizes if s >= count)
        host = self.host_inputs.numpy()
        host[:, :count] = input_ids, positions, slots, np.add(positions, 1)
        host[:, count:size] = np.array([[0], [0], [-1], [0]])
        self.host_tables.numpy()[:count, :width] = block_tables
        self.step_inputs[:, :size].copy_(self.host_inputs[:, :size], non_blocking=True)
        self.block_tables[:count, :width].copy_(self.host_tables[:count, :width],
                                                non_blocking=True)
        self.graphs[size].replay()
        return size

    def close(self) -> None:
        self.graphs.clear()
        self.logits.clear()
        self.greedy_tokens.clear()
        self.model = None
