"""The magics in a real InteractiveShell, and in a real kernel through jupyter_client."""

import asyncio
import textwrap

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from shells import ipython_shell

import jupyter_qwen
from jupyter_qwen.server.server import running_servers


@pytest.fixture(scope="module")
def shell():
    yield ipython_shell()
    for server in running_servers():
        server.stop()


def serve_tiny(shell, path, extra=""):
    shell.run_line_magic("qwen_serve", f"{path} --max-model-len 256 {extra}")
    server = shell.user_ns["qwen_server"]
    server.wait_ready(progress=False)
    return server


def rich(captured, mime: str) -> str:
    return "\n".join(out.data.get(mime, "") for out in captured.outputs)


def test_load_ext_registers_every_magic(shell):
    line = shell.magics_manager.magics["line"]
    assert {"qwen_serve", "qwen_status", "qwen_stop", "qwen_clean", "qwen_gpu",
            "qwen_panel"} <= set(line)
    assert "qwen" in shell.magics_manager.magics["cell"]


@pytest.mark.parametrize("magic", ["qwen_serve", "qwen_status", "qwen_stop", "qwen_clean",
                                   "qwen_gpu"])
def test_every_magic_has_help(shell, magic, capsys):
    shell.run_line_magic(magic, "--help")
    assert f"usage: %{magic}" in capsys.readouterr().out


def test_cell_magic_has_help(shell, capsys):
    shell.run_cell_magic("qwen", "--help", "ignored")
    assert "usage: %%qwen" in capsys.readouterr().out


@pytest.mark.parametrize(("magic", "line", "message"), [
    ("qwen_serve", "--bogus", "unrecognized arguments: --bogus"),
    ("qwen_serve", "--max-num-seqs many", "invalid int value"),
    ("qwen_serve", "--dtype int3", "invalid choice"),
    ("qwen_stop", "--everything", "unrecognized arguments"),
    ("qwen_clean", "extra", "unrecognized arguments"),
])
def test_bad_flags_are_one_line_usage_errors(shell, magic, line, message):
    with pytest.raises(UsageError, match=message):
        shell.run_line_magic(magic, line)
    result = shell.run_cell(f"%{magic} {line}")
    assert isinstance(result.error_in_exec, UsageError)


def test_bad_engine_value_is_a_usage_error(shell, tiny_model_path):
    with pytest.raises(UsageError, match="max_num_seqs must be an integer"):
        shell.run_line_magic("qwen_serve", f"{tiny_model_path} --max-num-seqs 0")
    assert not running_servers()


def test_default_model_offline_points_to_demo(shell):
    with pytest.raises(UsageError, match="--demo"):
        shell.run_line_magic("qwen_serve", "")


def test_serve_status_chat_stop(shell, tiny_model_path):
    server = serve_tiny(shell, tiny_model_path)
    assert server.state == "ok" and running_servers() == [server]
    with pytest.raises(UsageError, match="already serving"):
        shell.run_line_magic("qwen_serve", str(tiny_model_path))
    with capture_output() as status:
        shell.run_line_magic("qwen_status", "")
    table = rich(status, "text/html")
    assert server.url in table and server.served_model_name in table
    with capture_output() as reply:
        shell.run_cell_magic("qwen", "--no-think --max-tokens 8", "Hello there")
    assert rich(reply, "text/markdown").strip()
    with capture_output() as stopped:
        shell.run_line_magic("qwen_stop", "")
    assert "stopped" in stopped.stdout and server.state == "stopped"
    assert "process RSS" in rich(stopped, "text/html")
    with capture_output() as again:
        shell.run_line_magic("qwen_stop", "")
    assert "no jupyter_qwen server" in again.stdout


def test_replace_stops_the_old_server(shell, tiny_model_path):
    first = serve_tiny(shell, tiny_model_path)
    second = serve_tiny(shell, tiny_model_path, "--replace --served-model-name other")
    assert first.state == "stopped" and second.served_model_name == "other"
    assert running_servers() == [second]
    shell.run_line_magic("qwen_stop", "--all")
    assert not running_servers()


def test_sessions_keep_the_conversation(shell, tiny_model_path):
    serve_tiny(shell, tiny_model_path)
    with capture_output():
        shell.run_cell_magic("qwen", "--session chat1 --no-think --max-tokens 4 "
                                     "--system 'Be brief.'", "first")
        shell.run_cell_magic("qwen", "--session chat1 --no-think --max-tokens 4", "second")
    magics = shell.magics_manager.registry["QwenMagics"]
    roles = [m["role"] for m in magics.conversations["chat1"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    shell.run_line_magic("qwen_stop", "")


def test_an_auto_key_server_chats_through_qwen_with_no_key_typed(shell, tiny_model_path):
    import httpx

    server = serve_tiny(shell, tiny_model_path, "--api-key auto")
    try:
        assert server.api_key not in (None, "auto")
        assert httpx.get(f"{server.url}/models").status_code == 401
        with capture_output() as captured:
            shell.run_cell_magic("qwen", "--no-think --max-tokens 4", "hi")
        assert captured.outputs, "%%qwen showed the reply"
        with capture_output() as shown:
            shell.run_line_magic("qwen_status", "")
        assert server.api_key not in shown.stdout + rich(shown, "text/html")
    finally:
        shell.run_line_magic("qwen_stop", "")


def test_chat_without_a_server_says_so(shell):
    with pytest.raises(UsageError, match="no server is running"):
        shell.run_cell_magic("qwen", "", "hi")


def test_clean_reports_and_drops_history(shell):
    shell.run_cell("1 + 1", store_history=True)
    with capture_output() as captured:
        shell.run_line_magic("qwen_clean", "--history")
    html = rich(captured, "text/html")
    assert "process RSS" in html and "dropped" in html
    report = jupyter_qwen.clean()
    assert report.after.rss > 0 and "<table>" in report._repr_html_()


def test_qwen3_inference_stops_what_it_started(tiny_model_path):
    with jupyter_qwen.qwen3_inference(tiny_model_path, max_model_len=256,
                                      progress=False) as chat:
        [server] = running_servers()
        assert chat.invoke("hi", max_tokens=3).content is not None
    assert server.state == "stopped" and not running_servers()


def test_qwen3_inference_cleans_up_after_an_exception(tiny_model_path):
    with pytest.raises(ZeroDivisionError), jupyter_qwen.qwen3_inference(
            tiny_model_path, max_model_len=256, progress=False):
        raise ZeroDivisionError("raised inside the block")
    assert not running_servers()


def test_qwen3_inference_async_and_reuse(tiny_model_path):
    server = jupyter_qwen.serve(tiny_model_path, max_model_len=256, progress=False)
    try:
        async def use():
            async with jupyter_qwen.qwen3_inference() as chat:
                return await chat.ainvoke("hi", max_tokens=3)

        assert asyncio.run(use()).content is not None
        assert server.state == "ok", "a server the block did not start keeps running"
    finally:
        server.stop()


def test_magics_in_a_real_kernel(tiny_model_path):
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    outputs: list[dict] = []

    def run(code: str) -> None:
        reply = client.execute_interactive(textwrap.dedent(code), timeout=180,
                                           output_hook=outputs.append)
        assert reply["content"]["status"] == "ok", reply["content"]

    try:
        run("%load_ext jupyter_qwen")
        run(f"%qwen_serve {tiny_model_path} --max-model-len 256")
        run("qwen_server.wait_ready(progress=False); print('STATE', qwen_server.state)")
        run("%%qwen --no-think --max-tokens 6\nHello!")
        run("%qwen_stop")
        run("%qwen_clean")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    texts = [m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"]
    assert any("STATE ok" in t for t in texts)
    assert any("stopped" in t for t in texts)
    markdown = [m for m in outputs if m["msg_type"] in ("display_data", "update_display_data")
                and "text/markdown" in m["content"]["data"]]
    assert markdown, "%%qwen should stream Markdown into the output"
    reports = [m for m in outputs if m["msg_type"] == "display_data"
               and "process RSS" in m["content"]["data"].get("text/html", "")]
    assert len(reports) >= 2, "%qwen_stop and %qwen_clean both show a memory report"


def test_demo_flag_serves_the_labelled_demo_model(shell, demo_model):
    with capture_output():
        shell.run_line_magic("qwen_serve", "--demo")
    server = shell.user_ns["qwen_server"]
    server.wait_ready(progress=False)
    try:
        assert server.served_model_name == "qwen3-demo"
        assert server.model == str(demo_model)
        with capture_output() as reply:
            shell.run_cell_magic("qwen", "", "Hello!")
        markdown = rich(reply, "text/markdown")
        assert "<details><summary>Reasoning</summary>" in markdown
        assert "Hello! I am the jupyter_qwen demo model." in markdown
    finally:
        shell.run_line_magic("qwen_stop", "")


def test_gpu_dashboard_is_displayed(shell):
    with capture_output() as captured:
        shell.run_line_magic("qwen_gpu", "")
    [output] = captured.outputs
    assert "application/vnd.jupyter.widget-view+json" in output.data


@pytest.mark.parametrize("variant", ["hybrid", "instruct-2507", "thinking-2507"])
def test_qwen_renders_each_chat_template_variant(shell, variant_model, variant):
    from variant_script import GREETING, HELLO

    server = serve_tiny(shell, variant_model(variant))
    try:
        assert server.chat_variant == variant
        with capture_output() as status:
            shell.run_line_magic("qwen_status", "")
        assert f"<td>{variant}</td>" in rich(status, "text/html")
        with capture_output() as reply:
            shell.run_cell_magic("qwen", "", HELLO)
        markdown = rich(reply, "text/markdown")
        assert GREETING.content in markdown
        folded = "<details><summary>Reasoning</summary>" in markdown
        assert folded == (variant != "instruct-2507")
        assert (GREETING.reasoning in markdown) == folded
        with capture_output() as quiet:
            shell.run_cell_magic("qwen", "--no-think", HELLO)
        assert ("always thinks" in quiet.stdout) == (variant == "thinking-2507")
    finally:
        shell.run_line_magic("qwen_stop", "")
