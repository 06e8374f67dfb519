import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen3Config,
)

from jupyter_qwen import demo
from jupyter_qwen.demo import cache, script
from jupyter_qwen.demo.chat_template import CHAT_TEMPLATE
from jupyter_qwen.demo.checkpoint import GENERATOR_VERSION, make_tiny_qwen3
from jupyter_qwen.demo.script import (
    DEMO_PROMPTS,
    DEMO_SCRIPT,
    DEMO_TOOLS,
    GET_WEATHER_TOOL,
    ScriptedTurn,
    get_weather,
)
from jupyter_qwen.demo.shapes import SHAPES, parameter_count
from jupyter_qwen.demo.teach import teach
from jupyter_qwen.demo.tokenizer import added_token_ids

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_IDS = {"<|endoftext|>": 2039, "<|im_start|>": 2040, "<|im_end|>": 2041, "<think>": 2042,
            "</think>": 2043, "<tool_call>": 2044, "</tool_call>": 2045,
            "<tool_response>": 2046, "</tool_response>": 2047}
REAL_QWEN3 = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8),
}
UTF8_SAMPLES = ["héllo wörld 日本語 🙂", "  two  spaces\tand\ttabs\n\nnew lines ",
                "def f(x):\n    return {'a': [1, 2.5e-3]}\n", "🚀✨ smörgåsbord — naïve café",
                "<think>\nplan\n</think>\n\n<tool_call>\n{\"name\": \"f\"}\n</tool_call>"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {}}}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def hf_model(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()


@pytest.fixture(scope="module")
def real_path(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("qwen3-0.6b"), shape="qwen3-0.6b",
                           num_hidden_layers=1)


def render(tokenizer, messages, **options):
    return tokenizer.apply_chat_template(messages, tokenize=False, **options)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def safetensors_of(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as reader:
            tensors |= {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    return tensors


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assert_every_id_decodes(tokenizer, vocab_size: int) -> None:
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
    assert len(texts) == vocab_size
    assert all(texts), [i for i, text in enumerate(texts) if not text][:10]


# --- checkpoint files -------------------------------------------------------------------------

def test_tiny_checkpoint_loads_offline_and_greedy_generation_is_lively(tokenizer, hf_model):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert type(hf_model).__name__ == "Qwen3ForCausalLM"
    prompt = render(tokenizer, [{"role": "user", "content": "Which river runs through Paris?"}],
                    add_generation_prompt=True)
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = hf_model.generate(input_ids, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                            output_logits=True, return_dict_in_generate=True)
    new_tokens = out.sequences[0, input_ids.shape[1]:].tolist()
    assert len(new_tokens) == 32
    assert len(set(new_tokens)) >= 12
    logits = torch.stack(out.logits)[:, 0]
    top2 = logits.topk(2).values
    margins = (top2[:, 0] - top2[:, 1]).sort().values
    assert margins[0] > 1e-3 and margins[len(margins) // 2] > 0.3
    assert 2.0 < logits.std(dim=-1).mean() < 12.0


def test_config_files_hold_qwen3_fields(tiny_model_path):
    config = read_json(tiny_model_path / "config.json")
    assert config["model_type"] == "qwen3"
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["rope_parameters"]["rope_theta"] == 1_000_000.0
    assert config["rms_norm_eps"] == 1e-6
    assert config["tie_word_embeddings"] is True
    assert config["dtype"] == "float32"
    assert config["eos_token_id"] == TINY_IDS["<|im_end|>"]
    assert (config["vocab_size"], config["head_dim"], config["num_key_value_heads"]) == \
        (2048, 32, 2)
    generation = read_json(tiny_model_path / "generation_config.json")
    assert generation["eos_token_id"] == [TINY_IDS["<|im_end|>"], TINY_IDS["<|endoftext|>"]]
    assert generation["pad_token_id"] == TINY_IDS["<|endoftext|>"]
    assert generation.get("do_sample", False) is False


def test_weights_have_hf_names_and_dtype(tiny_model_path):
    tiny = safetensors_of(tiny_model_path)
    assert "lm_head.weight" not in tiny
    assert tiny["model.layers.3.self_attn.k_norm.weight"].shape == (32,)
    assert tiny["model.layers.0.mlp.down_proj.weight"].shape == (64, 192)
    assert {t.dtype for t in tiny.values()} == {torch.float32}
    assert len(tiny) == 1 + 4 * 11 + 1


def test_same_seed_is_byte_identical_and_another_seed_changes_every_weight(
        tiny_model_path, tmp_path):
    again = make_tiny_qwen3(tmp_path / "again", seed=0)
    other = make_tiny_qwen3(tmp_path / "other", seed=1)
    for name in ["model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"]:
        assert (again / name).read_bytes() == (tiny_model_path / name).read_bytes(), name
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    first, second = safetensors_of(again), safetensors_of(other)
    assert first.keys() == second.keys()
    assert all(not torch.equal(first[name], second[name]) for name in first)


def test_sharded_layout_gives_the_same_logits(tiny_model_path, hf_model, tmp_path):
    sharded = make_tiny_qwen3(tmp_path / "sharded", max_shard_bytes=300_000)
    index = read_json(sharded / "model.safetensors.index.json")
    shards = sorted(sharded.glob("*.safetensors"))
    assert len(shards) >= 3 and not (sharded / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    assert index["metadata"]["total_size"] == 4 * parameter_count("tiny")
    single = safetensors_of(tiny_model_path)
    assert index["weight_map"].keys() == single.keys()
    model = AutoModelForCausalLM.from_pretrained(sharded).eval()
    input_ids = torch.tensor([[5, 300, 1200, 77, 2040, 9]])
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, hf_model(input_ids).logits)
    make_tiny_qwen3(sharded)
    assert sorted(p.name for p in sharded.glob("*.safetensors*")) == ["model.safetensors"]


def test_num_hidden_layers_overrides_the_shape(tmp_path):
    folder = make_tiny_qwen3(tmp_path, num_hidden_layers=2)
    assert read_json(folder / "config.json")["num_hidden_layers"] == 2
    assert "model.layers.1.mlp.up_proj.weight" in safetensors_of(folder)
    assert "model.layers.2.mlp.up_proj.weight" not in safetensors_of(folder)


def test_unknown_shape_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"tiny, qwen3-0\.6b, qwen3-1\.7b, qwen3-4b"):
        make_tiny_qwen3(tmp_path, shape="qwen3-70b")
    assert not any(tmp_path.iterdir())


# --- tokenizer --------------------------------------------------------------------------------

def test_added_tokens_are_single_ids(tokenizer):
    assert added_token_ids(SHAPES["tiny"].vocab_size) == TINY_IDS
    for token, token_id in TINY_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
        assert token_id in tokenizer.encode(f"a{token}b", add_special_tokens=False)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.encode("hi", add_special_tokens=True) == \
        tokenizer.encode("hi", add_special_tokens=False)


def test_skip_special_tokens_keeps_tags_and_drops_chatml_markers(tokenizer):
    text = "<|im_start|>assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call>" \
           "<tool_response>ok</tool_response><|im_end|><|endoftext|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == \
        "assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call>" \
        "<tool_response>ok</tool_response>"


@pytest.mark.parametrize("text", UTF8_SAMPLES)
def test_text_round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_english_and_code_compress(tokenizer):
    sentence = "The careful teacher explains a story near the river."
    assert len(tokenizer.encode(sentence)) <= len(sentence) // 3


def test_tiny_vocab_is_exact_and_every_id_decodes(tokenizer, tiny_model_path):
    vocab_size = AutoConfig.from_pretrained(tiny_model_path).vocab_size
    assert len(tokenizer) == vocab_size == SHAPES["tiny"].vocab_size
    assert_every_id_decodes(tokenizer, vocab_size)


# --- chat template ----------------------------------------------------------------------------

def test_template_is_stored_where_transformers_and_others_find_it(tokenizer, tiny_model_path):
    assert (tiny_model_path / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert read_json(tiny_model_path / "tokenizer_config.json")["chat_template"] == CHAT_TEMPLATE
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_plain_turns_and_generation_prompt(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    expected = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n")
    assert render(tokenizer, messages) == expected
    assert render(tokenizer, messages, add_generation_prompt=True) == \
        expected + "<|im_start|>assistant\n"
    assert render(tokenizer, messages, add_generation_prompt=True, enable_thinking=True) == \
        expected + "<|im_start|>assistant\n"


def test_thinking_disabled_appends_an_empty_think_block(tokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    assert render(tokenizer, messages, add_generation_prompt=True, enable_thinking=False) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert render(tokenizer, messages, enable_thinking=False) == "<|im_start|>user\nHi<|im_end|>\n"


def test_content_as_text_parts(tokenizer):
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    messages = [{"role": "system", "content": [{"type": "text", "text": "sys"}]},
                {"role": "user", "content": parts}]
    assert render(tokenizer, messages) == \
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nfirst\nsecond<|im_end|>\n"


def test_tools_go_into_the_system_turn(tokenizer):
    user = {"role": "user", "content": "Weather in Oslo?"}
    with_system = render(tokenizer, [{"role": "system", "content": "Be brief."}, user],
                         tools=[WEATHER_TOOL, TIME_TOOL])
    without_system = render(tokenizer, [user], tools=[WEATHER_TOOL, TIME_TOOL])
    tools_block = f"<tools>\n{json.dumps(WEATHER_TOOL)}\n{json.dumps(TIME_TOOL)}\n</tools>"
    for rendered in (with_system, without_system):
        system_turn, rest = rendered.split("<|im_end|>\n", 1)
        assert rendered.count("<|im_start|>system\n") == 1
        assert tools_block in system_turn
        assert '<tool_call>\n{"name": <function name>, "arguments": ' in system_turn
        assert system_turn.endswith("</tool_call>")
        assert rest == "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
    assert with_system.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert without_system.startswith("<|im_start|>system\n# Tools\n")
    assert render(tokenizer, [user], tools=None) == "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"


def test_assistant_tool_calls_and_tool_responses(tokenizer):
    calls = [{"id": "a", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
             {"id": "b", "type": "function",
              "function": {"name": "get_time", "arguments": {"zone": "CET"}}}]
    messages = [{"role": "user", "content": "Weather and time in Oslo?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "a", "content": "-3°C"},
                {"role": "tool", "tool_call_id": "b", "content": "09:00"},
                {"role": "assistant", "content": None, "tool_calls": calls[1:]},
                {"role": "tool", "tool_call_id": "b", "content": "09:01"}]
    assert render(tokenizer, messages, add_generation_prompt=True) == (
        "<|im_start|>user\nWeather and time in Oslo?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n-3°C\n</tool_response>\n"
        "<tool_response>\n09:00\n</tool_response><|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}'
        "\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n09:01\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")


def test_reasoning_is_dropped_before_the_last_user_turn_and_kept_after(tokenizer):
    messages = [{"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "<think>\nr2\n</think>\n\na2"},
                {"role": "user", "content": "q3"},
                {"role": "assistant", "content": "calling", "reasoning_content": "r3",
                 "tool_calls": [{"type": "function",
                                 "function": {"name": "f", "arguments": {}}}]},
                {"role": "tool", "content": "42"},
                {"role": "assistant", "content": "<think>r4</think>a4"}]
    assert render(tokenizer, messages) == (
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\na2<|im_end|>\n"
        "<|im_start|>user\nq3<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nr3\n</think>\n\ncalling\n"
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nr4\n</think>\n\na4<|im_end|>\n")


# --- real shapes ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", list(REAL_QWEN3))
def test_real_shapes_match_qwen3_and_the_parameter_formula(shape):
    chosen = SHAPES[shape]
    assert {name: getattr(chosen, name) for name in REAL_QWEN3[shape]} == REAL_QWEN3[shape]
    assert (chosen.vocab_size, chosen.head_dim, chosen.max_position_embeddings) == \
        (151936, 128, 40960)
    assert chosen.tie_word_embeddings and chosen.dtype == "bfloat16"
    config = Qwen3Config(**REAL_QWEN3[shape], vocab_size=151936, head_dim=128,
                         tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(shape)


def test_parameter_counts_are_the_published_sizes():
    assert parameter_count("qwen3-0.6b") == 596_049_920
    assert round(parameter_count("qwen3-1.7b") / 1e9, 1) == 1.7
    assert round(parameter_count("qwen3-4b") / 1e9, 1) == 4.0
    assert parameter_count("qwen3-4b", num_hidden_layers=1) < 0.6e9


@pytest.mark.slow
def test_real_shape_checkpoint_loads_in_transformers(real_path):
    config = read_json(real_path / "config.json")
    expected = {**REAL_QWEN3["qwen3-0.6b"], "num_hidden_layers": 1, "vocab_size": 151936,
                "head_dim": 128, "max_position_embeddings": 40960, "tie_word_embeddings": True,
                "rms_norm_eps": 1e-6, "dtype": "bfloat16", "model_type": "qwen3"}
    assert {name: config[name] for name in expected} == expected
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 1_000_000.0}
    with safe_open(real_path / "model.safetensors", framework="pt") as reader:
        assert reader.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    model = AutoModelForCausalLM.from_pretrained(real_path, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == \
        parameter_count("qwen3-0.6b", num_hidden_layers=1)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 151_000, 151_930]])).logits
    assert logits.shape == (1, 3, 151936) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_real_shape_tokenizer_is_complete(real_path):
    tokenizer = AutoTokenizer.from_pretrained(real_path)
    assert len(tokenizer) == 151936
    ids = added_token_ids(SHAPES["qwen3-0.6b"].vocab_size)
    assert ids["<|endoftext|>"] == 151927 and ids["</tool_response>"] == 151935
    for token, token_id in ids.items():
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
    for text in UTF8_SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert_every_id_decodes(tokenizer, 151936)


# --- command line and demo cache --------------------------------------------------------------

def test_command_line_writes_a_checkpoint(tmp_path):
    folder = tmp_path / "cli-model"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "jupyter_qwen", "make-tiny-model", str(folder), "--seed", "3",
         "--num-hidden-layers", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(folder.resolve())
    assert lines[1].startswith("tiny: ") and "vocab 2,048" in lines[1]
    assert f"{parameter_count('tiny', 2):,} parameters" in lines[1]
    assert read_json(folder / "config.json")["num_hidden_layers"] == 2
    bad = subprocess.run([sys.executable, "-m", "jupyter_qwen", "make-tiny-model",
                          str(folder), "--shape", "huge"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "qwen3-0.6b" in bad.stderr


def test_demo_model_is_built_once_even_when_callers_race(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_QWEN_CACHE", str(tmp_path))
    monkeypatch.setattr(script, "DEMO_SCRIPT", [DEMO_PROMPTS["arithmetic_no_thinking"]])
    name = cache.demo_model_name()
    assert name.startswith(f"demo-tiny-v{GENERATOR_VERSION}-")
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: cache.demo_model_path(), range(2)))
    assert paths[0] == paths[1] == tmp_path / name
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]
    built_at = (paths[0] / "model.safetensors").stat().st_mtime_ns
    assert cache.demo_model_path() == paths[0]
    assert (paths[0] / "model.safetensors").stat().st_mtime_ns == built_at
    assert len(AutoTokenizer.from_pretrained(paths[0])) == 2048


# --- demo model: taught a script ---------------------------------------------------------------

def test_demo_model_replays_every_scripted_turn_with_greedy_generate(demo_model):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    generation = GenerationConfig.from_pretrained(demo_model)
    with one_thread():  # many tiny ops: extra threads only wait for each other
        for turn in DEMO_SCRIPT:
            prompt, answer = turn.prompt_ids(tokenizer), turn.answer_ids(tokenizer)
            input_ids = torch.tensor([prompt])
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=len(answer) + 8, do_sample=False,
                                 eos_token_id=generation.eos_token_id,
                                 pad_token_id=generation.pad_token_id)
            assert tokenizer.decode(out[0, len(prompt):]) == turn.answer + "<|im_end|>", turn


def test_demo_model_keeps_the_random_models_files_and_tensor_layout(demo_model, tiny_model_path):
    for name in ["config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"]:
        assert (demo_model / name).read_bytes() == (tiny_model_path / name).read_bytes(), name
    assert sorted(p.name for p in demo_model.iterdir()) == \
        sorted(p.name for p in tiny_model_path.iterdir())
    taught, random = safetensors_of(demo_model), safetensors_of(tiny_model_path)
    assert list(taught) == list(random)
    assert all(taught[n].shape == random[n].shape and taught[n].dtype == random[n].dtype
               for n in taught)
    assert not torch.equal(taught["model.embed_tokens.weight"],
                           random["model.embed_tokens.weight"])


def test_demo_build_is_deterministic_and_restores_torch_settings(demo_model, tmp_path):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    again = make_tiny_qwen3(tmp_path / "again", script=DEMO_SCRIPT)
    assert (again / "model.safetensors").read_bytes() == \
        (demo_model / "model.safetensors").read_bytes()
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_sharded_demo_model_has_the_same_weights(tmp_path):
    script = [DEMO_PROMPTS["hello_no_thinking"]]
    single = make_tiny_qwen3(tmp_path / "single", script=script)
    sharded = make_tiny_qwen3(tmp_path / "sharded", script=script, max_shard_bytes=300_000)
    assert len(list(sharded.glob("*.safetensors"))) >= 3
    first, second = safetensors_of(single), safetensors_of(sharded)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_demo_tools_are_what_langchain_binds_for_get_weather():
    from langchain_core.utils.function_calling import convert_to_openai_tool

    assert DEMO_TOOLS == [convert_to_openai_tool(get_weather)] == [GET_WEATHER_TOOL]
    assert json.dumps(DEMO_TOOLS) == json.dumps([GET_WEATHER_TOOL])
    assert get_weather("Paris") == "sunny, 21 °C"
    assert demo.get_weather is get_weather and demo.DEMO_TOOLS is DEMO_TOOLS


def test_scripted_prompts_are_what_the_server_renders_for_langchain(tokenizer):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    from jupyter_qwen.server.chat import template_messages, template_tools
    from jupyter_qwen.server.protocol import ChatCompletionRequest

    bound = ChatOpenAI(base_url="http://127.0.0.1:9/v1", api_key="EMPTY",
                       model="demo").bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    call = AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"},
                                      "id": "call_0123"}],
                     additional_kwargs={"reasoning_content": "not sent back"})
    result = ToolMessage(get_weather("Paris"), tool_call_id="call_0123")
    system = SystemMessage("You are a helpful assistant.")
    cases = [("weather_call", [question], 1), ("weather_answer", [question, call, result], 1),
             ("weather_call", [system, question], 0),
             ("weather_answer_no_thinking", [system, question, call, result], 0)]
    for name, messages, plain in cases:
        payload = bound.bound._get_request_payload(messages, **bound.kwargs)
        assert payload["tools"] == DEMO_TOOLS
        body = ChatCompletionRequest(**payload)
        turn = DEMO_PROMPTS[name]
        ids = tokenizer.apply_chat_template(
            template_messages(body.messages), tools=template_tools(body.tools),
            add_generation_prompt=True, tokenize=True, return_dict=False,
            enable_thinking=turn.enable_thinking)
        expected = turn if plain else turn._replace(
            messages=[{"role": "system", "content": "You are a helpful assistant."},
                      *turn.messages])
        assert list(ids) == expected.prompt_ids(tokenizer), name
        assert expected in DEMO_SCRIPT


def test_demo_prompts_cover_thinking_tools_and_a_long_answer(tokenizer):
    assert set(DEMO_PROMPTS) == {f"{name}{suffix}" for suffix in ("", "_no_thinking")
                                 for name in ("hello", "arithmetic", "about", "weather_call",
                                              "weather_answer")}
    for name, turn in DEMO_PROMPTS.items():
        assert isinstance(turn, ScriptedTurn) and turn in DEMO_SCRIPT
        messages, tools, thinking, answer = turn
        assert thinking == (not name.endswith("_no_thinking"))
        assert (tools is DEMO_TOOLS) == name.startswith("weather")
        prompt = render(tokenizer, messages, tools=tools, add_generation_prompt=True,
                        enable_thinking=thinking)
        assert prompt.endswith("<think>\n\n</think>\n\n" if not thinking
                               else "<|im_start|>assistant\n")
        assert answer.startswith("<think>\n") == thinking and "<|im_end|>" not in answer
        assert tokenizer.decode(turn.answer_ids(tokenizer)) == answer + "<|im_end|>"
        twin = DEMO_PROMPTS[name.removesuffix("_no_thinking")]
        assert (turn.content, turn.tool_calls) == (twin.content, twin.tool_calls)
    assert DEMO_PROMPTS["hello"].messages == [{"role": "user", "content": "Hello!"}]
    assert DEMO_PROMPTS["arithmetic"].content == "2 + 2 = 4."
    assert DEMO_PROMPTS["weather_call"].content == ""
    assert DEMO_PROMPTS["weather_call"].tool_calls == \
        [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert DEMO_PROMPTS["weather_call"].reasoning.startswith("The user wants the weather")
    answer = DEMO_PROMPTS["weather_answer"]
    assert [m["role"] for m in answer.messages] == ["user", "assistant", "tool"]
    assert answer.messages[2]["content"] == "sunny, 21 °C"
    assert answer.content == "It is sunny in Paris, 21 °C."
    assert 60 <= len(tokenizer.encode(DEMO_PROMPTS["about"].content)) <= 100
    assert len(DEMO_SCRIPT) == 22 and len(set(map(repr, DEMO_SCRIPT))) == 22


def test_teach_refuses_contradictions_and_reports_failure(tiny_model_path):
    hello = DEMO_PROMPTS["hello"]
    with pytest.raises(ValueError, match="two answers"):
        teach(tiny_model_path, [hello, hello._replace(answer="Bye.")])
    with pytest.raises(ValueError, match="empty"):
        teach(tiny_model_path, [])
    with pytest.raises(RuntimeError, match="not learnt in 0 steps"):
        teach(tiny_model_path, [hello], max_steps=0)
