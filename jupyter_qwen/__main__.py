"""Command line: `python -m jupyter_qwen COMMAND ...` (see --help)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jupyter_qwen",
                                     description="Serve Qwen3 models from Jupyter.")
    commands = parser.add_subparsers(dest="command", required=True)
    from jupyter_qwen.demo import cli as demo_cli
    from jupyter_qwen.notebook import run
    from jupyter_qwen.server import cli

    run.add_demo_command(commands)
    cli.add_serve_command(commands)
    demo_cli.add_make_tiny_model_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
