"""A BM25 index over memory texts, stored as numpy arrays so a fresh process loads it fast.

The index is derived data: the store rebuilds it from every memory's text keys
(task text plus keywords) whenever memories change, and each ``memp query``
process loads it from ``<store>/index/``.

Terms. A text's terms are its words (:func:`tokenize`: lowercase ``[a-z0-9]+``,
stopwords dropped, plural ``s`` stripped) plus, by default, its word bigrams:
each pair of consecutive words of that stopword-free sequence within one line,
so ``"put a clean mug in coffeemachine"`` has the bigrams ``"put clean"``,
``"clean mug"`` and ``"mug coffeemachine"`` (see :func:`terms`). Bigrams match
word order and phrasing ("put two", "clean mug" versus "mug ... clean"), which
bare words cannot. A document's length counts its words and bigrams.

Scores are BM25 summed over the query's terms, a term repeated in the query
counting once per occurrence, with the non-negative idf raised to a power::

    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)) ** idf_power

``idf_power = 1`` is textbook BM25. The default, 0.5, dampens it: for
procedures, the words every task shares (the verbs, "two", "clean") say what
to do and the rare ones (object and place names) say what to do it to, and
full idf lets the rare ones dominate (benchmarks/README.md, eval_retrieval.py).
:meth:`LexicalIndex.max_score` uses the same conventions, which keeps
``score / max_score`` within ``[0, 1]``.

Layout on disk. The index is saved under a *stem* chosen by the caller (the store's index
uses ``lexical-<generation>``, the generation of every other index file, and keeps the
manifest in its ``state.json``, written after every file it names):

- the manifest, returned by :meth:`LexicalIndex.save` and given back to
  :meth:`LexicalIndex.load`: format version, document count, average document
  length, the scoring parameters (``k1``, ``b``, ``idf_power``, ``bigrams``)
  and the term hash scheme;
- ``<stem>.<name>.npy``: the arrays, postings in CSR form by term:

  - ``terms`` (uint64, ascending, one per term): the term's 64-bit hash (the
    vocabulary; see :func:`term_hashes`). Hashes instead of strings keep the
    manifest small and the load time flat however many distinct bigrams the
    store has; two terms whose hashes collide (odds about ``V**2 / 2**64``)
    would share postings;
  - ``indptr`` (int64, ``len(terms) + 1``): term ``t``'s postings are
    ``indptr[t]:indptr[t + 1]``;
  - ``doc_idx`` (int32): positions into ``labels``, ascending within a term;
  - ``tf`` (float32): term frequency in that document;
  - ``doclen`` (float32, one per document): number of terms (words and bigrams);
  - ``labels`` (int64, one per document, ascending): the caller's labels (the
    same labels as the vector index).
  - optional (an index saved without them loads, and its next update adds them):
    ``sig`` (uint64 per document, manifest ``"sig": true``), equal for documents with
    the same terms and frequencies, and, when such copies are common (manifest
    ``"classes"``: how many), the classes :meth:`top` scores (:mod:`memp_cli.index.classes`).

Arrays are loaded with ``mmap_mode="r"``: opening costs the same whatever the
index size and a query only pages in the postings of its own terms. A manifest
of another format version (such as version 1, which kept the vocabulary in the
manifest and had no bigrams) fails to load with ValueError; it is derived data,
so the store rebuilds it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

# Text to terms is words.py; its names stay importable from here (tests, benchmarks).
from memp_cli.index.classes import Classes, signatures

# The on-disk part (arrays, manifest) is lexfile.py; its names stay importable from here.
from memp_cli.index.lexfile import _ARRAYS as _ARRAYS
from memp_cli.index.lexfile import _DTYPES as _DTYPES
from memp_cli.index.lexfile import FORMAT as FORMAT
from memp_cli.index.lexfile import FORMAT_VERSION as FORMAT_VERSION
from memp_cli.index.lexfile import TERM_HASH as TERM_HASH
from memp_cli.index.lexfile import array_paths as array_paths
from memp_cli.index.termhash import _pair_hash as _pair_hash
from memp_cli.index.termhash import _pair_hash_np as _pair_hash_np
from memp_cli.index.termhash import _word_hash as _word_hash
from memp_cli.index.termhash import term_counts
from memp_cli.index.termhash import term_hashes as term_hashes
from memp_cli.index.topk import accumulate, exact, survivors
from memp_cli.index.words import _WORD_OR_NEWLINE as _WORD_OR_NEWLINE
from memp_cli.index.words import STOPWORDS as STOPWORDS
from memp_cli.index.words import _normalize as _normalize
from memp_cli.index.words import terms as terms
from memp_cli.index.words import tokenize as tokenize

if TYPE_CHECKING:
    from memp_cli.index.lexseg import Segmented

#: Default scoring parameters (also the defaults of :meth:`LexicalIndex.build`).
K1 = 1.2
B = 0.75
IDF_POWER = 0.5
BIGRAMS = True

_BREAK = -2  # term id of a line break while building (a stopword is -1)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)


def _bm25_idf(n: int, df: int) -> float:
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


class LexicalIndex:
    """BM25 over ``(label, text)`` documents; see the module docstring for terms and layout."""

    k1: float = K1
    b: float = B
    idf_power: float = IDF_POWER
    bigrams: bool = BIGRAMS

    def __init__(
        self,
        *,
        terms: np.ndarray,
        indptr: np.ndarray,
        doc_idx: np.ndarray,
        tf: np.ndarray,
        doclen: np.ndarray,
        labels: np.ndarray,
        avgdl: float,
        k1: float = K1,
        b: float = B,
        idf_power: float = IDF_POWER,
        bigrams: bool = BIGRAMS,
        sig: np.ndarray | None = None,
    ) -> None:
        self._terms = terms
        self._indptr = indptr
        self._doc_idx = doc_idx
        self._tf = tf
        self._doclen = doclen
        self._labels = labels
        self._sig = sig
        self._classes: Classes | None = None  # see _with_classes
        # The last few queries' terms and scores: a retrieval asks one index for a query's top
        # documents, the scores of other candidates and the bound, and each would walk the same
        # postings again (most of a query's time at 100k memories). Arrays are made read-only.
        self._recent_terms: dict[str, dict[int, int]] = {}
        self._recent_scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._recent_classes: dict[str, np.ndarray] = {}  # every class's float32 score
        self._best: dict[int, float] = {}  # term id -> its largest weight (see _bound)
        self._idfs: dict[int, float] = {}  # term id -> idf
        # The collection this index is a part of (memp_cli.index.lexseg): its statistics score.
        self._coll: Segmented | None = None
        self.base_gen: int | None = None  # the generation whose files hold it, once loaded
        self.base_manifest: dict[str, Any] | None = None
        self.avgdl = float(avgdl)
        self.k1 = float(k1)
        self.b = float(b)
        self.idf_power = float(idf_power)
        self.bigrams = bool(bigrams)

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        docs: Iterable[tuple[int, str]],
        *,
        k1: float = K1,
        b: float = B,
        idf_power: float = IDF_POWER,
        bigrams: bool = BIGRAMS,
    ) -> LexicalIndex:
        """Index ``(label, text)`` pairs (any sequence or iterable).

        Labels must be distinct non-negative ints (ValueError otherwise); documents
        are stored by ascending label, so the result does not depend on input order.
        ``k1``, ``b`` and ``idf_power`` must be >= 0 and ``b`` <= 1.
        """
        if not (k1 >= 0 and 0 <= b <= 1 and idf_power >= 0):
            raise ValueError(f"bad BM25 parameters k1={k1!r} b={b!r} idf_power={idf_power!r}")
        pairs = list(docs)
        n = len(pairs)
        raw_labels = np.fromiter((int(p[0]) for p in pairs), dtype=np.int64, count=n)
        if n and int(raw_labels.min()) < 0:
            raise ValueError("lexical index labels must be non-negative")
        order = np.argsort(raw_labels, kind="stable")
        labels = raw_labels[order]
        if n > 1 and bool((labels[1:] == labels[:-1]).any()):
            dup = int(labels[1:][labels[1:] == labels[:-1]][0])
            raise ValueError(f"duplicate label {dup} in lexical index documents")

        # Map every distinct token once: word -> word id, -1 for a stopword, _BREAK for "\n".
        words: list[str] = []  # word id -> term
        word_of: dict[str, int] = {}  # term -> word id
        token_ids: dict[str, int] = {"\n": _BREAK}
        get = token_ids.get
        findall = _WORD_OR_NEWLINE.findall
        flat: list[int] = []
        counts: list[int] = []
        for src in order.tolist():
            toks = findall(pairs[src][1].lower())
            ids = list(map(get, toks))
            if None in ids:
                for j, w in enumerate(toks):
                    if ids[j] is None:
                        tid = token_ids.get(w)
                        if tid is None:
                            term = _normalize(w)
                            if term is None:
                                tid = -1
                            else:
                                tid = word_of.get(term)
                                if tid is None:
                                    tid = word_of[term] = len(words)
                                    words.append(term)
                            token_ids[w] = tid
                        ids[j] = tid
            flat.extend(cast("list[int]", ids))  # every None was filled in above
            counts.append(len(ids))

        seq = np.array(flat, dtype=np.int64)
        seq_doc = np.repeat(np.arange(n, dtype=np.int64), np.array(counts, dtype=np.int64))
        keep = seq != -1  # stopwords out: bigrams join the words around them
        seq, seq_doc = seq[keep], seq_doc[keep]
        is_word = seq >= 0
        word_hash = np.fromiter((_word_hash(t) for t in words), dtype=np.uint64, count=len(words))
        occ_hash = [word_hash[seq[is_word]]]
        occ_doc = [seq_doc[is_word]]
        if bigrams and seq.shape[0] > 1:
            a, c = seq[:-1], seq[1:]
            ok = (a >= 0) & (c >= 0) & (seq_doc[:-1] == seq_doc[1:])
            occ_hash.append(_pair_hash_np(word_hash[a[ok]], word_hash[c[ok]]))
            occ_doc.append(seq_doc[:-1][ok])
        all_hash = np.concatenate(occ_hash)
        doc_of = np.concatenate(occ_doc)
        term_hash, term_of = np.unique(all_hash, return_inverse=True)
        term_of = term_of.astype(np.int64).ravel()
        doclen = np.bincount(doc_of, minlength=n).astype(np.float32)
        v = term_hash.shape[0]

        # One posting per distinct (term, doc) pair, sorted by term then doc.
        width = max(n, 1)
        keys, tf = np.unique(term_of * width + doc_of, return_counts=True)
        post_term = keys // width
        doc_idx = (keys - post_term * width).astype(np.int32)
        indptr = np.zeros(v + 1, dtype=np.int64)
        np.cumsum(np.bincount(post_term, minlength=v), out=indptr[1:])
        avgdl = float(doclen.sum(dtype=np.float64) / n) if n else 0.0
        return cls(
            sig=signatures(term_hash, indptr, doc_idx, tf, n),
            terms=term_hash.astype(np.uint64, copy=False),
            indptr=indptr,
            doc_idx=doc_idx,
            tf=tf.astype(np.float32),
            doclen=doclen,
            labels=labels,
            avgdl=avgdl,
            k1=k1,
            b=b,
            idf_power=idf_power,
            bigrams=bigrams,
        )._with_classes()

    def updated(self, drop: np.ndarray, docs: Iterable[tuple[int, str]]) -> LexicalIndex:
        """This index without the documents labelled ``drop`` and with ``docs`` added (labels
        not in it after the drop): the same arrays :meth:`build` makes of the result's documents,
        but only ``docs`` are tokenized (:func:`memp_cli.index.lexseg.merged`)."""
        from memp_cli.index.lexseg import merged

        add = LexicalIndex.build(docs, k1=self.k1, b=self.b, idf_power=self.idf_power, bigrams=self.bigrams)
        return merged(self, drop, add)

    def _collection(self, coll: Segmented) -> None:
        """Score with the statistics of ``coll`` (a base and delta this index is part of): its
        document count, average length and document frequencies."""
        self._coll = coll
        self.avgdl = coll.avgdl
        self._idfs.clear()
        self._best.clear()
        self._recent_scores.clear()
        self._recent_classes.clear()
        if self._classes is not None:
            self._classes.reset()

    def signatures(self) -> np.ndarray:
        """Each document's signature (:func:`~memp_cli.index.classes.signatures`; computed from
        the postings for an index saved without them)."""
        if self._sig is None:
            self._sig = signatures(self._terms, self._indptr, self._doc_idx, self._tf, len(self))
        return self._sig

    def _with_classes(self) -> LexicalIndex:
        """This index with the classes of its identical documents, where they pay."""
        self._classes = Classes.derive(self.signatures(), self._indptr, self._doc_idx, self._tf, self._doclen)
        return self

    # ------------------------------------------------------------ save / load

    def save(self, directory: Path, stem: str) -> dict[str, Any]:
        """Write the arrays as ``<directory>/<stem>.<name>.npy`` (each atomically) and return the
        manifest :meth:`load` needs (:func:`memp_cli.index.lexfile.save`)."""
        from memp_cli.index import lexfile

        return lexfile.save(self, directory, stem)

    @classmethod
    def load(cls, directory: Path, stem: str, manifest: Any) -> LexicalIndex:
        """Load the index :meth:`save` wrote under ``stem`` (:func:`memp_cli.index.lexfile.load`)."""
        from memp_cli.index import lexfile

        return lexfile.load(directory, stem, manifest)

    # ---------------------------------------------------------------- scoring

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """Every document's label, ascending (int64)."""
        return self._labels

    @property
    def vocab_size(self) -> int:
        """Number of distinct terms (words and bigrams)."""
        return int(self._terms.shape[0])

    def _query_terms(self, query: str) -> dict[int, int]:
        """Term id -> number of occurrences in the query, for terms in the index."""
        return _remembered(self._recent_terms, query, self._find_terms)

    def _find_terms(self, query: str) -> dict[int, int]:
        # A retrieval asks both of a store's indexes (task text, procedure) for the same query.
        counts, want = _remembered(_RECENT_COUNTS[self.bigrams], query, _term_counts[self.bigrams])
        if not counts or self.vocab_size == 0:
            return {}
        at = np.searchsorted(self._terms, want)
        at_clipped = np.minimum(at, self.vocab_size - 1)
        found = self._terms[at_clipped] == want
        qtf = list(counts.values())
        return {int(at[i]): qtf[i] for i in np.flatnonzero(found).tolist()}

    def _idf(self, tid: int) -> float:
        idf = self._idfs.get(tid)  # remembered: a query asks for each term's several times
        if idf is None:
            if self._coll is None:
                idf = _bm25_idf(len(self), int(self._indptr[tid + 1] - self._indptr[tid]))
            else:
                idf = _bm25_idf(self._coll.n, self._coll.df(self._terms[tid]))
            idf = self._idfs[tid] = idf if self.idf_power == 1.0 else idf**self.idf_power
        return idf

    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, bm25)`` for every document sharing a term with ``query``, by label asc
        (read-only arrays: the last few queries' are remembered)."""
        return _remembered(self._recent_scores, query, self._score_postings)

    def _weights(self, tid: int, qtf: int, sel: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Term ``tid``'s postings (document positions, or those at ``sel`` within its postings)
        and their BM25 weights (float64): the one formula of every scoring path, so each gives
        bit-identical weights."""
        start, end = int(self._indptr[tid]), int(self._indptr[tid + 1])
        idx, tf32 = self._doc_idx[start:end], self._tf[start:end]
        if sel is not None:
            idx, tf32 = idx[sel], tf32[sel]
        k1, b = self.k1, self.b
        avgdl = self.avgdl if self.avgdl > 0 else 1.0
        tf = tf32.astype(np.float64)
        norm = self._doclen[idx].astype(np.float64)
        norm *= k1 * b / avgdl
        norm += k1 * (1.0 - b)
        norm += tf
        w = tf * (qtf * self._idf(tid) * (k1 + 1.0))
        w /= norm
        return idx, w

    def _score_postings(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        terms = self._query_terms(query)
        idx_parts: list[np.ndarray] = []
        w_parts: list[np.ndarray] = []
        for tid, qtf in terms.items():
            if self._indptr[tid + 1] > self._indptr[tid]:
                idx, w = self._weights(tid, qtf)
                idx_parts.append(idx)
                w_parts.append(w)
        if not idx_parts:
            return _empty()
        if len(idx_parts) == 1:
            pos, acc = idx_parts[0], w_parts[0]
        else:
            pos, acc = accumulate(np.concatenate(idx_parts), np.concatenate(w_parts), len(self))
        out_labels = self._labels[pos].astype(np.int64)  # a copy: frozen below, not the index's
        out_scores = acc.astype(np.float32)
        out_labels.flags.writeable = out_scores.flags.writeable = False
        return out_labels, out_scores

    def _bound(self, tid: int, qtf: int) -> float:
        """The largest weight term ``tid`` gives a document, for ``qtf`` occurrences in the
        query (weights are linear in ``qtf``; the one-occurrence maximum is remembered per term)."""
        best = self._best.get(tid)
        if best is None:
            best = self._best[tid] = float(self._weights(tid, 1)[1].max())
        return best * qtf

    def score_labels(self, query: str, labels: np.ndarray) -> np.ndarray:
        """BM25 (float32) of ``query`` for each of ``labels``; 0 for no shared term or unknown
        label. The same scores as :meth:`scores`, looked up per term: no posting list is walked."""
        want = np.asarray(labels, dtype=np.int64).ravel()
        out = np.zeros(want.shape[0], dtype=np.float32)
        terms = self._query_terms(query)
        n = len(self)
        if not terms or want.shape[0] == 0 or n == 0:
            return out
        at = np.minimum(np.searchsorted(self._labels, want), n - 1)
        known = self._labels[at] == want
        if self._classes is not None:
            out[known] = self._class_scores(query)[self._classes.cls[at[known]]]
            return out
        pos, inv = np.unique(at[known], return_inverse=True)
        out[known] = exact(self, terms, pos).astype(np.float32)[inv.ravel()]
        return out

    def top(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` ``(labels, scores)``, by score descending then label ascending: the
        head of :meth:`scores` in that order, without scoring every posting (see
        :mod:`memp_cli.index.topk`): the survivors are scored exactly as :meth:`scores` does."""
        terms = {t: q for t, q in self._query_terms(query).items() if self._indptr[t + 1] > self._indptr[t]}
        if k <= 0 or not terms:
            return _empty()
        if self._classes is not None:
            pos, sc = self._classes.top(self._class_scores(query), k)
            return self._labels[pos].astype(np.int64), sc
        pos = survivors(self, terms, k)
        sc = exact(self, terms, pos).astype(np.float32)
        labels = self._labels[pos].astype(np.int64)
        m = sc.shape[0]
        if k < m:
            kth = np.partition(sc, m - k)[m - k]  # the k-th largest score
            cand = np.flatnonzero(sc >= kth)  # includes every tie at the boundary
            labels, sc = labels[cand], sc[cand]
        order = np.lexsort((labels, -sc))[:k]
        return labels[order], sc[order]

    def _class_scores(self, query: str) -> np.ndarray:
        """Every class's BM25 (float32) for ``query`` (remembered for the last few queries)."""

        def compute(q: str) -> np.ndarray:
            assert self._classes is not None
            plan = [
                (t, qtf * self._idf(t) * (self.k1 + 1.0))
                for t, qtf in self._query_terms(q).items()
                if self._indptr[t + 1] > self._indptr[t]
            ]
            if not plan:
                return np.zeros(len(self._classes), dtype=np.float32)
            avgdl = self.avgdl if self.avgdl > 0 else 1.0
            return self._classes.scores(plan, self.k1, self.b, avgdl).astype(np.float32)

        return _remembered(self._recent_classes, query, compute)

    def max_score(self, query: str) -> float:
        """Upper bound of :meth:`scores` for ``query``: sum of ``idf * (k1 + 1)`` per query term.

        Terms (words and bigrams) are counted per occurrence, as in :meth:`scores`; terms not in
        the vocabulary add nothing (0.0 when none is known). The bound is rounded
        up to the next float32, so ``scores / max_score <= 1`` holds exactly.
        """
        terms = self._query_terms(query)
        bound = sum(qtf * self._idf(tid) * (self.k1 + 1.0) for tid, qtf in terms.items())
        # Round up to a float32 so a float32 score never exceeds it through rounding.
        up = np.float32(bound)
        if float(up) < bound:
            up = np.nextafter(up, np.float32(np.inf))
        return float(up)


RECENT = 4  # queries remembered per index (a batch of queries is scored side by side)

_RECENT_COUNTS: dict[bool, dict[str, tuple[dict[int, int], np.ndarray]]] = {True: {}, False: {}}
_term_counts = {bg: functools.partial(term_counts, bigrams=bg) for bg in (True, False)}

_T = TypeVar("_T")


def query_counts(query: str, bigrams: bool) -> dict[int, int]:
    """Term hash -> occurrences in ``query`` (remembered for the last few queries)."""
    return _remembered(_RECENT_COUNTS[bigrams], query, _term_counts[bigrams])[0]


def _remembered(recent: dict[str, _T], query: str, compute: Callable[[str], _T]) -> _T:
    """``compute(query)``, remembered for the last :data:`RECENT` queries (oldest goes first)."""
    hit = recent.get(query)
    if hit is None:
        hit = compute(query)
        if len(recent) >= RECENT:
            del recent[next(iter(recent))]
        recent[query] = hit
    return hit
