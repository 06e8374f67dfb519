"""What can go wrong finding a model (torch-free, so every layer may name it)."""

from __future__ import annotations

from jupyter_qwen.options import ConfigError


class ModelNotFoundError(ConfigError):
    """The model is neither a checkpoint folder nor a Hugging Face id we can fetch.

    The message is one line; `hint` says what to do and `detail` keeps the full text of
    what went wrong underneath (the hub's own words), or None.
    """

    def __init__(self, message: str, hint: str | None = None, detail: str | None = None):
        super().__init__("model", message)
        self.hint = hint
        self.detail = detail


def hub_error(repo_id: str, error: BaseException) -> ModelNotFoundError:
    """The one-line error for a Hugging Face id that could not be fetched, from the hub
    library's exception (matched by class name, so this module stays light to import)."""
    kinds = {cls.__name__ for cls in type(error).__mro__}
    detail = f"{type(error).__name__}: {error}"
    local_folder = "give a local folder"
    if "LocalEntryNotFoundError" in kinds or "OfflineModeIsEnabled" in kinds:
        return ModelNotFoundError(
            f"{repo_id} is not in the local Hugging Face cache and the hub is unreachable",
            f"download it (huggingface-cli download {repo_id}) or {local_folder}", detail)
    if "RepositoryNotFoundError" in kinds:
        return ModelNotFoundError(
            f"{repo_id} is not a model on the Hugging Face hub, or it is private or gated",
            f"check the name; for a gated model log in (huggingface-cli login); or "
            f"{local_folder}", detail)
    return ModelNotFoundError(
        f"{repo_id} could not be fetched from the Hugging Face hub ({type(error).__name__})",
        f"try again, download it (huggingface-cli download {repo_id}) or {local_folder}",
        detail)


class QuantizationError(ConfigError):
    """A checkpoint's `quantization_config` (or the `quantization` option) asks for a format
    jupyter_qwen does not run; the message names the key and what is supported."""

    def __init__(self, message: str):
        super().__init__("quantization", message)
