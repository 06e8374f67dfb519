import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("JUPYTER_RUNTIME_DIR", tempfile.mkdtemp(prefix="jupyter-qwen-runtime-"))

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from jupyter_qwen.testing import make_tiny_qwen3

    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    """The demo checkpoint (random tiny weights taught DEMO_SCRIPT), built once per session."""
    from jupyter_qwen.testing import DEMO_SCRIPT, make_tiny_qwen3

    return make_tiny_qwen3(tmp_path_factory.mktemp("demo-qwen3"), script=DEMO_SCRIPT)
