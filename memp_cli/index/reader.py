"""The read side: :class:`Index` (a loaded index) and :func:`load` (no sync, no lock)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memp_cli.errors import StoreError
from memp_cli.index import vectors as _vectors
from memp_cli.index.keywords import KeywordIndex, load_keywords
from memp_cli.index.state import (
    KW_VERSION,
    REBUILD_HINT,
    FileTable,
    State,
    load_files,
    read_state,
)

if TYPE_CHECKING:
    from pathlib import Path

    import hnswlib
    import numpy as np

    from memp_cli.index.graphfile import Layout
    from memp_cli.index.lexseg import Lexical
    from memp_cli.store.protocol import MemoryStore


class Index:
    """A loaded index (read side). Create with :func:`load` or :func:`sync`.

    ``hnsw`` (the base graph) and ``delta`` (the delta graph, format 6) are read from disk on
    first use when they were not given, so an index loaded with ``load(..., exact=True)`` never
    reads them unless a caller asks for it. :meth:`search` searches both as one graph.
    """

    def __init__(
        self,
        store: MemoryStore,
        state: State,
        hnsw: hnswlib.Index | None,
        lexical: Lexical | None,
        keywords: KeywordIndex | None = None,
        *,
        vectors: np.ndarray | None = None,
        files: FileTable | None = None,
        procedure: Lexical | None = None,
        delta: hnswlib.Index | None = None,
    ) -> None:
        self.store = store
        self._delta = delta
        self.state = state
        self._hnsw = hnsw
        self.lexical = lexical
        # BM25 over each memory's procedure (Memory.procedure_text); None in an index from
        # before format 4 until a sync upgrades it.
        self.procedure = procedure
        self._keywords = keywords
        self._vectors = vectors
        self._files = files
        self._label_pos: np.ndarray | None = None  # label -> state position, -1: none
        # Damaged files a reader worked around in memory (a sync repairs them).
        self.problems: list[str] = []
        self._label_array: np.ndarray | None = None

    @property
    def hnsw(self) -> hnswlib.Index | None:
        """The hnswlib graph (None for an empty index); loaded on first use."""
        if self._hnsw is None and self.state.count:
            self._hnsw = _vectors.load_hnsw(self.store, self.state)
        return self._hnsw

    @property
    def delta(self) -> hnswlib.Index | None:
        """The delta graph: the labels from ``state.base_end`` (None when there are none)."""
        if self._delta is None:
            self._delta = _vectors.load_delta(self.store, self.state)
        return self._delta

    @property
    def hnsw_loaded(self) -> bool:
        return self._hnsw is not None

    def search(
        self, qvecs: np.ndarray, k: int, allowed: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, cosine distances), each (len(qvecs), <= k), nearest first: the base and the
        delta graph searched as one, without the base's deleted labels; only labels in
        ``allowed`` when given. None when nothing is found."""
        import numpy as np

        parts = [
            found
            for graph, dropped in ((self.hnsw, self.state.base_deleted), (self.delta, []))
            if graph is not None and (found := _vectors.knn(graph, qvecs, k, allowed, dropped)) is not None
        ]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        width = min(k, sum(p[0].shape[1] for p in parts))
        labels = np.concatenate([p[0] for p in parts], axis=1)
        dists = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(dists, axis=1, kind="stable")[:, :width]
        return np.take_along_axis(labels, order, axis=1), np.take_along_axis(dists, order, axis=1)

    def graph_vectors(self, labels: list[int]) -> np.ndarray:
        """The vectors the graphs hold for ``labels`` (base or delta by label); RuntimeError
        when a graph lacks one. A graph not loaded is not loaded for this: its file is read
        (:mod:`~memp_cli.index.graphfile`), in bounded memory."""
        import numpy as np

        from memp_cli.index.graphfile import read_items

        out = np.zeros((len(labels), self.state.dim), dtype=np.float32)
        end = self.state.base_end
        for in_base in (True, False):
            rows = [i for i, lab in enumerate(labels) if (lab < end) == in_base]
            if not rows:
                continue  # a graph no asked label is in is not read
            file = self._graph_file(in_base)
            if file is not None:
                items = read_items(file[0], self.state.dim, [labels[i] for i in rows], file[1])
                lacking = [labels[i] for i in rows if labels[i] not in items]
                if lacking:
                    raise RuntimeError(f"{file[0].name} lacks label {lacking[0]}")
                out[rows] = np.stack([items[labels[i]] for i in rows])
                continue
            graph = self.hnsw if in_base else self.delta
            if graph is None:
                raise RuntimeError(f"no graph holds label {labels[rows[0]]}")
            out[rows] = np.asarray(graph.get_items([labels[i] for i in rows]), dtype=np.float32)
        return out

    def graph_count(self) -> int:
        """How many vectors the graphs hold (deleted ones too); from the files' headers for
        graphs not loaded."""
        total = 0
        for in_base in (True, False):
            file = self._graph_file(in_base)
            if file is not None:
                total += file[1].count
                continue
            graph = self.hnsw if in_base else self.delta
            total += graph.get_current_count() if graph is not None else 0
        return total

    def _graph_file(self, in_base: bool) -> tuple[Path, Layout] | None:
        """The file of the base (or delta) graph and its layout, while that graph is not loaded;
        None when it is loaded, when there is none, or when its file cannot be read so (then
        the graph is loaded, and reports what is wrong with it)."""
        from memp_cli.index.graphfile import Layout

        path = _vectors.graph_file(self.store, self.state, base=in_base)
        if path is None or (self._hnsw if in_base else self._delta) is not None:
            return None
        layout = Layout.read(path, self.state.dim)
        return (path, layout) if layout is not None else None

    @property
    def vectors_mapped(self) -> bool:
        """Whether the vectors file is open (``load(..., exact=True)``)."""
        return self._vectors is not None

    def vector_matrix(self) -> np.ndarray:
        """The unit vectors, row = label (``vectors-<gen>.npy``, memory-mapped; opened on
        first use). Rows of labels not in ``state.labels`` are zeros."""
        if self._vectors is None:
            import numpy as np

            if not self.state.count:
                return np.zeros((0, self.state.dim), dtype=np.float32)
            self._vectors = _vectors.load_vectors(self.store, self.state)
        return self._vectors

    def label_array(self) -> np.ndarray:
        """``state.labels`` as an int64 array (cached; a format 7 state's mapped column)."""
        if self._label_array is None:
            self._label_array = self.state.label_array()
        return self._label_array

    def file_table(self) -> FileTable:
        """Key hashes, stats and BM25 texts (``files-<gen>.json``), read on first use."""
        if self._files is None:
            self._files = load_files(self.store, self.state)
        return self._files

    @property
    def has_keywords(self) -> bool:
        """Whether keyword files exist for this index (an older index has none until a sync)."""
        return self.state.kw_version == KW_VERSION

    def keyword_index(self) -> KeywordIndex:
        """The keyword side, read from disk on first use (only ``--key avefact`` needs it)."""
        if self._keywords is None:
            self._keywords = load_keywords(self.store, self.state)
        return self._keywords

    def __len__(self) -> int:
        return self.state.count

    def position_of_label(self, label: int) -> int:
        labels = self.label_array()
        # After a rebuild labels are 0..n-1 in state order: no map to build (10 ms at 100k).
        if 0 <= label < len(labels) and labels[label] == label:
            return label
        table = self._position_table()
        pos = int(table[label]) if 0 <= label < len(table) else -1
        if pos < 0:
            raise KeyError(label)
        return pos

    def positions(self, labels: np.ndarray) -> np.ndarray:
        """State positions of ``labels`` (live ones), as an array: no table while every label
        asked for is its own position (after a rebuild), else a label -> position table, built
        once."""
        if self._label_pos is None:
            state_labels = self.label_array()
            n = len(state_labels)
            inside = (labels >= 0) & (labels < n)
            if inside.all() and (state_labels[labels] == labels).all():
                return labels
        return self._position_table()[labels]

    def _position_table(self) -> np.ndarray:
        if self._label_pos is None:
            import numpy as np

            live = self.label_array()
            table = np.full(int(live.max()) + 1 if len(live) else 0, -1, dtype=np.int64)
            table[live] = np.arange(len(live), dtype=np.int64)
            self._label_pos = table
        return self._label_pos

    def id_of_label(self, label: int) -> str:
        return self.state.id_at(self.position_of_label(label))

    def vectors(self, labels: list[int]) -> np.ndarray:
        """Unit vectors of ``labels`` (live ones), one row each: rows of the mapped vectors file
        (mapped on first use: a gather, where the graph copies each row out through Python
        lists, ~10x slower), else, when that file cannot be read, from the graph."""
        import numpy as np

        if not labels or not self.state.count:
            return np.zeros((0, self.state.dim), dtype=np.float32)
        if self._vectors is None and self.hnsw_loaded:
            try:
                self.vector_matrix()
            except StoreError:  # a damaged vectors file: the graphs have the vectors too
                return self.graph_vectors(labels)
        return np.asarray(self.vector_matrix()[np.asarray(labels, dtype=np.int64)], dtype=np.float32)


def check_files(store: MemoryStore, state: State) -> None:
    """Raise StoreError unless every file of the state's generation (the graphs aside but for a
    check of the base's size) is there and consistent with it: ``files-<gen>.json``, the
    vectors file, the BM25 arrays and the keyword files (``memp doctor``)."""
    load_files(store, state)
    if state.count:
        _vectors.load_vectors(store, state)
        _vectors.check_graph_file(store, state)
        read_lexical(store, state)
        read_lexical(store, state, "procedure")
    if state.kw_version == KW_VERSION:
        load_keywords(store, state)


def read_lexical(store: MemoryStore, state: State, field: str = "lexical") -> Lexical | None:
    """The BM25 index of the state's generation over the key texts (``field`` "lexical") or the
    procedures ("procedure"); None for an empty index or one from before that field's files were
    part of a generation (format 2; format 3 for "procedure"). StoreError when missing or
    damaged."""
    from memp_cli.index import lexseg

    manifest = state.lexical if field == "lexical" else state.procedure
    if not state.count or manifest is None:
        return None
    try:
        return lexseg.load(store.index_dir, field, state.generation, manifest)
    except FileNotFoundError as e:
        raise StoreError(str(e), hint=REBUILD_HINT) from None
    except ValueError as e:
        raise StoreError(f"damaged BM25 index: {e}", hint=REBUILD_HINT) from None


def load_lexical(
    store: MemoryStore,
    state: State,
    files: FileTable | None = None,
    problems: list[str] | None = None,
    field: str = "lexical",
) -> Lexical | None:
    """A BM25 index (see :func:`read_lexical`); built in memory from the texts of
    ``files-<gen>.json`` (not written: readers never write) when its files are missing or
    damaged (said in ``problems``). The procedure field of an index from before format 4 has
    no texts to build from: None (a sync upgrades it)."""
    from memp_cli.index.lexical import LexicalIndex

    if not state.count or (field == "procedure" and state.version < 4):
        return None
    try:
        lex = read_lexical(store, state, field)
    except StoreError as e:
        if problems is not None:
            problems.append(e.message)
        lex = None
    if lex is None:
        table = files or load_files(store, state)
        texts = table.texts if field == "lexical" else table.procedures
        lex = LexicalIndex.build(list(zip(state.labels, texts, strict=True)))
    return lex


def load(
    store: MemoryStore, *, keywords: bool = False, state: State | None = None, exact: bool = False
) -> Index | None:
    """Load the index as it is on disk (no sync). None when there is none.

    ``keywords``: also read the keyword files (when the index has them).
    ``state``: a state the caller has just read (saves reading state.json again);
    it is re-read if the files it names have changed.
    ``exact``: map the vectors file instead of loading the hnsw graph (a one-shot query:
    ~20 ms against ~130 ms at 100k memories); the graph is still loaded if asked for.
    """
    for attempt in range(3):  # a concurrent writer may replace files between reads
        if attempt or state is None:
            state = read_state(store)
        if state is None:
            return None
        try:
            kw = load_keywords(store, state) if keywords and state.kw_version == KW_VERSION else None
            if exact:
                vectors = _vectors.load_vectors(store, state) if state.count else None
                hnsw = None
            else:
                vectors, hnsw = None, _vectors.load_hnsw(store, state)
            delta = _vectors.load_delta(store, state) if not exact else None
            problems: list[str] = []
            lexical = load_lexical(store, state, problems=problems)
            procedure = load_lexical(store, state, problems=problems, field="procedure")
            idx = Index(store, state, hnsw, lexical, kw, vectors=vectors, procedure=procedure, delta=delta)
            idx.problems = problems
            return idx
        except StoreError:
            try:
                newer = read_state(store)
            except StoreError:
                newer = None
            if newer is None or newer.generation == state.generation:
                raise
    raise StoreError("the index kept changing while being read", hint="try again")
