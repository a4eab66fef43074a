"""The vector side of an index: the hnswlib graphs (the base ``hnsw-<base_gen>.bin`` and the
delta ``delta-<gen>.bin``) and the unit-vector matrix (``vectors-<vec_gen>.f32``, before format 6
``vectors-<gen>.npy``): loading, checking, searching and writing them.

The vectors file is append-only: row = label, and labels only grow, so a sync appends its
batch's rows (:class:`VectorFile`) and state.json, written after they are on disk, says how many
rows are valid (``next_label``). Rows past that count (a killed sync's) are cut by the next sync
before it appends; a reader maps only the rows its state names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memp_cli.errors import StoreError
from memp_cli.index.graphfile import HEADER  # hnswlib's file header
from memp_cli.index.state import REBUILD_HINT, State, delta_path, hnsw_path, vectors_path
from memp_cli.store.fsutil import atomic_output, open_own

if TYPE_CHECKING:
    import hnswlib
    import numpy as np

    from memp_cli.store.protocol import MemoryStore


def import_hnswlib() -> Any:
    import hnswlib

    return hnswlib


def graph_file(store: MemoryStore, state: State, base: bool) -> Path | None:
    """The file of the base graph (before format 6 the whole graph) or of the delta graph (the
    labels from ``base_end``); None when the state has none."""
    if base:
        return hnsw_path(store, state.base_gen) if state.count and state.base_end else None
    if not state.count or state.version < 6 or state.next_label <= state.base_end:
        return None
    return delta_path(store, state.generation)


def load_hnsw(store: MemoryStore, state: State) -> hnswlib.Index | None:
    """The base graph; None when the state has none."""
    path = graph_file(store, state, base=True)
    return load_graph(store, path, state.dim, state.base_end) if path is not None else None


def load_delta(store: MemoryStore, state: State) -> hnswlib.Index | None:
    """The delta graph; None when the state has none."""
    path = graph_file(store, state, base=False)
    n = state.next_label - state.base_end
    return load_graph(store, path, state.dim, n) if path is not None else None


def load_graph(store: MemoryStore, path: Path, dim: int, n: int) -> hnswlib.Index:
    idx = import_hnswlib().Index(space="cosine", dim=dim)
    try:
        idx.load_index(str(path), max_elements=max(n, 1))
    except RuntimeError as e:
        raise StoreError(f"{path}: cannot load the vector index ({e})", hint=REBUILD_HINT) from None
    idx.set_ef(store.config.index.ef_search)
    return idx


def check_graph_file(store: MemoryStore, state: State) -> None:
    """A cheap check of the base graph a sync leaves unread: its header is sound and the file
    holds the level-0 data the header announces (a truncated file is the common damage)."""
    path = graph_file(store, state, base=True)
    if path is None:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise StoreError(f"{path}: cannot load the vector index ({e.strerror})", hint=REBUILD_HINT) from None
    ok = len(head) == HEADER.size
    if ok:
        _, _, count, per_element, *_ = HEADER.unpack(head)
        ok = count <= state.base_end and size >= HEADER.size + count * per_element
    if not ok:
        raise StoreError(f"{path}: cannot load the vector index (truncated or damaged)", hint=REBUILD_HINT)


def load_vectors(store: MemoryStore, state: State) -> np.ndarray:
    """The vectors file memory-mapped (read-only), checked against the state: exactly the
    ``next_label`` rows it names."""
    import numpy as np

    path = vectors_path(store, state)
    if state.version >= 6:
        return _map_rows(path, state.next_label, state.dim)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing", hint=REBUILD_HINT) from None
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: damaged vectors file ({e})", hint=REBUILD_HINT) from None
    if arr.dtype != np.float32 or arr.shape != (state.next_label, state.dim):
        raise StoreError(
            f"{path}: the vectors file does not match the state (shape {arr.shape} {arr.dtype}, "
            f"expected ({state.next_label}, {state.dim}) float32)",
            hint=REBUILD_HINT,
        )
    return np.asarray(arr)  # a plain ndarray view of the mapping


def unit_rows(vecs: Any) -> np.ndarray:
    """``vecs`` as float32 rows of norm 1 (zero rows stay zero), as hnswlib's cosine space
    stores them (embedders return them so already, up to rounding)."""
    import numpy as np

    v = np.array(vecs, dtype=np.float32, ndmin=2)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


def save_hnsw(store: MemoryStore, hnsw: hnswlib.Index, name: str) -> None:
    with atomic_output(store.index_dir / name) as tmp:
        hnsw.save_index(str(tmp))


def _map_rows(path: Path, rows: int, dim: int) -> np.ndarray:
    import numpy as np

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"{path}: missing", hint=REBUILD_HINT) from None
    if size < rows * dim * 4:
        raise StoreError(
            f"{path}: damaged vectors file ({size} bytes, the state names {rows} rows of {dim} float32)",
            hint=REBUILD_HINT,
        )
    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return np.asarray(np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim)))


class VectorFile:
    """The vectors file a sync writes: rows are written at their label (:meth:`put`) or appended
    (:meth:`append`); :meth:`flush` puts them on disk before state.json names them. Opening cuts
    the file to ``rows`` (what a killed sync appended beyond the last state), or first empties it
    (``fresh``: a new file; rows not put stay zeros)."""

    def __init__(self, path: Path, dim: int, rows: int, *, fresh: bool) -> None:
        self.path, self.dim, self.rows = path, dim, rows
        self._fd = open_own(path, os.O_RDWR, what="the index's vectors file")
        if fresh:
            os.ftruncate(self._fd, 0)
        os.ftruncate(self._fd, rows * dim * 4)

    def put(self, first: int, rows: np.ndarray) -> None:
        """Write ``rows`` at labels ``first``, ``first + 1``, ... (below or at the end)."""
        import numpy as np

        data = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
        view, off = memoryview(data), first * self.dim * 4
        while view:
            n = os.pwrite(self._fd, view, off)
            view, off = view[n:], off + n
        self.rows = max(self.rows, first + len(rows))

    def append(self, labels: np.ndarray, rows: np.ndarray) -> None:
        """Add the rows of new ``labels``, which must be the next ones (``rows``, ``rows + 1``...)."""
        if len(labels) and (int(labels[0]) != self.rows or int(labels[-1]) != self.rows + len(labels) - 1):
            raise ValueError(f"labels {labels[0]}..{labels[-1]} do not follow row {self.rows}")
        self.put(self.rows, rows)

    def flush(self) -> None:
        os.fsync(self._fd)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (within those written) read into a new array: pages read this way
        are not the process's, as a mapping's pages are once touched (a rebuild reads the whole
        file back into the graph: through the mapping that was 0.9 GB more resident at 1M)."""
        import numpy as np

        stop = min(stop, self.rows)
        out = np.empty((max(stop - start, 0), self.dim), dtype=np.float32)
        view, off = out.data.cast("B"), start * self.dim * 4
        while view:
            n = os.preadv(self._fd, [view], off)
            if not n:
                raise StoreError(f"{self.path}: the vectors file is shorter than its {self.rows} rows")
            view, off = view[n:], off + n
        return out

    def matrix(self) -> np.ndarray:
        """The rows written so far, memory-mapped read-only."""
        return _map_rows(self.path, self.rows, self.dim)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def knn(
    graph: hnswlib.Index, qvecs: np.ndarray, k: int, allowed: set[int] | None, dropped: list[int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """``graph``'s nearest (labels, distances) to each query, at most ``k``, the same number
    for every query: only labels in ``allowed`` (when given; hnswlib's filter), none of
    ``dropped`` (over-queried, then dropped: a Python filter on every visited node is slow).
    Fewer than ``k`` when the graph cannot reach that many; None when none."""
    import numpy as np

    count = graph.get_current_count()
    drop = np.asarray(dropped, dtype=np.int64) if dropped and allowed is None else None
    filt = allowed.__contains__ if allowed is not None else None
    want = min(k, count - (len(drop) if drop is not None else 0))
    kk = min(count, k + (min(len(drop), k) if drop is not None else 0))
    ceiling = count  # the most a query may ask for (lowered when asking for more failed)
    while want > 0 and kk > 0:
        try:
            labels, dists = graph.knn_query(qvecs, k=kk, filter=filt, num_threads=1)
        except RuntimeError:  # fewer reachable elements than asked (deletions, the filter)
            ceiling = kk - 1
            kk, want = kk // 2, min(want, ceiling)
            continue
        labels = np.asarray(labels, dtype=np.int64)
        if drop is None:
            return labels[:, :want], dists[:, :want]
        keep = ~np.isin(labels, drop)
        got = int(keep.sum(axis=1).min())
        if got < want and kk < ceiling:
            kk = min(ceiling, kk * 4)
            continue
        width = min(got, want)
        if not width:
            return None
        # each row's first ``width`` kept entries, in order
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        return np.take_along_axis(labels, order, axis=1), np.take_along_axis(dists, order, axis=1)
    return None


class RamVectors:
    """The rows of a sync that writes nothing (:func:`~memp_cli.index.writer.build_in_memory`),
    with the interface of :class:`VectorFile`."""

    def __init__(self, dim: int, rows: int, total: int) -> None:
        import numpy as np

        self.dim, self.rows = dim, rows
        self._arr = np.zeros((max(total, rows), dim), dtype=np.float32)

    def put(self, first: int, rows: np.ndarray) -> None:
        self._arr[first : first + len(rows)] = rows
        self.rows = max(self.rows, first + len(rows))

    def append(self, labels: np.ndarray, rows: np.ndarray) -> None:
        if len(labels):
            self.put(int(labels[0]), rows)

    def flush(self) -> None:
        pass

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._arr[start : min(stop, self.rows)]

    def matrix(self) -> np.ndarray:
        return self._arr[: self.rows]

    def close(self) -> None:
        pass
