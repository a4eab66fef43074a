"""The keyword side of an index (AveFact): ``keywords-<gen>.bin`` and the records' keyword data,
what a memory's keywords are, and bringing them up to date at a sync (only keyword strings new
to the store are embedded)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from memp_cli.backends.embedders import Embedder
from memp_cli.errors import StoreError
from memp_cli.index.state import EMBED_BATCH, KW_VERSION, REBUILD_HINT, State, kw_paths
from memp_cli.index.vectors import import_hnswlib
from memp_cli.model.memory import Memory

if TYPE_CHECKING:
    import hnswlib
    import numpy as np

    from memp_cli.index.writer import SyncReport
    from memp_cli.store.protocol import MemoryStore


def memory_keywords(mem: Memory) -> list[str]:
    """The keywords AveFact indexes for ``mem``: its ``keywords`` (whitespace collapsed,
    duplicates and blanks dropped), or the built-in extractor's keywords of its task when
    it has none."""
    out: list[str] = []
    for k in mem.keywords:
        k = " ".join(k.split())
        if k and k not in out:
            out.append(k)
    if out:
        return out
    from memp_cli.build.builtin.keywords import extract_keywords

    return extract_keywords(mem.task)


class KeywordIndex:
    """The keyword side of an index (AveFact), read from ``keywords-<gen>.*``.

    ``words[label]`` is a keyword string; ``labels[offsets[p]:offsets[p+1]]`` are the keyword
    labels of the memory at state position ``p``. A label no memory uses is deleted in ``hnsw``.
    """

    def __init__(
        self, words: list[str], offsets: np.ndarray, labels: np.ndarray, hnsw: hnswlib.Index | None
    ) -> None:
        self.words = words
        self.offsets = offsets
        self.labels = labels
        self.hnsw = hnsw
        self._live: np.ndarray | None = None
        self._inverse: tuple[np.ndarray, np.ndarray] | None = None
        self._matrix: np.ndarray | None = None
        self._row: np.ndarray | None = None

    def row(self, pos: int) -> np.ndarray:
        """Keyword labels of the memory at state position ``pos``."""
        return self.labels[self.offsets[pos] : self.offsets[pos + 1]]

    def live(self) -> np.ndarray:
        """The labels some memory uses (sorted)."""
        import numpy as np

        if self._live is None:
            self._live = np.unique(self.labels)
        return self._live

    def memories_of(self, labels: np.ndarray) -> np.ndarray:
        """Distinct state positions of the memories having any of ``labels`` (sorted)."""
        import numpy as np

        if self._inverse is None:
            n = len(self.offsets) - 1
            owners = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.offsets))
            order = np.argsort(self.labels, kind="stable")
            starts = np.searchsorted(self.labels[order], np.arange(len(self.words) + 1))
            self._inverse = (owners[order], starts)
        owners_sorted, starts = self._inverse
        labels = np.asarray(labels, dtype=np.int64)
        if not len(labels):
            return np.zeros(0, dtype=np.int64)
        parts = [owners_sorted[starts[lab] : starts[lab + 1]] for lab in labels.tolist()]
        return np.unique(np.concatenate(parts))

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(vectors of every live keyword, label -> row in them or -1); loaded once."""
        import numpy as np

        if self._matrix is None or self._row is None:
            live = self.live()
            row = np.full(len(self.words), -1, dtype=np.int64)
            row[live] = np.arange(len(live))
            if self.hnsw is None or not len(live):
                dim = self.hnsw.dim if self.hnsw is not None else 1
                self._matrix = np.zeros((0, dim), dtype=np.float32)
            else:
                self._matrix = np.asarray(self.hnsw.get_items(live.tolist()), dtype=np.float32)
            self._row = row
        return self._matrix, self._row

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        """Unit vectors of ``labels`` (live keywords), one row each."""
        import numpy as np

        if self._matrix is not None and self._row is not None:
            return self._matrix[self._row[labels]]
        assert self.hnsw is not None
        return np.asarray(self.hnsw.get_items(np.asarray(labels).tolist()), dtype=np.float32)


def load_keywords(store: MemoryStore, state: State) -> KeywordIndex:
    jpath = kw_paths(store, state.generation)[0]
    if state.kw_version != KW_VERSION:
        raise StoreError(
            f"{store.index_dir}: the index has no keyword data yet", hint="run `memp index sync`"
        )
    if state.version >= 7:  # the words and each memory's labels are in its records
        from memp_cli.index.records import load_records

        rec = load_records(store, state)
        offsets, labels = rec.keyword_rows()
        return KeywordIndex(rec.words, offsets, labels, load_graph(store, state, len(rec.words)))
    return _load_json(store, state, jpath)


def _load_json(store: MemoryStore, state: State, jpath: Path) -> KeywordIndex:
    """Formats 2-6: ``keywords-<gen>.json`` (words, and per memory its labels as CSR)."""
    import numpy as np

    hint = REBUILD_HINT
    try:
        d = orjson.loads(jpath.read_bytes())
        words = d["words"]
        offsets = np.asarray(d["offsets"], dtype=np.int64)
        labels = np.asarray(d["labels"], dtype=np.int64)
        ok = (
            d.get("version") == KW_VERSION
            and isinstance(words, list)
            and len(offsets) == state.count + 1
            and int(offsets[-1]) == len(labels)
            and (not len(labels) or int(labels.max()) < len(words))
        )
    except FileNotFoundError:
        raise StoreError(f"{jpath}: missing", hint=hint) from None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise StoreError(f"{jpath}: damaged keyword index ({e})", hint=hint) from None
    if not ok:
        raise StoreError(f"{jpath}: the keyword index does not match the state", hint=hint)
    return KeywordIndex(words, offsets, labels, load_graph(store, state, len(words)))


def load_graph(store: MemoryStore, state: State, n_words: int) -> hnswlib.Index | None:
    """The keyword graph ``keywords-<gen>.bin`` (None when there are no words)."""
    if not n_words:
        return None
    bpath = kw_paths(store, state.generation)[1]
    hnsw = import_hnswlib().Index(space="cosine", dim=state.dim)
    try:
        hnsw.load_index(str(bpath), max_elements=n_words)
    except RuntimeError as e:
        raise StoreError(f"{bpath}: cannot load the keyword index ({e})", hint=REBUILD_HINT) from None
    if hnsw.get_current_count() != n_words:
        raise StoreError(f"{bpath}: the keyword graph does not match the words", hint=REBUILD_HINT)
    hnsw.set_ef(store.config.index.ef_search)
    return hnsw


def sync_keywords(
    store: MemoryStore,
    embedder: Embedder,
    graph: hnswlib.Index | None,
    old_live: np.ndarray,
    words: list[str],
    offsets: np.ndarray,
    flat: np.ndarray,
    report: SyncReport,
) -> KeywordIndex:
    """The keyword side of the new generation: ``words`` (the graph's, then new ones), each
    memory's labels (``offsets``/``flat``, CSR by state position). The words the graph lacks are
    embedded into it (a new graph when ``graph`` is None); the words no memory uses any more are
    marked deleted, those used again unmarked (``old_live``: the labels used before)."""
    import numpy as np

    n_old_words = graph.get_current_count() if graph is not None else 0
    hk = graph
    new_words = words[n_old_words:]
    if new_words:
        if hk is None:
            hk = import_hnswlib().Index(space="cosine", dim=embedder.dim)
            hk.init_index(
                max_elements=max(1024, len(words)),
                M=store.config.index.M,
                ef_construction=store.config.index.ef_construction,
                allow_replace_deleted=False,
            )
        if len(words) > hk.get_max_elements():
            hk.resize_index(max(len(words), int(hk.get_max_elements() * 1.5)))
        for start in range(0, len(new_words), EMBED_BATCH):
            batch = new_words[start : start + EMBED_BATCH]
            labs = np.arange(n_old_words + start, n_old_words + start + len(batch), dtype=np.int64)
            hk.add_items(embedder.embed(batch), labs, num_threads=1, replace_deleted=False)
        report.keywords_embedded = len(new_words)
    live = np.unique(flat)
    if hk is not None:
        was = old_live[old_live < n_old_words] if graph is not None else np.zeros(0, dtype=np.int64)
        for lab in np.setdiff1d(was, live).tolist():
            with contextlib.suppress(RuntimeError):
                hk.mark_deleted(lab)
        back = np.setdiff1d(live[live < n_old_words], was) if graph is not None else live[:0]
        for lab in back.tolist():  # a word no memory used any more, back again
            with contextlib.suppress(RuntimeError):
                hk.unmark_deleted(lab)
        if graph is None:  # a new graph: every word no memory uses is deleted
            for lab in np.setdiff1d(np.arange(len(words)), live).tolist():
                with contextlib.suppress(RuntimeError):
                    hk.mark_deleted(lab)
    return KeywordIndex(words, offsets, flat, hk)
