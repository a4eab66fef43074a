"""Embedders: text -> unit vectors, behind one small protocol and a registry.

An embedder name is recorded in the store (``memp.toml``); querying a store
with another embedder is an error that points to ``memp index rebuild``.

- ``hash``: deterministic feature hashing (no model): tests and bulk loads.
- ``minilm``: all-MiniLM-L6-v2 run with numpy (see :mod:`.minilm`).
- ``litellm/<model>``: any embedding API litellm reaches.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def get_embedder(
    name: str,
    *,
    dim: int | None = None,
    model_path: str | Path | None = None,
    api_base: str | None = None,
) -> Embedder:
    """Build the embedder registered under ``name``.

    ``dim`` applies to ``hash`` (and is checked for the others); ``model_path``
    points ``minilm`` at a local sentence-transformers folder.
    """
    if name == "hash":
        from memp_cli.backends.embedders.hashing import HashEmbedder

        return HashEmbedder(dim or 256)
    if name == "minilm":
        from memp_cli.backends.embedders.minilm import MiniLMEmbedder

        return MiniLMEmbedder(model_path)
    if name.startswith("litellm/"):
        from memp_cli.backends.embedders.remote import LiteLLMEmbedder

        return LiteLLMEmbedder(name.removeprefix("litellm/"), dim=dim, api_base=api_base)
    raise ModelError(
        f"unknown embedder {name!r}",
        hint="choose 'minilm' (default), 'hash', or 'litellm/<model>' such as litellm/text-embedding-3-small",
    )


EMBEDDER_NAMES = ("minilm", "hash", "litellm/<model>")
