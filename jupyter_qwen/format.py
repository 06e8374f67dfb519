"""How jupyter_qwen writes numbers, bytes, durations and the LangChain snippet (torch-free).

The notebook widget (``notebook/static/panel.js``) and the JupyterLab sidebar
(``labextension/src/format.ts``) follow the same rules in JavaScript; the cases in
``tests/format_cases.json`` are checked against all three. Rounding is the browser's
``toLocaleString('en-US')``: the shortest decimal form of the value, halves away from zero.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MISSING = "–"
"""What a figure that is not known shows."""
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
SECONDS_UNTIL_MINUTES = 120
"""Durations below this many seconds are written in seconds; then minutes, then hours."""
MINUTES_UNTIL_HOURS = 120


def _rounded(value: float, digits: int) -> Decimal:
    return Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


def format_number(value: float | None, digits: int = 1) -> str:
    """``1,234.5``: thousands grouped, at most ``digits`` decimals, no trailing zeros."""
    if value is None:
        return MISSING
    text = f"{_rounded(float(value), digits):,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_percent(fraction: float | None, digits: int = 1) -> str:
    """``12.5 %`` for 0.125."""
    return MISSING if fraction is None else f"{format_number(100 * fraction, digits)} %"


def format_bytes(value: float | None, unit: str | None = None, digits: int | None = None,
                 signed: bool = False) -> str:
    """``1.5 GiB``, ``640 MiB``: binary units, the largest that keeps the figure at 1 or more
    unless ``unit`` names one; one decimal from GiB up and none below unless ``digits`` says;
    ``signed`` writes ``+`` before figures that are not negative."""
    if value is None:
        return MISSING
    if unit is None:
        index = 0
        while abs(value) >= 1024 ** (index + 1) and index < len(BYTE_UNITS) - 1:
            index += 1
    else:
        index = BYTE_UNITS.index(unit)
    if digits is None:
        digits = 1 if index >= 3 else 0
    figure = f"{_rounded(abs(value) / 1024**index, digits):,.{digits}f}"
    sign = "-" if value < 0 else "+" if signed else ""
    return f"{sign}{figure} {BYTE_UNITS[index]}"


def format_duration(seconds: float | None) -> str:
    """``45 s`` below 2 minutes, ``7 min`` below 2 hours, then ``3 h`` (rounded)."""
    if seconds is None:
        return MISSING
    if abs(seconds) < SECONDS_UNTIL_MINUTES:
        return f"{format_number(seconds, 0)} s"
    if abs(seconds) < 60 * MINUTES_UNTIL_HOURS:
        return f"{format_number(seconds / 60, 0)} min"
    return f"{format_number(seconds / 3600, 0)} h"


MILLISECONDS_UNTIL_SECONDS = 0.9995
"""Latencies that round below 1,000 ms are written in milliseconds."""


def format_latency(seconds: float | None) -> str:
    """``45 ms`` below a second, ``1.3 s`` up to 2 minutes, then as ``format_duration``."""
    if seconds is None:
        return MISSING
    if abs(seconds) < MILLISECONDS_UNTIL_SECONDS:
        return f"{format_number(1000 * seconds, 0)} ms"
    if abs(seconds) < SECONDS_UNTIL_MINUTES:
        return f"{format_number(seconds, 1)} s"
    return format_duration(seconds)


API_KEY_REFERENCE = "qwen_server.api_key"
"""Where a notebook that started a server with a key finds it (``%qwen_serve``, the panel)."""


def chat_snippet(url: str, model: str, api_key_required: bool) -> str:
    """The LangChain line that talks to a server: ``api_key="EMPTY"`` when it needs no key,
    else a reference to the key (never the key itself)."""
    key = API_KEY_REFERENCE if api_key_required else '"EMPTY"'
    return f'ChatOpenAI(base_url="{url}", api_key={key}, model="{model}")'
