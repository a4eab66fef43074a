"""BM25 as a base and a delta: a sync of a few memories writes about their postings, not the store's.

A store's BM25 index (:class:`~memp_cli.index.lexical.LexicalIndex`) is kept as three parts:

- the *base*, saved by the generation that made it (``<field>-<base gen>.*.npy``) and never
  written again: later generations name the same files;
- the *delta*: the documents added since the base (a small index of their own,
  ``<field>-<gen>-delta.*.npy``);
- the *dead*: the base's documents removed since (their postings, taken from the base's:
  ``<field>-<gen>-dead.*.npy``), whose labels no query returns.

When the delta and the dead grow past :data:`MERGE_FRACTION` of the base, a sync merges them
into a new base (:func:`merged`, the array merge a sync did every time before).

Scores are those of one index over the live documents: BM25's statistics are the whole
collection's (document count, average length, each term's document frequency: the base's minus
the dead's plus the delta's), which every part scores with (:class:`Segmented` hands them to its
parts), and each document is in exactly one part, where its terms' weights are added in the
query's term order as one index adds them: the same float64 sums, so the same float32 scores,
labels and tie order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from memp_cli.index.lexfile import array_paths

if TYPE_CHECKING:
    from memp_cli.index.lexical import LexicalIndex

# A sync merges the delta and the dead into a new base when they hold more documents than this
# fraction of the base's.
MERGE_FRACTION = 1 / 16
# A delta of up to this many documents is scored whole by a query (its top k then taken with
# the base's): a few thousand postings per term, cheaper than MaxScore's rounds. The documents
# in a class of the base do not count: their scores are the base's class scores, gathered.
_SCORE_ALL = 20_000
_PARTS = ("delta", "dead")  # manifest keys (and file stem suffixes) of the two small parts
_EXTRA = ("base_gen", *_PARTS, "doclen_sum")  # manifest keys that are not the base's own


def merged(ix: LexicalIndex, drop: np.ndarray, add: LexicalIndex) -> LexicalIndex:
    """Index ``ix`` without the documents labelled ``drop`` and with the documents of ``add`` (an
    index with the same parameters, labels not in ``ix`` after the drop): the arrays
    :meth:`LexicalIndex.build` makes of the result's documents. The kept postings stay in (term,
    document) order when terms and documents are renumbered, so the new ones are merged in, not
    sorted with them: it costs array copies, not the texts again."""
    from memp_cli.index.lexical import LexicalIndex

    keep_doc = ~np.isin(ix._labels, np.asarray(drop, dtype=np.int64))
    labels = np.concatenate([ix._labels[keep_doc], add._labels])
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    if len(labels) > 1 and bool((labels[1:] == labels[:-1]).any()):
        raise ValueError("an added document's label is already in the lexical index")
    doclen = np.concatenate([ix._doclen[keep_doc], add._doclen])[order]
    sig = np.concatenate([ix.signatures()[keep_doc], add.signatures()])[order]
    # Each side's postings as (term hash, document label, tf), in (term, label) order.
    keep_post = keep_doc[ix._doc_idx]
    old_t = np.repeat(np.arange(len(ix._terms), dtype=np.int64), np.diff(ix._indptr))[keep_post]
    old_lab, old_tf = ix._labels[ix._doc_idx[keep_post]], ix._tf[keep_post]
    present = np.zeros(len(ix._terms), dtype=bool)
    present[old_t] = True
    terms = np.union1d(ix._terms[present], add._terms)  # a term whose documents all left goes
    old_hash = ix._terms[old_t]
    add_hash = np.repeat(add._terms, np.diff(add._indptr))
    add_lab, add_tf = add._labels[add._doc_idx], add._tf
    width = max(len(labels), 1)
    old_key = np.searchsorted(terms, old_hash).astype(np.int64) * width + np.searchsorted(labels, old_lab)
    add_key = np.searchsorted(terms, add_hash).astype(np.int64) * width + np.searchsorted(labels, add_lab)
    # Merge two sorted key sequences: each added key goes after the kept keys below it.
    total = len(old_key) + len(add_key)
    at_add = np.searchsorted(old_key, add_key) + np.arange(len(add_key))
    is_add = np.zeros(total, dtype=bool)
    is_add[at_add] = True
    keys = np.empty(total, dtype=np.int64)
    tf = np.empty(total, dtype=np.float32)
    keys[at_add], keys[~is_add] = add_key, old_key
    tf[at_add], tf[~is_add] = add_tf, old_tf
    post_term = keys // width
    indptr = np.zeros(len(terms) + 1, dtype=np.int64)
    np.cumsum(np.bincount(post_term, minlength=len(terms)), out=indptr[1:])
    n = len(labels)
    return LexicalIndex(
        sig=sig,
        terms=terms.astype(np.uint64, copy=False),
        indptr=indptr,
        doc_idx=(keys - post_term * width).astype(np.int32),
        tf=tf,
        doclen=doclen,
        labels=labels,
        avgdl=float(doclen.sum(dtype=np.float64) / n) if n else 0.0,
        k1=ix.k1,
        b=ix.b,
        idf_power=ix.idf_power,
        bigrams=ix.bigrams,
    )._with_classes()


def subset(ix: LexicalIndex, labels: np.ndarray) -> LexicalIndex:
    """The documents of index ``ix`` labelled ``labels`` (ascending, all in ``ix``) as an index of
    their own, their postings copied from ``ix``'s (no text is read): one pass over the postings."""
    from memp_cli.index.lexical import LexicalIndex

    pos = np.searchsorted(ix._labels, labels)
    mask = np.zeros(len(ix), dtype=bool)
    mask[pos] = True
    at = np.flatnonzero(mask[ix._doc_idx])  # in (term, document) order
    tid = np.searchsorted(ix._indptr, at, side="right") - 1
    used, post_term = np.unique(tid, return_inverse=True)
    indptr = np.zeros(len(used) + 1, dtype=np.int64)
    np.cumsum(np.bincount(post_term.ravel(), minlength=len(used)), out=indptr[1:])
    doclen = np.asarray(ix._doclen[pos], dtype=np.float32)
    n = len(pos)
    return LexicalIndex(
        terms=np.asarray(ix._terms[used], dtype=np.uint64),
        indptr=indptr,
        doc_idx=np.searchsorted(pos, ix._doc_idx[at]).astype(np.int32),
        tf=np.asarray(ix._tf[at], dtype=np.float32),
        doclen=doclen,
        labels=np.asarray(labels, dtype=np.int64),
        avgdl=float(doclen.sum(dtype=np.float64) / n) if n else 0.0,
        k1=ix.k1,
        b=ix.b,
        idf_power=ix.idf_power,
        bigrams=ix.bigrams,
    )


def _df(ix: LexicalIndex, h: np.uint64) -> int:
    t = ix._terms
    i = int(np.searchsorted(t, h))
    return int(ix._indptr[i + 1] - ix._indptr[i]) if i < t.shape[0] and t[i] == h else 0


def _dfs(ix: LexicalIndex, hashes: np.ndarray) -> np.ndarray:
    """Each term hash's document frequency in ``ix`` (0 when not there)."""
    t = ix._terms
    if not t.shape[0]:
        return np.zeros(hashes.shape[0], dtype=np.int64)
    at = np.minimum(np.searchsorted(t, hashes), t.shape[0] - 1)
    return np.where(t[at] == hashes, np.diff(ix._indptr)[at], 0)


class Segmented:
    """A BM25 index as a base, a delta and the base's dead documents (see the module docstring):
    the query methods of :class:`~memp_cli.index.lexical.LexicalIndex`, with its scores."""

    def __init__(
        self,
        base: LexicalIndex,
        delta: LexicalIndex,
        dead: LexicalIndex,
        *,
        base_gen: int | None = None,
        base_manifest: dict[str, Any] | None = None,
        doclen_sum: float | None = None,
    ) -> None:
        self.base, self.delta, self.dead = base, delta, dead
        self.base_gen = base_gen  # the generation whose files hold the base; None: not saved
        self.base_manifest = base_manifest
        self.k1, self.b, self.idf_power, self.bigrams = base.k1, base.b, base.idf_power, base.bigrams
        self.n = len(base) - len(dead) + len(delta)
        if doclen_sum is None:
            doclen_sum = float(np.asarray(base._doclen).sum(dtype=np.float64))
        self.doclen_sum = doclen_sum  # the base's: term counts, so the float64 sums are exact
        total = doclen_sum - float(dead._doclen.sum(dtype=np.float64))
        total += float(delta._doclen.sum(dtype=np.float64))
        self.avgdl = total / self.n if self.n else 0.0
        for part in (base, delta):
            part._collection(self)
        self._labels: np.ndarray | None = None
        self._dfs: dict[int, int] = {}
        self._dcls: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see _delta_classes
        self._dgroups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see _delta_groups

    def __len__(self) -> int:
        return self.n

    def df(self, h: int | np.uint64) -> int:
        """Term hash ``h``'s document frequency over the live documents."""
        df = self._dfs.get(int(h))  # remembered: a query asks for each of its terms' several times
        if df is None:
            u = np.uint64(h)
            df = self._dfs[int(h)] = _df(self.base, u) - _df(self.dead, u) + _df(self.delta, u)
        return df

    @property
    def labels(self) -> np.ndarray:
        """Every live document's label, ascending (int64)."""
        if self._labels is None:
            base = self.base.labels[~self._is_dead(self.base.labels)]
            self._labels = np.union1d(base, self.delta.labels).astype(np.int64)
        return self._labels

    @property
    def vocab_size(self) -> int:
        """Number of distinct terms of the live documents."""
        terms = np.union1d(self.base._terms, self.delta._terms)
        if not len(self.dead):
            return int(terms.shape[0])
        df = _dfs(self.base, terms) - _dfs(self.dead, terms) + _dfs(self.delta, terms)
        return int(np.count_nonzero(df))

    def _is_dead(self, labels: np.ndarray) -> np.ndarray:
        dead = self.dead.labels
        if not dead.shape[0]:
            return np.zeros(labels.shape[0], dtype=bool)
        at = np.minimum(np.searchsorted(dead, labels), dead.shape[0] - 1)
        return np.asarray(dead[at] == labels)

    # ---------------------------------------------------------------- scoring

    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, bm25)`` of every live document sharing a term with ``query``, by label."""
        bl, bs = self.base.scores(query)
        keep = ~self._is_dead(bl)
        dl, ds = self.delta.scores(query)
        labels = np.concatenate([bl[keep], dl])
        sc = np.concatenate([bs[keep], ds])
        order = np.argsort(labels, kind="stable")
        labels, sc = labels[order], sc[order]
        labels.flags.writeable = sc.flags.writeable = False
        return labels, sc

    def score_labels(self, query: str, labels: np.ndarray) -> np.ndarray:
        """BM25 (float32) of ``query`` for each of ``labels``; 0 for a dead or unknown label."""
        want = np.asarray(labels, dtype=np.int64).ravel()
        out = self.base.score_labels(query, want)
        out[self._is_dead(want)] = 0.0
        cls = self._delta_classes()
        if cls is not None and cls[1].shape[0]:  # a delta document in a base class: its score
            of, in_class, rest = cls
            at = np.minimum(np.searchsorted(in_class, want), in_class.shape[0] - 1)
            hit = in_class[at] == want
            out[hit] = self.base._class_scores(query)[of[at[hit]]]
            if rest.shape[0]:  # the others may be the delta's other documents
                out[~hit] += self.delta.score_labels(query, want[~hit])
            return out
        return out + self.delta.score_labels(query, want)  # a label is in one part: + 0.0 elsewhere

    def top(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` live ``(labels, scores)``, by score descending then label ascending: the
        base's best ``k`` + (its dead) hold its best ``k`` live ones."""
        if k <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        bl, bs = self.base.top(query, k + len(self.dead))
        keep = ~self._is_dead(bl)
        bl, bs = bl[keep], bs[keep]
        floor = float(bs[k - 1]) if bs.shape[0] >= k else 0.0  # the k-th best is no lower
        dl, ds = self._delta_top(query, k, floor)
        labels = np.concatenate([bl, dl])
        sc = np.concatenate([bs, ds])
        order = np.lexsort((labels, -sc))[:k]
        return labels[order], sc[order]

    def _delta_top(self, query: str, k: int, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """The delta's best ``k`` documents scoring ``floor`` or more, and every tie of the k-th
        (any order). A delta document with the terms of a class of the base (the same signature)
        scores as that class, which the base has just scored (:mod:`memp_cli.index.classes`): the
        same float32."""
        cls = self._delta_classes()
        if cls is None or cls[2].shape[0] > _SCORE_ALL:
            if len(self.delta) > _SCORE_ALL:
                return self.delta.top(query, k)
            dl, ds = self.delta.scores(query)  # every posting of a small delta: cheaper than MaxScore
        else:  # however large the delta: the base's classes that score, then their documents
            rest = cls[2]
            dl, ds = self._delta_in_classes(self.base._class_scores(query), floor)
            if rest.shape[0]:
                dl = np.concatenate([dl, rest])
                ds = np.concatenate([ds, self.delta.score_labels(query, rest)])
        hit = (ds >= floor) & (ds > 0)
        dl, ds = dl[hit], ds[hit]
        m = ds.shape[0]
        if k < m:  # its k best and every tie of the k-th
            keep = ds >= np.partition(ds, m - k)[m - k]
            dl, ds = dl[keep], ds[keep]
        return dl, ds

    def _delta_in_classes(self, scores: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of the delta documents in a base class scoring ``floor`` or more and
        above 0, given every class's ``scores``: a pass over the classes, not the documents."""
        has, starts, grouped = self._delta_groups()
        sel = np.flatnonzero((scores >= floor) & (scores > 0) & has)
        lens = starts[sel + 1] - starts[sel]
        ends = np.cumsum(lens)
        at = np.arange(int(ends[-1]) if ends.shape[0] else 0) + np.repeat(starts[sel] - (ends - lens), lens)
        return grouped[at], np.repeat(scores[sel], lens)

    def _delta_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The delta documents in a base class by class: per class whether it has any, where its
        run starts in the labels (one more entry: the end), and the labels by class."""
        if self._dgroups is None:
            dcls = self._delta_classes()
            assert dcls is not None and self.base._classes is not None
            of, labels, _ = dcls
            counts = np.bincount(of, minlength=len(self.base._classes))
            starts = np.zeros(counts.shape[0] + 1, dtype=np.int64)
            np.cumsum(counts, out=starts[1:])
            self._dgroups = (counts > 0, starts, labels[np.argsort(of, kind="stable")])
        return self._dgroups

    def _delta_classes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The delta documents in a class of the base (same signature): their classes and labels,
        and the labels of the others; None when the base has no classes."""
        classes = self.base._classes
        if classes is None or not len(self.delta):
            return None
        if self._dcls is None:
            first = np.asarray(classes.members)[np.asarray(classes.cstart[:-1])]  # a member per class
            csig = np.asarray(self.base.signatures()[first])
            order = np.argsort(csig)
            csig = csig[order]
            want = self.delta.signatures()
            at = np.minimum(np.searchsorted(csig, want), csig.shape[0] - 1)
            has = csig[at] == want
            labels = self.delta.labels
            self._dcls = (order[at[has]], labels[has], labels[~has])
        return self._dcls

    def max_score(self, query: str) -> float:
        """Upper bound of :meth:`scores` (as :meth:`LexicalIndex.max_score`, over the live terms)."""
        from memp_cli.index.lexical import _bm25_idf, query_counts

        bound = 0.0
        for h, qtf in query_counts(query, self.bigrams).items():
            df = self.df(h)
            if df > 0:
                idf = _bm25_idf(self.n, df)
                bound += qtf * (idf if self.idf_power == 1.0 else idf**self.idf_power) * (self.k1 + 1.0)
        up = np.float32(bound)
        if float(up) < bound:
            up = np.nextafter(up, np.float32(np.inf))
        return float(up)

    # ------------------------------------------------------------------ sync

    def updated(self, drop: np.ndarray, docs: list[tuple[int, str]]) -> Segmented:
        """These documents without those labelled ``drop`` and with ``docs`` added: the dropped
        base documents join the dead, ``docs`` the delta; merged into a new base when the two
        outgrow :data:`MERGE_FRACTION` of the base."""
        drop = np.asarray(drop, dtype=np.int64)
        base_labels = self.base.labels
        in_base = np.zeros(drop.shape[0], dtype=bool)
        if base_labels.shape[0]:
            at = np.minimum(np.searchsorted(base_labels, drop), base_labels.shape[0] - 1)
            in_base = base_labels[at] == drop
        delta = self.delta.updated(drop[~in_base], docs)
        dead_labels = np.union1d(self.dead.labels, drop[in_base]).astype(np.int64)
        if len(delta) + dead_labels.shape[0] > MERGE_FRACTION * len(self.base):
            return Segmented.whole(merged(self.base, dead_labels, delta))
        dead = self.dead if dead_labels.shape[0] == len(self.dead) else subset(self.base, dead_labels)
        return Segmented(
            self.base,
            delta,
            dead,
            base_gen=self.base_gen,
            base_manifest=self.base_manifest,
            doclen_sum=self.doclen_sum,
        )

    @classmethod
    def whole(cls, base: LexicalIndex) -> Segmented:
        """``base`` alone (not saved yet): an empty delta and no dead document."""
        from memp_cli.index.lexical import LexicalIndex

        parts = [
            LexicalIndex.build([], k1=base.k1, b=base.b, idf_power=base.idf_power, bigrams=base.bigrams)
            for _ in range(2)
        ]
        return cls(base, parts[0], parts[1])

    def save(self, directory: Path, field: str, gen: int) -> dict[str, Any]:
        """Write what generation ``gen`` adds (the base when it is new, the delta and the dead
        when not empty), each file atomically, and return its manifest: the base's, with
        ``base_gen`` and the delta's and dead's manifests when they are separate files."""
        if self.base_gen is None or self.base_manifest is None:
            self.base_manifest = self.base.save(directory, f"{field}-{gen}")
            self.base_gen = gen
        manifest = dict(self.base_manifest)
        if self.base_gen != gen:
            manifest["base_gen"] = self.base_gen
        if len(self.delta) or len(self.dead):
            manifest["base_gen"] = self.base_gen
            manifest["doclen_sum"] = self.doclen_sum
            for part in _PARTS:
                manifest[part] = getattr(self, part).save(directory, f"{field}-{gen}-{part}")
        return manifest


def paths(directory: Path, field: str, gen: int, manifest: dict[str, Any]) -> list[Path]:
    """The files generation ``gen``'s BM25 index of ``field`` with ``manifest`` may have."""
    out = list(array_paths(directory, f"{field}-{manifest.get('base_gen', gen)}").values())
    for part in _PARTS:
        if part in manifest:
            out += array_paths(directory, f"{field}-{gen}-{part}").values()
    return out


def load(directory: Path, field: str, gen: int, manifest: Any) -> Lexical:
    """The BM25 index of ``field`` that generation ``gen`` names with ``manifest``: the base alone
    (a :class:`LexicalIndex`) when there is no delta nor dead, else a :class:`Segmented`. An index
    of format 7 or before keeps the base under its own generation. FileNotFoundError / ValueError
    as :func:`memp_cli.index.lexfile.load`."""
    from memp_cli.index import lexfile

    if not isinstance(manifest, dict):
        raise ValueError(f"{directory / field}-{gen}: not a memp lexical index manifest")
    base_gen = manifest.get("base_gen", gen)
    if not isinstance(base_gen, int) or isinstance(base_gen, bool) or not 0 <= base_gen <= gen:
        raise ValueError(f"{directory / field}-{gen}: bad base generation {base_gen!r}")
    base_manifest = {k: v for k, v in manifest.items() if k not in _EXTRA}
    base = lexfile.load(directory, f"{field}-{base_gen}", base_manifest)
    if not any(part in manifest for part in _PARTS):
        base.base_gen, base.base_manifest = base_gen, base_manifest
        return base
    parts = [lexfile.load(directory, f"{field}-{gen}-{part}", manifest.get(part)) for part in _PARTS]
    try:
        doclen_sum = float(manifest["doclen_sum"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{directory / field}-{gen}: bad doclen_sum") from None
    params = (base.k1, base.b, base.idf_power, base.bigrams)
    if any((p.k1, p.b, p.idf_power, p.bigrams) != params for p in parts):
        raise ValueError(f"{directory / field}-{gen}: the delta's BM25 parameters are not the base's")
    return Segmented(
        base, parts[0], parts[1], base_gen=base_gen, base_manifest=base_manifest, doclen_sum=doclen_sum
    )


def as_segmented(lex: Lexical) -> Segmented:
    """A loaded BM25 index (:func:`load`) as a :class:`Segmented`, to update."""
    if isinstance(lex, Segmented):
        return lex
    seg = Segmented.whole(lex)
    seg.base_gen, seg.base_manifest = lex.base_gen, lex.base_manifest
    return seg


#: A loaded BM25 index: a base alone, or a base with a delta.
Lexical: TypeAlias = "LexicalIndex | Segmented"
