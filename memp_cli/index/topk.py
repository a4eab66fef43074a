"""Top-k BM25 without scoring every posting: MaxScore over a :class:`LexicalIndex`.

(An index with classes of identical documents scores those instead:
:mod:`memp_cli.index.classes`.)

The texts are short and the vocabulary small, so a query's common terms (``put``, ``clean``)
have posting lists of 10-60% of the documents; scoring them all was most of a query's time.
:func:`survivors` goes through the query's terms by descending bound (the largest weight a term
gives a document). Once ``k`` documents have a score above what the terms left could add up
to, no document unseen so far can reach the top ``k``: the candidates get the other terms'
weights by lookup in their sorted postings, and those that can no longer reach the k-th best
partial score are dropped as they go. The whole scores of the best few candidates (their other
terms by lookup) raise that threshold sooner: any k documents' whole scores bound the k-th best
from below.
:meth:`LexicalIndex.top` scores the survivors exactly as :meth:`LexicalIndex.scores` does, so the
result is the same labels, scores and tie order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from memp_cli.index.lexical import LexicalIndex

Plan = list[tuple[float, int, int]]  # per query term: (bound, term id, occurrences in the query)


def survivors(ix: LexicalIndex, terms: dict[int, int], k: int) -> np.ndarray:
    """Positions (ascending) of documents that include the top ``k`` of ``terms`` (term id ->
    occurrences in the query; terms with postings only), every tie at the k-th score included."""
    plan = sorted(((ix._bound(t, q), t, q) for t, q in terms.items()), reverse=True)
    rest = [*np.cumsum([p[0] for p in plan][::-1])[::-1].tolist(), 0.0]  # bound of terms i..
    pos = np.empty(0, dtype=ix._doc_idx.dtype)
    part = np.empty(0, dtype=np.float64)
    floor = 0.0  # a k-th best whole score among some candidates: the k-th best is no lower
    i = 0
    while i < len(plan):  # the terms an unseen document may need to reach the top k
        if pos.shape[0] >= k:
            if rest[i] * _UP < max(kth(part, k), floor) * _DOWN:
                break
            # The whole scores of the best few candidates (their other terms by lookup) set a
            # higher threshold than partial scores do; worth it before a long posting list.
            tid = plan[i][1]
            if ix._indptr[tid + 1] - ix._indptr[tid] > _LOOKUP_COST * (len(plan) - i):
                few = np.sort(np.argpartition(-part, 2 * k - 1)[: 2 * k]) if pos.shape[0] > 2 * k else None
                sub_pos, sub_part = (pos, part.copy()) if few is None else (pos[few], part[few])
                floor = max(floor, kth(add_terms(ix, plan[i:], sub_pos, sub_part), k))
                if rest[i] * _UP < floor * _DOWN:
                    break
        idx, w = ix._weights(plan[i][1], plan[i][2])
        if i:
            idx, w = merge(pos, part, idx, w)
        pos, part = idx, w
        i += 1
    keep = (part + rest[i]) * _UP >= max(kth(part, k), floor) * _DOWN
    pos, part = pos[keep], part[keep]
    for j in range(i, len(plan)):  # the others: the candidates' weights only, by lookup
        add_terms(ix, plan[j : j + 1], pos, part)
        keep = (part + rest[j + 1]) * _UP >= max(kth(part, k), floor) * _DOWN
        pos, part = pos[keep], part[keep]
    return pos


def exact(ix: LexicalIndex, terms: dict[int, int], pos: np.ndarray) -> np.ndarray:
    """BM25 (float64) of the documents at positions ``pos`` (ascending, distinct), each term's
    weight looked up in its postings and added in the query's term order, as
    :meth:`LexicalIndex.scores` adds them: the same float64 sums, so the same float32 scores."""
    return add_terms(ix, [(0.0, t, q) for t, q in terms.items()], pos, np.zeros(pos.shape[0]))


def add_terms(ix: LexicalIndex, plan: Plan, pos: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Add to ``acc`` the weights of ``plan``'s terms in the documents at ``pos`` (ascending),
    looked up in their postings; returns ``acc``."""
    for _, tid, qtf in plan:
        at, found = lookup(ix, tid, pos)
        if found.any():
            acc[found] += ix._weights(tid, qtf, at[found])[1]
    return acc


def lookup(ix: LexicalIndex, tid: int, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``pos`` is in term ``tid``'s postings (offsets within them), and whether
    it is there at all."""
    start, end = int(ix._indptr[tid]), int(ix._indptr[tid + 1])
    post = ix._doc_idx[start:end]
    pos = pos.astype(post.dtype, copy=False)  # else searchsorted converts all the postings
    if end <= start:
        return np.zeros(pos.shape[0], dtype=np.int64), np.zeros(pos.shape[0], dtype=bool)
    at = np.minimum(np.searchsorted(post, pos), end - start - 1)
    return at, post[at] == pos


# Relative slack of the MaxScore comparisons in :func:`survivors`: a document is set aside
# only when its best possible score is below the threshold by more than float64 rounding and the
# float32 rounding of the final scores could make up, so it cannot tie a top-k score either.
_UP = 1.0 + 1e-6
_DOWN = 1.0 - 1e-6
# A lookup round per term costs about as much as merging this many postings.
_LOOKUP_COST = 500


def kth(values: np.ndarray, k: int) -> float:
    """The k-th largest of ``values`` (0.0 when there are fewer than k)."""
    m = values.shape[0]
    return float(np.partition(values, m - k)[m - k]) if m >= k else 0.0


def merge(pos: np.ndarray, part: np.ndarray, idx: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two ascending position lists with their weights as one, the weights of a position in
    both added: a stable sort of two sorted runs is a linear merge."""
    allp = np.concatenate([pos, idx])
    order = np.argsort(allp, kind="stable")
    allp = allp[order]
    starts = np.flatnonzero(np.r_[True, allp[1:] != allp[:-1]])
    return allp[starts], np.add.reduceat(np.concatenate([part, w])[order], starts)


def accumulate(idx: np.ndarray, w: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct positions of ``idx`` (ascending) and the sum of ``w`` at each, in input order."""
    if idx.shape[0] * 8 < n:  # few postings: sort them rather than touch every doc
        pos, inv = np.unique(idx, return_inverse=True)
        return pos, np.bincount(inv.ravel(), weights=w, minlength=pos.shape[0])
    dense = np.bincount(idx, weights=w, minlength=n)
    pos = np.flatnonzero(dense)  # every contribution is > 0
    return pos, dense[pos]
