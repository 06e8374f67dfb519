"""Process memory figures and a clean-up pass with a before/after report.

Every figure is this process's own: its RSS, torch's CUDA allocator, and the GPU memory NVML
lists for this process id. Whole-GPU figures would count other processes' memory too.
Light to import: torch is consulted only when this process has already loaded it.
"""

from __future__ import annotations

import gc
import html
import os
import sys
from dataclasses import asdict, dataclass, field

from jupyter_qwen.format import MISSING, format_bytes
from jupyter_qwen.nvml import gpu_snapshot

MIB = 1 << 20


@dataclass(slots=True)
class MemorySnapshot:
    rss: int
    torch_allocated: int | None = None
    torch_reserved: int | None = None
    process_gpu: int | None = None  # NVML's figure for this process, all GPUs together


@dataclass(slots=True)
class CleanReport:
    before: MemorySnapshot
    after: MemorySnapshot
    has_gpu: bool
    gpu_reason: str = ""
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, int | None, int | None]]:
        rows = [("process RSS", self.before.rss, self.after.rss)]
        if self.has_gpu:
            rows += [("torch allocated", self.before.torch_allocated, self.after.torch_allocated),
                     ("torch reserved", self.before.torch_reserved, self.after.torch_reserved)]
            rows.append(("GPU, this process (NVML)", self.before.process_gpu,
                         self.after.process_gpu))
        return rows

    def freed(self, name: str) -> int:
        for row, before, after in self.rows():
            if row == name and before is not None and after is not None:
                return before - after
        return 0

    def to_dict(self) -> dict:
        return {"before": asdict(self.before), "after": asdict(self.after),
                "has_gpu": self.has_gpu, "gpu_reason": self.gpu_reason, "notes": self.notes}

    def __str__(self) -> str:
        lines = [f"{'':<22}{'before':>12}{'after':>12}{'change':>12}"]
        for name, before, after in self.rows():
            lines.append(f"{name:<22}{_mib(before):>12}{_mib(after):>12}"
                         f"{_mib_change(before, after):>12}")
        if not self.has_gpu:
            lines.append(f"no GPU: {self.gpu_reason}")
        return "\n".join(lines + self.notes)

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{_mib(before)}</td><td>{_mib(after)}</td>"
            f"<td>{_mib_change(before, after)}</td></tr>" for name, before, after in self.rows())
        note = "" if self.has_gpu else f"<p>No GPU: {html.escape(self.gpu_reason)}</p>"
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)
        return ("<table><thead><tr><th></th><th>before</th><th>after</th><th>change</th></tr>"
                f"</thead><tbody>{cells}</tbody></table>{note}{notes}")

    def __repr__(self) -> str:
        return str(self)


def snapshot() -> MemorySnapshot:
    """This process's memory now."""
    mem = MemorySnapshot(rss=process_rss(), process_gpu=process_gpu_bytes())
    mem.torch_allocated, mem.torch_reserved = torch_memory()
    return mem


def process_gpu_bytes() -> int | None:
    """The GPU memory NVML lists for this process (all GPUs), or None where it lists none."""
    return gpu_snapshot().process_bytes(os.getpid())


def torch_memory() -> tuple[int | None, int | None]:
    """torch's allocated and reserved CUDA bytes, or (None, None) without CUDA or torch."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None, None
        return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    except Exception:  # torch half-imported by another thread, or a broken CUDA setup
        return None, None


def process_rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def has_cuda() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_available()


def collect() -> CleanReport:
    """gc, then give cached CUDA memory back and reset torch.compile's caches."""
    before = snapshot()
    gc.collect()
    torch = sys.modules.get("torch")
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if has_cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    gpus = gpu_snapshot()
    return CleanReport(before, snapshot(), has_cuda(), gpus.reason or "torch sees no CUDA GPU")


def _mib(value: int | None) -> str:
    return format_bytes(value, "MiB", 1)


def _mib_change(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return MISSING
    return format_bytes(after - before, "MiB", 1, signed=True)
