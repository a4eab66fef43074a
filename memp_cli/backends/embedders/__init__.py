"""Embedders: text -> unit vectors, behind one small protocol and a registry.

An embedder name is recorded in the store (``memp.toml``); querying a store
with another embedder is an error that points to ``memp index rebuild``.

- ``hash``: deterministic feature hashing (no model): tests and bulk loads.
- ``minilm``: all-MiniLM-L6-v2 run with numpy (see :mod:`.minilm`).
- ``litellm/<model>``: any embedding API litellm reaches.

A backend is one module with a ``create(spec) -> Embedder`` function plus one line in
:data:`REGISTRY`; its module is imported only when the name is asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from memp_cli.errors import ModelError

if TYPE_CHECKING:
    import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows, shape ``(len(texts), dim)``."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class EmbedderSpec:
    """What a backend's ``create`` is given."""

    name: str  # the full name asked for, e.g. "hash" or "litellm/openai/text-embedding-3-small"
    model: str  # for a prefix entry, what follows the prefix ("openai/text-embedding-3-small"); else ""
    dim: int | None = None
    model_path: str | Path | None = None
    api_base: str | None = None
    api_base_from: str = ""  # "store": named only by memp.toml, so no key is sent (llm/endpoints.py)


Factory = Callable[[EmbedderSpec], Embedder]

REGISTRY: dict[str, str] = {
    "minilm": "memp_cli.backends.embedders.minilm:create",
    "hash": "memp_cli.backends.embedders.hashing:create",
    "litellm/": "memp_cli.backends.embedders.remote:create",
}
"""Name -> ``"module:function"``. A key ending in ``/`` is a prefix: ``litellm/<model>``."""


def _describe() -> str:
    shown = [f"'{key}<model>'" if key.endswith("/") else f"'{key}'" for key in REGISTRY]
    return ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else shown[0]


def lookup(name: str) -> tuple[str, str]:
    """The registry key ``name`` falls under and the model part; ModelError when none does.

    Checks the name only: nothing is imported or built.
    """
    if name in REGISTRY:  # (a bare prefix, "litellm/", gives its backend an empty model name)
        return name, ""
    for key in REGISTRY:
        if key.endswith("/") and name.startswith(key):
            return key, name.removeprefix(key)
    raise ModelError(
        f"unknown embedder {name!r}",
        hint=f"choose {_describe()}, such as litellm/text-embedding-3-small (minilm is the default)",
    )


def get_embedder(
    name: str,
    *,
    dim: int | None = None,
    model_path: str | Path | None = None,
    api_base: str | None = None,
    api_base_from: str = "",
) -> Embedder:
    """Build the embedder registered under ``name``.

    ``dim`` applies to ``hash`` (and is checked for the others); ``model_path``
    points ``minilm`` at a local sentence-transformers folder.
    """
    key, model = lookup(name)
    module, _, function = REGISTRY[key].partition(":")
    create: Factory = getattr(importlib.import_module(module), function)
    spec = EmbedderSpec(name, model, dim=dim, model_path=model_path, api_base=api_base)
    return create(dataclasses.replace(spec, api_base_from=api_base_from))
