"""Documents with the same terms score the same: BM25 over classes of identical documents.

Many memories share their text (the same task run again, the same procedure distilled from
many runs): at 882k synthesised memories the task texts fall into 18.5k classes of documents
with the same terms and term frequencies (hence the same length and the same BM25 score for any
query). :class:`Classes` keeps the postings of one document per class, so a query scores every
class in one vectorised pass over ~1/50 of the postings (a bincount in the query's term order:
the same float64 sums, so the same float32 scores, as :meth:`LexicalIndex.scores`), and
:func:`top` expands the best classes into their member documents.

Two documents are in one class when their *signatures* are equal: the sum (mod 2**64) of a
64-bit mix of each posting's term hash and tf bits (:func:`signatures`). The hash of a term is
the same in every generation, so a sync carries the signatures of kept documents over and hashes
only its new ones. Two different documents share a signature with odds about ``N**2 / 2**65``
(2e-8 at a million documents), the same kind of risk the term hashes already take.

Classes are kept only where they pay (:data:`MIN_CLASS_SIZE` documents per class on average);
otherwise :mod:`memp_cli.index.topk` (MaxScore over the documents) serves the query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Classes are worth their arrays when they hold this many documents each on average.
MIN_CLASS_SIZE = 4

#: The arrays a :class:`Classes` is saved as (``<stem>.<name>.npy``), with their dtypes.
ARRAYS: dict[str, np.dtype[Any]] = {
    "cls": np.dtype(np.int32),  # per document: its class (classes numbered by first document)
    "members": np.dtype(np.int32),  # document positions by class, ascending within a class
    "cstart": np.dtype(np.int64),  # class c's members are members[cstart[c]:cstart[c + 1]]
    "cindptr": np.dtype(np.int64),  # per term (as the index's indptr): its class postings
    "cdoc_idx": np.dtype(np.int32),  # class ids, ascending within a term
    "ctf": np.dtype(np.float32),
    "cdoclen": np.dtype(np.float32),  # per class
}

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW = np.uint64(0xFFFFFFFF)


def signatures(
    terms: np.ndarray, indptr: np.ndarray, doc_idx: np.ndarray, tf: np.ndarray, n: int
) -> np.ndarray:
    """Per document (``n``), the 64-bit hash of its (term hash, tf) postings (see the module
    docstring); 0 for a document without terms. Sums are taken as two float64 bincounts of 32-bit
    halves, exact while a document has fewer than 2**21 postings; the postings go by runs of
    whole terms of about :data:`_CHUNK`, which bounds the temporaries (a sync's peak memory)."""
    lo = np.zeros(n, dtype=np.float64)
    hi = np.zeros(n, dtype=np.float64)
    indptr = np.asarray(indptr, dtype=np.int64)
    t = 0
    while t < terms.shape[0] and n:
        end = max(t + 1, int(np.searchsorted(indptr, indptr[t] + _CHUNK, side="right")) - 1)
        s, e = int(indptr[t]), int(indptr[end])
        x = np.repeat(np.asarray(terms[t:end], dtype=np.uint64), np.diff(indptr[t : end + 1]))
        x ^= np.ascontiguousarray(tf[s:e], dtype=np.float32).view(np.uint32).astype(np.uint64) * _M1
        x ^= x >> np.uint64(30)
        x *= _M2
        x ^= x >> np.uint64(27)
        x *= _M1
        x ^= x >> np.uint64(31)
        lo += np.bincount(doc_idx[s:e], weights=(x & _LOW).astype(np.float64), minlength=n)
        hi += np.bincount(doc_idx[s:e], weights=(x >> np.uint64(32)).astype(np.float64), minlength=n)
        t = end
    return lo.astype(np.uint64) + (hi.astype(np.uint64) << np.uint64(32))  # wraps mod 2**64


_CHUNK = 1 << 20  # postings hashed at a time by signatures()


@dataclass
class Classes:
    """The classes of an index's documents and the postings of one document per class."""

    cls: np.ndarray
    members: np.ndarray
    cstart: np.ndarray
    cindptr: np.ndarray
    cdoc_idx: np.ndarray
    ctf: np.ndarray
    cdoclen: np.ndarray

    def __post_init__(self) -> None:
        self._size = np.diff(self.cstart)  # documents per class
        self._norm: np.ndarray | None = None  # per class posting: BM25's tf + length norm
        self._weights: dict[tuple[int, float], np.ndarray] = {}  # (term, coef) -> its weights

    def __len__(self) -> int:
        return int(self.cdoclen.shape[0])

    @classmethod
    def derive(
        cls, sig: np.ndarray, indptr: np.ndarray, doc_idx: np.ndarray, tf: np.ndarray, doclen: np.ndarray
    ) -> Classes | None:
        """The classes of documents with signatures ``sig`` over the postings ``indptr``,
        ``doc_idx``, ``tf``; None when they would hold fewer than :data:`MIN_CLASS_SIZE`
        documents each on average."""
        n = sig.shape[0]
        if n == 0:
            return None
        _, first, inv = np.unique(sig, return_index=True, return_inverse=True)
        nc = first.shape[0]
        if nc * MIN_CLASS_SIZE > n:
            return None
        order = np.argsort(first)  # classes numbered by their first document
        rank = np.empty(nc, dtype=np.int64)
        rank[order] = np.arange(nc)
        of = rank[inv.ravel()].astype(np.int32)
        first = first[order]
        cstart = np.zeros(nc + 1, dtype=np.int64)
        np.cumsum(np.bincount(of, minlength=nc), out=cstart[1:])
        # A class's postings are its first document's: ascending class ids within a term.
        keep = np.zeros(n, dtype=bool)
        keep[first] = True
        keep = keep[doc_idx]
        kept = np.zeros(keep.shape[0] + 1, dtype=np.int32 if keep.shape[0] < 2**31 else np.int64)
        np.cumsum(keep, out=kept[1:])  # kept postings before each offset
        return cls(
            cls=of,
            members=np.argsort(of, kind="stable").astype(np.int32),
            cstart=cstart,
            cindptr=kept[np.asarray(indptr, dtype=np.int64)].astype(np.int64),
            cdoc_idx=of[doc_idx[keep]],
            ctf=np.asarray(tf)[keep],
            cdoclen=np.asarray(doclen)[first],
        )

    def reset(self) -> None:
        """Forget the weights computed so far (the collection's statistics changed)."""
        self._norm = None
        self._weights.clear()

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}

    def check(self, n_docs: int, n_terms: int) -> bool:
        """Whether the arrays' sizes fit an index of ``n_docs`` documents and ``n_terms`` terms."""
        nc, npost = len(self), self.cdoc_idx.shape[0]
        return (
            self.cls.shape[0] == n_docs
            and self.members.shape[0] == n_docs
            and self.cstart.shape[0] == nc + 1
            and int(self.cstart[0]) == 0
            and int(self.cstart[-1]) == n_docs
            and self.cindptr.shape[0] == n_terms + 1
            and int(self.cindptr[0]) == 0
            and int(self.cindptr[-1]) == npost
            and self.ctf.shape[0] == npost
        )

    def scores(self, plan: list[tuple[int, float]], k1: float, b: float, avgdl: float) -> np.ndarray:
        """Every class's BM25 (float64) for ``plan``: per query term in the query's order, (term
        id, ``qtf * idf * (k1 + 1)``). The weights are :meth:`LexicalIndex._weights`' formula,
        its operations in its order, and a bincount adds them in ``plan``'s order."""
        spans = [(int(self.cindptr[t]), int(self.cindptr[t + 1])) for t, _ in plan]
        ws = []
        for (t, coef), (s, e) in zip(plan, spans, strict=True):
            w = self._weights.get((t, coef))
            if w is None:  # a term's weights are remembered: all of them take ~1/50 of the postings
                if self._norm is None:  # once per index: a few operations per class posting
                    norm = self.cdoclen[self.cdoc_idx].astype(np.float64)
                    norm *= k1 * b / avgdl
                    norm += k1 * (1.0 - b)
                    norm += self.ctf
                    self._norm = norm
                w = self._weights[(t, coef)] = self.ctf[s:e].astype(np.float64) * coef
                w /= self._norm[s:e]
            ws.append(w)
        if len(ws) == 1:
            idx, w = self.cdoc_idx[spans[0][0] : spans[0][1]], ws[0]
        else:
            idx, w = np.concatenate([self.cdoc_idx[s:e] for s, e in spans]), np.concatenate(ws)
        return np.bincount(idx, weights=w, minlength=len(self))

    def top(self, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` documents (positions, float32 scores) by score descending then position
        ascending, given every class's float32 ``scores``; only documents scoring above 0."""
        best = float(scores.max()) if scores.shape[0] else 0.0
        if best <= 0.0 or k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        size = self._size
        # Classes holding >= k documents that all score >= some t: no document below t is in
        # the top k. Half the best score is usually enough; else every class that scores.
        cand = np.flatnonzero(scores >= best * 0.5)
        if int(size[cand].sum()) < k:
            cand = np.flatnonzero(scores > 0)
        sc = scores[cand]
        order = np.lexsort((cand, -sc))  # by score descending, then class (= first member)
        cand, sc = cand[order], sc[order]
        cum = np.cumsum(size[cand])
        if cum[-1] <= k:
            picks = [(int(c), int(size[c])) for c in cand.tolist()]
        else:
            kth = sc[int(np.searchsorted(cum, k))]  # the k-th best document's score
            above = cand[sc > kth]
            rest = k - int(size[above].sum())
            # The `rest` first documents tied at kth are among the first `rest` members of the
            # first `rest` tied classes: classes are numbered by their first member.
            tied = cand[sc == kth][:rest]
            picks = [(int(c), int(size[c])) for c in above.tolist()]
            picks += [(int(c), min(rest, int(size[c]))) for c in tied.tolist()]
        pos = np.concatenate([self.members[self.cstart[c] : self.cstart[c] + m] for c, m in picks])
        pos_sc = scores[self.cls[pos]]
        order = np.lexsort((pos, -pos_sc))[:k]
        return pos[order].astype(np.int64), pos_sc[order]
