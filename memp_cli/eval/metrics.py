"""Ranking metrics: P@k, MRR, NDCG@k with graded relevance, and bootstrap intervals.

A ranking is given as the relevance grades of its items, best first (``0`` = not relevant; any
grade above 0 counts as relevant for P@k and MRR). NDCG uses the gain ``2^grade - 1`` and the
discount ``log2(rank + 1)``; its ideal is computed by the caller over every item that could have
been ranked (:func:`ideal_dcg`), so a ranking that misses relevant items scores below 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def precision_at_k(grades: Sequence[int], k: int) -> float:
    """Share of the first ``k`` ranks that hold a relevant item (missing ranks count as misses)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return sum(1 for g in grades[:k] if g > 0) / k


def reciprocal_rank(grades: Sequence[int], k: int | None = None) -> float:
    """1 / rank of the first relevant item within the first ``k`` ranks (all if None), else 0."""
    for i, g in enumerate(grades[:k] if k is not None else grades):
        if g > 0:
            return 1.0 / (i + 1)
    return 0.0


def dcg(grades: Sequence[int], k: int) -> float:
    """Discounted cumulative gain of the first ``k`` ranks: sum of (2^g - 1) / log2(rank + 1)."""
    return sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(grades[:k]))


def ideal_dcg(grades: Iterable[int], k: int) -> float:
    """The best DCG@k any ranking of items with these ``grades`` can reach (the NDCG denominator)."""
    return dcg(sorted(grades, reverse=True)[:k], k)


def ndcg(grades: Sequence[int], ideal: float, k: int) -> float:
    """DCG@k of the ranking divided by ``ideal`` (see :func:`ideal_dcg`); 0 when nothing is relevant."""
    return dcg(grades, k) / ideal if ideal > 0 else 0.0


@dataclass(frozen=True)
class RankScores:
    """One query's scores: P@1, P@``precision_k``, MRR within ``k``, NDCG@``k``."""

    p1: float
    pk: float
    mrr: float
    ndcg: float


def score_ranking(grades: Sequence[int], ideal: float, *, k: int = 10, precision_k: int = 3) -> RankScores:
    """All four metrics of one ranking cut to its first ``k`` items."""
    top = grades[:k]
    return RankScores(
        p1=precision_at_k(top, 1),
        pk=precision_at_k(top, precision_k),
        mrr=reciprocal_rank(top),
        ndcg=ndcg(top, ideal, k),
    )


@dataclass(frozen=True)
class Interval:
    """A mean with a bootstrap percentile interval."""

    mean: float
    low: float
    high: float


def bootstrap_intervals(
    values: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Interval]:
    """Mean of each column of ``values`` (queries x metrics, or one column) with a percentile
    bootstrap interval over resampled queries.

    Every column is resampled with the same query draws, so intervals of metrics (or, given
    per-query differences, of a paired comparison: see :func:`paired_bootstrap`) are computed on
    the same resamples. The same ``seed`` gives the same intervals.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected a non-empty (queries x metrics) array, got shape {arr.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    n = arr.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    tail = round(50 * (1 - confidence), 10)  # 2.5 for 0.95, without float noise
    out = []
    for col in range(arr.shape[1]):
        boots = arr[idx, col].mean(axis=1)
        lo, hi = np.percentile(boots, [tail, 100 - tail])
        out.append(Interval(float(arr[:, col].mean()), float(lo), float(hi)))
    return out


def paired_bootstrap(
    a: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    b: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Interval]:
    """Mean difference ``a - b`` per column, with a bootstrap interval over resampled queries.

    ``a`` and ``b`` are the per-query scores of two rankers on the same queries (same order).
    """
    da, db = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if da.shape != db.shape:
        raise ValueError(f"paired scores differ in shape: {da.shape} vs {db.shape}")
    return bootstrap_intervals(da - db, resamples=resamples, confidence=confidence, seed=seed)
