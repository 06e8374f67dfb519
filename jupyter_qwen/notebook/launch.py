"""`start_server`: the one way %qwen_serve and the control panel start a server."""

from __future__ import annotations

from typing import Any

from jupyter_qwen.notebook.models import remember_when_served

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"


class AlreadyServingError(RuntimeError):
    """This kernel already runs a server, and the caller did not ask to replace it."""

    def __init__(self, servers: list):
        self.servers = servers
        names = ", ".join(f"{s.served_model_name} at {s.url}" for s in servers)
        super().__init__(f"already serving {names}")


def start_server(model: str | None, options: dict[str, Any] | None = None, *,
                 demo: bool = False, replace: bool = False, shell: Any = None,
                 process: bool = False):
    """Start a server the way %qwen_serve does, and return it while its model loads.

    ``model`` is a Hugging Face id or a checkpoint folder (default Qwen/Qwen3-0.6B);
    ``demo`` serves the tiny demo model instead. ``options`` are ``serve()``'s
    (ServerOptions' and EngineConfig's fields). With ``replace`` the servers this
    kernel runs are stopped first; ``shell`` gets the server as ``qwen_server``.

    Raises AlreadyServingError (a server runs and ``replace`` is false),
    ModelNotFoundError (neither a checkpoint folder nor an id in the cache or hub),
    ConfigError or TypeError (a bad option), ServerStartError (the port is in use).
    Errors while the weights load come later, as ``server.load_error``.

    With ``process`` the server runs in a child process (a `ProcessServer`, returned once it
    answers; its errors come as ServerStartError with the child's last output), beside any
    server of this kernel; ``replace`` stops this kernel's servers of both kinds first.
    """
    if process:
        return _start_process(model, options, demo=demo, replace=replace, shell=shell)
    from jupyter_qwen.server.server import QwenServer, find_model, running_servers

    running = running_servers()
    if running and not replace:
        raise AlreadyServingError(running)
    options = dict(options or {})
    if demo:
        from jupyter_qwen.demo.cache import SERVED_NAME, demo_model_path

        options.setdefault("served_model_name", SERVED_NAME)
        model = str(demo_model_path())
    else:
        model = model or DEFAULT_MODEL
    model_path = find_model(model)
    for server in running:
        server.stop()
    server = QwenServer(model, model_path=model_path, **options)
    try:
        server.start(wait=False)
    except BaseException:
        server.stop()
        raise
    if shell is not None:
        shell.user_ns["qwen_server"] = server
    if not demo:
        remember_when_served(server, model)
    return server


def _start_process(model: str | None, options: dict[str, Any] | None, *, demo: bool,
                   replace: bool, shell: Any):
    from jupyter_qwen.server.handles import kernel_servers, origin_of
    from jupyter_qwen.server.process import ProcessServer

    if replace:
        for server in kernel_servers():
            if origin_of(server) != "remote":
                server.stop()
    server = ProcessServer(None if demo else (model or DEFAULT_MODEL), options, demo=demo)
    server.start(wait=True)
    if shell is not None:
        shell.user_ns["qwen_server"] = server
    return server
