"""The control panel (``%qwen_panel``, ``jupyter_qwen.panel()``): a form that starts a server.

A VBox of standard ipywidgets: the serve options, each with a note beside it (a hint,
or what is wrong), and a Start button. Start validates the form (numbers through
``EngineConfig``'s own checks, the model as a folder that exists or an ``org/name``
id), then starts the server through ``start_server``, the function ``%qwen_serve``
uses, and shows its ``ServerPanel``: loading progress, then the live dashboard with
Stop, Clean and the ``ChatOpenAI(...)`` snippet. An error, found before starting or
while the weights load, comes back next to the field it concerns, with the form kept;
after Stop the form comes back too, to start again.

The model box offers the Qwen3 checkpoints in the local Hugging Face cache, the
models served recently (``recent.json`` in ``$JUPYTER_QWEN_CACHE``, else in
``jupyter_data_dir()/jupyter_qwen``) and ``demo``, the tiny demo model.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from jupyter_qwen import nvml
from jupyter_qwen.config import CPU_KV_CACHE_BYTES, DTYPES, EngineConfig
from jupyter_qwen.format import format_bytes

log = logging.getLogger("jupyter_qwen.notebook")
STATIC = Path(__file__).with_name("static")
DEMO_CHOICE = "demo"
RECENT_LIMIT = 8
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
ENGINE_FIELDS = ("max_num_seqs", "max_model_len", "max_num_batched_tokens",
                 "gpu_memory_utilization", "dtype", "enable_prefix_caching")
FORM_FIELDS = ("model", *ENGINE_FIELDS, "enable_thinking", "port", "api_key")
SERVER_OPTIONS = ("served_model_name", "max_waiting_requests", "host")
LABELS = {"model": "model", "max_num_seqs": "max-num-seqs", "max_model_len": "max-model-len",
          "max_num_batched_tokens": "max-num-batched-tokens",
          "gpu_memory_utilization": "GPU memory", "dtype": "dtype",
          "enable_prefix_caching": "prefix caching", "enable_thinking": "thinking",
          "port": "port", "api_key": "API key", "replace": "replace"}
HINTS = {"max_num_seqs": "requests in a batch at most",
         "max_model_len": "tokens per conversation; blank: the model's",
         "max_num_batched_tokens": "tokens per engine step; blank: max(8192, max-num-seqs)",
         "dtype": "auto: the checkpoint's (float32 on CPU)",
         "enable_prefix_caching": "reuse the KV cache of shared prompt prefixes",
         "enable_thinking": "what requests get when they do not say",
         "port": "blank: a free port", "api_key": "blank: no key needed on 127.0.0.1",
         "replace": "stop the server this kernel runs, then start this one"}


# ---- the models offered -------------------------------------------------------------------

def recent_path() -> Path:
    """Where the recently served models are kept."""
    cache = os.environ.get("JUPYTER_QWEN_CACHE")
    if cache:
        return Path(cache) / "recent.json"
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "jupyter_qwen" / "recent.json"


def recent_models(path: Path | None = None) -> list[str]:
    """The models served lately, newest first (folders that are gone are left out)."""
    try:
        entries = json.loads((path or recent_path()).read_text())
    except (OSError, ValueError):
        return []
    models = [e["model"] for e in entries if isinstance(e, dict)
              and isinstance(e.get("model"), str)] if isinstance(entries, list) else []
    return [m for m in models if not _looks_like_path(m) or Path(m).is_dir()][:RECENT_LIMIT]


def remember_model(model: str, path: Path | None = None) -> None:
    """Put ``model`` first in the recent list (written atomically; failures only logged)."""
    path = path or recent_path()
    models = [model, *(m for m in recent_models(path) if m != model)][:RECENT_LIMIT]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_text(json.dumps([{"model": m} for m in models], indent=1))
        os.replace(temporary, path)
    except OSError as error:
        log.warning("could not write %s: %s", path, error)


def remember_when_served(server: Any, model: str) -> None:
    """Remember ``model`` once ``server`` has loaded it (a short-lived daemon thread)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        model = str(folder.resolve())

    def wait() -> None:
        while server.state == "loading":
            time.sleep(0.2)
        if server.state == "ok":
            remember_model(model)

    threading.Thread(target=wait, name="jupyter-qwen-recent", daemon=True).start()


def cached_qwen3_models(cache_dir: str | Path | None = None) -> list[str]:
    """Hub ids of the Qwen3 checkpoints (config and weights) in the local Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache_dir)
    except Exception as error:  # no cache yet, a corrupted one, an old huggingface_hub
        log.debug("no Hugging Face cache to offer: %s", error)
        return []
    repos = sorted(info.repos, key=lambda repo: repo.last_accessed, reverse=True)
    return [repo.repo_id for repo in repos if repo.repo_type == "model"
            and any(_is_qwen3_checkpoint(rev.snapshot_path) for rev in repo.revisions)]


def _is_qwen3_checkpoint(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("model_type") == "qwen3"
            and any(folder.glob("*.safetensors")))


def model_choices(hf_cache_dir: str | Path | None = None) -> list[str]:
    """What the model box offers: recent models, cached Qwen3 checkpoints, then ``demo``."""
    choices = [*recent_models(), *cached_qwen3_models(hf_cache_dir), DEMO_CHOICE]
    return list(dict.fromkeys(choices))


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or os.sep in text.replace("/", "") or \
        text.count("/") > 1


def _demo_folder() -> Path:
    """Where demo_model_path() builds the demo model, without building it."""
    from jupyter_qwen.testing import demo_model_name

    root = Path(os.environ.get("JUPYTER_QWEN_CACHE") or Path.home() / ".cache" / "jupyter_qwen")
    return root / demo_model_name()


def check_model(text: str) -> str | None:
    """What is wrong with the model box's text, or None: a folder must exist and hold a
    config.json; anything else must look like a Hugging Face id (``org/name``)."""
    if not text:
        return "give a Hugging Face id like Qwen/Qwen3-0.6B, a checkpoint folder, or demo"
    if text == DEMO_CHOICE:
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else \
            f"{path} holds no config.json, so it is not a checkpoint folder"
    if path.exists():
        return f"{path} is a file; give the checkpoint folder that holds it"
    if _looks_like_path(text):
        return f"there is no folder {path}"
    if HUB_ID.fullmatch(text):
        return None
    return f"{text!r} is not a folder here, nor a Hugging Face id like Qwen/Qwen3-0.6B"


# ---- the GPU behind the memory slider ----------------------------------------------------

def gpu_memory_total() -> tuple[int | None, str]:
    """Total memory of the GPU the engine would use (NVML), or None and why there is none."""
    snapshot = nvml.gpu_snapshot()
    if not snapshot.available or not snapshot.gpus:
        return None, snapshot.reason
    gpu = snapshot.gpus[0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    for candidate in snapshot.gpus:
        if visible and (visible == str(candidate.index)
                        or (len(visible) > 4 and candidate.uuid.startswith(visible))):
            gpu = candidate
    return gpu.memory_total, f"GPU {gpu.index} {gpu.name}"


# ---- the panel ---------------------------------------------------------------------------

class ControlPanel(widgets.VBox):
    """A form with the serve options and Start; then the server's live dashboard.

    ``model`` and ``options`` fill the form in (the form's fields: max_num_seqs,
    max_model_len, max_num_batched_tokens, gpu_memory_utilization, dtype,
    enable_prefix_caching, enable_thinking, port, api_key). Other ``QwenServer``
    options (num_kv_blocks, block_size, seed, served_model_name, host, ...) are
    passed through to the server as they are, and listed under the form. The
    server lands in ``shell``'s namespace (default: the running IPython's) as
    ``qwen_server``.
    """

    def __init__(self, model: str | None = None, *, replace: bool = False,
                 monitor: Any = None, hf_cache_dir: str | Path | None = None,
                 shell: Any = None, **options: Any):
        super().__init__()
        known = set(FORM_FIELDS) | set(EngineConfig.field_names()) | set(SERVER_OPTIONS)
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(known - {'model'}))}")
        self.extras = {k: v for k, v in options.items() if k not in FORM_FIELDS}
        self.monitor = monitor
        self.shell = shell
        self.server: Any = None
        self.dashboard: Any = None
        self.phase = "form"
        self.errors: dict[str, str] = {}
        self.message = ""
        self._unfit: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._starting = False
        self._gpu_total, self._gpu_name = gpu_memory_total()
        self.fields = self._make_fields(model_choices(hf_cache_dir))
        self.notes = {name: widgets.HTML(layout=widgets.Layout(margin="0 0 0 8px"))
                      for name in self.fields}
        for name, widget in self.fields.items():
            widget.add_class(f"jqc-field-{name.replace('_', '-')}")
            self.notes[name].add_class("jqc-note-box")
            widget.observe(lambda change, name=name: self._edited(name), names="value")
        self.rows = {name: widgets.HBox([widget, self.notes[name]],
                                        layout=widgets.Layout(align_items="center"))
                     for name, widget in self.fields.items()}
        self.rows["replace"].layout.display = "none"
        self.start_button = widgets.Button(description="Start", button_style="primary",
                                           icon="play", tooltip="validate and start the server")
        self.start_button.add_class("jqc-start")
        self.start_button.on_click(lambda _button: self._on_click())
        self.status = widgets.HTML()
        self.status.add_class("jqc-status")
        self.extras_note = widgets.HTML(self._extras_html())
        self.form = widgets.VBox([*self.rows.values(), self.extras_note,
                                  widgets.HBox([self.start_button, self.status],
                                               layout=widgets.Layout(align_items="center"))])
        self.form.add_class("jqc-form")
        self.slot = widgets.VBox()
        style = widgets.HTML(f"<style>{(STATIC / 'control.css').read_text()}</style>",
                             layout=widgets.Layout(display="none"))
        title = widgets.HTML('<div class="jqc-title">Qwen3 server</div>')
        self.children = [style, title, self.form, self.slot]
        self.add_class("jqc-root")
        self._set_phase("form")
        self.fill(model, replace=replace, **{k: v for k, v in options.items()
                                              if k in FORM_FIELDS})
        if replace:
            self.rows["replace"].layout.display = None
        for name in self.fields:
            self._render_note(name)

    # ---- the form ----

    def _make_fields(self, choices: list[str]) -> dict[str, widgets.Widget]:
        style = {"description_width": "175px"}
        wide = widgets.Layout(width="540px")
        narrow = widgets.Layout(width="345px")

        def text(name: str, placeholder: str = "") -> widgets.Text:
            return widgets.Text(description=LABELS[name], placeholder=placeholder, style=style,
                                layout=narrow)

        return {
            "model": widgets.Combobox(
                description="model", options=choices, ensure_option=False, style=style,
                layout=wide, placeholder="Qwen/Qwen3-0.6B, a checkpoint folder, or demo"),
            "max_num_seqs": widgets.IntText(256, description=LABELS["max_num_seqs"],
                                            style=style, layout=narrow),
            "max_model_len": text("max_model_len", "the model's"),
            "max_num_batched_tokens": text("max_num_batched_tokens", "max(8192, max-num-seqs)"),
            "gpu_memory_utilization": widgets.FloatSlider(
                0.9, min=0.05, max=1.0, step=0.01, readout_format=".2f", style=style,
                description=LABELS["gpu_memory_utilization"], layout=wide),
            "dtype": widgets.Dropdown(options=DTYPES, value="auto", description="dtype",
                                      style=style, layout=narrow),
            "enable_prefix_caching": widgets.Checkbox(True, description="prefix caching",
                                                      style=style, layout=narrow),
            "enable_thinking": widgets.Checkbox(True, description="think by default",
                                                style=style, layout=narrow),
            "port": text("port", "a free one"),
            "api_key": widgets.Password(description=LABELS["api_key"], placeholder="none",
                                        style=style, layout=narrow),
            "replace": widgets.Checkbox(False, description="replace the running server",
                                        style=style, layout=narrow),
        }

    def fill(self, model: str | None = None, **values: Any) -> ControlPanel:
        """Put values into the form (as if typed): ``model`` and the form's fields.

        A value a widget cannot hold (1.5 on the 0-1 memory slider, a word for a
        number) is kept as given, so that Start reports it next to its field."""
        if model is not None:
            values["model"] = str(model)
        for name, value in values.items():
            if name not in self.fields:
                raise TypeError(f"{name!r} is not a field of the form; fields: "
                                f"{', '.join(self.fields)}")
            widget = self.fields[name]
            if isinstance(widget, widgets.Text):
                value = "" if value is None else str(value)
            try:
                widget.value = value
            except traitlets.TraitError:  # a word for a number, a number for a choice
                self._unfit[name] = value
                continue
            if isinstance(widget, widgets.FloatSlider) and widget.value != value:
                self._unfit[name] = value  # clamped into the slider's range
        return self

    def values(self) -> dict[str, Any]:
        """The form as it stands: every field's raw value."""
        return {name: self._unfit.get(name, widget.value)
                for name, widget in self.fields.items()}

    def _edited(self, name: str) -> None:
        self._unfit.pop(name, None)
        if self.errors.pop(name, None) is not None or name == "gpu_memory_utilization":
            self._render_note(name)

    def _render_note(self, name: str) -> None:
        error = self.errors.get(name)
        if error:
            self.notes[name].value = f'<span class="jqc-error">{html.escape(error)}</span>'
            return
        hint = self._model_hint() if name == "model" else self._memory_hint() \
            if name == "gpu_memory_utilization" else HINTS.get(name, "")
        title = html.escape(self._gpu_name, quote=True) \
            if name == "gpu_memory_utilization" else ""
        self.notes[name].value = (f'<span class="jqc-hint" title="{title}">'
                                  f'{html.escape(hint)}</span>')

    def _model_hint(self) -> str:
        offered = len(self.fields["model"].options) - 1
        listed = f"; {offered} more in the list" if offered else ""
        return f"Hub id, folder, or demo (tiny CPU model){listed}"

    def _memory_hint(self) -> str:
        if self._gpu_total is None:
            return f"no GPU: the KV cache gets {format_bytes(CPU_KV_CACHE_BYTES)} on CPU"
        share = self.fields["gpu_memory_utilization"].value
        return (f"{format_bytes(share * self._gpu_total)} of {format_bytes(self._gpu_total)} on "
                f"{self._gpu_name}: weights, activations and KV cache")

    def _extras_html(self) -> str:
        if not self.extras:
            return ""
        given = ", ".join(f"{k}={v!r}" for k, v in self.extras.items())
        return f'<span class="jqc-hint">also passed to the server: {html.escape(given)}</span>'

    # ---- validation ----

    def validate(self) -> dict[str, str] | None:
        """Check the form and show what is wrong next to each field; return the
        keyword arguments for ``start_server`` when all is well, else None."""
        with self._lock:
            self.errors = {}
            request, errors = self._parse(self.values())
            self._show_errors(errors)
            return None if errors else request

    def _parse(self, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        errors: dict[str, str] = {}
        model = str(values["model"] or "").strip()
        problem = check_model(model)
        if problem:
            errors["model"] = problem
        engine = {name: values[name] for name in ENGINE_FIELDS}
        for name in ("max_model_len", "max_num_batched_tokens"):
            engine[name] = _optional_int(values[name], errors, name)
        engine.update((k, v) for k, v in self.extras.items() if k in EngineConfig.field_names())
        errors.update(_engine_errors({k: v for k, v in engine.items() if k not in errors}))
        port = _optional_int(values["port"], errors, "port")
        if port is not None and not 1 <= port <= 65535:
            errors["port"] = f"a port is a number from 1 to 65535, got {port}"
        thinking = values["enable_thinking"]
        if not isinstance(thinking, bool):
            errors["enable_thinking"] = f"must be True or False, got {thinking!r}"
        api_key = str(values["api_key"] or "").strip() or None
        options = {k: v for k, v in engine.items() if v is not None}
        options.update((k, v) for k, v in self.extras.items()
                       if k in SERVER_OPTIONS and k != "host")
        options.update(enable_thinking=thinking, api_key=api_key)
        demo = model == DEMO_CHOICE or _is_demo_folder(model)
        request = {"model": None if demo else model, "options": options, "demo": demo,
                   "host": self.extras.get("host", "127.0.0.1"), "port": port,
                   "replace": bool(values["replace"])}
        return request, errors

    def _show_errors(self, errors: dict[str, str]) -> None:
        self.errors = {k: v for k, v in errors.items() if k in self.fields}
        panel_level = [v for k, v in errors.items() if k not in self.fields]
        for name in self.fields:
            self._render_note(name)
        if panel_level:
            self._say(" ".join(panel_level), error=True)
        elif self.errors:
            fields = ", ".join(LABELS[name] for name in self.errors)
            self._say(f"Nothing started: check {fields}.", error=True)

    # ---- starting and following the server ----

    def _on_click(self) -> None:
        try:
            self.start()
        except Exception as error:  # shown in the panel: a click handler has no traceback
            log.exception("the control panel's Start failed")
            self._say(f"Start failed: {type(error).__name__}: {error}", error=True)
            self._set_busy(False)

    def start(self) -> Any:
        """Press Start: validate, start the server (as %qwen_serve does), show its dashboard.

        Returns the server (still loading), or None when the form holds an error or the
        server could not start; the reason is shown in the panel."""
        from jupyter_qwen.model.loader import ModelNotFoundError
        from jupyter_qwen.notebook.magics import AlreadyServingError, start_server
        from jupyter_qwen.server.server import ServerStartError

        with self._lock:
            if self._starting or (self.server is not None
                                  and self.server.state in ("loading", "ok", "dead")):
                self._say("A server of this panel is starting or running: stop it first.",
                          error=True)
                return None
            self._say("")
            request = self.validate()
            if request is None:
                return None
            self._starting = True
            self._set_busy(True)
        try:
            if request["demo"] and not _demo_folder().is_dir():
                self._say("building the demo model (first use only, a few seconds)…")
            server = start_server(**request, shell=self.shell or _shell())
        except AlreadyServingError as error:
            self.rows["replace"].layout.display = None
            self._say(f"Already serving {_names(error.servers)}. Stop it first (the Stop "
                      "button of its dashboard, or %qwen_stop), or tick “replace the running "
                      "server”.", error=True)
            return None
        except ModelNotFoundError as error:
            self._show_errors({"model": str(error)})
            return None
        except ServerStartError as error:
            if "cannot listen" not in str(error):
                self._say(f"The server did not start: {error}", error=True)
                return None
            reason = str(error).rsplit(": ", 1)[-1]
            self._show_errors({"port": f"port {request['port']} is taken ({reason}); choose "
                                       "another, or leave it blank for a free one"})
            return None
        except (ValueError, TypeError) as error:
            self._show_errors({_field_of(error) or "": str(error)})
            return None
        finally:
            with self._lock:
                self._starting = False
                self._set_busy(False)
        with self._lock:
            self._attach(server, request["demo"])
        return server

    def stop(self) -> None:
        """Stop the panel's server (what its dashboard's Stop does) and show the form again."""
        server = self.server
        if server is None:
            return
        server.stop()
        if self.dashboard is not None:
            self.dashboard.refresh()
        self._on_state(server, "stopped")

    def _attach(self, server: Any, demo: bool) -> None:
        from jupyter_qwen.notebook.widgets import ServerPanel

        if self.dashboard is not None:
            self.dashboard.close()
        dashboard = ServerPanel(server, monitor=self.monitor, demo=demo)
        self.server, self.dashboard = server, dashboard
        self._say("")
        self.slot.children = [dashboard]
        self._set_phase("loading")
        dashboard.observe(lambda change: self._on_state(server, change["new"]), names="state")
        self._on_state(server, server.state)

    def _on_state(self, server: Any, state: str) -> None:
        with self._lock:
            if server is not self.server:
                return
            if state == "ok" and self.phase == "loading":
                self._set_phase("serving")
            elif state == "failed" and self.phase in ("loading", "serving"):
                self._set_phase("failing")
                threading.Thread(target=self._after_failure, args=(server,), daemon=True,
                                 name="jupyter-qwen-panel-failed").start()
            elif state == "stopped" and self.phase in ("loading", "serving"):
                self._set_phase("stopped")
                self._say("Stopped. Change the form if you like and press Start to serve "
                          "again.")

    def _after_failure(self, server: Any) -> None:
        """The model did not load: free the port and the registry, then show why."""
        try:
            server.stop()
        except Exception:
            log.exception("stopping %r after its load failed", server)
        with self._lock:
            if server is not self.server:
                return
            error = server.load_error
            field = _field_of(error)
            dashboard, self.dashboard = self.dashboard, None
            self.slot.children = []
            if dashboard is not None:
                dashboard.close()
            self._set_phase("form")
            if field:
                self._show_errors({field: str(error)})
            self._say(f"{_load_failure(error)} Nothing is running; fix the form and press "
                      "Start again.", error=True)

    def _set_phase(self, phase: str) -> None:
        self.remove_class(f"jqc-phase-{self.phase}")
        self.phase = phase
        self.add_class(f"jqc-phase-{phase}")
        self.form.layout.display = "none" if phase in ("loading", "serving", "failing") else None

    def _set_busy(self, busy: bool) -> None:
        self.start_button.disabled = busy
        self.start_button.description = "Starting…" if busy else "Start"

    def _say(self, text: str, error: bool = False) -> None:
        self.message = text
        kind = "jqc-error" if error else "jqc-hint"
        self.status.value = f'<span class="{kind}">{html.escape(text)}</span>' if text else ""


def panel(model: str | None = None, **options: Any) -> ControlPanel:
    """A control panel that starts a server: shown when it is a cell's last expression.

    ``model`` and ``options`` (QwenServer's keyword arguments) fill the form in."""
    return ControlPanel(model, **options)


def _optional_int(value: Any, errors: dict[str, str], name: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip().replace("_", "").replace(",", ""))
    except ValueError:
        errors[name] = f"must be a whole number, or blank; got {value!r}"
        return None


def _engine_errors(engine: dict[str, Any]) -> dict[str, str]:
    """EngineConfig's own checks, every failing field named (one per round)."""
    errors: dict[str, str] = {}
    while True:
        try:
            EngineConfig(model="x", **{k: v for k, v in engine.items()
                                       if k not in errors and v is not None})
            return errors
        except ValueError as error:
            field = str(error).split(" ", 1)[0]
            if field not in engine or field in errors:
                errors[""] = str(error)
                return errors
            errors[field] = str(error)


def _field_of(error: BaseException | None) -> str | None:
    """The form field an error is about: by its type, else by the name it starts with."""
    from jupyter_qwen.engine.model_runner import OutOfKVCacheMemoryError
    from jupyter_qwen.model.loader import ModelNotFoundError

    if isinstance(error, OutOfKVCacheMemoryError):
        return "max_model_len"
    if isinstance(error, ModelNotFoundError):
        return "model"
    match = re.match(r"(\w+)", str(error or ""))
    return match.group(1) if match and match.group(1) in FORM_FIELDS else None


def _load_failure(error: BaseException | None) -> str:
    from jupyter_qwen.engine.model_runner import OutOfKVCacheMemoryError
    from jupyter_qwen.model.loader import ModelNotFoundError

    if isinstance(error, OutOfKVCacheMemoryError):
        return "Not enough memory for a KV cache this long: lower max-model-len, or give the " \
               "server more memory."
    if isinstance(error, ModelNotFoundError):
        return f"The model could not be loaded: {error}."
    if type(error).__name__ == "OutOfMemoryError":
        return "The GPU ran out of memory while loading: lower GPU memory, or stop what " \
               "else holds it (the Qwen sidebar shows who)."
    if _field_of(error):
        return "The model did not load with these settings (see above)."
    return f"The model did not load: {type(error).__name__}: {error}"


def _is_demo_folder(text: str) -> bool:
    try:
        return Path(text).expanduser().resolve() == _demo_folder().resolve()
    except (OSError, ValueError):
        return False


def _names(servers: list) -> str:
    return ", ".join(f"{s.served_model_name} at {s.url}" for s in servers)


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
