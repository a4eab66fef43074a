"""Writing one generation of the index: its files first, each atomically or appended and
fsynced, then ``state.json``, which names the generation, then every other file of the index
directory removed. :func:`memp_cli.index.writer.sync` decides what goes in it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memp_cli.index.state import (
    INDEX_FILE_NAME,
    INDEX_VERSION,
    KW_VERSION,
    STATE_NAME,
    State,
    delta_path,
    hnsw_path,
    kw_paths,
    state_path,
    vectors_path,
)
from memp_cli.index.vectors import RamVectors, VectorFile, save_hnsw
from memp_cli.store.fsutil import atomic_write, remove_owned

if TYPE_CHECKING:
    from memp_cli.index.keywords import KeywordIndex
    from memp_cli.index.lexseg import Segmented
    from memp_cli.index.records import RecordLog
    from memp_cli.index.vecsync import Graphs
    from memp_cli.store.protocol import MemoryStore


def write_generation(
    store: MemoryStore,
    state: State,
    graphs: Graphs,
    kw: KeywordIndex,
    recs: RecordLog,
    vectors: VectorFile | RamVectors,
    lex: tuple[Segmented, Segmented] | None,
) -> None:
    """Write ``state`` as the next generation: every file of it first (the keyword graph, the
    records appended and fsynced with their manifest and positions, the BM25 arrays, then the
    vectors file's new rows fsynced and the base graph when merged else the delta graph; each
    atomically), then state.json, which names the generation, then remove every other file of
    the index directory (older generations, what an interrupted write left). A process killed
    at any point leaves the last complete generation readable: the rows and records it names
    are never written again, the base it names is only ever replaced by a new file.
    (:func:`_sync` calls the two halves itself, to drop the texts before a merge's base is made.)"""
    written = write_texts(store, state, kw, recs, lex)
    write_graphs(store, state, graphs, vectors, written)


def write_texts(
    store: MemoryStore,
    state: State,
    kw: KeywordIndex,
    recs: RecordLog,
    lex: tuple[Segmented, Segmented] | None,
    stamps: tuple[Any, Any] | None = None,
) -> set[str]:
    """The first half of :func:`write_generation`: the generation's number, its keyword graph,
    records, state columns and BM25 files. Returns the names written. ``stamps``: each
    position's file stat as the sync read it, as two arrays (mtimes, sizes: the sync's
    :class:`~memp_cli.index.entry.Stamps`; else gathered from the records, one more pass)."""
    state.generation += 1
    gen = state.generation
    written = {STATE_NAME}
    state.version = INDEX_VERSION
    bpath = kw_paths(store, gen)[1]
    if kw.hnsw is not None and kw.words:
        save_hnsw(store, kw.hnsw, bpath.name)
        written.add(bpath.name)
    written |= recs.write(store, gen, recs.pos)
    written.update(p.name for p in state.write_columns(store.index_dir, _stamp_columns(recs, stamps)))
    state.lexical = state.procedure = None
    if lex is not None and state.ids:
        from memp_cli.index import lexseg

        state.lexical = lex[0].save(store.index_dir, "lexical", gen)
        state.procedure = lex[1].save(store.index_dir, "procedure", gen)
        for field, m in (("lexical", state.lexical), ("procedure", state.procedure)):
            written.update(p.name for p in lexseg.paths(store.index_dir, field, gen, m))
    return written


def _stamp_columns(recs: RecordLog, stamps: tuple[Any, Any] | None) -> tuple[Any, Any]:
    if stamps is not None:
        return stamps
    rows = recs.records(recs.pos)
    return rows.column("mtime"), rows.column("size")


def write_graphs(
    store: MemoryStore, state: State, graphs: Graphs, vectors: VectorFile | RamVectors, written: set[str]
) -> None:
    """The second half of :func:`write_generation`: the vectors and the graphs (a merge's base
    made now: :meth:`Graphs.complete`), then state.json, then the other files removed."""
    gen = state.generation
    if state.ids:
        vectors.flush()
        written.add(vectors_path(store, state).name)
        graphs.complete(vectors)
        if graphs.merged and graphs.base is not None:
            save_hnsw(store, graphs.base, hnsw_path(store, gen).name)
            state.base_gen = gen
        if state.base_end:
            written.add(hnsw_path(store, state.base_gen).name)
        if state.next_label > state.base_end and graphs.delta is not None:
            save_hnsw(store, graphs.delta, delta_path(store, gen).name)
            written.add(delta_path(store, gen).name)
    state.kw_version = KW_VERSION
    state.version = INDEX_VERSION
    atomic_write(state_path(store), state.to_json())
    remove_owned(store.index_dir, written, INDEX_FILE_NAME)
