"""Runs one scheduled step: flattens it into a varlen batch, runs the model, samples."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jupyter_qwen.config import CPU_KV_CACHE_BYTES, EngineConfig
from jupyter_qwen.engine.cuda_graphs import DecodeGraphs
from jupyter_qwen.engine.errors import OutOfKVCacheMemoryError
from jupyter_qwen.engine.graph_sampling import GraphSampler
from jupyter_qwen.engine.logit_adjustments import (
    LogitAdjustments,
    TokenBitmasks,
    build_logit_adjustments,
)
from jupyter_qwen.engine.memory_figures import module_bytes, reserved_bytes
from jupyter_qwen.engine.penalty_state import PenaltyState
from jupyter_qwen.engine.sampler import (
    KERNEL_VARIANTS,
    TOPK_KERNEL_MAX_ROWS,
    SamplerOutput,
    SamplingBatch,
    build_sampling_batch,
    sample,
)
from jupyter_qwen.engine.scheduler import ScheduledSeq
from jupyter_qwen.engine.sequence import Sequence
from jupyter_qwen.model.attention import AttentionMetadata
from jupyter_qwen.model.config import Qwen3Config
from jupyter_qwen.model.loader import Progress, load_model, resolve_dtype
from jupyter_qwen.model.ops import build_ops

GPU_HEADROOM_BYTES = 512 << 20
# contexts of a decode row that its attention kernels take whole and split over programs
SHORT_CONTEXT, LONG_CONTEXT = 40, 2000
# (query_lens, context_lens) of the start-up steps that compile every kernel variant of a
# bf16 model (`ModelRunner._compile_kernels`; quantized models add `bucket_steps`)
COMPILE_STEPS = (([37], [37]), ([5] * 17, [90] * 17), ([1], [SHORT_CONTEXT]),
                 ([1, 1], [SHORT_CONTEXT, LONG_CONTEXT]), ([1] * 3, [30] * 3),
                 ([16, 1, 1], [48, 17, 64]), ([128, 1], [128, LONG_CONTEXT]))


@dataclass(slots=True)
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_rows: torch.Tensor
    sampled_seqs: list[Sequence]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA GPU")
    return torch.device(name)


class ModelRunner:
    def __init__(self, config: EngineConfig, model_path: Path, progress: Progress | None = None):
        self.config = config
        self.progress = progress or (lambda phase, fraction: None)
        self.device = resolve_device(config.device)
        self.model_config = Qwen3Config.from_folder(model_path)
        self.config = config.resolved(self.model_config.max_position_embeddings)
        self.max_model_len = self.config.max_model_len
        self.dtype = resolve_dtype(config.dtype, self.model_config, self.device)
        torch.manual_seed(config.seed)
        self.model = load_model(model_path, self.dtype, self.device, self.progress,
                                config.quantization)
        self.ops = build_ops(config.attention_backend, self.device, config.kernels)
        self.model.use_ops(self.ops)  # quantized weights may be repacked for the kernels
        self.weights_bytes = module_bytes(self.model)
        self.block_size = config.block_size
        self.activation_bytes: int | None = None  # measured on a GPU (_kv_budget_on_gpu)
        self.penalty_state = PenaltyState(self.model_config.vocab_size, self.device)
        if self._uses_graphs():  # the captured draws read its rows in place
            self.penalty_state.reserve(self.config.max_num_seqs)
        self.token_bitmasks = TokenBitmasks(self.model_config.vocab_size, self.device,
                                            self.config.max_num_seqs)
        self.progress("measuring memory", None)
        num_blocks = self._count_kv_blocks()
        self.progress("allocating the KV cache", None)
        self.kv_cache = self._allocate_kv_cache(num_blocks)
        if self.ops.compiled:
            self.progress("compiling kernels", None)
            self._compile_kernels()
        self.cuda_graph_bytes: int | None = 0 if self.device.type == "cuda" else None
        self.graphs = self._capture_graphs() if self._uses_graphs() else None
        self.graph_sampler = self._capture_sampling() if self.graphs is not None else None
        self.eos_token_ids: set[int] = set()  # masked while a request is below min_tokens

    def _uses_graphs(self) -> bool:
        return (self.device.type == "cuda" and not self.config.enforce_eager
                and self.ops.compiled)

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.max_model_len // self.block_size)

    def _capture_graphs(self) -> DecodeGraphs:
        """Capture the decode graphs; what torch reserves meanwhile is their pool and buffers."""
        self.progress("capturing CUDA graphs", None)
        before = reserved_bytes(self.device)
        graphs = DecodeGraphs(self.model, self.config.max_num_seqs, self.max_blocks_per_seq,
                              self.device)
        graphs.capture()
        self.cuda_graph_bytes = reserved_bytes(self.device) - before
        return graphs

    def _capture_sampling(self) -> GraphSampler:
        """Capture the draws beside the decode graphs; their pool counts as graph memory."""
        before = reserved_bytes(self.device)
        sampler = GraphSampler(self.graphs.logits, self.device, self.penalty_state,
                               self.graphs.greedy_tokens, self.config.kernels.sampled_draw)
        sampler.capture()
        self.cuda_graph_bytes += reserved_bytes(self.device) - before
        return sampler

    @property
    def num_kv_blocks(self) -> int:
        return self.kv_cache.shape[2]

    @property
    def kv_block_bytes(self) -> int:
        return (self.model_config.kv_bytes_per_token * self.block_size
                * torch.finfo(self.dtype).bits // 8)

    def _count_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            num_blocks = self.config.num_kv_blocks
        elif self.device.type == "cuda":
            num_blocks = self._kv_budget_on_gpu() // self.kv_block_bytes
        else:
            num_blocks = CPU_KV_CACHE_BYTES // self.kv_block_bytes
        needed = -(-self.max_model_len // self.block_size)
        if num_blocks < needed:
            raise OutOfKVCacheMemoryError(
                f"the KV cache holds {num_blocks * self.block_size} tokens "
                f"({num_blocks} blocks of {self.block_size}), fewer than one sequence of "
                f"max_model_len={self.max_model_len}; lower max_model_len or give the cache "
                "more memory (gpu_memory_utilization, num_kv_blocks)")
        return num_blocks

    def _kv_budget_on_gpu(self) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self._warm_up()
        peak = torch.cuda.max_memory_allocated(self.device)
        self.activation_bytes = peak - before + self.penalty_state.nbytes
        free, total = torch.cuda.mem_get_info(self.device)
        budget = int(self.config.gpu_memory_utilization * total) - peak
        return max(0, min(budget, free + torch.cuda.memory_reserved(self.device)
                          - torch.cuda.memory_allocated(self.device) - GPU_HEADROOM_BYTES))

    def _warm_up(self) -> None:
        """Run the largest step the scheduler can produce, to measure peak activation memory."""
        cfg = self.model_config
        num_seqs = self.config.max_num_seqs
        num_tokens = min(self.max_num_batched_tokens, num_seqs * self.max_model_len)
        shape = (1, self.block_size, cfg.num_key_value_heads, cfg.head_dim)
        for attn in self.model.attention_layers():
            attn.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            attn.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        logits = self._dummy_step(_split_evenly(num_tokens, num_seqs))
        logits.softmax(-1).sort(dim=-1, descending=True)
        del logits
        self._detach_kv_cache()
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def _dummy_step(self, query_lens: list[int], context_lens: list[int] | None = None):
        """A forward pass that writes no KV slot (all -1) and reads block 0 only."""
        context_lens = context_lens or query_lens
        starts = [0]
        for length in query_lens:
            starts.append(starts[-1] + length)
        width = -(-max(context_lens) // self.block_size)
        device = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.full((starts[-1],), -1, dtype=torch.int64, device=device),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
            seq_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            block_tables=torch.zeros(len(query_lens), width, dtype=torch.int32, device=device),
            max_query_len=max(query_lens), max_seq_len=max(context_lens),
            query_start_loc_cpu=starts, seq_lens_cpu=list(context_lens))
        ids = torch.randint(0, self.model_config.vocab_size, (starts[-1],), device=device)
        positions = torch.cat([torch.arange(c - q, c, device=device)
                               for q, c in zip(query_lens, context_lens, strict=True)])
        hidden = self.model(ids, positions, meta)
        return self.model.compute_logits(hidden[torch.tensor(starts[1:], device=device) - 1])

    def _compile_kernels(self) -> None:
        """Steps that reach every kernel variant a request can need, so that none waits for
        a compile: prefill of one and of many sequences; decode of one sequence, and of
        several with their contexts split across programs or not; mixed steps likewise; and the
        sampler's one-kernel window draws and penalties."""
        for query_lens, context_lens in COMPILE_STEPS:
            self._dummy_step(query_lens, context_lens)
        if self.model.quantization is not None:
            self._compile_quant_tilings()
        from jupyter_qwen.engine.penalty_kernel import compile_penalty_kernels
        from jupyter_qwen.engine.window_kernel import compile_window_kernels

        compile_window_kernels(self.model_config.vocab_size, self.device, KERNEL_VARIANTS,
                               TOPK_KERNEL_MAX_ROWS)
        compile_penalty_kernels(self.model_config.vocab_size, self.device)
        torch.cuda.synchronize(self.device)

    def _compile_quant_tilings(self) -> None:
        """Steps in each M bucket that the quantized products' table of tilings names
        (`model/kernels/quant_tiles.py`), and in the decode tilings' rows below them: each
        bucket may pick its own tilings, and with them whether the norm, SiLU·mul and
        attention kernels hand their rows over quantized (`takes_fp8_rows`), which the
        attention kernels of a prefill, a mixed and a decode step each compile apart."""
        from jupyter_qwen.model.kernels.quant_linear import SMALL_M
        from jupyter_qwen.model.kernels.quant_tiles import bucket_rows

        most = min(self.max_num_batched_tokens, self.config.max_num_seqs * self.max_model_len)
        for rows in (min(SMALL_M, most), *bucket_rows(most)):
            for query_lens, context_lens in bucket_steps(rows, self.max_model_len,
                                                         self.config.max_num_seqs):
                self._dummy_step(query_lens, context_lens)

    @property
    def max_num_batched_tokens(self) -> int:
        return self.config.max_num_batched_tokens

    def _allocate_kv_cache(self, num_blocks: int) -> torch.Tensor:
        cfg = self.model_config
        shape = (2, cfg.num_hidden_layers, num_blocks, self.block_size,
                 cfg.num_key_value_heads, cfg.head_dim)
        kv_cache = torch.empty(shape, dtype=self.dtype, device=self.device)
        for index, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = kv_cache[0, index], kv_cache[1, index]
        return kv_cache

    def _detach_kv_cache(self) -> None:
        for attn in self.model.attention_layers():
            attn.k_cache = attn.v_cache = None

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSeq]) -> tuple[list[Sequence], SamplerOutput]:
        if self._can_replay(scheduled):
            return self._replay_decode([item.seq for item in scheduled])
        inputs = self.prepare(scheduled)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        sampled = inputs.sampled_seqs
        if not sampled:
            return [], SamplerOutput([], [])
        batch = self._sampling_batch(sampled)
        return sampled, sample(self.model.compute_logits(hidden[inputs.logits_rows]), batch)

    def _sampling_batch(self, seqs: list[Sequence]) -> SamplingBatch:
        """Built once the forward pass is queued: its copies come from pinned memory and
        wait for nothing, so the host prepares the batch while the GPU runs the model."""
        return build_sampling_batch(seqs, self.model_config.vocab_size, self.device,
                                    self.penalty_state, self.eos_token_ids,
                                    self.token_bitmasks)

    def _adjustments(self, seqs: list[Sequence]) -> LogitAdjustments | None:
        """The step's logit adjustments for a captured draw, built (the constrained rows'
        bitmasks filled) while the forward graph runs."""
        return build_logit_adjustments(seqs, self.eos_token_ids, self.device,
                                       bitmasks=self.token_bitmasks)

    def release(self, seq: Sequence) -> None:
        """Forget a sequence's sampler state (it finished, was aborted or preempted)."""
        self.penalty_state.release(seq)

    def _can_replay(self, scheduled: list[ScheduledSeq]) -> bool:
        return (self.graphs is not None and len(scheduled) <= self.graphs.max_batch_size
                and all(item.num_new_tokens == 1 and item.completes_context
                        for item in scheduled))

    def _replay_decode(self, seqs: list[Sequence]) -> tuple[list[Sequence], SamplerOutput]:
        positions = [seq.num_computed_tokens for seq in seqs]
        input_ids = [seq.token_ids[pos] for seq, pos in zip(seqs, positions, strict=True)]
        size = self.block_size
        slots = [seq.block_table[pos // size] * size + pos % size
                 for seq, pos in zip(seqs, positions, strict=True)]
        graph_size = self.graphs.run(input_ids, positions, slots, self._block_tables(seqs))
        if all(seq.params.plain_greedy for seq in seqs):
            token_ids = self.graphs.greedy_tokens[graph_size][:len(seqs)].tolist()
            return seqs, SamplerOutput(token_ids, [None] * len(seqs))
        token_ids = self.graph_sampler.draw(seqs, graph_size, lambda: self._adjustments(seqs))
        if token_ids is not None:
            return seqs, SamplerOutput(token_ids, [None] * len(seqs))
        batch = self._sampling_batch(seqs)
        return seqs, sample(self.graphs.logits[graph_size][:len(seqs)], batch)

    def _block_tables(self, seqs: list[Sequence], width: int | None = None) -> np.ndarray:
        width = width or max(len(seq.block_table) for seq in seqs)
        tables = np.full((len(seqs), width), -1, dtype=np.int32)
        for row, seq in enumerate(seqs):
            tables[row, :len(seq.block_table)] = seq.block_table
        return tables

    def prepare(self, scheduled: list[ScheduledSeq]) -> StepInputs:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts, seq_lens, logits_rows, sampled = [0], [], [], []
        for item in scheduled:
            seq, begin = item.seq, item.seq.num_computed_tokens
            end = begin + item.num_new_tokens
            input_ids += seq.token_ids[begin:end]
            positions += range(begin, end)
            slots += self._slots(seq.block_table, begin, end)
            starts.append(starts[-1] + item.num_new_tokens)
            seq_lens.append(end)
            if item.completes_context:
                logits_rows.append(starts[-1] - 1)
                sampled.append(seq)
        decode = all(item.num_new_tokens == 1 for item in scheduled)
        tables = self._block_tables([item.seq for item in scheduled],
                                    self.max_blocks_per_seq if decode else None)
        to_device = lambda values, dtype: torch.tensor(values, dtype=dtype).to(  # noqa: E731
            self.device, non_blocking=True)
        meta = AttentionMetadata(
            slot_mapping=to_device(slots, torch.int64),
            query_start_loc=to_device(starts, torch.int32),
            seq_lens=to_device(seq_lens, torch.int32),
            block_tables=torch.from_numpy(tables).to(self.device, non_blocking=True),
            max_query_len=max(item.num_new_tokens for item in scheduled),
            max_seq_len=max(seq_lens), query_start_loc_cpu=starts, seq_lens_cpu=seq_lens)
        return StepInputs(to_device(input_ids, torch.int64), to_device(positions, torch.int64),
                          meta, to_device(logits_rows, torch.int64), sampled)

    def _slots(self, block_table: list[int], begin: int, end: int) -> list[int]:
        size = self.block_size
        if end - begin < 64:
            return [block_table[pos // size] * size + pos % size for pos in range(begin, end)]
        positions = np.arange(begin, end)
        table = np.asarray(block_table, dtype=np.int64)
        return (table[positions // size] * size + positions % size).tolist()

    def close(self) -> None:
        if self.graph_sampler is not None:
            self.graph_sampler.close()
            self.graph_sampler = None
        if self.graphs is not None:
            self.graphs.close()
            self.graphs = None
        self.penalty_state.close()
        self.token_bitmasks = None
        self._detach_kv_cache()
        self.model.use_ops(None)
        self.kv_cache = None
        self.model = None
        self.ops = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            release_cublas_workspaces()
            torch.cuda.empty_cache()


def release_cublas_workspaces() -> None:
    """cuBLAS keeps a workspace per stream it ran on (graph capture runs on a side stream);
    drop them so that closing the engine gives all its memory back."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def bucket_steps(rows: int, max_model_len: int, max_num_seqs: int,
                 ) -> list[tuple[list[int], list[int]]]:
    """(query_lens, context_lens) of start-up steps of `rows` tokens: a prefill of whole
    sequences (one, unless rows > max_model_len), a mixed step (a prefill and one decode
    row) with a short and a long context, and where `rows` sequences can run at once a
    decode step of them, short and long (the attention kernels' split and unsplit forms)."""
    short, long = min(SHORT_CONTEXT, max_model_len), min(LONG_CONTEXT, max_model_len)
    whole = _split_evenly(rows, -(-rows // max_model_len))
    steps = [(whole, whole)]
    if rows > 1:
        prefill = _split_evenly(rows - 1, -(-(rows - 1) // max_model_len))
        steps += [([*prefill, 1], [*prefill, context]) for context in (short, long)]
    if 1 < rows <= max_num_seqs:
        steps += [([1] * rows, [short] * (rows - 1) + [context]) for context in (short, long)]
    return steps


def _split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
