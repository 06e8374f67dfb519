"""The control panel (%qwen_panel, jupyter_qwen.panel()) without a browser: the form, its
checks, Start on the demo model, errors next to their fields, Stop, and the model choices."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from IPython.core.error import UsageError

import jupyter_qwen
from jupyter_qwen import nvml
from jupyter_qwen.notebook import control_panel, models
from jupyter_qwen.notebook.control_panel import INVALID_CLASS, ControlPanel, labelled
from jupyter_qwen.notebook.gpu import GpuMonitor
from jupyter_qwen.notebook.models import model_choices, remember_model
from jupyter_qwen.notebook.widgets import DEMO_LABEL, ServerPanel
from jupyter_qwen.server.server import QwenServer, running_servers


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Recent models in a tmp file; no server outlives a test."""
    recent = tmp_path / "recent" / "recent.json"
    monkeypatch.setattr(models, "recent_path", lambda: recent)
    yield recent
    for server in running_servers():
        server.stop()


@pytest.fixture
def monitor():
    monitor = GpuMonitor(interval=0.05, window=60.0)
    yield monitor
    monitor.close()


@pytest.fixture
def hf_cache(tmp_path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture
def make_panel(monitor, hf_cache):
    def make(*args, **kwargs) -> ControlPanel:
        return ControlPanel(*args, monitor=monitor, hf_cache_dir=hf_cache, **kwargs)

    return make


def wait_for(condition, timeout: float = 60.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def serving(panel: ControlPanel) -> QwenServer:
    wait_for(lambda: panel.phase in ("serving", "form"))
    assert panel.phase == "serving", (panel.errors, panel.message)
    assert panel.form.layout.display == "none" and panel.slot.children == (panel.dashboard,)
    return panel.server


def chat(server: QwenServer, text: str = "Hello!") -> str:
    reply = server.openai_client().chat.completions.create(
        model=server.served_model_name, max_tokens=24,
        messages=[{"role": "user", "content": text}])
    message = reply.choices[0].message
    return (getattr(message, "reasoning_content", None) or "") + (message.content or "")


def test_start_chat_stop_on_the_demo_model(make_panel, demo_model):
    panel = make_panel()
    panel.fill(str(demo_model), max_num_seqs=8, max_model_len=256, enable_thinking=True)
    panel.start_button.click()  # what the browser's click runs in the kernel
    server = serving(panel)
    assert running_servers() == [server] and server.model == str(demo_model)
    assert server.served_model_name == "qwen3-demo"
    assert server.config.max_num_seqs == 8 and server.config.max_model_len == 256
    dashboard = panel.dashboard
    assert isinstance(dashboard, ServerPanel) and dashboard.demo
    assert dashboard.demo_label == DEMO_LABEL
    assert dashboard.snippet == (f'ChatOpenAI(base_url="{server.url}", api_key="EMPTY", '
                                 'model="qwen3-demo")')
    assert "greet" in chat(server)
    wait_for(lambda: dashboard.current.get("generation_tokens_total", 0) > 0)
    assert panel.start() is None and "stop it first" in panel.message

    panel.stop()
    assert server.state == "stopped" and running_servers() == []
    assert panel.phase == "stopped" and panel.form.layout.display is None
    assert panel.slot.children == (dashboard,) and dashboard.state == "stopped"
    assert "press Start" in panel.message
    assert panel.start_button.description == "Start" and not panel.start_button.disabled


def test_the_dashboard_stop_brings_the_form_back_and_start_again(make_panel, demo_model):
    panel = make_panel("demo", max_model_len=128)
    first = panel.start()
    serving(panel)
    assert first.model == str(demo_model)
    panel.dashboard.run_action("stop")  # the dashboard's Stop, as its kernel fallback runs it
    wait_for(lambda: panel.phase == "stopped")
    assert running_servers() == [] and panel.form.layout.display is None
    panel.fill(max_model_len=64, enable_thinking=False)
    second = panel.start()
    assert second is not first and serving(panel) is second
    assert second.config.max_model_len == 64 and not second.ctx.default_enable_thinking
    panel.stop()
    assert running_servers() == []


def port_in_use():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def no_weights(demo_model: Path, tmp_path: Path) -> str:
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(demo_model / "config.json", folder / "config.json")
    return str(folder)


# (what the form gets, options the panel is made with, the field that explains, what it says,
#  the fix); "model" None: the demo model's folder
BAD_VALUES = {
    "max_num_seqs 0": ({"max_num_seqs": 0}, {}, "max_num_seqs",
                       "max_num_seqs must be an integer in [1, 4096], got 0",
                       {"max_num_seqs": 4}),
    "utilization 1.5": ({"gpu_memory_utilization": 1.5}, {}, "gpu_memory_utilization",
                        "gpu_memory_utilization must be a number in (0, 1], got 1.5",
                        {"gpu_memory_utilization": 0.5}),
    "batched tokens under max_num_seqs": (
        {"max_num_seqs": 64, "max_num_batched_tokens": "32"}, {}, "max_num_batched_tokens",
        "max_num_batched_tokens must be an integer in [64, ", {"max_num_batched_tokens": ""}),
    "a word for a length": ({"max_model_len": "long"}, {}, "max_model_len",
                            "must be a whole number, or blank; got 'long'",
                            {"max_model_len": "256"}),
    "missing folder": ({"model": "{tmp}/missing"}, {}, "model", "there is no folder", {}),
    "malformed id": ({"model": "qwen3-0.6b"}, {}, "model",
                     "'qwen3-0.6b' is not a folder here, nor a Hugging Face id", {}),
    "id not in the cache": ({"model": "Qwen/Qwen3-0.6B"}, {}, "model",
                            "Qwen/Qwen3-0.6B is not in the local Hugging Face cache and the "
                            "hub is unreachable", {}),
    "port in use": ({"port": "{busy}"}, {}, "port", "port {busy} is taken", {"port": ""}),
    "port out of range": ({"port": "70000"}, {}, "port",
                          "a port is a number from 1 to 65535, got 70000", {"port": ""}),
    "KV cache too small for max_model_len": (
        {"max_model_len": 256}, {"num_kv_blocks": 4}, "max_model_len",
        "the KV cache holds 64 tokens (4 blocks of 16), fewer than one sequence of "
        "max_model_len=256", {"max_model_len": 64}),
    "longer than the model allows": ({"max_model_len": 5000}, {}, "max_model_len",
                                     "max_model_len=5000 exceeds the model's "
                                     "max_position_embeddings=4096", {"max_model_len": ""}),
    "a folder without weights": ({"model": "{config_only}"}, {}, "model",
                                 "holds no *.safetensors weights", {}),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_is_explained_next_to_its_field_and_starts_nothing(
        case, make_panel, demo_model, tmp_path):
    values, options, field, message, fix = BAD_VALUES[case]
    with port_in_use() as busy:
        given = {"tmp": tmp_path, "busy": busy.getsockname()[1],
                 "config_only": no_weights(demo_model, tmp_path)}
        values = {k: v.format(**given) if isinstance(v, str) else v for k, v in values.items()}
        message = message.format(**given)
        panel = make_panel(str(demo_model), max_model_len=128, **options).fill(**values)
        server = panel.start()
        if server is not None:  # the model's load fails in the background
            wait_for(lambda: panel.phase == "form")
            assert server.state == "stopped"
            assert "Nothing is running" in panel.message
        else:
            assert "Nothing started" in panel.message
        assert running_servers() == []
        assert message in panel.errors.get(field, ""), (panel.errors, panel.message)
        assert labelled(message) in panel.notes[field].value.replace("&#x27;", "'")
        assert "jqc-error" in panel.notes[field].value
        assert INVALID_CLASS in panel.fields[field]._dom_classes, "a red border"
        assert panel.form.layout.display is None and panel.slot.children == ()
        if field in values:
            assert str(panel.values()[field]) == str(values[field]), "the form keeps it"

        panel.fill(str(demo_model), **fix)
        assert field not in panel.errors, "editing a field clears its message"
        assert INVALID_CLASS not in panel.fields[field]._dom_classes
        server = panel.start()
        assert serving(panel) is server and panel.errors == {}
    panel.stop()
    assert running_servers() == []


def test_already_serving_offers_to_replace(make_panel, demo_model):
    other = QwenServer(str(demo_model), max_model_len=64).start(wait=True, progress=False)
    panel = make_panel("demo", max_model_len=64)
    assert panel.rows["replace"].layout.display is None, "said before Start"
    assert "Already serving demo-tiny" in panel.message and "jqc-error" in panel.status.value
    assert panel.start() is None
    assert "Already serving demo-tiny" in panel.message and other.url in panel.message
    assert panel.rows["replace"].layout.display is None and running_servers() == [other]
    panel.fill(replace=True)
    server = panel.start()
    assert other.state == "stopped" and serving(panel) is server
    assert running_servers() == [server]


def test_options_outside_the_form_pass_through_and_api_key(make_panel, tiny_model_path,
                                                             isolated):
    panel = make_panel(str(tiny_model_path), max_model_len=128, api_key="sekrit",
                       served_model_name="tiny", seed=7)
    assert "served_model_name=&#x27;tiny&#x27;" in panel.extras_note.value
    assert panel.values()["api_key"] == "sekrit"
    server = panel.start()
    serving(panel)
    assert (server.served_model_name, server.config.seed, server.api_key) == ("tiny", 7,
                                                                              "sekrit")
    assert "api_key=qwen_server.api_key" in panel.dashboard.snippet
    assert "sekrit" not in panel.dashboard.snippet
    assert isinstance(chat(server), str)
    wait_for(lambda: isolated.is_file())
    assert json.loads(isolated.read_text()) == [{"model": str(tiny_model_path.resolve())}]
    assert model_choices()[0] == str(tiny_model_path.resolve())
    panel.stop()
    with pytest.raises(TypeError, match="unknown option"):
        ControlPanel(bogus=1)
    with pytest.raises(TypeError, match="not a field of the form"):
        panel.fill(seed=3)


def fake_cache_repo(cache: Path, repo_id: str, config: dict | None, weights: bool = True,
                    kind: str = "models") -> None:
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    if config is not None:
        (snapshot / "config.json").write_text(json.dumps(config))
    if weights:
        (snapshot / "model.safetensors").write_bytes(b"x")


def test_model_choices_cache_recent_and_demo(tmp_path, hf_cache, make_panel, isolated):
    assert model_choices(hf_cache) == ["demo"], "no cache, no history: just the demo"
    fake_cache_repo(hf_cache, "Qwen/Qwen3-0.6B", {"model_type": "qwen3"})
    fake_cache_repo(hf_cache, "Qwen/Qwen3-30B-A3B", {"model_type": "qwen3_moe"})
    fake_cache_repo(hf_cache, "Qwen/Qwen3-4B", {"model_type": "qwen3"}, weights=False)
    fake_cache_repo(hf_cache, "meta/llama", {"model_type": "llama"})
    fake_cache_repo(hf_cache, "org/no-config", None)
    fake_cache_repo(hf_cache, "Qwen/data", {"model_type": "qwen3"}, kind="datasets")
    assert model_choices(hf_cache) == ["Qwen/Qwen3-0.6B", "demo"]

    folder = tmp_path / "my-checkpoint"
    folder.mkdir()
    for model in ("Qwen/Qwen3-0.6B", str(tmp_path / "gone"), str(folder), "Qwen/Qwen3-1.7B"):
        remember_model(model)
    assert model_choices(hf_cache) == ["Qwen/Qwen3-1.7B", str(folder), "Qwen/Qwen3-0.6B",
                                       "demo"]
    for i in range(20):
        remember_model(f"org/model-{i}")
    assert len(json.loads(isolated.read_text())) == models.RECENT_LIMIT
    isolated.write_text("{not json")
    assert model_choices(hf_cache) == ["Qwen/Qwen3-0.6B", "demo"]
    panel = make_panel()
    assert list(panel.fields["model"].options) == ["Qwen/Qwen3-0.6B", "demo"]
    assert "1 more in the list" in panel.notes["model"].value
    (hf_cache / "models--broken").mkdir()
    assert model_choices(hf_cache) == ["Qwen/Qwen3-0.6B", "demo"], "warnings are skipped"


def test_memory_slider_shows_the_bytes_of_this_gpu(monkeypatch, make_panel):
    gpu = nvml.GpuInfo(index=0, name="NVIDIA H200", uuid="GPU-1234", memory_used=2**30,
                       memory_total=140 * 2**30, utilization_gpu=0, temperature_c=30)
    monkeypatch.setattr(nvml, "gpu_snapshot",
                        lambda: nvml.GpuSnapshot(available=True, gpus=[gpu]))
    panel = make_panel()
    note = panel.notes["gpu_memory_utilization"]
    assert "126.0 GiB of 140.0 GiB on GPU 0 NVIDIA H200" in note.value
    panel.fields["gpu_memory_utilization"].value = 0.5
    assert "70.0 GiB of 140.0 GiB" in note.value

    monkeypatch.setattr(nvml, "gpu_snapshot",
                        lambda: nvml.GpuSnapshot(available=False, reason="NVML unavailable"))
    note = make_panel().notes["gpu_memory_utilization"]
    assert "no GPU: the KV cache gets 1.0 GiB on CPU" in note.value
    assert 'title="NVML unavailable"' in note.value


@pytest.fixture
def magics(monkeypatch):
    """The magics on a stand-in shell (the global test IPython belongs to test_magics)."""
    from jupyter_qwen.notebook import magics as module

    shown: list = []
    monkeypatch.setattr(module, "display", lambda obj, **_options: shown.append(obj))
    magics = module.QwenMagics(SimpleNamespace(user_ns={}))
    magics.shown = shown
    return magics


def test_the_magic_fills_the_form_and_start_lands_in_the_namespace(magics, demo_model,
                                                                    capsys):
    magics.qwen_panel("--help")
    assert "usage: %qwen_panel" in capsys.readouterr().out
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        magics.qwen_panel("--bogus")
    with pytest.raises(UsageError, match="give a MODEL or --demo, not both"):
        magics.qwen_panel("org/model --demo")
    magics.qwen_panel("--demo --max-model-len 256 --max-num-seqs 16 --disable-thinking "
                      "--no-prefix-caching --seed 3 --port 0")
    panel = magics.shell.user_ns["qwen_panel"]
    assert magics.shown == [panel]
    assert isinstance(panel, ControlPanel) and panel.extras == {"seed": 3}
    values = panel.values()
    assert (values["model"], values["max_model_len"], values["max_num_seqs"]) == (
        "demo", "256", 16)
    assert values["enable_thinking"] is False and values["enable_prefix_caching"] is False
    assert panel.start() is None and "a port is a number from 1 to 65535" in panel.errors["port"]
    panel.fill(port="")
    server = panel.start()
    assert magics.shell.user_ns["qwen_server"] is server
    serving(panel)
    assert server.model == str(demo_model) and server.config.seed == 3
    assert not server.config.enable_prefix_caching and not server.ctx.default_enable_thinking
    panel.stop()
    assert running_servers() == []


def test_panel_is_a_lazy_attribute():
    assert jupyter_qwen.panel is control_panel.panel
    assert "panel" in dir(jupyter_qwen)


def test_a_blank_key_is_flagged_when_other_users_are_logged_in(make_panel, monkeypatch):
    monkeypatch.setattr(control_panel, "other_logged_in_users", lambda: ["alice", "bob"])
    panel = make_panel("demo")
    note = panel.notes["api_key"].value
    assert "jqc-warning" in note and "alice, bob" in note and "auto" in note
    panel.fill(api_key="auto")
    assert "jqc-warning" not in panel.notes["api_key"].value
    panel.fill(api_key="  ")
    assert "jqc-warning" in panel.notes["api_key"].value
    monkeypatch.setattr(control_panel, "other_logged_in_users", lambda: [])
    assert "jqc-warning" not in make_panel("demo").notes["api_key"].value


def test_an_auto_key_from_the_form_is_carried_and_never_shown(make_panel, tiny_model_path):
    panel = make_panel(str(tiny_model_path), max_model_len=128, api_key="auto")
    server = panel.start()
    serving(panel)
    assert server.api_key not in (None, "auto")
    assert "api_key=qwen_server.api_key" in panel.dashboard.snippet
    assert server.api_key not in panel.dashboard.snippet
    assert isinstance(chat(server), str)
    panel.stop()


def test_notes_name_fields_by_their_labels(make_panel):
    panel = make_panel("demo").fill(max_num_seqs=0, gpu_memory_utilization=1.5)
    assert panel.start() is None
    notes = panel.notes["max_num_seqs"].value + panel.notes["gpu_memory_utilization"].value
    assert "max-num-seqs must be an integer in [1, 4096], got 0" in notes
    assert "GPU memory must be a number in (0, 1], got 1.5" in notes
    assert "max_num_seqs" not in notes and "gpu_memory_utilization" not in notes
    assert "check max-num-seqs, GPU memory" in panel.message


def test_the_memory_slider_is_sized_from_free_memory_and_off_without_a_gpu(monkeypatch,
                                                                          make_panel):
    gpu = nvml.GpuInfo(index=0, name="NVIDIA H100", uuid="GPU-1", memory_used=60 * 2**30,
                       memory_total=80 * 2**30, utilization_gpu=0, temperature_c=30)
    monkeypatch.setattr(nvml, "gpu_snapshot",
                        lambda: nvml.GpuSnapshot(available=True, gpus=[gpu]))
    slider = make_panel().fields["gpu_memory_utilization"]
    assert slider.max == 0.25 and slider.value == 0.25 and not slider.disabled
    assert make_panel(device="cpu").fields["gpu_memory_utilization"].disabled
    monkeypatch.setattr(nvml, "gpu_snapshot",
                        lambda: nvml.GpuSnapshot(available=False, reason="no NVML"))
    assert make_panel().fields["gpu_memory_utilization"].disabled


def test_already_serving_is_taken_back_after_qwen_stop(make_panel, demo_model, magics, capsys):
    other = QwenServer(str(demo_model), max_model_len=64).start(wait=True, progress=False)
    panel = make_panel("demo", max_model_len=64)
    assert panel.start() is None and "Already serving" in panel.message
    magics.qwen_stop("")
    assert other.state == "stopped" and "stopped" in capsys.readouterr().out
    assert panel.message == "" and panel.status.value == ""
    assert panel.rows["replace"].layout.display == "none"
    magics.qwen_stop("--all")
    assert "nothing to stop" in capsys.readouterr().out
