"""Run a notebook headless and show what it prints: `python -m jupyter_qwen demo`."""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

DEFAULT_NOTEBOOK = Path("notebooks") / "01_quickstart.ipynb"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def add_demo_command(commands) -> None:
    parser = commands.add_parser(
        "demo", help="run a notebook headless (default: the quickstart on the demo model)")
    parser.add_argument("notebook", nargs="?", type=Path, default=DEFAULT_NOTEBOOK)
    parser.add_argument("--output", type=Path,
                        help="where to save the executed notebook (default: out/NAME)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import nbformat
    from nbclient import NotebookClient

    if not args.notebook.is_file():
        raise SystemExit(f"no notebook at {args.notebook}; run this from a jupyter_qwen clone "
                         "or pass a notebook path")
    book = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(book, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.notebook.parent)}})
    client.on_cell_executed = _show_cell
    print(f"running {args.notebook} headless\n")
    try:
        client.execute()
    finally:
        output = args.output or Path("out") / args.notebook.name
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(book, output)
        print(f"\nexecuted notebook saved to {output}")
    return 0


def _show_cell(cell, cell_index, execute_reply=None, **_) -> None:
    if cell.cell_type != "code":
        return
    print(textwrap.indent(cell.source, ">>> ", lambda line: True))
    texts = [_text(output) for output in cell.get("outputs", [])]
    text = "".join(texts).rstrip()
    if text:
        print(textwrap.indent(text, "    ", lambda line: True))
    print()


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return ANSI.sub("", "\n".join(output.traceback)) + "\n"
    data = output.get("data", {})
    if "application/vnd.jupyter.widget-view+json" in data:
        return "[a live widget: open the notebook in JupyterLab to see it]\n"
    for mime in ("text/markdown", "text/plain"):
        if mime in data:
            return data[mime].rstrip() + "\n"
    return ""
