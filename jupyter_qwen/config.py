"""Engine configuration, named after vLLM's engine arguments."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("auto", "cuda", "cpu")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
BLOCK_SIZES = (8, 16, 32, 64, 128, 256)
CPU_KV_CACHE_BYTES = 1 << 30
"""KV-cache budget on CPU when `num_kv_blocks` is not given: 1 GiB."""


@dataclass(slots=True)
class EngineConfig:
    """How the engine loads a model and schedules requests.

    `max_model_len` and `max_num_batched_tokens` default from the model (its
    `max_position_embeddings`, capped at 8192 tokens for the per-step budget).
    `num_kv_blocks` overrides the KV-cache size; otherwise it comes from
    `gpu_memory_utilization` on CUDA and from a 1 GiB budget on CPU.
    `session_ttl` is how long, in seconds, a session's KV blocks stay pinned
    after its latest turn.
    """

    model: str
    dtype: str = "auto"
    max_num_seqs: int = 256
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int = 0
    device: str = "auto"
    attention_backend: str = "auto"
    num_kv_blocks: int | None = None
    session_ttl: float = 600.0
    kernels: KernelOptions = field(default_factory=lambda: KernelOptions())

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            self.model = os.fspath(self.model)
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be a Hugging Face model id or a local folder, got "
                             f"{self.model!r}")
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _check_choice("block_size", self.block_size, BLOCK_SIZES)
        _check_int("max_num_seqs", self.max_num_seqs, 1, 4096)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.max_model_len is not None:
            _check_int("max_model_len", self.max_model_len, 2, 1 << 24)
        if self.max_num_batched_tokens is not None:
            _check_int("max_num_batched_tokens", self.max_num_batched_tokens,
                       self.max_num_seqs, 1 << 24)
        if self.num_kv_blocks is not None:
            _check_int("num_kv_blocks", self.num_kv_blocks, 1, 1 << 24)
        util = self.gpu_memory_utilization
        if isinstance(util, bool) or not isinstance(util, int | float) or not 0 < util <= 1:
            raise ValueError(f"gpu_memory_utilization must be a number in (0, 1], got {util!r}")
        ttl = self.session_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= 86400:
            raise ValueError(f"session_ttl must be a number of seconds in (0, 86400], got {ttl!r}")
        for name in ("enable_prefix_caching", "enforce_eager"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> EngineConfig:
        unknown = sorted(set(kwargs) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"unknown engine option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(cls.field_names()[1:])}")
        return cls(model=model, **kwargs)


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        allowed = ", ".join(map(str, choices))
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _pdl_from_environment() -> bool:
    return os.environ.get("JUPYTER_QWEN_PDL", "1") != "0"


@dataclass(slots=True)
class KernelOptions:
    """Choices among the Triton kernels (the torch reference backend runs none of them).

    `fused_decode_step`: pure decode steps of at most `fused_decode_step_max_batch`
    sequences run their attention in one launch (q/k norm, RoPE, KV store, split attention
    and merge) instead of three kernels; on an H200 that is faster at batch 1 and not at 8
    or 64 (benchmarks/KERNEL_NOTES.md). `pdl`: kernels launch with programmatic dependent
    launch on Hopper and later GPUs; the default comes from the environment variable
    `JUPYTER_QWEN_PDL` (0 turns it off), read when the options are made.
    """

    fused_decode_step: bool = True
    fused_decode_step_max_batch: int = 1
    pdl: bool = field(default_factory=_pdl_from_environment)

    def __post_init__(self) -> None:
        for name in ("fused_decode_step", "pdl"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"kernels.{name} must be True or False, "
                                 f"got {getattr(self, name)!r}")
        batch = self.fused_decode_step_max_batch
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError("kernels.fused_decode_step_max_batch must be a positive integer, "
                             f"got {batch!r}")

    @property
    def decode_step_max_batch(self) -> int:
        """The largest pure decode step that runs the one-launch attention (0: none)."""
        return self.fused_decode_step_max_batch if self.fused_decode_step else 0
