"""IPython magics: %qwen_serve, %qwen_connect, %qwen_panel, %qwen_status, %qwen_stop,
%qwen_clean, %qwen_gpu, %%qwen (servers start through `launch.start_server`, as the control
panel's do)."""

from __future__ import annotations

import argparse
import html
import shlex
import time
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display

from jupyter_qwen.format import MISSING
from jupyter_qwen.notebook.chat_reply import ChatReply
from jupyter_qwen.notebook.figures import (
    ServerView,
    StopReport,
    memory_of,
    server_view,
    stop_summary,
)
from jupyter_qwen.notebook.launch import DEFAULT_MODEL, AlreadyServingError, start_server

STREAM_REFRESH_S = 0.1
"""How often a streaming answer's display is redrawn."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags as a one-line UsageError instead of exiting."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> None:
        if message:
            print(message)
        raise _HelpShown


class _HelpShown(Exception):
    pass


def parse(parser: ArgumentParser, line: str) -> argparse.Namespace | None:
    try:
        return parser.parse_args(shlex.split(line))
    except _HelpShown:
        return None
    except ValueError as error:
        raise UsageError(f"{parser.prog}: {error}") from None


def serve_parser(prog: str = "%qwen_serve", description: str | None = None) -> ArgumentParser:
    from jupyter_qwen.server.cli import add_engine_arguments, add_server_arguments

    parser = ArgumentParser(prog=prog, description=description or (
        "Start an in-kernel Qwen3 server speaking the OpenAI API and show its dashboard. "
        f"Without MODEL it serves {DEFAULT_MODEL} from the Hugging Face cache or hub."))
    parser.add_argument("model", nargs="?", help="Hugging Face id or checkpoint folder")
    parser.add_argument("--demo", action="store_true",
                        help="serve the tiny demo model (random weights taught a few "
                             "scripted conversations; runs on CPU)")
    parser.add_argument("--replace", action="store_true",
                        help="stop the server this kernel runs and start this one")
    if prog == "%qwen_serve":
        parser.add_argument("--process", action="store_true",
                            help="run the server in a child process of this kernel (same "
                                 "flags; it ends with the kernel)")
    add_server_arguments(parser)
    add_engine_arguments(parser)
    return parser


@magics_class
class QwenMagics(Magics):
    """The jupyter_qwen magics; `%load_ext jupyter_qwen` registers them."""

    def __init__(self, shell):
        super().__init__(shell)
        self.conversations: dict[str, list[dict]] = {}

    @line_magic
    def qwen_serve(self, line: str) -> None:
        """Start a model server in this kernel: %qwen_serve [MODEL] [flags] (--help)."""
        args = parse(serve_parser(), line)
        if args is None:
            return
        from jupyter_qwen.server.cli import server_kwargs
        from jupyter_qwen.server.errors import ModelNotFoundError

        if args.demo and args.model:
            raise UsageError("%qwen_serve: give a MODEL or --demo, not both")
        try:
            server = start_server(args.model, server_kwargs(args), demo=args.demo,
                                  replace=args.replace, shell=self.shell,
                                  process=args.process)
        except AlreadyServingError as error:
            raise UsageError(f"{error}; use %qwen_stop first, or %qwen_serve --replace"
                             ) from None
        except ModelNotFoundError as error:
            raise UsageError(f"%qwen_serve: {error}\nServe a local checkpoint folder with "
                             "%qwen_serve /path/to/model, or the tiny demo model with "
                             "%qwen_serve --demo.") from None
        except (ValueError, TypeError, RuntimeError) as error:
            raise UsageError(f"%qwen_serve: {error}") from None
        if args.process:
            print(f"serving {server.served_model_name} at {server.url} in process {server.pid}")
        self._display_panel(server, demo=args.demo)

    @line_magic
    def qwen_connect(self, line: str) -> None:
        """Attach to a running OpenAI-compatible server (vLLM, SGLang, jupyter_qwen):
        %qwen_connect URL [--api-key KEY] [--model MODEL] [--name NAME] (--help)."""
        parser = ArgumentParser(prog="%qwen_connect", description=(
            "Attach to a running OpenAI-compatible server: it joins %qwen_status and the "
            "sidebar as remote, and %%qwen --server NAME talks to it."))
        parser.add_argument("url", help="the server's address, e.g. http://host:8000/v1")
        parser.add_argument("--api-key", help="the key its --api-key asks for")
        parser.add_argument("--model", help="which of its models to talk to (default: first)")
        parser.add_argument("--name", help="what %%qwen --server calls it (default: the model)")
        args = parse(parser, line)
        if args is None:
            return
        from jupyter_qwen.server.remote import RemoteServerError, connect

        try:
            server = connect(args.url, api_key=args.api_key, model=args.model, name=args.name)
        except RemoteServerError as error:
            raise UsageError(f"%qwen_connect: {error}") from None
        self.shell.user_ns["qwen_remote"] = server
        print(f"attached {server.name} ({server.served_model_name}) at {server.url}: remote")
        self._display_panel(server, demo=False)

    @line_magic
    def qwen_panel(self, line: str) -> None:
        """Show a control panel that starts a server: %qwen_panel [MODEL] [flags] (--help)."""
        args = parse(serve_parser("%qwen_panel", (
            "Show a form with the serve options and a Start button; once started it turns into "
            "the server's live dashboard. MODEL and the flags (those of %qwen_serve) fill the "
            "form in.")), line)
        if args is None:
            return
        from jupyter_qwen.notebook.control_panel import ControlPanel
        from jupyter_qwen.server.cli import server_kwargs

        if args.demo and args.model:
            raise UsageError("%qwen_panel: give a MODEL or --demo, not both")
        options = server_kwargs(args)
        try:
            panel = ControlPanel("demo" if args.demo else args.model, replace=args.replace,
                                 shell=self.shell, **options)
        except (ValueError, TypeError) as error:
            raise UsageError(f"%qwen_panel: {error}") from None
        self.shell.user_ns["qwen_panel"] = panel
        panel.show(display)

    def _display_panel(self, server, demo: bool) -> None:
        """The server's card (``ServerPanel``), for a server of any origin."""
        from jupyter_qwen.server.handles import origin_of

        try:
            from jupyter_qwen.notebook.widgets import ServerPanel
        except ImportError:  # without anywidget: the status table says the same
            display(StatusTable([{"origin": origin_of(server)} | server.stats()]))
            return
        ServerPanel(server, demo=demo).show(display)

    @line_magic
    def qwen_status(self, line: str) -> None:
        """A table of the running jupyter_qwen servers: %qwen_status (--help)."""
        if parse(ArgumentParser(prog="%qwen_status", description=self.qwen_status.__doc__),
                 line) is None:
            return
        republish_shown()
        rows = status_rows()
        if not rows:
            print("no jupyter_qwen server is running")
            return
        display(StatusTable(rows))

    @line_magic
    def qwen_stop(self, line: str) -> None:
        """Stop this kernel's server (or all with --all) and say how much memory came back."""
        parser = ArgumentParser(prog="%qwen_stop", description=self.qwen_stop.__doc__)
        parser.add_argument("name", nargs="?", help="which server (name, model or URL; "
                                                    "default: the newest)")
        parser.add_argument("--all", action="store_true", help="stop every server of this kernel")
        args = parse(parser, line)
        if args is None:
            return
        from jupyter_qwen.memory import collect, snapshot
        from jupyter_qwen.server.handles import kernel_servers, origin_of

        if args.name:
            targets = [pick_server("%qwen_stop", args.name)]
            if origin_of(targets[0]) == "remote":
                raise UsageError(f"%qwen_stop: {args.name} is a remote server: not ours to "
                                 "stop (stop it where it runs)")
        else:
            servers = [s for s in kernel_servers() if origin_of(s) != "remote"]
            if not servers:
                print("nothing to stop: no jupyter_qwen server is running in this kernel")
                return
            targets = servers if args.all else servers[-1:]
        before = snapshot()
        stopped = []
        for server in targets:
            last_memory = _memory_now(server)
            reply = server.stop()
            if origin_of(server) == "process":
                display(reply)  # the child's own figures, read as it exits
            summary = stop_summary(reply, last_memory)
            for panel in panels_of(server):
                panel.stopped_with(summary)
            print(f"stopped {server.served_model_name} at {server.url}")
            stopped.append((server.served_model_name, summary))
        _refresh_control_panels()
        report = collect()
        report.before = before
        display(StopReport(stopped, report))
        republish_shown()

    @line_magic
    def qwen_clean(self, line: str) -> None:
        """gc, empty the CUDA cache, reset torch.compile; report memory before and after."""
        parser = ArgumentParser(prog="%qwen_clean", description=self.qwen_clean.__doc__)
        parser.add_argument("--history", action="store_true",
                            help="also drop IPython's Out cache and the last traceback")
        args = parse(parser, line)
        if args is None:
            return
        from jupyter_qwen.notebook.lifecycle import clean

        display(clean(history=args.history))

    @line_magic
    def qwen_gpu(self, line: str) -> None:
        """Show the live GPU dashboard: memory, utilization, this kernel's servers."""
        if parse(ArgumentParser(prog="%qwen_gpu", description=self.qwen_gpu.__doc__),
                 line) is None:
            return
        from jupyter_qwen.notebook.widgets import GpuDashboard

        GpuDashboard().show(display)

    @cell_magic
    def qwen(self, line: str, cell: str) -> None:
        """Send the cell to the running server as a user message; stream the reply."""
        parser = ArgumentParser(prog="%%qwen", description=self.qwen.__doc__)
        parser.add_argument("--no-think", action="store_true", help="answer without reasoning")
        parser.add_argument("--session", help="keep a conversation under this id across cells")
        parser.add_argument("--system", help="a system message for this turn")
        parser.add_argument("--max-tokens", type=int,
                            help="at most this many tokens (default: up to the context limit)")
        parser.add_argument("--server", help="which server to talk to (its name, model or URL; "
                                             "default: the newest of this kernel)")
        args = parse(parser, line)
        if args is None:
            return
        server = self._current_server(args.server)
        messages = self._conversation(args, cell.strip())
        import openai

        try:
            reply = stream_reply(server, messages, args)
        except openai.APIError as error:
            messages.pop()
            raise UsageError(f"%%qwen: the server answered: {error}") from None
        if args.session:
            messages.append({"role": "assistant", "content": reply})
        republish_shown()

    def _current_server(self, name: str | None = None):
        from jupyter_qwen.server.handles import kernel_servers

        if name:
            server = pick_server("%%qwen", name)
        else:
            servers = kernel_servers()
            if not servers:
                raise UsageError("%%qwen: no server is running; start one with %qwen_serve "
                                 "or attach one with %qwen_connect")
            server = servers[-1]
        if server.state == "loading":
            server.wait_ready(progress=False)
        return server

    def _conversation(self, args, text: str) -> list[dict]:
        messages = self.conversations.setdefault(args.session, []) if args.session else []
        if args.system and not messages:
            messages.append({"role": "system", "content": args.system})
        messages.append({"role": "user", "content": text})
        return messages


def pick_server(prog: str, name: str):
    """This kernel's server called `name`; a UsageError listing the others when none is."""
    from jupyter_qwen.server.handles import find_server, kernel_servers

    server = find_server(name)
    if server is None:
        known = ", ".join(getattr(s, "name", s.served_model_name) for s in kernel_servers())
        raise UsageError(f"{prog}: no server called {name!r} in this kernel"
                         + (f" (there are: {known})" if known else ""))
    return server


def stream_reply(server, messages: list[dict], args) -> str:
    """Stream the answer into one display, updated in place, and end it with a footer."""
    extra: dict[str, Any] = thinking_switch(server.chat_variant, args.no_think)
    if getattr(server, "origin", "kernel") == "remote" and extra:
        extra = {"chat_template_kwargs": extra}  # how vLLM and SGLang take the switch
    if args.session:
        extra["session_id"] = args.session
    limit = {"max_tokens": args.max_tokens} if args.max_tokens else {}
    reply = ChatReply(max_tokens=args.max_tokens)
    stream = server.openai_client().chat.completions.create(
        model=server.served_model_name, messages=messages, stream=True, extra_body=extra,
        stream_options={"include_usage": True}, **limit)
    handle = display(reply.bundle(), raw=True, display_id=True)
    shown, usage = 0.0, None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        reasoning = (getattr(choice.delta, "reasoning_content", None)
                     or getattr(choice.delta, "reasoning", None) or "")
        reply.add(reasoning, choice.delta.content or "", choice.finish_reason)
        if time.monotonic() - shown > STREAM_REFRESH_S:
            handle.update(reply.bundle(), raw=True)
            shown = time.monotonic()
    reply.finish(getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
    handle.update(reply.bundle(done=True), raw=True)
    return reply.content


def thinking_switch(chat_variant: str, no_think: bool) -> dict[str, Any]:
    """The request's enable_thinking: sent only to a model whose template has the switch
    (an instruct-2507 model never thinks, a thinking-2507 one always does)."""
    if chat_variant == "thinking-2507" and no_think:
        print("%%qwen: this model always thinks (its chat template is thinking-2507): "
              "--no-think has no effect")
    if chat_variant in ("instruct-2507", "thinking-2507"):
        return {}
    return {"enable_thinking": not no_think}


def reply_markdown(reasoning: str, content: str) -> str:
    """The Markdown of an answer so far (reasoning folded and muted, then the answer)."""
    return ChatReply(reasoning=reasoning, content=content).markdown()


def panels_of(server) -> list:
    from jupyter_qwen.notebook.widgets import panels_of as shown_panels

    return shown_panels(server)


def republish_shown() -> None:
    from jupyter_qwen.notebook.saved_view import republish_shown as republish

    republish()


def _memory_now(server) -> dict | None:
    try:
        return memory_of(server.stats())
    except Exception:  # a server half way down reports nothing; the stop still goes on
        return None


def _refresh_control_panels() -> None:
    from jupyter_qwen.notebook.control_panel import refresh_panels

    refresh_panels()


def status_rows() -> list[dict]:
    """This kernel's servers with live figures (in-kernel, child processes, remote ones),
    then other processes' from the registry."""
    from jupyter_qwen.server.handles import kernel_servers, origin_of
    from jupyter_qwen.server.registry import list_records

    servers = kernel_servers()
    rows = [{"origin": origin_of(server)} | server.stats() for server in servers]
    local = {row["url"] for row in rows}
    mine = {server.record.id for server in servers if getattr(server, "record", None)}
    for record in list_records():
        if record.url not in local and record.id not in mine:
            rows.append(remote_status(record))
    return rows


_record_readers: dict[str, Any] = {}  # registry id -> MetricsReader, for rates between calls


def remote_status(record) -> dict:
    """A registry record's row: /health for our servers, /metrics for remote ones."""
    from jupyter_qwen.server.health import read_health

    row = {"model": record.served_model_name, "url": record.url, "origin": record.origin}
    if record.origin == "remote":
        from jupyter_qwen.server.remote import probe
        from jupyter_qwen.server.scrape import MetricsReader

        reader = _record_readers.setdefault(record.id, MetricsReader(record.root_url))
        health = probe(reader)
    else:
        row["uptime"] = time.time() - record.started_at
        health = read_health(record.root_url, timeout=2)
    return row | {"state": health.status} | (health.engine or {})


STATUS_COLUMNS: list[tuple[str, Callable[[dict, ServerView], str]]] = [
    ("model", lambda row, view: str(row.get("model") or MISSING)),
    ("URL", lambda row, view: str(row.get("url") or MISSING)),
    ("state", lambda row, view: view.state),
    ("origin", lambda row, view: str(row.get("origin") or "kernel")),
    ("device", lambda row, view: view.device),
    ("chat", lambda row, view: view.chat_variant),
    ("uptime", lambda row, view: view.uptime),
    ("memory", lambda row, view: view.memory_total),
    ("KV cache", lambda row, view: view.kv),
    ("TTFT", lambda row, view: view.ttft),
    ("inter-token", lambda row, view: view.itl),
    ("requests", lambda row, view: view.requests),
    ("tokens/s", lambda row, view: view.tokens_per_s),
    ("prefix hits", lambda row, view: view.prefix_hits)]
"""The columns of %qwen_status: each a header and how a row's figures read."""


class StatusTable:
    """The %qwen_status table: HTML in notebooks, aligned text elsewhere."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{name}</th>" for name, _ in STATUS_COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line)
                       + "</tr>" for line in self._cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        lines = [[name for name, _ in STATUS_COLUMNS], *self._cells()]
        widths = [max(len(line[i]) for line in lines) for i in range(len(STATUS_COLUMNS))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                         for line in lines)

    def _cells(self) -> list[list[str]]:
        no_gpu = _no_gpu_reason()
        cells = []
        for row in self.rows:
            here = row.get("origin") != "remote"  # a remote server's device is not this GPU
            view = server_view(row, str(row.get("state") or "unreachable"),
                               no_gpu if here else "")
            cells.append([cell(row, view) for _, cell in STATUS_COLUMNS])
        return cells


def _no_gpu_reason() -> str:
    from jupyter_qwen.nvml import gpu_snapshot

    snapshot = gpu_snapshot()
    return "" if snapshot.available and snapshot.gpus else snapshot.reason or "no GPU"
