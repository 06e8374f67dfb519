"""Command-line flags for the engine and server, named as vLLM names them."""

from __future__ import annotations

import argparse
import sys
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
    parser.add_argument("model", nargs="?", help="Hugging Face id or local checkpoint folder")
    parser.add_argument("--demo", action="store_true",
                        help="serve the tiny demo model (built on first use; runs on CPU)")
    parser.add_argument("--debug", action="store_true",
                        help="show the whole traceback of an error, not one line")
    add_server_arguments(parser)
    add_engine_arguments(parser)
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import signal
    import time

    from jupyter_qwen.server.errors import ConfigError, ServerStartError, summarize_error
    from jupyter_qwen.server.process import parent_pid_from_env, watch_parent
    from jupyter_qwen.server.server import QwenServer, find_model, start_serving

    prog = "python -m jupyter_qwen serve"
    if bool(args.model) == bool(args.demo):
        print(f"{prog}: error: give a MODEL (a Hugging Face id or a checkpoint folder) or "
              "--demo", file=sys.stderr)
        return 2
    options = server_kwargs(args)
    signal.signal(signal.SIGTERM, _interrupt)  # a clean stop: the record goes, memory comes back
    if (parent_pid := parent_pid_from_env()) is not None:
        watch_parent(parent_pid)  # started by a kernel: end with it
    try:
        if args.demo:
            from jupyter_qwen.demo.cache import SERVED_NAME, demo_model_path

            options.setdefault("served_model_name", SERVED_NAME)
            args.model = str(demo_model_path())
        server = QwenServer(args.model, model_path=find_model(args.model), origin="process",
                            **options)
        start_serving(server)
    except (ConfigError, ServerStartError) as error:
        if args.debug:
            raise
        summary = summarize_error(error)
        hint = f": {summary.hint}" if summary.hint else ""
        print(f"{prog}: error: {summary.line}{hint}", file=sys.stderr)
        return 2
    device = server.ctx.device or "?"
    print(f"serving {server.served_model_name} at {server.url} on {device} (Ctrl-C stops)",
          flush=True)
    try:
        while server.state == "ok":
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
