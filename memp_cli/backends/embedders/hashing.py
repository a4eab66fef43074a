"""``hash``: deterministic feature hashing of words and word bigrams.

No model, no download, the same vector for the same text on every machine:
for tests and huge bulk loads. Similarity is lexical overlap, nothing more.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from memp_cli.errors import ModelError

if TYPE_CHECKING:
    from memp_cli.backends.embedders import EmbedderSpec

_WORD = re.compile(r"[a-z0-9]+")


def _bucket(token: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


class HashEmbedder:
    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ModelError(f"invalid embedding dimension {dim} for hash: it must be at least 8")
        self.name = "hash"
        self.dim = dim
        self._cache: dict[str, tuple[int, float]] = {}

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        return words + [a + "_" + b for a, b in itertools.pairwise(words)]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        cache = self._cache
        for i, text in enumerate(texts):
            row = out[i]
            for tok in self._features(text):
                hit = cache.get(tok)
                if hit is None:
                    hit = cache[tok] = _bucket(tok, self.dim)
                row[hit[0]] += hit[1]
            norm = float(np.linalg.norm(row))
            if norm > 0:
                row /= norm
        return out


def create(spec: EmbedderSpec) -> HashEmbedder:
    return HashEmbedder(spec.dim or 256)
