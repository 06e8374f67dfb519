"""The loading progress ``QwenServer.wait_ready`` shows: one display line in a notebook, a
tqdm bar in a terminal, or nothing.

In a notebook the line is an ordinary display (text and HTML, no widget) updated in place, so
the saved notebook keeps its last state ("ready in 3 s"), not the "starting: 0%" a widget's
text fallback would freeze at.
"""

from __future__ import annotations

import html
import time
from typing import Any

from jupyter_qwen.format import format_latency, format_percent


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (where displays reach a notebook)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class ProgressBar:
    """Shows each loading phase and its fraction; ``enabled=False`` shows nothing."""

    def __init__(self, enabled: bool, notebook: bool | None = None):
        self.enabled = enabled
        self.notebook = in_kernel() if notebook is None else notebook
        self.bar: Any = None
        self.handle: Any = None
        self.started = time.monotonic()
        self._shown: tuple[str, int | None] | None = None

    def __enter__(self) -> ProgressBar:
        if not self.enabled:
            return self
        if self.notebook:
            from IPython.display import display

            self.handle = display(progress_bundle("starting", None, 0.0), raw=True,
                                  display_id=True)
        else:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=100, desc="starting", bar_format="{desc}: {percentage:3.0f}%|"
                            "{bar}| [{elapsed}]")
        return self

    def update(self, phase: str, fraction: float | None) -> None:
        if self.handle is not None:
            shown = (phase, None if fraction is None else round(100 * fraction))
            if shown != self._shown:
                self._shown = shown
                self.handle.update(progress_bundle(phase, fraction,
                                                   time.monotonic() - self.started), raw=True)
        if self.bar is None:
            return
        self.bar.set_description_str(phase, refresh=False)
        if fraction is not None:
            self.bar.n = round(100 * fraction)
        self.bar.refresh()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bundle(phase: str, fraction: float | None, elapsed: float) -> dict[str, str]:
    """The display of one loading state: ``loading: reading weights 40 %`` while it loads,
    ``ready in 3.2 s`` (or the state it ended in) once done."""
    done = phase in ("ready", "failed", "dead", "stopped", "stopping")
    if done:
        text = f"{phase} in {format_latency(elapsed)}" if phase == "ready" else f"loading {phase}"
    else:
        share = "" if fraction is None else f" {format_percent(fraction, 0)}"
        text = f"loading: {phase}{share}"
    value = "" if fraction is None else f' value="{fraction:.3f}"'
    bar = "" if done else f'<progress max="1"{value}></progress> '
    return {"text/plain": text, "text/html": f"<div>{bar}{html.escape(text)}</div>"}
