"""Command-line flags for the engine and server, named as vLLM names them."""

from __future__ import annotations

import argparse
from typing import Any

from jupyter_qwen.config import ATTENTION_BACKENDS, BLOCK_SIZES, DEVICES, DTYPES


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--max-num-seqs", type=int, help="most sequences in a running batch (default 256)")
    add("--max-model-len", type=int, help="context length limit (default: the model's)")
    add("--max-num-batched-tokens", type=int,
        help="tokens per engine step (default max(8192, max-num-seqs))")
    add("--gpu-memory-utilization", type=float,
        help="fraction of GPU memory for weights, activations and KV cache (default 0.9)")
    add("--dtype", choices=DTYPES, help="weights and activations (default auto)")
    add("--block-size", type=int, choices=BLOCK_SIZES, help="tokens per KV block (default 16)")
    add("--no-prefix-caching", "--no-enable-prefix-caching", dest="enable_prefix_caching",
        action="store_false", default=None, help="turn the prefix cache off")
    add("--enforce-eager", action="store_true", default=None, help="no CUDA graphs")
    add("--seed", type=int, help="random seed (default 0)")
    add("--device", choices=DEVICES, help="where to run (default auto)")
    add("--attention-backend", choices=ATTENTION_BACKENDS, help="default auto")
    add("--num-kv-blocks", type=int, help="KV-cache size in blocks (overrides the budget)")
    add("--session-ttl", type=float, help="seconds a session's KV blocks stay pinned (600)")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, help="port (default: a free one)")
    add("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes")
    add("--served-model-name", help="the model name clients send (default: last path part)")
    thinking = parser.add_mutually_exclusive_group()
    thinking.add_argument("--enable-thinking", dest="enable_thinking", action="store_true",
                          default=None, help="think by default (Qwen3's default)")
    thinking.add_argument("--disable-thinking", dest="enable_thinking", action="store_false",
                          help="answer without a reasoning phase by default")
    add("--max-waiting-requests", type=int, help="queue length beyond which clients get 429")


def server_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, as keyword arguments for `serve()`."""
    names = ("max_num_seqs", "max_model_len", "max_num_batched_tokens", "gpu_memory_utilization",
             "dtype", "block_size", "enable_prefix_caching", "enforce_eager", "seed", "device",
             "attention_backend", "num_kv_blocks", "session_ttl", "api_key",
             "served_model_name", "enable_thinking", "max_waiting_requests")
    return {name: getattr(args, name) for name in names
            if getattr(args, name, None) is not None}


def add_serve_command(commands) -> None:
    parser = commands.add_parser("serve", help="serve a Qwen3 model over the OpenAI API")
    parser.add_argument("model", help="Hugging Face id or local checkpoint folder")
    add_server_arguments(parser)
    add_engine_arguments(parser)
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import time

    from jupyter_qwen.server.server import serve

    server = serve(args.model, host=args.host, port=args.port, **server_kwargs(args))
    print(f"serving {server.served_model_name} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        while server.state == "ok":
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
