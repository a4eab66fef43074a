"""The derived index: hnswlib vectors + BM25, rebuildable from ``memories/``.

Files in ``<store>/index/`` (JSON and numpy only, never pickle):

- ``state.json``: what a query reads: the embedder and dimension, the generation of the
  files below, and per memory (columnar, in id order): id, label, kind; plus the memory
  files that failed to load at the last sync. Written last, atomically: it names the
  generation of every other file, so a reader never pairs a new graph with old labels.
- ``files-<gen>.json``: what only :func:`sync` (and the freshness check of a small store)
  reads, per memory in the same order: key hash, file mtime and size, and the text the
  BM25 index was built from.
- ``hnsw-<gen>.bin``: the hnswlib graph (cosine space): long-lived processes and batches.
- ``vectors-<gen>.npy``: the same unit vectors as a float32 matrix, row = label (rows of
  labels no memory has are zeros; ``state.labels`` lists the live ones). A one-shot query
  maps it and searches exactly (a matrix-vector product): ~20 ms at 100k memories against
  ~130 ms to load the graph, and recall 1.0.
- ``lexical*``: the BM25 index over the same texts (:mod:`memp_cli.index.lexical`).
- ``keywords-<gen>.json`` and ``keywords-<gen>.bin``: the AveFact keys. Every distinct
  keyword string of the store is embedded once and kept in a second hnswlib graph (label =
  position in the JSON's ``words``); the JSON maps each memory (in ``state.ids`` order, CSR
  ``offsets``/``labels``) to its keyword labels. A memory's keywords are its ``keywords``
  field, or :func:`memp_cli.build.builtin.keywords.extract_keywords` of its task when that is empty.
  Words no memory uses any more are marked deleted but keep their label, so a keyword that
  comes back is not embedded again; ``memp index rebuild`` starts afresh. Only ``--key
  avefact`` (and a sync that changes something) reads these files.

:func:`sync` brings the index up to date with the memory files: new files
are embedded, changed ones (by mtime/size, then key hash) re-embedded,
deleted ones removed, broken ones reported and left out. A memory's keywords
are re-read whenever its file changes; only keyword strings new to the store
are embedded. An index written by an older memp (another ``INDEX_VERSION``) is
rebuilt by the next sync; one written by a newer memp is left alone (an error
says to upgrade).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.backends.embedders import Embedder
from memp_cli.errors import MemoryFileError, ModelError, StoreError
from memp_cli.model.memory import Memory, load_memory_file
from memp_cli.store.fsutil import TMP_PREFIX, atomic_output, atomic_write

if TYPE_CHECKING:
    import hnswlib
    import numpy as np

    from memp_cli.index.lexical import LexicalIndex
    from memp_cli.store import Store

STATE_NAME = "state.json"
# 2: state.json split into state.json (query) + files-<gen>.json (sync); vectors-<gen>.npy.
INDEX_VERSION = 2
# Format of the keyword files; a state with another kw_version (0: none yet, an
# index from before AveFact) gets its keyword files built at the next sync.
KW_VERSION = 1
# Below this many memories every command stats every file to notice hand
# edits; above it, `query` checks the memories directory's mtime only (editors
# save by rename, which changes it) and write commands do the full scan.
FULL_SCAN_LIMIT = 20_000
EMBED_BATCH = 256
_REBUILD_HINT = "the index is derived data: run `memp index rebuild`"


class IndexVersionError(StoreError):
    """The index was written by a newer memp: this one neither reads nor overwrites it."""


@dataclass
class State:
    """``state.json``: what a query needs (see the module docstring)."""

    embedder: str
    dim: int
    generation: int = 0
    next_label: int = 0
    dir_mtime_ns: int = 0
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    # Memory files that failed to load at the last sync: id -> [mtime_ns, size]. A
    # broken file fixed in place (same directory mtime) is noticed by its new stat.
    broken: dict[str, list[int]] = field(default_factory=dict)
    # KW_VERSION of keywords-<generation>.* (0: there are none).
    kw_version: int = 0

    def to_json(self) -> bytes:
        """The JSON form. Reading it is most of a one-shot query's index load, so two columns
        are stored compactly: ``kinds`` as codes into ``kind_names``, and ``labels`` as runs
        ``[first, count]`` of consecutive labels (``label_runs``; one run after a rebuild)
        unless the runs are short, then as a plain list. At 100k memories that reads in
        ~13 ms instead of ~21."""
        d = {"index_version": INDEX_VERSION, **vars(self)}
        runs: list[list[int]] = []
        for lab in self.labels:
            if runs and runs[-1][0] + runs[-1][1] == lab:
                runs[-1][1] += 1
            else:
                runs.append([lab, 1])
        if len(runs) * 4 <= len(self.labels):
            del d["labels"]
            d["label_runs"] = runs
        names = sorted(set(self.kinds))
        code = {k: i for i, k in enumerate(names)}
        del d["kinds"]
        d.update(kind_names=names, kind_codes=[code[k] for k in self.kinds])
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes, path: Path) -> State:
        try:
            d = orjson.loads(raw)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            version = d.pop("index_version", None)
            if isinstance(version, int) and version > INDEX_VERSION:
                raise IndexVersionError(
                    f"{path}: the index was written by a newer memp (index format {version}, "
                    f"this memp reads {INDEX_VERSION})",
                    hint="upgrade memp (pip install -U memp), or run `memp index rebuild` to "
                    "rebuild the index in this version's format",
                )
            if isinstance(version, int) and version < INDEX_VERSION:
                raise StoreError(
                    f"{path}: the index is in an older format ({version}, now {INDEX_VERSION})",
                    hint=_REBUILD_HINT + " (query and index sync rebuild it by themselves)",
                )
            if version != INDEX_VERSION:
                raise ValueError("unknown index version")
            if "label_runs" in d:
                labels: list[int] = []
                for first, count in d.pop("label_runs"):
                    labels.extend(range(first, first + count))
                d["labels"] = labels
            names, codes = d.pop("kind_names"), d.pop("kind_codes")
            state = cls(**d, kinds=list(map(names.__getitem__, codes)))
            if not len(state.ids) == len(state.labels) == len(state.kinds):
                raise ValueError("columns of different lengths")
            return state
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as e:
            raise StoreError(f"{path}: damaged index state ({e})", hint=_REBUILD_HINT) from None


@dataclass
class FileTable:
    """``files-<gen>.json``: per memory, in ``State.ids`` order, what only a sync reads."""

    key_hashes: list[str] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the BM25 text (key text + keywords)

    def append(self, key_hash: str, mtime: int, size: int, text: str) -> None:
        self.key_hashes.append(key_hash)
        self.mtimes.append(mtime)
        self.sizes.append(size)
        self.texts.append(text)

    def to_json(self, generation: int) -> bytes:
        return orjson.dumps({"index_version": INDEX_VERSION, "generation": generation, **vars(self)})


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    embedded: int = 0
    keywords_embedded: int = 0
    broken: list[MemoryFileError] = field(default_factory=list)
    rebuilt: bool = False
    # Why an index the caller did not ask to rebuild was rebuilt (older format, damaged state).
    rebuild_reason: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def _hnswlib() -> Any:
    import hnswlib

    return hnswlib


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


class Index:
    """A loaded index (read side). Create with :func:`load` or :func:`sync`.

    ``hnsw`` (the graph) is read from disk on first use when it was not given, so an index
    loaded with ``load(..., exact=True)`` never reads it unless a caller asks for it.
    """

    def __init__(
        self,
        store: Store,
        state: State,
        hnsw: hnswlib.Index | None,
        lexical: LexicalIndex | None,
        keywords: KeywordIndex | None = None,
        *,
        vectors: np.ndarray | None = None,
        files: FileTable | None = None,
    ) -> None:
        self.store = store
        self.state = state
        self._hnsw = hnsw
        self.lexical = lexical
        self._keywords = keywords
        self._vectors = vectors
        self._files = files
        self._by_label: dict[int, int] | None = None
        self._label_array: np.ndarray | None = None

    @property
    def hnsw(self) -> hnswlib.Index | None:
        """The hnswlib graph (None for an empty index); loaded on first use."""
        if self._hnsw is None and self.state.ids:
            self._hnsw = _load_hnsw(self.store, self.state)
        return self._hnsw

    @property
    def hnsw_loaded(self) -> bool:
        return self._hnsw is not None

    @property
    def vectors_mapped(self) -> bool:
        """Whether the vectors file is open (``load(..., exact=True)``)."""
        return self._vectors is not None

    def vector_matrix(self) -> np.ndarray:
        """The unit vectors, row = label (``vectors-<gen>.npy``, memory-mapped; opened on
        first use). Rows of labels not in ``state.labels`` are zeros."""
        if self._vectors is None:
            import numpy as np

            if not self.state.ids:
                return np.zeros((0, self.state.dim), dtype=np.float32)
            self._vectors = _load_vectors(self.store, self.state)
        return self._vectors

    def label_array(self) -> np.ndarray:
        """``state.labels`` as an int64 array (cached)."""
        if self._label_array is None:
            import numpy as np

            self._label_array = np.asarray(self.state.labels, dtype=np.int64)
        return self._label_array

    def file_table(self) -> FileTable:
        """Key hashes, stats and BM25 texts (``files-<gen>.json``), read on first use."""
        if self._files is None:
            self._files = _load_files(self.store, self.state)
        return self._files

    @property
    def has_keywords(self) -> bool:
        """Whether keyword files exist for this index (an older index has none until a sync)."""
        return self.state.kw_version == KW_VERSION

    def keyword_index(self) -> KeywordIndex:
        """The keyword side, read from disk on first use (only ``--key avefact`` needs it)."""
        if self._keywords is None:
            self._keywords = _load_keywords(self.store, self.state)
        return self._keywords

    def __len__(self) -> int:
        return len(self.state.ids)

    def position_of_label(self, label: int) -> int:
        labels = self.state.labels
        # After a rebuild labels are 0..n-1 in state order: no map to build (10 ms at 100k).
        if 0 <= label < len(labels) and labels[label] == label:
            return label
        if self._by_label is None:
            self._by_label = {lab: i for i, lab in enumerate(self.state.labels)}
        return self._by_label[label]

    def id_of_label(self, label: int) -> str:
        return self.state.ids[self.position_of_label(label)]

    def vectors(self, labels: list[int]) -> np.ndarray:
        """Unit vectors of ``labels`` (live ones), one row each: from the mapped vectors file
        when it is open, else from the graph."""
        import numpy as np

        if not labels or not self.state.ids:
            return np.zeros((0, self.state.dim), dtype=np.float32)
        if self._vectors is not None or self._hnsw is None:
            return np.asarray(self.vector_matrix()[np.asarray(labels, dtype=np.int64)], dtype=np.float32)
        return np.asarray(self._hnsw.get_items(labels), dtype=np.float32)


def state_path(store: Store) -> Path:
    return store.index_dir / STATE_NAME


def read_state(store: Store) -> State | None:
    p = state_path(store)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    return State.from_json(raw, p)


def _hnsw_path(store: Store, generation: int) -> Path:
    return store.index_dir / f"hnsw-{generation}.bin"


def _vectors_path(store: Store, generation: int) -> Path:
    return store.index_dir / f"vectors-{generation}.npy"


def _files_path(store: Store, generation: int) -> Path:
    return store.index_dir / f"files-{generation}.json"


def _load_hnsw(store: Store, state: State) -> hnswlib.Index | None:
    if not state.ids:
        return None
    hnswlib = _hnswlib()
    idx = hnswlib.Index(space="cosine", dim=state.dim)
    path = _hnsw_path(store, state.generation)
    try:
        idx.load_index(str(path), max_elements=max(state.next_label, 1))
    except RuntimeError as e:
        raise StoreError(f"{path}: cannot load the vector index ({e})", hint=_REBUILD_HINT) from None
    idx.set_ef(store.config.index.ef_search)
    return idx


def _load_vectors(store: Store, state: State) -> np.ndarray:
    """``vectors-<gen>.npy`` memory-mapped (read-only), checked against the state."""
    import numpy as np

    path = _vectors_path(store, state.generation)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing", hint=_REBUILD_HINT) from None
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: damaged vectors file ({e})", hint=_REBUILD_HINT) from None
    if arr.dtype != np.float32 or arr.shape != (state.next_label, state.dim):
        raise StoreError(
            f"{path}: the vectors file does not match the state (shape {arr.shape} {arr.dtype}, "
            f"expected ({state.next_label}, {state.dim}) float32)",
            hint=_REBUILD_HINT,
        )
    return np.asarray(arr)  # a plain ndarray view of the mapping


def _load_files(store: Store, state: State) -> FileTable:
    path = _files_path(store, state.generation)
    n = len(state.ids)
    try:
        d = orjson.loads(path.read_bytes())
        if d.pop("index_version", None) != INDEX_VERSION or d.pop("generation", None) != state.generation:
            raise ValueError("another index version or generation")
        table = FileTable(**d)
        if not (len(table.key_hashes) == len(table.mtimes) == len(table.sizes) == len(table.texts) == n):
            raise ValueError(f"{len(table.texts)} entries for {n} memories")
    except FileNotFoundError:
        raise StoreError(f"{path}: missing", hint=_REBUILD_HINT) from None
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise StoreError(f"{path}: damaged index file table ({e})", hint=_REBUILD_HINT) from None
    return table


def check_files(store: Store, state: State) -> None:
    """Raise StoreError unless the files the state names (graph aside) are there and consistent:
    ``files-<gen>.json`` and ``vectors-<gen>.npy`` (``memp doctor``)."""
    _load_files(store, state)
    if state.ids:
        _load_vectors(store, state)


def _kw_paths(store: Store, generation: int) -> tuple[Path, Path]:
    return store.index_dir / f"keywords-{generation}.json", store.index_dir / f"keywords-{generation}.bin"


def _load_keywords(store: Store, state: State) -> KeywordIndex:
    import numpy as np

    jpath, bpath = _kw_paths(store, state.generation)
    hint = "the index is derived data: run `memp index rebuild`"
    if state.kw_version != KW_VERSION:
        raise StoreError(
            f"{store.index_dir}: the index has no keyword data yet", hint="run `memp index sync`"
        )
    try:
        d = orjson.loads(jpath.read_bytes())
        words = d["words"]
        offsets = np.asarray(d["offsets"], dtype=np.int64)
        labels = np.asarray(d["labels"], dtype=np.int64)
        ok = (
            d.get("version") == KW_VERSION
            and isinstance(words, list)
            and len(offsets) == len(state.ids) + 1
            and int(offsets[-1]) == len(labels)
            and (not len(labels) or int(labels.max()) < len(words))
        )
    except FileNotFoundError:
        raise StoreError(f"{jpath}: missing", hint=hint) from None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise StoreError(f"{jpath}: damaged keyword index ({e})", hint=hint) from None
    if not ok:
        raise StoreError(f"{jpath}: the keyword index does not match the state", hint=hint)
    hnsw = None
    if words:
        hnsw = _hnswlib().Index(space="cosine", dim=state.dim)
        try:
            hnsw.load_index(str(bpath), max_elements=len(words))
        except RuntimeError as e:
            raise StoreError(f"{bpath}: cannot load the keyword index ({e})", hint=hint) from None
        hnsw.set_ef(store.config.index.ef_search)
    return KeywordIndex(words, offsets, labels, hnsw)


def _load_lexical(store: Store, state: State, files: FileTable | None = None) -> LexicalIndex | None:
    """The BM25 index; rebuilt in memory (not written: readers never write) when
    its files are missing, damaged or from an older memp."""
    from memp_cli.index.lexical import LexicalIndex

    if not state.ids:
        return None
    try:
        return LexicalIndex.load(store.index_dir)
    except (FileNotFoundError, ValueError):
        texts = (files or _load_files(store, state)).texts
        return LexicalIndex.build(list(zip(state.labels, texts, strict=True)))


def lexical_is_current(store: Store) -> bool:
    from memp_cli.index.lexical import is_current

    return is_current(store.index_dir)


def check_embedder(store: Store, state: State, embedder_name: str, dim: int | None = None) -> None:
    if state.embedder != embedder_name:
        raise ModelError(
            f"the index of {store.root} was built with embedder {state.embedder!r}, not {embedder_name!r}",
            hint=f"set [embedder] name = {embedder_name!r} in memp.toml and run `memp index rebuild`, "
            f"or query with --embedder {state.embedder}",
        )
    if dim is not None and state.dim != dim:
        raise ModelError(
            f"the index of {store.root} has dimension {state.dim}, the embedder gives {dim}",
            hint="run `memp index rebuild` (or restore [embedder] dim in memp.toml)",
        )


def load(
    store: Store, *, keywords: bool = False, state: State | None = None, exact: bool = False
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
            kw = _load_keywords(store, state) if keywords and state.kw_version == KW_VERSION else None
            if exact:
                vectors = _load_vectors(store, state) if state.ids else None
                hnsw = None
            else:
                vectors, hnsw = None, _load_hnsw(store, state)
            lexical = _load_lexical(store, state)
            return Index(store, state, hnsw, lexical, kw, vectors=vectors)
        except StoreError:
            try:
                newer = read_state(store)
            except StoreError:
                newer = None
            if newer is None or newer.generation == state.generation:
                raise
    raise StoreError("the index kept changing while being read", hint="try again")


def _scan(store: Store) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    with os.scandir(store.memories_dir) as it:
        for e in it:
            name = e.name
            if not name.endswith(".toml") or name.startswith(TMP_PREFIX):
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            out[name[:-5]] = (st.st_mtime_ns, st.st_size)
    return out


def is_fresh(store: Store, state: State | None) -> bool:
    """Cheap check that the index matches the memory files."""
    if state is None:
        return not any(True for _ in _iter_toml(store))
    try:
        dir_mtime = store.memories_dir.stat().st_mtime_ns
    except FileNotFoundError:
        return not state.ids
    if dir_mtime != state.dir_mtime_ns:
        return False
    if len(state.ids) > FULL_SCAN_LIMIT:
        return True
    # Files added, removed or saved by rename change the directory's mtime;
    # in-place writes are caught here. Broken files are not in the index: they
    # were reported by the sync that saw them and, if their stat is the same,
    # are unchanged since.
    files = _scan(store)
    if len(files) != len(state.ids) + len(state.broken):
        return False
    for mid, st in state.broken.items():
        if files.pop(mid, None) != tuple(st):
            return False
    try:
        table = _load_files(store, state)
    except StoreError:
        return False  # a sync rebuilds it
    return files == dict(zip(state.ids, zip(table.mtimes, table.sizes, strict=True), strict=True))


def _iter_toml(store: Store) -> Any:
    try:
        for n in os.listdir(store.memories_dir):
            if n.endswith(".toml") and not n.startswith(TMP_PREFIX):
                yield n
    except FileNotFoundError:
        return


def _peek_generation(store: Store) -> int:
    """The generation an unreadable state.json names, if it still says (else 0): a rebuild
    continues after it, so no file name of the old index is reused."""
    try:
        gen = orjson.loads(state_path(store).read_bytes()).get("generation", 0)
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return 0
    return gen if isinstance(gen, int) and gen >= 0 else 0


def sync(
    store: Store,
    embedder: Embedder,
    *,
    rebuild: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Index, SyncReport]:
    """Bring the index up to date with ``memories/``. Takes the writer lock.

    ``rebuild``: remove the index files and embed every memory again. Without it, an index
    from an older memp, or with a damaged state, is rebuilt all the same (``report.rebuilt``,
    ``report.rebuild_reason``), and one from a newer memp raises :class:`IndexVersionError`.
    """
    import numpy as np

    report = SyncReport(rebuilt=rebuild)
    with store.lock:
        try:
            old = read_state(store)
        except IndexVersionError:
            if not rebuild:
                raise
            old = None
        except StoreError as e:  # older format or damaged: derived data, rebuilt
            old = None
            if not rebuild:
                report.rebuilt = True
                report.rebuild_reason = e.message
        last_generation = old.generation if old is not None else _peek_generation(store)
        if rebuild:
            old = None
            clear(store)  # from scratch; the generation goes on, so no file name is reused
        if old is not None and (old.embedder != embedder.name or old.dim != embedder.dim):
            check_embedder(store, old, embedder.name)
            raise ModelError(
                f"the index has dimension {old.dim}, the embedder gives {embedder.dim}",
                hint="run `memp index rebuild`",
            )
        dir_mtime = store.memories_dir.stat().st_mtime_ns
        files = _scan(store)
        state = State(embedder=embedder.name, dim=embedder.dim, generation=last_generation)
        table = FileTable()
        hnsw = None
        old_table = FileTable()
        old_vectors: np.ndarray | None = None
        if old is not None:
            state.generation, state.next_label = old.generation, old.next_label
            state.kw_version = old.kw_version
            try:
                old_table = _load_files(store, old)
                hnsw = _load_hnsw(store, old)
            except StoreError as e:
                old, hnsw = None, None
                state.next_label = 0
                report.rebuilt = True
                report.rebuild_reason = e.message
            else:
                with contextlib.suppress(StoreError):  # else taken from the graph below
                    old_vectors = _load_vectors(store, old) if old.ids else None
        prev: dict[str, int] = {}
        if old is not None:
            prev = {mid: i for i, mid in enumerate(old.ids)}
        to_embed: list[tuple[int, Memory]] = []  # (position in new state, memory)
        removed_labels: list[int] = []
        # per new state position: the keywords of a (re)loaded memory, or its old position
        kw_src: list[list[str] | int] = []
        for mid in sorted(files):
            mtime, size = files[mid]
            i = prev.get(mid)
            if (
                i is not None
                and old is not None
                and (old_table.mtimes[i], old_table.sizes[i]) == (mtime, size)
            ):
                state.ids.append(mid)
                state.labels.append(old.labels[i])
                state.kinds.append(old.kinds[i])
                table.append(old_table.key_hashes[i], mtime, size, old_table.texts[i])
                kw_src.append(i)
                continue
            try:
                mem = load_memory_file(store.memories_dir / f"{mid}.toml")
            except MemoryFileError as e:
                report.broken.append(e)
                state.broken[mid] = [mtime, size]
                if i is not None and old is not None:
                    removed_labels.append(old.labels[i])
                continue
            khash = mem.key_hash()
            if i is not None and old is not None and old_table.key_hashes[i] == khash:
                label = old.labels[i]  # content edit that leaves the keys alone: no re-embed
                report.updated += 1
            else:
                if i is not None and old is not None:
                    label = old.labels[i]
                    report.updated += 1
                else:
                    label = state.next_label
                    state.next_label += 1
                    report.added += 1
                to_embed.append((len(state.ids), mem))
            state.ids.append(mid)
            state.labels.append(label)
            state.kinds.append(mem.kind)
            table.append(khash, mtime, size, _lexical_text(mem))
            kw_src.append(memory_keywords(mem))
        if old is not None:
            gone = set(old.ids) - set(files)
            removed_labels.extend(old.labels[prev[mid]] for mid in gone)
            report.removed = len(gone)
        state.dir_mtime_ns = dir_mtime
        kw_missing = old is None or old.kw_version != KW_VERSION
        vectors_missing = old is not None and bool(old.ids) and old_vectors is None
        changed = report.changed or bool(removed_labels) or kw_missing or report.rebuilt or vectors_missing
        if not changed and old is not None:
            if old.dir_mtime_ns != dir_mtime or old.broken != state.broken:
                atomic_write(state_path(store), state.to_json())  # same generation, same files
            if state.ids and not lexical_is_current(store):
                lex = _write_lexical(store, state, table)  # from an older memp, or damaged
            else:
                lex = _load_lexical(store, state, table)
            return Index(store, state, hnsw, lex, vectors=old_vectors, files=table), report

        cfg = store.config.index
        # The vectors file of the new generation: unchanged rows copied, new ones set below.
        vectors = np.zeros((state.next_label if state.ids else 0, embedder.dim), dtype=np.float32)
        embedded_pos = {pos for pos, _ in to_embed}
        kept = np.array(
            [lab for pos, lab in enumerate(state.labels) if pos not in embedded_pos], dtype=np.int64
        )
        if len(kept):
            if old_vectors is not None:
                vectors[kept] = old_vectors[kept]
            elif hnsw is not None:  # no usable vectors file (an older index, or damaged)
                for start in range(0, len(kept), 8192):
                    part = kept[start : start + 8192]
                    vectors[part] = np.asarray(hnsw.get_items(part.tolist()), dtype=np.float32)
        old_vectors = None  # unmapped before the old generation's files are removed
        if to_embed:
            if hnsw is None:
                hnsw = _hnswlib().Index(space="cosine", dim=embedder.dim)
                hnsw.init_index(
                    max_elements=max(1024, state.next_label),
                    M=cfg.M,
                    ef_construction=cfg.ef_construction,
                    allow_replace_deleted=False,
                )
            need = state.next_label
            if need > hnsw.get_max_elements():
                hnsw.resize_index(max(need, int(hnsw.get_max_elements() * 1.5)))
            done = 0
            for start in range(0, len(to_embed), EMBED_BATCH):
                batch = to_embed[start : start + EMBED_BATCH]
                vecs = embedder.embed([m.key_text() for _, m in batch])
                labels = np.array([state.labels[pos] for pos, _ in batch], dtype=np.int64)
                for lab in labels.tolist():
                    with contextlib.suppress(RuntimeError):
                        hnsw.unmark_deleted(lab)
                hnsw.add_items(vecs, labels, num_threads=1, replace_deleted=False)
                vectors[labels] = unit_rows(vecs)
                done += len(batch)
                report.embedded += len(batch)
                if progress:
                    progress(done, len(to_embed))
        if hnsw is not None:
            for lab in removed_labels:
                with contextlib.suppress(RuntimeError):
                    hnsw.mark_deleted(lab)
        kw = _sync_keywords(store, embedder, state, old, kw_src, kw_missing, report)
        _write(store, state, hnsw, kw, table, vectors)
        lex = _write_lexical(store, state, table)
        store.journal(
            "index.sync",
            added=report.added,
            updated=report.updated,
            removed=report.removed,
            embedded=report.embedded,
            rebuilt=report.rebuilt,
        )
        hnsw_out = hnsw if state.ids else None
        if hnsw_out is not None:
            hnsw_out.set_ef(cfg.ef_search)
        if kw.hnsw is not None:
            kw.hnsw.set_ef(cfg.ef_search)
        return Index(store, state, hnsw_out, lex, kw, files=table), report


def unit_rows(vecs: Any) -> np.ndarray:
    """``vecs`` as float32 rows of norm 1 (zero rows stay zero), as hnswlib's cosine space
    stores them (embedders return them so already, up to rounding)."""
    import numpy as np

    v = np.array(vecs, dtype=np.float32, ndmin=2)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


def _lexical_text(mem: Memory) -> str:
    return mem.key_text() + ("\n" + " ".join(mem.keywords) if mem.keywords else "")


def _sync_keywords(
    store: Store,
    embedder: Embedder,
    state: State,
    old: State | None,
    kw_src: list[list[str] | int],
    kw_missing: bool,
    report: SyncReport,
) -> KeywordIndex:
    """The keyword side for the new state: old labels kept, new words embedded once."""
    import numpy as np

    old_kw: KeywordIndex | None = None
    if old is not None and not kw_missing:
        try:
            old_kw = _load_keywords(store, old)
        except StoreError:
            old_kw = None  # damaged or missing: rebuilt below from the memory files
    words: list[str] = list(old_kw.words) if old_kw is not None else []
    hk = old_kw.hnsw if old_kw is not None else None
    old_live = set(old_kw.live().tolist()) if old_kw is not None else set()
    n_old_words = len(words)
    label_of = {w: lab for lab, w in enumerate(words)}
    offsets = [0]
    flat: list[int] = []
    for pos, src in enumerate(kw_src):
        if isinstance(src, int):
            if old_kw is not None:
                flat.extend(old_kw.row(src).tolist())
                offsets.append(len(flat))
                continue
            try:  # no usable old keyword data: read the (unchanged) file again
                src = memory_keywords(load_memory_file(store.memories_dir / f"{state.ids[pos]}.toml"))
            except MemoryFileError:
                src = []
        for w in src:
            lab = label_of.get(w)
            if lab is None:
                lab = label_of[w] = len(words)
                words.append(w)
            flat.append(lab)
        offsets.append(len(flat))
    new_words = words[n_old_words:]
    if new_words:
        if hk is None:
            hk = _hnswlib().Index(space="cosine", dim=embedder.dim)
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
    live = set(flat)
    if hk is not None:
        for lab in old_live - live:
            with contextlib.suppress(RuntimeError):
                hk.mark_deleted(lab)
        for lab in live - old_live:
            if lab < n_old_words:  # a word no memory used any more, back again
                with contextlib.suppress(RuntimeError):
                    hk.unmark_deleted(lab)
    return KeywordIndex(words, np.asarray(offsets, dtype=np.int64), np.asarray(flat, dtype=np.int64), hk)


def _save_hnsw(store: Store, hnsw: hnswlib.Index, name: str) -> None:
    with atomic_output(store.index_dir / name) as tmp:
        hnsw.save_index(str(tmp))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    import numpy as np

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _write(
    store: Store,
    state: State,
    hnsw: hnswlib.Index | None,
    kw: KeywordIndex,
    table: FileTable,
    vectors: np.ndarray,
) -> None:
    """Write a new generation: every other file first, state.json (which names it) last,
    then remove the older generations."""
    state.generation += 1
    gen = state.generation
    if hnsw is not None and state.ids:
        _save_hnsw(store, hnsw, _hnsw_path(store, gen).name)
    if state.ids:
        _save_npy(_vectors_path(store, gen), vectors)
    jpath, bpath = _kw_paths(store, gen)
    if kw.hnsw is not None and kw.words:
        _save_hnsw(store, kw.hnsw, bpath.name)
    kw_json = {
        "version": KW_VERSION,
        "words": kw.words,
        "offsets": kw.offsets.tolist(),
        "labels": kw.labels.tolist(),
    }
    atomic_write(jpath, orjson.dumps(kw_json))
    atomic_write(_files_path(store, gen), table.to_json(gen))
    state.kw_version = KW_VERSION
    atomic_write(state_path(store), state.to_json())
    keep = {
        _hnsw_path(store, gen).name,
        _vectors_path(store, gen).name,
        _files_path(store, gen).name,
        jpath.name,
        bpath.name,
    }
    for pattern in ("hnsw-*.bin", "vectors-*.npy", "files-*.json", "keywords-*.json", "keywords-*.bin"):
        for p in store.index_dir.glob(pattern):
            if p.name not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()


def _write_lexical(store: Store, state: State, table: FileTable) -> LexicalIndex | None:
    from memp_cli.index.lexical import LexicalIndex

    lex = LexicalIndex.build(list(zip(state.labels, table.texts, strict=True)))
    lex.save(store.index_dir)
    return lex if state.ids else None


def clear(store: Store) -> None:
    """Remove the derived index files (``sync(rebuild=True)`` starts with this)."""
    with contextlib.suppress(OSError):
        state_path(store).unlink()  # first: a reader now sees no index rather than a broken one
    for p in store.index_dir.iterdir():
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
