"""Real-shape checkpoints carry Qwen3's shipped sampling defaults; the tiny shape (the demo
model) stays greedy, and the server reads whichever it finds."""

from __future__ import annotations

import json

import pytest

from jupyter_qwen.demo.checkpoint import write_generation_config
from jupyter_qwen.demo.shapes import get_shape
from jupyter_qwen.server.server import default_sampling


@pytest.mark.parametrize("shape", ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b"])
def test_real_shapes_ship_qwen3_sampling_defaults(tmp_path, shape):
    from jupyter_qwen.demo.checkpoint import SHAPES_WITH_QWEN3_SAMPLING

    assert shape in SHAPES_WITH_QWEN3_SAMPLING
    write_generation_config(tmp_path, get_shape(shape), qwen3_sampling=True)
    config = json.loads((tmp_path / "generation_config.json").read_text())
    assert config["do_sample"] is True
    assert (config["temperature"], config["top_k"], config["top_p"]) == (0.6, 20, 0.95)
    assert default_sampling(tmp_path) == {"temperature": 0.6, "top_k": 20, "top_p": 0.95}


def test_the_tiny_shape_stays_greedy(tiny_model_path):
    config = json.loads((tiny_model_path / "generation_config.json").read_text())
    assert config["do_sample"] is False
    assert not {"temperature", "top_k", "top_p"} & set(config)
    assert default_sampling(tiny_model_path) == {"temperature": 0.0}
