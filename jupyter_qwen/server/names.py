"""The names a server answers to in a request's `model` field.

Its served names come first (the `served_model_name` option: one or several, as with vLLM's
`--served-model-name`; by default the last part of the model's path or id): /v1/models
lists them, and responses carry the first. Recipes name the model loosely, so the server also
answers to its aliases: the model as given to `serve()`, the checkpoint's folder name and its
Hugging Face id (from the hub cache's folder layout, or `Qwen/<folder>` for a folder named
like one of Qwen's checkpoints). Names match whatever their case: a server serves one
model, so no other model can be meant, and the hub resolves ids whatever their case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HUB_CACHE_FOLDER = re.compile(r"^models--([^/]+?)--(.+)$")


@dataclass(frozen=True, slots=True)
class ModelNames:
    served: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    @property
    def primary(self) -> str:
        return self.served[0]

    def all(self) -> tuple[str, ...]:
        return (*self.served, *self.aliases)

    def answers_to(self, name: str | None) -> bool:
        """Whether a request naming `name` (None: no name) is for this server's model."""
        return name is None or name.casefold() in {known.casefold() for known in self.all()}


def model_names(model: str, served: tuple[str, ...] | None = None,
                checkpoint: Path | None = None) -> ModelNames:
    """The names of a server of `model` (as given to `serve()`), with the `served_model_name`
    option's names and the checkpoint folder once it is known."""
    given = str(model).rstrip("/")
    served = tuple(served or ()) or (given.rsplit("/", 1)[-1],)
    aliases = [given.rsplit("/", 1)[-1], str(model), *checkpoint_names(checkpoint)]
    seen = {name.casefold() for name in served}
    unique = []
    for name in aliases:
        if name and name.casefold() not in seen:
            seen.add(name.casefold())
            unique.append(name)
    return ModelNames(served, tuple(unique))


def checkpoint_names(checkpoint: Path | None) -> list[str]:
    """The folder name and hub id of a checkpoint folder, where they can be told."""
    if checkpoint is None:
        return []
    parts = Path(checkpoint).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and (
            match := HUB_CACHE_FOLDER.match(parts[-3])):
        return [f"{match[1]}/{match[2]}", match[2]]
    folder = Path(checkpoint).name
    if folder.casefold().startswith("qwen"):
        return [folder, f"Qwen/{folder}"]
    return [folder]
