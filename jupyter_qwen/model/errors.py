"""What can go wrong finding a model (torch-free, so every layer may name it)."""

from __future__ import annotations

from jupyter_qwen.options import ConfigError


class ModelNotFoundError(ConfigError):
    """The model is neither a checkpoint folder nor a Hugging Face id we can fetch."""

    def __init__(self, message: str):
        super().__init__("model", message)


class QuantizationError(ConfigError):
    """A checkpoint's `quantization_config` (or the `quantization` option) asks for a format
    jupyter_qwen does not run; the message names the key and what is supported."""

    def __init__(self, message: str):
        super().__init__("quantization", message)
