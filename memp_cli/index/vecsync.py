"""The vector side of a sync (:func:`~memp_cli.index.writer.sync`): where the new rows go
(:func:`open_vectors`: the append-only vectors file, see :mod:`~memp_cli.index.vectors`) and
which graph the new vectors go into (:func:`graph_for`: the small delta graph, or a merge into
the base), and the labels no memory has any more (:func:`drop_labels`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memp_cli.errors import StoreError
from memp_cli.index.reader import Index
from memp_cli.index.state import State, vec_file_path
from memp_cli.index.vectors import RamVectors, VectorFile, import_hnswlib, load_hnsw

if TYPE_CHECKING:
    import hnswlib
    import numpy as np

    from memp_cli.store.protocol import MemoryStore

# A sync merges the delta graph into the base when the delta (with the base's deleted labels)
# passes 1/MERGE_SHARE of the base: the delta stays small to rewrite, a query's over-query small.
MERGE_SHARE = 8


@dataclass
class Graphs:
    """The graphs a sync adds to: the base (loaded only for a merge: ``merged``, everything
    goes into it and it is written as the new base) or the delta (the base file stays)."""

    base: hnswlib.Index | None
    delta: hnswlib.Index | None
    merged: bool

    @property
    def target(self) -> hnswlib.Index:
        graph = self.base if self.merged else self.delta
        assert graph is not None
        return graph


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
    vectors: VectorFile | RamVectors,
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
    base = None
    if state.base_end:
        try:
            base = load_hnsw(store, state)
        except StoreError:
            base = None  # made afresh from the vectors file below
    live = np.array(sorted(lab for lab in state.labels if lab < first), dtype=np.int64)
    if base is None:
        base, start = new_graph(state.next_label), 0
    else:
        for lab in state.base_deleted:
            with contextlib.suppress(RuntimeError):
                base.mark_deleted(lab)
        start = state.base_end
    if state.next_label > base.get_max_elements():
        base.resize_index(state.next_label)
    to_add = live[live >= start]
    mat = vectors.matrix()
    for i in range(0, len(to_add), 8192):
        part = to_add[i : i + 8192]
        base.add_items(mat[part], part, num_threads=1)
    state.base_end, state.base_deleted = state.next_label, []
    return Graphs(base, None, merged=True)


def drop_labels(state: State, graphs: Graphs, labels: list[int]) -> None:
    """Labels no memory has any more: marked deleted in the graph that holds them, or, for
    the base when it is not being rewritten, listed in ``state.base_deleted``."""
    below = set()
    for lab in labels:
        if graphs.merged or lab >= state.base_end:
            with contextlib.suppress(RuntimeError):
                graphs.target.mark_deleted(lab)
        else:
            below.add(lab)
    if below:
        state.base_deleted = sorted(below.union(state.base_deleted))
