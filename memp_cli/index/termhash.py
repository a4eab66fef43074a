"""Term hashes of the BM25 index (:mod:`memp_cli.index.lexical`): 63-bit word hashes and
64-bit bigram hashes (see :func:`term_hashes`)."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np

from memp_cli.index.words import tokenize

_MASK = (1 << 64) - 1
_TOP = 1 << 63
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _word_hash(term: str) -> int:
    """63-bit hash of a word term (top bit clear)."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little") & (_TOP - 1)


def _pair_hash(ha: int, hb: int) -> int:
    """Hash of the bigram of two word hashes (top bit set): splitmix64 of ``ha * golden + hb``."""
    x = (ha * _GOLDEN + hb) & _MASK
    x ^= x >> 30
    x = (x * _M1) & _MASK
    x ^= x >> 27
    x = (x * _M2) & _MASK
    x ^= x >> 31
    return x | _TOP


def _pair_hash_np(ha: np.ndarray, hb: np.ndarray) -> np.ndarray:
    """:func:`_pair_hash` on uint64 arrays (numpy integer arithmetic wraps modulo 2**64)."""
    x = ha * np.uint64(_GOLDEN) + hb
    x ^= x >> np.uint64(30)
    x *= np.uint64(_M1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_M2)
    x ^= x >> np.uint64(31)
    x |= np.uint64(_TOP)
    return x


def term_hashes(text: str, *, bigrams: bool = True) -> list[int]:
    """The hashes of :func:`terms` of ``text``, in the same order.

    A word's hash is the first 8 bytes of its blake2b digest (little-endian)
    with the top bit cleared; a bigram's is a splitmix64 mix of its two word
    hashes with the top bit set, so words and bigrams never collide.
    """
    words: list[int] = []
    grams: list[int] = []
    for line in text.lower().split("\n"):
        hs = [_word_hash(t) for t in tokenize(line)]
        words.extend(hs)
        if bigrams:
            grams.extend(_pair_hash(a, b) for a, b in itertools.pairwise(hs))
    return words + grams


def term_counts(query: str, bigrams: bool) -> tuple[dict[int, int], np.ndarray]:
    """Term hash -> occurrences in ``query``, and the hashes as a uint64 array."""
    counts: dict[int, int] = {}
    for h in term_hashes(query, bigrams=bigrams):
        counts[h] = counts.get(h, 0) + 1
    return counts, np.fromiter(counts, dtype=np.uint64, count=len(counts))
