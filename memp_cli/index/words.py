"""Text to index terms: lowercase words without stopwords, plural ``s`` stripped, and bigrams
(the BM25 index of :mod:`memp_cli.index.lexical` is built over these)."""

from __future__ import annotations

import itertools
import re

_WORD = re.compile(r"[a-z0-9]+")
_WORD_OR_NEWLINE = re.compile(r"[a-z0-9]+|\n")

#: Function words that carry nothing about a task. Task verbs and nouns
#: ("put", "two", "under", "not") are deliberately kept.
# fmt: off
STOPWORDS: frozenset[str] = frozenset((
    "a", "an", "the", "in", "on", "of", "to", "and", "or", "it", "its", "them", "they", "their", "some",
    "with", "for", "is", "are", "was", "were", "be", "been", "being", "at", "by", "from", "into",
    "onto", "as", "this", "that", "these", "those", "then", "there", "here", "your", "you", "i", "me",
    "my", "we", "our", "us", "he", "she", "his", "her", "him", "so", "do", "does", "did", "has", "have",
    "had", "can", "will", "would", "should", "could", "s", "t"
))
# fmt: on


def _normalize(word: str) -> str | None:
    """One lowercase ``[a-z0-9]+`` word to its index term, or None for a stopword."""
    if word in STOPWORDS:
        return None
    if len(word) > 3 and word[-1] == "s" and word[-2] != "s":
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lowercase ``[a-z0-9]+`` words without stopwords, plural ``s`` stripped.

    ``"Put two Mugs in the glass cabinet 2"`` -> ``["put", "two", "mug", "glass", "cabinet", "2"]``.
    The ``s`` is only stripped from words longer than three characters that do
    not end in ``ss``; numbers are kept.
    """
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        term = _normalize(word)
        if term is not None:
            out.append(term)
    return out


def terms(text: str, *, bigrams: bool = True) -> list[str]:
    """Every index term of ``text``: :func:`tokenize`'s words, then the bigrams (``"a b"``).

    Bigrams join consecutive words of the stopword-free sequence and never span
    a line break: ``"put two mugs in the cabinet\\nmug"`` ->
    ``["put", "two", "mug", "cabinet", "mug", "put two", "two mug", "mug cabinet"]``.
    """
    words: list[str] = []
    grams: list[str] = []
    for line in text.lower().split("\n"):
        toks = tokenize(line)
        words.extend(toks)
        if bigrams:
            grams.extend(f"{a} {b}" for a, b in itertools.pairwise(toks))
    return words + grams
