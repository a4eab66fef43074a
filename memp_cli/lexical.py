"""A BM25 index over memory texts, stored as numpy arrays so a fresh process loads it fast.

The index is derived data: the store rebuilds it from every memory's text keys
(task text plus keywords) whenever memories change, and each ``memp query``
process loads it from ``<store>/index/``.

Layout on disk (all in one directory):

- ``lexical.json``: the manifest: format version, vocabulary (term -> term id),
  document count, average document length, BM25 parameters and the names of
  the array files below. It is written last, so a reader that has read a
  manifest always finds the arrays it names.
- ``lexical-<generation>.<name>.npy``: the arrays, postings in CSR form by term:

  - ``indptr`` (int64, ``len(vocab) + 1``): term ``t``'s postings are
    ``indptr[t]:indptr[t + 1]``;
  - ``doc_idx`` (int32): positions into ``labels``, ascending within a term;
  - ``tf`` (float32): term frequency in that document;
  - ``doclen`` (float32, one per document): number of tokens after stopwords;
  - ``labels`` (int64, one per document, ascending): the caller's labels (the
    same labels as the vector index).

Every save writes a new generation of arrays and then replaces the manifest,
so an old manifest keeps pointing at old, complete arrays until it is
replaced; older generations are removed afterwards. Arrays are loaded with
``mmap_mode="r"``: opening costs the same whatever the index size and a query
only pages in the postings of its own terms.

Scores use the non-negative BM25 idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``
and sum over query tokens, so a term repeated in the query counts once per
occurrence; :meth:`LexicalIndex.max_score` uses the same convention, which
keeps ``score / max_score`` within ``[0, 1]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np

from .fsutil import atomic_output, atomic_write

try:  # orjson parses the vocabulary several times faster than json
    import orjson

    def _loads(data: bytes) -> Any:
        return orjson.loads(data)

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - orjson is a dependency, json is the fallback
    import json

    def _loads(data: bytes) -> Any:
        return json.loads(data)

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


MANIFEST = "lexical.json"
FORMAT = "memp-lexical"
FORMAT_VERSION = 1
_ARRAY_PREFIX = "lexical-"
_ARRAYS: dict[str, np.dtype[Any]] = {
    "indptr": np.dtype(np.int64),
    "doc_idx": np.dtype(np.int32),
    "tf": np.dtype(np.float32),
    "doclen": np.dtype(np.float32),
    "labels": np.dtype(np.int64),
}

_WORD = re.compile(r"[a-z0-9]+")

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


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)


class LexicalIndex:
    """BM25 over ``(label, text)`` documents; see the module docstring for the layout."""

    k1: float = 1.2
    b: float = 0.75

    def __init__(
        self,
        *,
        vocab: dict[str, int],
        indptr: np.ndarray,
        doc_idx: np.ndarray,
        tf: np.ndarray,
        doclen: np.ndarray,
        labels: np.ndarray,
        avgdl: float,
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        self._vocab = vocab
        self._indptr = indptr
        self._doc_idx = doc_idx
        self._tf = tf
        self._doclen = doclen
        self._labels = labels
        self.avgdl = float(avgdl)
        self.k1 = float(k1)
        self.b = float(b)

    # ------------------------------------------------------------------ build

    @classmethod
    def build(cls, docs: Iterable[tuple[int, str]], *, k1: float = 1.2, b: float = 0.75) -> LexicalIndex:
        """Index ``(label, text)`` pairs (any sequence or iterable).

        Labels must be distinct non-negative ints (ValueError otherwise); documents
        are stored by ascending label, so the result does not depend on input order.
        """
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

        # Tokenize every distinct word once: word -> term id, or -1 for a stopword.
        vocab: dict[str, int] = {}
        word_ids: dict[str, int] = {}
        get = word_ids.get
        findall = _WORD.findall
        flat: list[int] = []
        counts: list[int] = []
        for src in order.tolist():
            words = findall(pairs[src][1].lower())
            ids = list(map(get, words))
            if None in ids:
                for j, w in enumerate(words):
                    if ids[j] is None:
                        tid = word_ids.get(w)
                        if tid is None:
                            term = _normalize(w)
                            tid = -1 if term is None else vocab.setdefault(term, len(vocab))
                            word_ids[w] = tid
                        ids[j] = tid
            flat.extend(cast("list[int]", ids))  # every None was filled in above
            counts.append(len(ids))

        term_of = np.array(flat, dtype=np.int64)
        doc_of = np.repeat(np.arange(n, dtype=np.int64), np.array(counts, dtype=np.int64))
        keep = term_of >= 0
        term_of = term_of[keep]
        doc_of = doc_of[keep]
        doclen = np.bincount(doc_of, minlength=n).astype(np.float32)
        v = len(vocab)

        # One posting per distinct (term, doc) pair, sorted by term then doc.
        keys, tf = np.unique(term_of * max(n, 1) + doc_of, return_counts=True)
        post_term = keys // max(n, 1)
        doc_idx = (keys - post_term * max(n, 1)).astype(np.int32)
        indptr = np.zeros(v + 1, dtype=np.int64)
        np.cumsum(np.bincount(post_term, minlength=v), out=indptr[1:])
        avgdl = float(doclen.sum(dtype=np.float64) / n) if n else 0.0
        return cls(
            vocab=vocab,
            indptr=indptr,
            doc_idx=doc_idx,
            tf=tf.astype(np.float32),
            doclen=doclen,
            labels=labels,
            avgdl=avgdl,
            k1=k1,
            b=b,
        )

    # ------------------------------------------------------------ save / load

    def save(self, directory: Path) -> None:
        """Write a new generation of arrays, then the manifest, then drop old generations."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        generation = _read_generation(directory) + 1
        tag = f"{generation:08d}-{os.urandom(4).hex()}"
        arrays = {
            "indptr": self._indptr,
            "doc_idx": self._doc_idx,
            "tf": self._tf,
            "doclen": self._doclen,
            "labels": self._labels,
        }
        files: dict[str, str] = {}
        for name, arr in arrays.items():
            fname = f"{_ARRAY_PREFIX}{tag}.{name}.npy"
            with atomic_output(directory / fname) as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(arr, dtype=_ARRAYS[name]), allow_pickle=False)
            files[name] = fname
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "generation": generation,
            "n_docs": len(self),
            "n_terms": len(self._vocab),
            "n_postings": int(self._doc_idx.shape[0]),
            "avgdl": self.avgdl,
            "k1": self.k1,
            "b": self.b,
            "arrays": files,
            "vocab": self._vocab,
        }
        atomic_write(directory / MANIFEST, _dumps(manifest))
        current = set(files.values())
        for entry in os.listdir(directory):
            if entry.startswith(_ARRAY_PREFIX) and entry.endswith(".npy") and entry not in current:
                with contextlib.suppress(OSError):
                    os.unlink(directory / entry)

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        """Load the index saved in ``directory``.

        Raises FileNotFoundError when there is no index there, ValueError when
        the manifest or an array is malformed or inconsistent.
        """
        path = Path(directory) / MANIFEST
        previous: bytes | None = None
        for _attempt in range(5):
            with open(path, "rb") as f:  # FileNotFoundError when absent
                raw = f.read()
            try:
                return cls._from_manifest(Path(directory), raw)
            except FileNotFoundError:
                # A writer replaced the manifest and removed our generation between
                # our two reads: read the new manifest. Same manifest twice: broken.
                if raw == previous:
                    raise
                previous = raw
        raise FileNotFoundError(f"{path}: lexical index keeps changing while loading")

    @classmethod
    def _from_manifest(cls, directory: Path, raw: bytes) -> LexicalIndex:
        where = directory / MANIFEST
        try:
            m = _loads(raw)
        except ValueError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ValueError(f"{where}: not a memp lexical index manifest")
        if m.get("version") != FORMAT_VERSION:
            raise ValueError(f"{where}: unsupported lexical index version {m.get('version')!r}")
        try:
            vocab = m["vocab"]
            files = m["arrays"]
            n_docs = int(m["n_docs"])
            avgdl = float(m["avgdl"])
            k1 = float(m["k1"])
            b = float(m["b"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: missing or bad field ({e})") from None
        if not isinstance(vocab, dict) or not isinstance(files, dict):
            raise ValueError(f"{where}: bad vocab or arrays field")  # noqa: TRY004 (bad file, not bad call)
        arrays: dict[str, np.ndarray] = {}
        for name, dtype in _ARRAYS.items():
            fname = files.get(name)
            if not isinstance(fname, str) or os.path.basename(fname) != fname or not fname:
                raise ValueError(f"{where}: bad file name for array {name!r}")
            try:
                arr = np.load(directory / fname, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise
            except (OSError, ValueError) as e:
                raise ValueError(f"{directory / fname}: unreadable array ({e})") from None
            if arr.dtype != dtype or arr.ndim != 1:
                raise ValueError(f"{directory / fname}: expected 1-d {dtype}, got {arr.ndim}-d {arr.dtype}")
            arrays[name] = np.asarray(arr)  # plain ndarray view of the mapping: no memmap overhead
        indptr = arrays["indptr"]
        n_post = arrays["doc_idx"].shape[0]
        if (
            indptr.shape[0] != len(vocab) + 1
            or int(indptr[0]) != 0
            or int(indptr[-1]) != n_post
            or arrays["tf"].shape[0] != n_post
            or arrays["doclen"].shape[0] != n_docs
            or arrays["labels"].shape[0] != n_docs
        ):
            raise ValueError(f"{where}: arrays do not match the manifest (sizes differ)")
        return cls(vocab=vocab, avgdl=avgdl, k1=k1, b=b, **arrays)

    # ---------------------------------------------------------------- scoring

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """Every document's label, ascending (int64)."""
        return self._labels

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def _query_terms(self, query: str) -> dict[int, int]:
        """Term id -> number of occurrences in the query, for terms in the vocabulary."""
        out: dict[int, int] = {}
        vocab = self._vocab
        for term in tokenize(query):
            tid = vocab.get(term)
            if tid is not None:
                out[tid] = out.get(tid, 0) + 1
        return out

    def _idf(self, tid: int) -> float:
        df = int(self._indptr[tid + 1] - self._indptr[tid])
        n = len(self)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, bm25)`` for every document sharing a term with ``query``, by label asc."""
        terms = self._query_terms(query)
        if not terms:
            return _empty()
        k1, b = self.k1, self.b
        avgdl = self.avgdl if self.avgdl > 0 else 1.0
        idx_parts: list[np.ndarray] = []
        w_parts: list[np.ndarray] = []
        for tid, qtf in terms.items():
            start, end = int(self._indptr[tid]), int(self._indptr[tid + 1])
            if end <= start:
                continue
            idx = self._doc_idx[start:end]
            tf = self._tf[start:end].astype(np.float64)
            norm = self._doclen[idx].astype(np.float64)
            norm *= k1 * b / avgdl
            norm += k1 * (1.0 - b)
            norm += tf
            w = tf * (qtf * self._idf(tid) * (k1 + 1.0))
            w /= norm
            idx_parts.append(idx)
            w_parts.append(w)
        if not idx_parts:
            return _empty()
        if len(idx_parts) == 1:
            pos, acc = idx_parts[0], w_parts[0]
        else:
            all_idx = np.concatenate(idx_parts)
            all_w = np.concatenate(w_parts)
            n = len(self)
            if all_idx.shape[0] * 8 < n:  # few postings: sort them rather than touch every doc
                pos, inv = np.unique(all_idx, return_inverse=True)
                acc = np.bincount(inv, weights=all_w, minlength=pos.shape[0])
            else:
                dense = np.bincount(all_idx, weights=all_w, minlength=n)
                pos = np.flatnonzero(dense)  # every contribution is > 0
                acc = dense[pos]
        return self._labels[pos].astype(np.int64, copy=False), acc.astype(np.float32)

    def score_labels(self, query: str, labels: np.ndarray) -> np.ndarray:
        """BM25 (float32) of ``query`` for each of ``labels``; 0 for no shared term or unknown label."""
        want = np.asarray(labels, dtype=np.int64).ravel()
        out = np.zeros(want.shape[0], dtype=np.float32)
        hit_labels, hit_scores = self.scores(query)
        if hit_labels.shape[0] == 0 or want.shape[0] == 0:
            return out
        at = np.searchsorted(hit_labels, want)
        at_clipped = np.minimum(at, hit_labels.shape[0] - 1)
        found = hit_labels[at_clipped] == want
        out[found] = hit_scores[at_clipped[found]]
        return out

    def top(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` ``(labels, scores)``, by score descending then label ascending."""
        labels, sc = self.scores(query)
        m = sc.shape[0]
        if k <= 0 or m == 0:
            return _empty()
        if k < m:
            kth = np.partition(sc, m - k)[m - k]  # the k-th largest score
            cand = np.flatnonzero(sc >= kth)  # includes every tie at the boundary
            labels, sc = labels[cand], sc[cand]
        order = np.lexsort((labels, -sc))[:k]
        return labels[order], sc[order]

    def max_score(self, query: str) -> float:
        """Upper bound of :meth:`scores` for ``query``: sum of ``idf * (k1 + 1)`` per query token.

        Tokens are counted per occurrence, as in :meth:`scores`; tokens not in
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


def _read_generation(directory: Path) -> int:
    try:
        with open(directory / MANIFEST, "rb") as f:
            gen = _loads(f.read()).get("generation", 0)
        return int(gen) if isinstance(gen, int) else 0
    except (OSError, ValueError, AttributeError):
        return 0


# -------------------------------------------------------------------- benchmark

# fmt: off
_BENCH_WORDS: tuple[str, ...] = (
    "put", "place", "take", "pick", "move", "find", "clean", "heat", "cool", "examine", "look", "slice",
    "rinse", "wash", "turn", "open", "close", "bring", "mug", "cup", "glass", "bowl", "plate", "pan",
    "pot", "kettle", "knife", "fork", "spoon", "spatula", "ladle", "egg", "apple", "tomato", "potato",
    "lettuce", "bread", "butterknife", "saltshaker", "peppershaker", "soapbar", "soapbottle", "sponge",
    "cloth", "towel", "handtowel", "toiletpaper", "spraybottle", "candle", "vase", "statue", "book",
    "pencil", "pen", "cellphone", "creditcard", "keychain", "watch", "remotecontrol", "laptop",
    "pillow", "newspaper", "box", "tissuebox", "cd", "alarmclock", "baseballbat", "basketball",
    "tennisracket", "dishsponge", "winebottle", "houseplant", "desklamp", "floorlamp", "lamp",
    "television", "painting", "mirror", "window", "blinds", "curtains", "coffeemachine", "microwave",
    "fridge", "stoveburner", "sinkbasin", "bathtubbasin", "garbagecan", "countertop", "diningtable",
    "sidetable", "coffeetable", "desk", "dresser", "drawer", "cabinet", "shelf", "safe", "armchair",
    "sofa", "bed", "ottoman", "toilet", "cart", "handtowelholder", "towelholder", "toiletpaperhanger",
    "laundryhamper", "showerdoor", "microwave", "toaster", "red", "blue", "green", "small", "large",
    "clean", "dirty", "hot", "cold", "empty", "full", "two", "three", "first", "second", "left",
    "right", "kitchen", "bathroom", "bedroom", "livingroom", "office", "under", "near", "beside",
    "inside", "behind", "front", "top", "bottom"
)
# fmt: on


def _bench(n_docs: int = 100_000, n_queries: int = 200, seed: int = 0) -> None:  # pragma: no cover
    """Print build, save, load and query timings for ``n_docs`` synthetic memories."""
    import subprocess
    import sys
    import tempfile
    import time

    rng = np.random.default_rng(seed)
    base = list(_BENCH_WORDS)
    # A realistic long tail: base words, numbered receptacles ("cabinet 12") and compounds.
    compounds = [a + b for a in base[:120] for b in base[40:140]]
    words = np.array(base + compounds + [str(i) for i in range(1, 60)])
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    p = 1.0 / ranks**1.05
    p /= p.sum()
    perm = rng.permutation(len(words))
    p = p[perm]
    lengths = rng.integers(6, 15, size=n_docs)
    toks = words[rng.choice(len(words), size=int(lengths.sum()), p=p)]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    fillers = ["a", "the", "in", "some", "on", "and put it in"]
    docs = []
    for i in range(n_docs):
        ws = toks[bounds[i] : bounds[i + 1]].tolist()
        ws.insert(2, fillers[i % len(fillers)])
        docs.append((i * 3 + 1, " ".join(ws) + "."))
    queries = [docs[int(j)][1] for j in rng.integers(0, n_docs, size=n_queries)]

    t0 = time.perf_counter()
    idx = LexicalIndex.build(docs)
    t_build = time.perf_counter() - t0
    print(f"docs={n_docs} vocab={idx.vocab_size} postings={idx._doc_idx.shape[0]} avgdl={idx.avgdl:.2f}")
    print(f"build: {t_build * 1000:.0f} ms")

    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        t0 = time.perf_counter()
        idx.save(d)
        t_save = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"save: {t_save * 1000:.0f} ms, {size / 1e6:.2f} MB on disk")

        loads = []
        for _ in range(20):
            t0 = time.perf_counter()
            loaded = LexicalIndex.load(d)
            loads.append(time.perf_counter() - t0)
        print(f"load (warm page cache, in-process): median {np.median(loads) * 1000:.2f} ms")

        for name, fn in (
            ("scores", loaded.scores),
            ("top(10)", lambda q: loaded.top(q, 10)),
            ("max_score", loaded.max_score),
        ):
            ts = []
            for q in queries:
                t0 = time.perf_counter()
                fn(q)
                ts.append(time.perf_counter() - t0)
            ts_ms = np.array(ts) * 1000
            print(
                f"{name}: median {np.median(ts_ms):.2f} ms, p95 {np.percentile(ts_ms, 95):.2f} ms, max {ts_ms.max():.2f} ms"
            )
        many = np.array([lab for lab, _ in docs[:: max(1, n_docs // 1000)]], dtype=np.int64)
        ts = []
        for q in queries:
            t0 = time.perf_counter()
            loaded.score_labels(q, many)
            ts.append(time.perf_counter() - t0)
        print(f"score_labels({many.shape[0]} labels): median {np.median(ts) * 1000:.2f} ms")

        # What a `memp query` process pays: a fresh interpreter, import, load, one query.
        code = (
            "import time, numpy\n"
            "t0 = time.perf_counter()\n"
            "from memp_cli.lexical import LexicalIndex\n"
            "t1 = time.perf_counter()\n"
            f"ix = LexicalIndex.load({str(d)!r})\n"
            "t2 = time.perf_counter()\n"
            f"ix.top({queries[0]!r}, 10)\n"
            "t3 = time.perf_counter()\n"
            "print(f'{(t1-t0)*1000:.2f} {(t2-t1)*1000:.2f} {(t3-t2)*1000:.2f}')\n"
        )
        root = str(Path(__file__).resolve().parent.parent)
        rows = []
        for _ in range(5):
            res = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
            )
            rows.append([float(x) for x in res.stdout.split()])
        imp, ld, q = np.median(np.array(rows), axis=0)
        print(
            f"fresh process (after numpy import): import memp_cli.lexical {imp:.2f} ms, "
            f"load {ld:.2f} ms, first top(10) {q:.2f} ms, load+query {ld + q:.2f} ms"
        )


if __name__ == "__main__":  # pragma: no cover
    _bench()
