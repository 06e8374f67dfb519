"""Engine configuration, named after vLLM's engine arguments; each field declared once.

Every field is an `option(...)`: its default, range, help and place on the control panel
live here, and the command line, `serve()` and the form are generated from them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from jupyter_qwen.options import ConfigError, option, validate

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("none", "fp8")
DEVICES = ("auto", "cuda", "cpu")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
BLOCK_SIZES = (8, 16, 32, 64, 128, 256)
CPU_KV_CACHE_BYTES = 1 << 30
"""KV-cache budget on CPU when `num_kv_blocks` is not given: 1 GiB."""
MIN_BATCHED_TOKENS = 8192
"""`max_num_batched_tokens` when not given: this, or `max_num_seqs` if that is larger."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the engine loads a model and schedules requests (never changed once made).

    `max_model_len` and `max_num_batched_tokens` may be left to the model: `resolved()`
    fills them in. `num_kv_blocks` overrides the KV-cache size; otherwise it comes from
    `gpu_memory_utilization` on CUDA and from a 1 GiB budget on CPU.
    """

    model: str
    max_num_seqs: int = option(
        256, "most sequences in a running batch", low=1, high=4096,
        form="number", hint="requests in a batch at most")
    max_model_len: int | None = option(
        None, "context length limit", default_text="the model's", low=2, high=1 << 24,
        form="optional_number", hint="tokens per conversation; blank: the model's",
        placeholder="the model's")
    max_num_batched_tokens: int | None = option(
        None, "tokens per engine step", default_text=f"max({MIN_BATCHED_TOKENS}, max-num-seqs)",
        low="max_num_seqs", high=1 << 24, form="optional_number",
        hint=f"tokens per engine step; blank: max({MIN_BATCHED_TOKENS}, max-num-seqs)",
        placeholder=f"max({MIN_BATCHED_TOKENS}, max-num-seqs)")
    gpu_memory_utilization: float = option(
        0.9, "fraction of GPU memory for weights, activations and KV cache", low=0,
        low_open=True, high=1, form="slider", label="GPU memory")
    dtype: str = option(
        "auto", "weights and activations", choices=DTYPES, form="choice",
        hint="auto: the checkpoint's (float32 on CPU)")
    quantization: str = option(
        "none", "quantize a bf16 checkpoint's projections at load (fp8: 128 x 128 blocks); "
        "FP8 and AWQ checkpoints load in their own format whatever this says",
        choices=QUANTIZATIONS, form="choice",
        hint="fp8: quantize bf16 weights at load; FP8/AWQ checkpoints load as they are")
    enable_prefix_caching: bool = option(
        True, "reuse the KV cache of shared prompt prefixes",
        off_flags=("--no-prefix-caching", "--no-enable-prefix-caching"),
        off_help="turn the prefix cache off", form="check", label="prefix caching")
    block_size: int = option(16, "tokens per KV block", choices=BLOCK_SIZES)
    enforce_eager: bool = option(False, "no CUDA graphs", on_flags=("--enforce-eager",))
    seed: int = option(0, "random seed", low=0, high=2**63 - 1)
    device: str = option("auto", "where to run", choices=DEVICES)
    attention_backend: str = option("auto", "attention kernels", choices=ATTENTION_BACKENDS)
    num_kv_blocks: int | None = option(
        None, "KV-cache size in blocks (overrides the budget)", low=1, high=1 << 24)
    session_ttl: float = option(
        600.0, "seconds a session's KV blocks stay pinned", default_text="600", low=0,
        low_open=True, high=86400, unit="of seconds")
    grammar_compile_timeout: float = option(
        5.0, "seconds a structured-output grammar may take to compile before its request "
        "gets a 400", default_text="5", low=0, low_open=True, high=3600, unit="of seconds")
    kernels: KernelOptions = field(default_factory=lambda: KernelOptions())
    """Choices among the Triton kernels: not a user-facing option (no flag, no form field);
    benchmarks and tests pass it, `serve()` and `LLM` take it as a keyword."""

    def __post_init__(self) -> None:
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", "model must be a Hugging Face model id or a local "
                              f"folder, got {self.model!r}")
        validate(self)
        if not isinstance(self.kernels, KernelOptions):
            raise ConfigError("kernels", f"kernels must be KernelOptions, got {self.kernels!r}")

    def resolved(self, max_position_embeddings: int) -> EngineConfig:
        """This config with the limits the model decides filled in: `max_model_len`
        (the model's context unless smaller) and `max_num_batched_tokens`."""
        max_model_len = self.max_model_len or max_position_embeddings
        if max_model_len > max_position_embeddings:
            raise ConfigError("max_model_len", f"max_model_len={max_model_len} exceeds the "
                              f"model's max_position_embeddings={max_position_embeddings}")
        batched = self.max_num_batched_tokens or max(MIN_BATCHED_TOKENS, self.max_num_seqs)
        return dataclasses.replace(self, max_model_len=max_model_len,
                                   max_num_batched_tokens=batched)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> EngineConfig:
        unknown = sorted(set(kwargs) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"unknown engine option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(cls.field_names()[1:])}")
        return cls(model=model, **kwargs)


def _pdl_from_environment() -> bool:
    return os.environ.get("JUPYTER_QWEN_PDL", "1") != "0"


@dataclass(frozen=True, slots=True)
class KernelOptions:
    """Choices among the Triton kernels (the torch reference backend runs none of them).

    `fused_decode_step`: pure decode steps of at most `fused_decode_step_max_batch`
    sequences run their attention in one launch (q/k norm, RoPE, KV store, split attention
    and merge) instead of three kernels; on an H200 that is faster at batch 1 and not at 8
    or 64 (benchmarks/KERNEL_NOTES.md). `pdl`: kernels launch with programmatic dependent
    launch on Hopper and later GPUs; the default comes from the environment variable
    `JUPYTER_QWEN_PDL` (0 turns it off), read when the options are made. `sampled_draw`:
    which kernels the captured sampled draws use (`graph_sampling.GraphSampler`).
    """

    fused_decode_step: bool = option(True, "one-launch attention for small decode steps",
                                     cli=False)
    fused_decode_step_max_batch: int = option(
        1, "largest decode step that runs the one-launch attention", low=1, high=4096,
        cli=False)
    pdl: bool = option(help="programmatic dependent launch on Hopper and later",
                       default_factory=_pdl_from_environment, cli=False)
    decode_step_min_chunk: int | None = option(
        None, "the fewest KV positions one split of the one-launch attention takes",
        default_text="the kernel's", low=1, high=1 << 20, cli=False)
    sampled_draw: str = option(
        "threshold", "how a captured sampled draw runs: torch steps around the window kernel "
        "(split), one kernel after the window (fused), or that over a threshold top-W "
        "(threshold; up to 8 rows, split above)", choices=("split", "fused", "threshold"),
        cli=False)

    def __post_init__(self) -> None:
        try:
            validate(self)
        except ConfigError as error:
            raise ConfigError(f"kernels.{error.field}", f"kernels.{error}") from None

    @property
    def decode_step_max_batch(self) -> int:
        """The largest pure decode step that runs the one-launch attention (0: none)."""
        return self.fused_decode_step_max_batch if self.fused_decode_step else 0
