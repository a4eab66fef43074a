"""A rebuild's (and a merge's) memory is about the base graph, not the graph plus everything
else: the rows go into the graph from the vectors file a bounded chunk at a time (never the
whole n x dim matrix, never through the mapping), and the graph is made only once the file
table and the BM25 texts are written and let go of."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_index_scale import _count_built, _memories, _same_arrays

from memp_cli import index as index_mod
from memp_cli.backends.embedders.hashing import HashEmbedder
from memp_cli.errors import StoreError
from memp_cli.index import vecsync, writer
from memp_cli.index.entry import entry
from memp_cli.index.lexical import LexicalIndex
from memp_cli.index.state import FileTable
from memp_cli.index.vectors import VectorFile
from memp_cli.model import memory as memory_model
from memp_cli.model.memory import load_memory_file
from memp_cli.store import Store

EMB = HashEmbedder(256)
CHUNK = 16
# Bytes a rebuild's traced peak may grow by per memory (2k vs 6k memories), up to the records
# written (READ_PER_MEMORY; measured 1,020; ~1,700 holding an Entry object per memory read, 2,273
# before packing) and over the whole rebuild (PER_MEMORY; measured 1,524, the BM25 phase: what
# is held, ~660, and a chunk's merge; 2,112 with one BM25 build of every text; 3,582 before).
READ_PER_MEMORY = 1300
PER_MEMORY = 1800


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every VectorFile.read (start, rows returned), with the fill chunk cut to CHUNK rows;
    mapping the written file during a sync fails the test."""
    monkeypatch.setattr(vecsync, "FILL_ROWS", CHUNK)
    calls: list[tuple[int, int]] = []
    real = VectorFile.read

    def spy(self: VectorFile, start: int, stop: int) -> np.ndarray:
        out = real(self, start, stop)
        calls.append((start, len(out)))
        return out

    monkeypatch.setattr(VectorFile, "read", spy)
    return calls


def _exact_top(st: Store, query: str, k: int) -> list[float]:
    """The ``k`` best cosines over every memory file (ties make ids an unfair comparison)."""
    mems = [load_memory_file(p) for p in st.memories_dir.glob("*.toml")]
    sims = EMB.embed([m.key_text() for m in mems]) @ EMB.embed([query])[0]
    return sorted((float(x) for x in sims), reverse=True)[:k]


def _graph_top(st: Store, query: str, k: int) -> list[float]:
    idx = index_mod.load(st)
    assert idx is not None
    found = idx.search(np.asarray(EMB.embed([query]), dtype=np.float32), k)
    assert found is not None
    return [1.0 - float(d) for d in found[1][0]]


def _same_top(st: Store, query: str, k: int = 5) -> None:
    assert np.allclose(_graph_top(st, query, k), _exact_top(st, query, k), atol=1e-5), query


def test_a_rebuild_fills_the_graph_from_the_file_in_bounded_chunks(
    store: Path, reads: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Store.open(store)
    n = 150
    st.save_memories(_memories(n), event="test")
    mapped: list[int] = []
    real_matrix = VectorFile.matrix

    def matrix(self: VectorFile) -> np.ndarray:
        mapped.append(self.rows)
        return real_matrix(self)

    monkeypatch.setattr(VectorFile, "matrix", matrix)
    saved: list[str] = []
    real_complete = vecsync.Graphs.complete

    def complete(self: vecsync.Graphs, vectors: Any) -> None:
        # the texts of the generation are written: no file table of every memory is alive
        gc.collect()
        tables = [o for o in gc.get_objects() if isinstance(o, FileTable) and len(o.texts) == n]
        assert not tables
        saved.append("complete")
        assert not mapped  # the graph is never filled through the mapping
        real_complete(self, vectors)

    monkeypatch.setattr(vecsync.Graphs, "complete", complete)
    idx, report = index_mod.sync(st, EMB, rebuild=True)
    assert saved == ["complete"] and report.embedded == n
    assert reads and max(rows for _, rows in reads) <= CHUNK
    covered = sorted(r for start, rows in reads for r in range(start, start + rows))
    assert covered == list(range(n))  # every row read once, in order
    assert idx.graph_count() == n
    for q in ("heat some egg", "put a lamp on the shelf 7", "examine the book"):
        _same_top(st, q)


def test_a_merge_reads_only_the_rows_it_adds(store: Path, reads: list[tuple[int, int]]) -> None:
    st = Store.open(store)
    st.save_memories(_memories(80), event="test")
    index_mod.sync(st, EMB)
    base = index_mod.read_state(st)
    assert base is not None and base.base_end == 80
    # 20 more, 5 gone: past 1/8 of the base, so this sync merges the delta into a new base
    for p in sorted(st.memories_dir.glob("*.toml"))[:5]:
        p.unlink()
    st.save_memories(_memories(20, start=200, seed=3), event="test")
    reads.clear()
    idx, _ = index_mod.sync(st, EMB)
    state = index_mod.read_state(st)
    assert state is not None and state.base_gen == state.generation and not state.base_deleted
    assert sorted(r for s, rows in reads for r in range(s, s + rows)) == list(range(80, 100))
    assert max(rows for _, rows in reads) <= CHUNK
    assert idx.graph_count() == 100  # the 5 gone are marked deleted in it
    for q in ("heat some egg", "clean the plate 210", "find an apple"):
        _same_top(st, q)


def test_a_merge_whose_base_is_unreadable_makes_it_from_the_file(
    store: Path, reads: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Store.open(store)
    st.save_memories(_memories(60), event="test")
    index_mod.sync(st, EMB)
    st.save_memories(_memories(30, start=300, seed=5), event="test")

    def unreadable(*args: Any) -> None:
        raise StoreError("damaged")

    monkeypatch.setattr(vecsync, "load_graph", unreadable)
    reads.clear()
    idx, _ = index_mod.sync(st, EMB)
    # the old rows, then the new ones, each a bounded read
    assert sorted(r for s, rows in reads for r in range(s, s + rows)) == list(range(90))
    assert max(rows for _, rows in reads) <= CHUNK
    assert idx.graph_count() == 90
    for q in ("heat some egg", "cool the mug 310"):
        _same_top(st, q)


def test_a_rebuild_builds_bm25_in_chunks_that_equal_one_build(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Store.open(store)
    mems = _memories(60)
    st.save_memories(mems, event="test")
    monkeypatch.setattr(writer, "LEXICAL_CHUNK", 7)
    built = _count_built(monkeypatch)
    idx, _ = index_mod.sync(st, EMB, rebuild=True)
    assert max(built) == 7 and sum(built) == 2 * 60  # both sides, a chunk at a time
    monkeypatch.undo()
    by_id = {m.id: entry(m) for m in mems}
    labels = idx.state.labels
    for got, text in ((idx.lexical, "lexical"), (idx.procedure, "procedure")):
        assert got is not None
        whole = LexicalIndex.build(
            (lab, getattr(by_id[mid], text)) for mid, lab in zip(idx.state.ids, labels, strict=True)
        )
        _same_arrays(got, whole)


def _rebuild_peaks(st: Store) -> tuple[int, int]:
    """tracemalloc's peaks over a rebuild, less what was held before it: up to the records
    written (every memory read), and over the whole rebuild."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index_mod.sync(st, EMB, rebuild=True)
        return _read_peak[0] - before, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


_read_peak = [0]


@pytest.mark.slow
def test_a_rebuild_holds_no_python_objects_per_memory(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a rebuild's peak grows by per memory (the graph, made by hnswlib, is not traced):
    the state's columns and the packed records, not an object per memory read or per record,
    nor a BM25 build's temporaries over every memory at once (LEXICAL_CHUNK at a time)."""
    monkeypatch.setattr(writer, "LEXICAL_CHUNK", 1024)
    # Each read's buffer for the largest memory file allowed (16 MB, let go at once) would
    # be the peak at this size, whatever the rebuild holds.
    monkeypatch.setattr(memory_model, "MAX_MEMORY_FILE_BYTES", 1 << 16)
    real = writer._sync_records

    def sync_records(*args: Any) -> Any:
        out = real(*args)
        _read_peak[0] = tracemalloc.get_traced_memory()[1]
        return out

    monkeypatch.setattr(writer, "_sync_records", sync_records)
    st = Store.open(store)
    st.save_memories(_memories(2000), event="test")
    index_mod.sync(st, EMB)
    small = _rebuild_peaks(st)
    st.save_memories(_memories(4000, start=2000, seed=1), event="test")
    index_mod.sync(st, EMB)
    large = _rebuild_peaks(st)
    read, whole = ((b - a) / 4000 for a, b in zip(small, large, strict=True))
    assert read < READ_PER_MEMORY and whole < PER_MEMORY, (small, large, read, whole)


def test_a_rebuild_hands_the_freed_heap_back_before_the_graph(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text phase's freed memory goes back to the system before the base graph is made
    (else it stays resident under the graph: RSS, not tracemalloc, shows it)."""
    vecsync.release_free_heap()  # callable here (glibc's malloc_trim, or nothing)
    order: list[str] = []
    monkeypatch.setattr(vecsync, "release_free_heap", lambda: order.append("release"))
    real_fill = vecsync.fill

    def fill(*args: Any) -> None:
        order.append("fill")
        real_fill(*args)

    monkeypatch.setattr(vecsync, "fill", fill)
    st = Store.open(store)
    st.save_memories(_memories(40), event="test")
    index_mod.sync(st, EMB, rebuild=True)
    assert order[0] == "release" and order.count("release") == 1 and "fill" in order
