"""Options are declared once (EngineConfig, ServerOptions): the command line, %qwen_serve,
the control panel's form and serve()'s keywords are generated from the declarations, and
must offer exactly the surface they offered when each was written by hand."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass

import pytest

from jupyter_qwen.config import EngineConfig
from jupyter_qwen.options import (
    ConfigError,
    add_arguments,
    field_errors,
    given_options,
    option,
    options_of,
    validate,
)
from jupyter_qwen.server.options import split_options

SERVE_FLAGS = [
    "--enable-thinking", "--disable-thinking", "--port", "--api-key", "--host",
    "--allowed-hosts", "--served-model-name", "--max-waiting-requests",
    "--thinking-token-budget", "--reasoning-effort-budgets", "--max-num-seqs",
    "--max-model-len",
    "--max-num-batched-tokens", "--gpu-memory-utilization", "--dtype", "--quantization",
    "--no-prefix-caching",
    "--no-enable-prefix-caching", "--block-size", "--enforce-eager", "--seed", "--device",
    "--attention-backend", "--num-kv-blocks", "--session-ttl", "--grammar-compile-timeout"]
FORM_FIELDS = ["model", "max_num_seqs", "max_model_len", "max_num_batched_tokens",
               "gpu_memory_utilization", "dtype", "quantization", "enable_prefix_caching",
               "enable_thinking",
               "port", "api_key", "replace"]
SERVE_KEYWORDS = [
    "model", "progress", "enable_thinking", "port", "api_key", "host", "allowed_hosts",
    "served_model_name",
    "max_waiting_requests", "thinking_token_budget", "reasoning_effort_budgets",
    "max_num_seqs", "max_model_len",
    "max_num_batched_tokens",
    "gpu_memory_utilization", "dtype", "quantization", "enable_prefix_caching", "block_size",
    "enforce_eager",
    "seed", "device", "attention_backend", "num_kv_blocks", "session_ttl",
    "grammar_compile_timeout"]


def flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings
            if flag not in ("-h", "--help")]


def test_the_command_line_offers_the_same_flags_plus_its_own():
    from jupyter_qwen.__main__ import build_parser

    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    assert flags(commands.choices["serve"]) == ["--demo", "--debug", *SERVE_FLAGS]


def test_the_magics_offer_the_same_flags_plus_their_own():
    from jupyter_qwen.notebook.magics import serve_parser

    assert flags(serve_parser()) == ["--demo", "--replace", "--process", *SERVE_FLAGS]


def test_the_form_offers_the_same_fields(monkeypatch, tmp_path):
    from jupyter_qwen.notebook import control_panel, models

    monkeypatch.setattr(models, "recent_path", lambda: tmp_path / "recent.json")
    panel = control_panel.ControlPanel(hf_cache_dir=tmp_path)
    assert list(panel.fields) == FORM_FIELDS
    assert panel.fields["max_num_seqs"].value == EngineConfig("m").max_num_seqs == 256
    assert panel.fields["dtype"].options == ("auto", "bfloat16", "float16", "float32")
    assert panel.fields["max_model_len"].placeholder == "the model's"


def test_serve_and_the_server_spell_out_every_option():
    from jupyter_qwen.server.server import QwenServer, serve

    assert list(inspect.signature(serve).parameters) == [
        *SERVE_KEYWORDS[:2], "process", *SERVE_KEYWORDS[2:]]
    assert list(inspect.signature(QwenServer).parameters) == [
        "model", "model_path", "origin", *SERVE_KEYWORDS[2:]]
    assert inspect.signature(serve).parameters["max_num_seqs"].default == 256
    for name in SERVE_KEYWORDS[2:]:
        assert f"    {name} (default " in serve.__doc__


def test_help_shows_each_default_once_from_the_declaration():
    parser = argparse.ArgumentParser()
    add_arguments(parser, EngineConfig)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["max_num_seqs"] == "most sequences in a running batch (default 256)"
    assert helps["max_num_batched_tokens"] == ("tokens per engine step "
                                               "(default max(8192, max-num-seqs))")
    assert parser.parse_args([]).max_num_seqs == 256


def test_only_flags_that_change_something_become_keywords():
    from jupyter_qwen.notebook.magics import serve_parser
    from jupyter_qwen.server.cli import server_kwargs

    args = serve_parser().parse_args(["m", "--max-num-seqs", "8", "--disable-thinking",
                                      "--no-prefix-caching", "--seed", "0"])
    assert server_kwargs(args) == {"max_num_seqs": 8, "enable_thinking": False,
                                   "enable_prefix_caching": False}


@pytest.mark.parametrize(("options", "field", "message"), [
    ({"max_num_seqs": 0}, "max_num_seqs", r"max_num_seqs must be an integer in \[1, 4096\]"),
    ({"port": 99999}, "port", "a port is a number from 1 to 65535, got 99999"),
    ({"max_waiting_requests": 0}, "max_waiting_requests", "max_waiting_requests must be"),
    ({"session_ttl": float("nan")}, "session_ttl", "a number of seconds in"),
    ({"enable_thinking": "yes"}, "enable_thinking", "must be True or False"),
    ({"dtype": True}, "dtype", "dtype must be one of"),
    ({"api_key": 5}, "api_key", "api_key must be a string"),
])
def test_a_bad_value_raises_one_typed_error_naming_its_field(options, field, message):
    with pytest.raises(ConfigError, match=message) as caught:
        _server, engine = split_options(options)
        EngineConfig.from_kwargs("some/model", **engine)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


def test_an_unknown_option_is_a_type_error_listing_the_known_ones():
    with pytest.raises(TypeError, match=r"unknown option.*max_num_seq;.*max_num_seqs"):
        split_options({"max_num_seq": 3})


def test_field_errors_reports_every_bad_field_at_once():
    errors = field_errors(EngineConfig, {"max_num_seqs": 64, "max_num_batched_tokens": 32,
                                         "block_size": 12, "seed": 1})
    assert set(errors) == {"max_num_batched_tokens", "block_size"}
    assert "[64, 16777216]" in errors["max_num_batched_tokens"]


def test_resolved_fills_in_what_the_model_decides_and_changes_nothing_else():
    config = EngineConfig("m", max_num_seqs=16)
    resolved = config.resolved(max_position_embeddings=4096)
    assert (resolved.max_model_len, resolved.max_num_batched_tokens) == (4096, 8192)
    assert config.max_model_len is None, "a config is never changed"
    given = EngineConfig("m", max_num_seqs=16, max_num_batched_tokens=300).resolved(512)
    assert (given.max_model_len, given.max_num_batched_tokens) == (512, 300)
    with pytest.raises(ConfigError, match="exceeds the model's") as caught:
        EngineConfig("m", max_model_len=5000).resolved(4096)
    assert caught.value.field == "max_model_len"
    with pytest.raises(AttributeError):
        config.max_num_seqs = 3  # frozen


def test_a_new_declaration_reaches_every_surface():
    """What adding one option to a dataclass gives: a flag, a checked value, a form field."""
    from jupyter_qwen.notebook.control_panel import option_widget

    @dataclass(frozen=True)
    class Made:
        temperature_limit: float = option(2.0, "highest temperature a request may ask for",
                                          low=0, high=4, form="slider", label="max temp")

    parser = argparse.ArgumentParser()
    add_arguments(parser, Made)
    args = parser.parse_args(["--temperature-limit", "1.5"])
    assert given_options(args, Made) == {"temperature_limit": 1.5}
    assert "(default 2.0)" in " ".join(parser.format_help().split())
    assert field_errors(Made, {"temperature_limit": 9}) == {
        "temperature_limit": "temperature_limit must be a number in [0, 4], got 9"}
    (declared,) = options_of(Made)
    widget = option_widget(declared)
    assert (widget.description, widget.value, widget.max) == ("max temp", 2.0, 4.0)


def test_an_option_of_several_values_takes_a_list_a_repeated_flag_or_commas():
    @dataclass(frozen=True)
    class Several:
        names: tuple[str, ...] = option((), "names to accept")
        sizes: tuple[int, ...] = option((1,), "sizes", low=1)

        def __post_init__(self):
            validate(self)

    (names, sizes) = options_of(Several)
    assert (names.kind, names.many, sizes.kind, sizes.many) == (str, True, int, True)
    parser = argparse.ArgumentParser()
    add_arguments(parser, Several)
    args = parser.parse_args(["--names", "a.example,b.example", "--names", "c", "--sizes", "4"])
    assert given_options(args, Several) == {"names": ("a.example", "b.example", "c"),
                                            "sizes": (4,)}
    assert given_options(parser.parse_args([]), Several) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--sizes", "4,many"])
    assert Several(names="x, y").names == ("x", "y")
    assert Several(names=["x", "y,z"]).names == ("x", "y", "z")
    assert Several(names=[]).names == ()
    assert field_errors(Several, {"names": [3], "sizes": [0]}) == {
        "names": "names must be a string, got 3",
        "sizes": "sizes must be an integer in [1, inf], got 0"}
    with pytest.raises(ConfigError, match="names must be a list of values") as caught:
        Several(names=5)
    assert caught.value.field == "names"


def test_allowed_hosts_reaches_the_command_line_and_serve():
    from jupyter_qwen.notebook.magics import serve_parser
    from jupyter_qwen.server.cli import server_kwargs

    args = serve_parser().parse_args(["m", "--allowed-hosts", "box.lan,Box.Example.",
                                      "--allowed-hosts", "*.corp.example"])
    given = server_kwargs(args)
    assert given == {"allowed_hosts": ("box.lan", "Box.Example.", "*.corp.example")}
    server, _engine = split_options(given)
    assert server.allowed_hosts == given["allowed_hosts"]
    assert split_options({})[0].allowed_hosts == ()


def test_reasoning_effort_budgets_read_as_levels_and_tokens():
    from jupyter_qwen.server.options import ServerOptions

    assert ServerOptions().effort_budgets() == {"minimal": 256, "low": 1024, "medium": 4096,
                                                "high": 16384}
    assert ServerOptions(reasoning_effort_budgets=("low=8",)).effort_budgets() == {"low": 8}
    for bad in (("low",), ("lowest=3",), ("high=many",)):
        with pytest.raises(ConfigError) as caught:
            ServerOptions(reasoning_effort_budgets=bad)
        assert caught.value.field == "reasoning_effort_budgets"


def test_command_line_gives_back_the_options_it_was_given():
    from jupyter_qwen.__main__ import build_parser
    from jupyter_qwen.options import command_line
    from jupyter_qwen.server.cli import server_kwargs
    from jupyter_qwen.server.options import ServerOptions

    given = {"max_num_seqs": 8, "enable_prefix_caching": False, "enable_thinking": False,
             "served_model_name": ("a", "b"), "port": 8123, "enforce_eager": True,
             "dtype": "float32", "max_model_len": None, "seed": 0}
    argv = command_line(given, ServerOptions, EngineConfig)
    assert "--seed" not in argv and "--max-model-len" not in argv  # defaults stay unsaid
    args = build_parser().parse_args(["serve", "m", *argv])
    expected = {k: v for k, v in given.items() if k not in ("max_model_len", "seed")}
    assert server_kwargs(args) == expected
    with pytest.raises(TypeError, match="bogus"):
        command_line({"bogus": 1}, ServerOptions, EngineConfig)
