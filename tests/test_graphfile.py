"""memp_cli.index.graphfile reads a graph file's vectors as hnswlib gives them, without loading
the graph; `memp doctor` compares its sample of vectors so, in bounded memory."""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np
import pytest
from conftest import memp
from test_index_format import EMB, _memories, _store

from memp_cli import index as index_mod
from memp_cli.errors import ExitCode
from memp_cli.index import graphfile, vectors
from memp_cli.store import Store


@pytest.mark.parametrize("chunk", [1, 1000, graphfile.CHUNK])
def test_read_items_gives_what_hnswlib_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(graphfile, "CHUNK", chunk)  # 1: an element a read
    rng = np.random.default_rng(3)
    g = hnswlib.Index(space="cosine", dim=16)
    g.init_index(max_elements=400, M=8)
    labels = rng.permutation(10_000)[:300]
    g.add_items(rng.normal(size=(300, 16)).astype(np.float32), labels)
    g.mark_deleted(int(labels[7]))
    path = tmp_path / "g.bin"
    g.save_index(str(path))
    layout = graphfile.Layout.read(path, 16)
    assert layout is not None and layout.count == 300
    asked = [int(x) for x in labels[:40]] + [10_001]  # one no element has
    got = graphfile.read_items(path, 16, asked, layout)
    assert set(got) == set(asked) - {int(labels[7]), 10_001}  # a deleted one is not given
    for lab, vec in got.items():
        assert np.array_equal(vec, np.asarray(g.get_items([lab]), dtype=np.float32)[0])
    assert graphfile.Layout.read(path, 64) is None  # not this dimension's layout
    path.write_bytes(path.read_bytes()[:5000])
    assert graphfile.Layout.read(path, 16) is None  # truncated


def test_doctor_compares_the_graphs_vectors_without_loading_the_graphs(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _store(store, 60)
    st.save_memories(_memories(5, seed=9, start=500), event="test")  # a delta graph too
    index_mod.sync(st, EMB)
    state = index_mod.read_state(st)
    assert state is not None and state.next_label > state.base_end > 0
    idx = index_mod.load(st, exact=True)  # as doctor loads it
    assert idx is not None
    labels = state.labels
    expected = np.asarray(idx.vector_matrix())[labels]
    assert np.allclose(idx.graph_vectors(labels), expected, atol=1e-6)
    assert idx.graph_count() == 65
    assert not idx.hnsw_loaded  # read from the files

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("a graph was loaded")

    monkeypatch.setattr(vectors, "load_graph", no_load)
    assert memp("doctor").stdout == ""
    # a graph whose vectors differ from the file is still found out
    path = index_mod.state.hnsw_path(st, state.base_gen)
    layout = graphfile.Layout.read(path, state.dim)
    assert layout is not None
    raw = bytearray(path.read_bytes())
    for i in range(layout.count):  # every vector of the base graph zeroed
        at = graphfile.HEADER.size + i * layout.per + layout.data_at
        raw[at : at + 4 * state.dim] = bytes(4 * state.dim)
    path.write_bytes(bytes(raw))
    r = memp("doctor", expect=ExitCode.STORE)
    assert "does not match the vector index" in r.stdout
    assert Store.open(store).memory_ids()
