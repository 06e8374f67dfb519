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
import logging
import math
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from jupyter_qwen import nvml
from jupyter_qwen.config import CPU_KV_CACHE_BYTES, EngineConfig
from jupyter_qwen.format import format_bytes
from jupyter_qwen.notebook.models import (
    DEMO_CHOICE,
    check_model,
    demo_folder,
    model_choices,
)
from jupyter_qwen.notebook.saved_view import SavedView
from jupyter_qwen.options import Option, field_errors, options_of
from jupyter_qwen.server.options import ServerOptions
from jupyter_qwen.server.security import other_logged_in_users

log = logging.getLogger("jupyter_qwen.notebook")
STATIC = Path(__file__).with_name("static")
FIELD_STYLE = {"description_width": "175px"}
WIDE, NARROW = "540px", "345px"
OPTION_CLASSES = (EngineConfig, ServerOptions)
FORM_OPTIONS: tuple[Option, ...] = tuple(o for cls in OPTION_CLASSES for o in options_of(cls)
                                         if o.spec.form)
"""The options on the form, declared with `form=` where they are defined."""
FORM_FIELDS = ("model", *(o.name for o in FORM_OPTIONS))
REPLACE_HINT = "stop the server this kernel runs, then start this one"
SLIDER_LOW = 0.05
INVALID_CLASS = "jqc-invalid"
"""The class of a field whose value is wrong: a red border (control.css)."""
LIVE_HINTS = ("gpu_memory_utilization", "api_key")
"""Fields whose note follows what is typed in them."""


# ---- the GPU behind the memory slider ----------------------------------------------------

def gpu_memory_total() -> tuple[int | None, str]:
    """Total memory of the GPU the engine would use (NVML), or None and why there is none."""
    total, _free, name = gpu_memory()
    return total, name


def gpu_memory() -> tuple[int | None, int | None, str]:
    """Total and free memory of the GPU the engine would use (NVML), and its name; without
    one, (None, None, why there is none)."""
    snapshot = nvml.gpu_snapshot()
    if not snapshot.available or not snapshot.gpus:
        return None, None, snapshot.reason
    gpu = snapshot.gpus[0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    for candidate in snapshot.gpus:
        if visible and (visible == str(candidate.index)
                        or (len(visible) > 4 and candidate.uuid.startswith(visible))):
            gpu = candidate
    free = max(0, gpu.memory_total - gpu.memory_used)
    return gpu.memory_total, free, f"GPU {gpu.index} {gpu.name}"


def free_share(total: int, free: int, high: float) -> float:
    """The largest memory share the slider offers: what is free now, in steps of 0.01."""
    return max(SLIDER_LOW, min(high, math.floor(100 * free / total) / 100))


_PANELS: weakref.WeakSet = weakref.WeakSet()


def refresh_panels() -> None:
    """Tell every control panel of this kernel that servers came or went (``%qwen_stop``)."""
    for panel in list(_PANELS):
        panel.refresh_serving()


# ---- the panel ---------------------------------------------------------------------------

class ControlPanel(SavedView, widgets.VBox):
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
        known = {*FORM_FIELDS, *(o.name for cls in OPTION_CLASSES for o in options_of(cls))}
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
        self._message_kind = ""
        self._unfit: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._starting = False
        self._gpu_total, self._gpu_free, self._gpu_name = gpu_memory()
        self._other_users = other_logged_in_users()
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
        self._size_memory_slider()
        for name in self.fields:
            self._render_note(name)
        _PANELS.add(self)
        self.refresh_serving()

    # ---- the form ----

    def _size_memory_slider(self) -> None:
        """Offer at most the GPU's free memory; no slider to move without a GPU."""
        slider = self.fields["gpu_memory_utilization"]
        on_cpu = self._gpu_total is None or self.extras.get("device") == "cpu"
        slider.disabled = on_cpu
        if not on_cpu and self._gpu_free is not None:
            slider.max = free_share(self._gpu_total, self._gpu_free, slider.max)

    def refresh_serving(self) -> None:
        """Say "already serving" before Start when another server runs in this kernel; take
        that message back once nothing runs."""
        from jupyter_qwen.server.server import running_servers

        with self._lock:
            if self.phase not in ("form", "stopped") or self._starting:
                return
            others = [s for s in running_servers() if s is not self.server]
            if others:
                self.rows["replace"].layout.display = None
                self._say(f"Already serving {_names(others)}: Start stops it only with "
                          "“replace the running server” ticked (or stop it first: its Stop "
                          "button, or %qwen_stop).", error=True, kind="serving")
            elif self._message_kind == "serving":
                self._say("")
                if not self.fields["replace"].value:
                    self.rows["replace"].layout.display = "none"

    def _make_fields(self, choices: list[str]) -> dict[str, widgets.Widget]:
        model = widgets.Combobox(
            description="model", options=choices, ensure_option=False, style=FIELD_STYLE,
            layout=widgets.Layout(width=WIDE),
            placeholder="Qwen/Qwen3-0.6B, a checkpoint folder, or demo")
        replace = widgets.Checkbox(False, description="replace the running server",
                                   style=FIELD_STYLE, layout=widgets.Layout(width=NARROW))
        return {"model": model, **{o.name: option_widget(o) for o in FORM_OPTIONS},
                "replace": replace}

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
        if self.errors.pop(name, None) is not None or name in LIVE_HINTS:
            self._render_note(name)

    def _render_note(self, name: str) -> None:
        error = self.errors.get(name)
        if error:
            self.fields[name].add_class(INVALID_CLASS)
        else:
            self.fields[name].remove_class(INVALID_CLASS)
        if error:
            self.notes[name].value = (f'<span class="jqc-error">{html.escape(labelled(error))}'
                                      "</span>")
            return
        if name == "api_key" and (warning := self._shared_host_warning()):
            self.notes[name].value = f'<span class="jqc-warning">{html.escape(warning)}</span>'
            return
        hint = self._model_hint() if name == "model" else self._memory_hint() \
            if name == "gpu_memory_utilization" else _hint(name)
        title = html.escape(self._gpu_name, quote=True) \
            if name == "gpu_memory_utilization" else ""
        self.notes[name].value = (f'<span class="jqc-hint" title="{title}">'
                                  f'{html.escape(hint)}</span>')

    def _shared_host_warning(self) -> str:
        """Why a blank API key is unsafe here, when other users are logged in."""
        if str(self.fields["api_key"].value or "").strip() or not self._other_users:
            return ""
        return (f"other users are logged in here ({', '.join(self._other_users)}): without "
                "a key they can use this server; type auto for a random one")

    def _model_hint(self) -> str:
        offered = len(self.fields["model"].options) - 1
        listed = f"; {offered} more in the list" if offered else ""
        return f"Hub id, folder, or demo (tiny CPU model){listed}"

    def _memory_hint(self) -> str:
        if self._gpu_total is None:
            return f"no GPU: the KV cache gets {format_bytes(CPU_KV_CACHE_BYTES)} on CPU"
        if self.extras.get("device") == "cpu":
            return "device=cpu: the model does not use the GPU"
        share = self.fields["gpu_memory_utilization"].value
        free = "" if self._gpu_free is None else f"; {format_bytes(self._gpu_free)} free now"
        return (f"{format_bytes(share * self._gpu_total)} of {format_bytes(self._gpu_total)} on "
                f"{self._gpu_name}: weights, activations and KV cache{free}")

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
        options = {o.name: _form_value(o, values[o.name], errors) for o in FORM_OPTIONS}
        options = {k: v for k, v in options.items() if k not in errors} | self.extras
        for cls in OPTION_CLASSES:
            names = {o.name for o in options_of(cls)}
            errors.update(field_errors(cls, {k: v for k, v in options.items() if k in names}))
        demo = model == DEMO_CHOICE or _is_demo_folder(model)
        request = {"model": None if demo else model, "demo": demo,
                   "options": {k: v for k, v in options.items() if v is not None},
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
            fields = ", ".join(_label(name) for name in self.errors)
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
        from jupyter_qwen.notebook.launch import AlreadyServingError, start_server
        from jupyter_qwen.server.errors import ServerStartError

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
            if request["demo"] and not demo_folder().is_dir():
                self._say("building the demo model (first use only, a few seconds)…")
            server = start_server(**request, shell=self.shell or _shell())
        except AlreadyServingError as error:
            self.rows["replace"].layout.display = None
            self._say(f"Already serving {_names(error.servers)}. Stop it first (the Stop "
                      "button of its dashboard, or %qwen_stop), or tick “replace the running "
                      "server”.", error=True, kind="serving")
            return None
        except ServerStartError as error:
            if error.field != "port":
                self._say(f"The server did not start: {error}", error=True)
                return None
            reason = str(error).rsplit(": ", 1)[-1]
            port = request["options"].get("port")
            self._show_errors({"port": f"port {port} is taken ({reason}); choose "
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
        changed, self.phase = phase != self.phase, phase
        self.add_class(f"jqc-phase-{phase}")
        self.form.layout.display = "none" if phase in ("loading", "serving", "failing") else None
        if changed:
            self.republish()

    # ---- what a saved notebook shows ----

    def static_text(self) -> str:
        lines = ["Qwen3 server control panel"]
        if self.dashboard is not None:
            lines.append(self.dashboard.static_text())
        else:
            values = self.values()
            shown = ", ".join(f"{_label(o.name)} {values[o.name]!s}" for o in FORM_OPTIONS
                              if o.spec.form != "secret" and values[o.name] not in (None, ""))
            lines.append(f"model {values['model'] or '(none)'}; {shown}")
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)

    def static_html(self) -> str:
        if self.dashboard is not None:
            body = self.dashboard.static_html()
        else:
            body = f"<pre>{html.escape(self.static_text())}</pre>"
        message = f"<p>{html.escape(self.message)}</p>" if self.message else ""
        return f"<div><b>Qwen3 server control panel</b>{body}{message}</div>"

    def refresh_saved_view(self) -> None:
        if self.dashboard is not None:
            self.dashboard.refresh()
        self.republish()

    def _set_busy(self, busy: bool) -> None:
        self.start_button.disabled = busy
        self.start_button.description = "Starting…" if busy else "Start"

    def _say(self, text: str, error: bool = False, kind: str = "") -> None:
        self.message, self._message_kind = text, kind if text else ""
        kind = "jqc-error" if error else "jqc-hint"
        self.status.value = f'<span class="{kind}">{html.escape(text)}</span>' if text else ""


def panel(model: str | None = None, **options: Any) -> ControlPanel:
    """A control panel that starts a server: shown when it is a cell's last expression.

    ``model`` and ``options`` (QwenServer's keyword arguments) fill the form in."""
    return ControlPanel(model, **options)


def option_widget(option: Option) -> widgets.Widget:
    """The form's widget for an option, by the kind its declaration names."""
    spec, label = option.spec, option.label
    narrow = widgets.Layout(width=NARROW)
    if spec.form == "number":
        return widgets.IntText(option.default, description=label, style=FIELD_STYLE,
                               layout=narrow)
    if spec.form == "slider":
        return widgets.FloatSlider(option.default, min=SLIDER_LOW, max=float(spec.high or 1),
                                   step=0.01, readout_format=".2f", style=FIELD_STYLE,
                                   description=label, layout=widgets.Layout(width=WIDE))
    if spec.form == "choice":
        return widgets.Dropdown(options=spec.choices, value=option.default, description=label,
                                style=FIELD_STYLE, layout=narrow)
    if spec.form == "check":
        return widgets.Checkbox(option.default, description=label, style=FIELD_STYLE,
                                layout=narrow)
    kind = widgets.Password if spec.form == "secret" else widgets.Text
    return kind(description=label, placeholder=spec.placeholder, style=FIELD_STYLE,
                layout=narrow)


def _form_value(option: Option, raw: Any, errors: dict[str, str]) -> Any:
    """A widget's raw value as the option's value (blank text: None)."""
    if option.spec.form == "optional_number":
        return _optional_int(raw, errors, option.name)
    if option.spec.form == "secret":
        return str(raw or "").strip() or None
    return raw


def _label(name: str) -> str:
    return next((o.label for o in FORM_OPTIONS if o.name == name), name)


def labelled(message: str) -> str:
    """``message`` with each form option's name written as the form's label for it (the
    checks name ``max_num_seqs``; the form shows max-num-seqs)."""
    for option in sorted(FORM_OPTIONS, key=lambda o: -len(o.name)):
        message = message.replace(option.name, option.label)
    return message


def _hint(name: str) -> str:
    if name == "replace":
        return REPLACE_HINT
    return next((o.spec.hint or o.spec.help for o in FORM_OPTIONS if o.name == name), "")


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


def _field_of(error: BaseException | None) -> str | None:
    """The form field an error is about: the option a ConfigError names, if on the form."""
    field = getattr(error, "field", None)
    return field if field in FORM_FIELDS else None


def _load_failure(error: BaseException | None) -> str:
    from jupyter_qwen.server.errors import ModelNotFoundError, OutOfKVCacheMemoryError

    if isinstance(error, OutOfKVCacheMemoryError):
        return (f"Not enough memory for a KV cache this long: lower {_label('max_model_len')}, "
                f"or give the server more {_label('gpu_memory_utilization')}.")
    if isinstance(error, ModelNotFoundError):
        return f"The model could not be loaded: {error}."
    if type(error).__name__ == "OutOfMemoryError":
        return (f"The GPU ran out of memory while loading: lower "
                f"{_label('gpu_memory_utilization')}, or stop what else holds it (the Qwen "
                "sidebar shows who).")
    if _field_of(error):
        return "The model did not load with these settings (see above)."
    return f"The model did not load: {type(error).__name__}: {error}"


def _is_demo_folder(text: str) -> bool:
    try:
        return Path(text).expanduser().resolve() == demo_folder().resolve()
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
