"""``litellm/<model>``: any embedding API litellm reaches (OpenAI, Cohere, Ollama, ...).

Construction touches no network. ``dim`` is the one given (and is then checked against what
the API returns) or is discovered by embedding one probe text the first time it is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from memp_cli.errors import ModelError
from memp_cli.redact import mask_url

if TYPE_CHECKING:
    from memp_cli.backends.embedders import EmbedderSpec

_PROBE = "dimension probe"


class LiteLLMEmbedder:
    def __init__(
        self,
        model: str,
        *,
        dim: int | None = None,
        api_base: str | None = None,
        api_base_from: str = "",
        timeout: float = 60.0,
        max_retries: int = 4,
    ) -> None:
        if not model:
            raise ModelError(
                "empty model name for the litellm embedder",
                hint="use litellm/<model>, e.g. litellm/text-embedding-3-small",
            )
        if dim is not None and dim < 1:
            raise ModelError(f"invalid embedding dimension {dim} for litellm/{model}")
        self.model = model
        self.name = f"litellm/{model}"
        self.api_base = api_base
        self.api_base_from = api_base_from
        self.timeout = timeout
        self.max_retries = max_retries
        self._dim = dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._call([_PROBE]).shape[1])
        return self._dim

    @dim.setter
    def dim(self, value: int) -> None:  # the Embedder protocol declares a plain attribute
        self._dim = int(value)

    def _call(self, texts: Sequence[str]) -> np.ndarray:
        from memp_cli.backends import llm

        return llm.embed(
            texts,
            self.model,
            api_base=self.api_base,
            api_base_from=self.api_base_from,
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._call(texts)
        if self._dim is None:
            self._dim = int(out.shape[1])
        elif out.shape[1] != self._dim:
            raise ModelError(
                f"{self.name} returned {out.shape[1]}-dimensional vectors, expected {self._dim}",
                hint="the store was built with another embedding size: run 'memp index rebuild', "
                "or pick the model the store was built with",
            )
        return out

    def __repr__(self) -> str:
        return f"LiteLLMEmbedder({self.model!r}, dim={self._dim}, api_base={mask_url(self.api_base or '')!r})"


def create(spec: EmbedderSpec) -> LiteLLMEmbedder:
    return LiteLLMEmbedder(spec.model, dim=spec.dim, api_base=spec.api_base, api_base_from=spec.api_base_from)
