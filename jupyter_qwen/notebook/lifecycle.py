"""A clean model lifecycle: `qwen3_inference(...)` and `clean()`."""

from __future__ import annotations

import asyncio
import sys
import warnings
from typing import Any

from jupyter_qwen.format import format_bytes
from jupyter_qwen.memory import MIB, CleanReport, collect, snapshot
from jupyter_qwen.server.server import QwenServer, running_servers, serve

LEAK_TOLERANCE_BYTES = 1 * MIB


def clean(history: bool = False) -> CleanReport:
    """gc, `torch.cuda.empty_cache()` and `torch._dynamo.reset()`, with a before/after report.

    `history=True` also drops what IPython keeps alive: the `Out` cache, `_`, `__`,
    `___` and the last traceback.
    """
    before = snapshot()
    notes = forget_ipython_history() if history else []
    report = collect()
    report.before = before
    report.notes += notes
    return report


def forget_ipython_history() -> list[str]:
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    shell = _ipython()
    if shell is None:
        return ["not in IPython: no output history to drop"]
    count = len(shell.user_ns.get("Out", {}))
    shell.displayhook.flush()
    return [f"dropped {count} cached outputs (Out, _, __, ___) and the last traceback"]


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


class qwen3_inference:
    """Serve a model for the length of a block and give its memory back afterwards.

    Yields a LangChain ChatOpenAI bound to the server (reasoning kept in
    `additional_kwargs["reasoning_content"]`). With `model=None` it uses the server
    already running in this process and leaves it running. On exit it stops what
    it started, cleans, and warns with numbers if torch's allocated memory did not
    come back to where it was. Works with `with` and `async with`.
    """

    def __init__(self, model: str | None = None, progress: bool = True, **engine_config: Any):
        self.model = model
        self.progress = progress
        self.engine_config = engine_config
        self.server: QwenServer | None = None
        self.started = False
        self.report: CleanReport | None = None
        self._before = None

    def __enter__(self):
        self._before = snapshot()
        if self.model is None:
            servers = running_servers()
            if not servers:
                raise RuntimeError("no jupyter_qwen server is running in this process; "
                                   "pass a model, e.g. qwen3_inference('Qwen/Qwen3-0.6B')")
            self.server = servers[-1]
        else:
            self.server = serve(self.model, progress=self.progress, **self.engine_config)
            self.started = True
        return self.server.chat_model()

    def __exit__(self, *exc) -> None:
        if self.started and self.server is not None:
            self.server.stop()
            self.report = clean()
            self._check_memory_came_back()

    async def __aenter__(self):
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.__exit__, *exc)

    def _check_memory_came_back(self) -> None:
        before, after = self._before.torch_allocated, self.report.after.torch_allocated
        if before is None or after is None:
            return
        if after - before > LEAK_TOLERANCE_BYTES:
            held, was, now = (format_bytes(n, "MiB", 1) for n in (after - before, before, after))
            warnings.warn(f"after stopping the server torch still holds {held} more than before "
                          f"it started ({was} -> {now}); something keeps "
                          "tensors alive (a variable, Out, a traceback): try clean(history=True)",
                          stacklevel=3)
