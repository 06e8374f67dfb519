"""`python -m jupyter_qwen make-tiny-model DIR`: write a random (or demo) Qwen3 checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from jupyter_qwen.demo.chat_template import CHAT_VARIANTS
from jupyter_qwen.demo.shapes import SHAPES, describe


def add_make_tiny_model_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny-model", help="write a random Qwen3 checkpoint folder (no download)",
        description="Write a random Qwen3 checkpoint in Hugging Face format: config, "
                    "safetensors weights, byte-level BPE tokenizer and chat template.")
    parser.add_argument("dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-hidden-layers", type=int, default=None,
                        help="override the number of decoder layers")
    parser.add_argument("--chat-variant", choices=CHAT_VARIANTS, default="hybrid",
                        help="the chat template: Qwen3's hybrid thinking switch, or the 2507 "
                             "instruct (never thinks) or thinking (always thinks) model's")
    parser.add_argument("--demo-script", action="store_true",
                        help="teach it the demo conversations (what demo_model_path() builds)")
    parser.set_defaults(run=run_make_tiny_model)


def run_make_tiny_model(args: argparse.Namespace) -> int:
    from jupyter_qwen.demo.checkpoint import make_tiny_qwen3

    script = None
    if args.demo_script:
        from jupyter_qwen.demo.script import DEMO_SCRIPT as script
    folder = make_tiny_qwen3(args.dir, shape=args.shape, seed=args.seed,
                             num_hidden_layers=args.num_hidden_layers, script=script,
                             variant=args.chat_variant)
    print(folder.resolve())
    print(describe(args.shape, args.num_hidden_layers))
    return 0
