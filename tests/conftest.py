import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("JUPYTER_RUNTIME_DIR", tempfile.mkdtemp(prefix="jupyter-qwen-runtime-"))
os.environ.setdefault("JUPYTER_QWEN_CACHE", tempfile.mkdtemp(prefix="jupyter-qwen-cache-"))

import random

import pytest
import torch
from kernel_modes import MODES, Mode

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from jupyter_qwen.testing import make_tiny_qwen3

    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def demo_model():
    """The demo checkpoint (random tiny weights taught DEMO_SCRIPT), built once per session
    into this run's JUPYTER_QWEN_CACHE, where `%qwen_serve --demo` finds it too."""
    from jupyter_qwen.demo import demo_model_path

    return demo_model_path()


@pytest.fixture(params=MODES)
def mode(request) -> Mode:
    """The Triton kernel tests' mode: compiled on a GPU, or the interpreter on CPU."""
    if request.param.device == "cpu":
        from kernel_cases import fix_interpreter

        fix_interpreter()
    return request.param


@pytest.fixture
def generator() -> torch.Generator:
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="session")
def variant_model(tmp_path_factory):
    """A callable giving the tiny checkpoint of a chat template variant, taught the
    conversation of tests/variant_script.py (built once per variant and session)."""
    from variant_script import make_variant_model

    built: dict[str, object] = {}

    def get(variant: str):
        if variant not in built:
            built[variant] = make_variant_model(
                tmp_path_factory.mktemp(f"variant-{variant}"), variant)
        return built[variant]

    return get
