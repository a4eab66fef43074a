"""The vector side of a sync (:func:`~memp_cli.index.writer.sync`): where the new rows go
(:func:`open_vectors`: the append-only vectors file, see :mod:`~memp_cli.index.vectors`) and
which graph the new vectors go into (:func:`graph_for`: the small delta graph, or a merge into
the base), and the labels no memory has any more (:func:`drop_labels`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memp_cli.errors import StoreError
from memp_cli.index.reader import Index
from memp_cli.index.state import State, hnsw_path, vec_file_path
from memp_cli.index.vectors import RamVectors, VectorFile, import_hnswlib, load_graph

if TYPE_CHECKING:
    import hnswlib
    import numpy as np

    from memp_cli.store.protocol import MemoryStore

# A sync merges the delta graph into the base when the delta (with the base's deleted labels)
# passes 1/MERGE_SHARE of the base: the delta stays small to rewrite, a query's over-query small.
MERGE_SHARE = 8


# Rows read from the vectors file at a time when a graph is filled from it (8 MB at dim 256).
FILL_ROWS = 8192


@dataclass
class Graphs:
    """The graphs a sync adds to: the delta (the base file stays), or, for a merge
    (``merged``), the base, everything going into it and it written as the new base.

    A merge's base is made only by :meth:`complete`, which the writer calls after the
    generation's other files are written and dropped from memory: the base (~1.1 GB at 1M
    memories) is then never in memory beside the file table and the BM25 build. Until then
    :meth:`add` and :meth:`mark_deleted` record what to do to it, in order; the rows come
    back from the vectors file, :data:`FILL_ROWS` at a time."""

    base: hnswlib.Index | None
    delta: hnswlib.Index | None
    merged: bool
    # A merge's base before :meth:`complete`: how to get it (loaded or made afresh), then the
    # steps to apply in order: a label to mark deleted, or (sorted labels, threads) to add.
    make: Callable[[VectorFile | RamVectors], hnswlib.Index] | None = None
    steps: list[int | tuple[np.ndarray, int]] = field(default_factory=list)

    def add(self, labels: np.ndarray, rows: np.ndarray, threads: int) -> None:
        """Add ``rows`` (already in the vectors file at ``labels``, ascending)."""
        if self.merged:
            self.steps.append((labels, threads))
        else:
            assert self.delta is not None
            self.delta.add_items(rows, labels, num_threads=threads, replace_deleted=False)

    def mark_deleted(self, label: int) -> None:
        if self.merged:
            self.steps.append(label)
        else:
            assert self.delta is not None
            with contextlib.suppress(RuntimeError):
                self.delta.mark_deleted(label)

    def complete(self, vectors: VectorFile | RamVectors) -> None:
        """Make the merge's base and apply the recorded steps (nothing for a delta sync)."""
        if self.make is None:
            return
        release_free_heap()  # what the text phase freed, before the base takes its place
        base, steps = self.make(vectors), self.steps
        self.make, self.steps = None, []
        for step in steps:
            if isinstance(step, int):
                with contextlib.suppress(RuntimeError):
                    base.mark_deleted(step)
            else:
                fill(base, vectors, *step)
        self.base = base


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing where
    there is none). The objects and arrays a rebuild's text phase frees (about 1.2 KB a memory)
    otherwise stay resident under the graph made next: at 882k memories, a GB of the peak."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def fill(graph: hnswlib.Index, vectors: VectorFile | RamVectors, labels: np.ndarray, threads: int) -> None:
    """Add the rows of ``labels`` (ascending) from ``vectors`` to ``graph``, in label order,
    reading at most :data:`FILL_ROWS` rows of the file at a time."""
    import numpy as np

    i = 0
    while i < len(labels):
        lo = int(labels[i])
        j = int(np.searchsorted(labels, lo + FILL_ROWS, side="left"))
        part = labels[i:j]
        block = vectors.read(lo, int(part[-1]) + 1)
        graph.add_items(block[part - lo], part, num_threads=threads, replace_deleted=False)
        i = j


def open_vectors(
    store: MemoryStore,
    state: State,
    old: State | None,
    old_vectors: np.ndarray | None,
    delta: hnswlib.Index | None,
    first: int,
    persist: bool,
) -> VectorFile | RamVectors:
    """Where this sync's rows go: the last generation's vectors file, cut to its ``first``
    valid rows; or a new file (a rebuild, an older format, a damaged file) with the old rows
    copied (from the old file, else from the graphs); in memory when not ``persist``."""
    import numpy as np

    if not persist:
        out: VectorFile | RamVectors = RamVectors(state.dim, first, state.next_label)
    elif old is not None and old.version >= 6 and old_vectors is not None:
        return VectorFile(vec_file_path(store, state.vec_gen), state.dim, first, fresh=False)
    else:
        state.vec_gen = state.generation + 1  # no complete generation names this file yet
        out = VectorFile(vec_file_path(store, state.vec_gen), state.dim, first, fresh=True)
    if old is None or not old.ids or not first:
        return out
    try:
        if old_vectors is not None:
            for start in range(0, first, 8192):
                out.put(start, old_vectors[start : min(first, start + 8192)])
        else:  # no usable vectors file: the rows of the live labels from the graphs
            graphs = Index(store, old, None, None, delta=delta)
            kept = sorted(lab for lab in state.labels if lab < first)
            for start in range(0, len(kept), 8192):
                part = kept[start : start + 8192]
                rows = graphs.graph_vectors(part)
                for lab, row in zip(part, rows, strict=True):
                    out.put(lab, row[np.newaxis])
        out.rows = first
    except BaseException:
        out.close()
        raise
    return out


def graph_for(
    store: MemoryStore,
    state: State,
    delta: hnswlib.Index | None,
    removed_labels: list[int],
    first: int,
) -> Graphs:
    """The graph this sync adds to. The delta, unless it (with the base's deleted labels)
    passes ``1 / MERGE_SHARE`` of the base, or there is no base: then a merge, the base loaded
    (or made afresh) with the delta's live items added, the base's deleted ones marked."""
    import numpy as np

    cfg = store.config.index
    base_removed = sum(lab < state.base_end for lab in removed_labels)
    in_delta = state.next_label - state.base_end
    merge = (
        not state.base_end
        or (in_delta + len(state.base_deleted) + base_removed) * MERGE_SHARE > state.base_end
    )

    def new_graph(n: int) -> hnswlib.Index:
        g = import_hnswlib().Index(space="cosine", dim=state.dim)
        g.init_index(max_elements=max(1024, n), M=cfg.M, ef_construction=cfg.ef_construction)
        return g

    if not merge:
        graph = delta if delta is not None else new_graph(in_delta)
        if in_delta > graph.get_max_elements():
            graph.resize_index(max(in_delta, int(graph.get_max_elements() * 1.5)))
        return Graphs(None, graph, merged=False)
    live = np.array(sorted(lab for lab in state.labels if lab < first), dtype=np.int64)
    start, base_gen, size = state.base_end, state.base_gen, state.next_label

    def make(vectors: VectorFile | RamVectors) -> hnswlib.Index:
        try:
            base = load_graph(store, hnsw_path(store, base_gen), state.dim, start) if start else None
        except StoreError:
            base = None
        if base is None:  # none yet, or unreadable: made afresh, the old rows from the file
            base = new_graph(size)
            fill(base, vectors, live[live < start], 1)
        elif size > base.get_max_elements():
            base.resize_index(size)
        return base

    steps: list[int | tuple[np.ndarray, int]] = [*state.base_deleted, (live[live >= start], 1)]
    state.base_end, state.base_deleted = state.next_label, []
    return Graphs(None, None, merged=True, make=make, steps=steps)


def drop_labels(state: State, graphs: Graphs, labels: list[int]) -> None:
    """Labels no memory has any more: marked deleted in the graph that holds them, or, for
    the base when it is not being rewritten, listed in ``state.base_deleted``."""
    below = set()
    for lab in labels:
        if graphs.merged or lab >= state.base_end:
            graphs.mark_deleted(lab)
        else:
            below.add(lab)
    if below:
        state.base_deleted = sorted(below.union(state.base_deleted))
