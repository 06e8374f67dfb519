"""Command-line flags for the engine and server, named as vLLM names them."""

from __future__ import annotations

import argparse
from typing import Any

from jupyter_qwen.config import EngineConfig
from jupyter_qwen.options import add_arguments, given_options
from jupyter_qwen.server.options import ServerOptions


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """EngineConfig's options as flags (generated from their declarations)."""
    add_arguments(parser, EngineConfig)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """ServerOptions' options as flags (generated from their declarations)."""
    add_arguments(parser, ServerOptions)


def server_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, as keyword arguments for `serve()`."""
    return given_options(args, ServerOptions, EngineConfig)


def add_serve_command(commands) -> None:
    parser = commands.add_parser("serve", help="serve a Qwen3 model over the OpenAI API")
    parser.add_argument("model", help="Hugging Face id or local checkpoint folder")
    add_server_arguments(parser)
    add_engine_arguments(parser)
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import time

    from jupyter_qwen.server.server import serve

    server = serve(args.model, **server_kwargs(args))
    print(f"serving {server.served_model_name} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        while server.state == "ok":
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
