"""Retriever.scored against the formula of memp_cli.retrieve.retriever's docstring, on a store
larger than the candidate lists (so candidates of one list get the other scores by lookup),
with duplicate memories (so ties are broken by cosine, then id)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from memp_cli import index as index_mod
from memp_cli.index import unit_rows
from memp_cli.model.memory import Memory
from memp_cli.retrieve.retriever import FAMILY_POOL, Retriever
from memp_cli.store import Store, store_embedder

STEPS = [{"action": "go to shelf 1", "observation": "You arrive at shelf 1."}]
KINDS = {
    "put": "put a {object} in {receptacle}",
    "heat": "put a hot {object} in {receptacle}",
    "cool": "put a cool {object} in {receptacle}",
    "clean": "clean a {object} and put it in {receptacle}",
}
OBJECTS = ["mug", "cup", "pen", "book", "apple", "egg", "plate", "knife", "vase", "pillow"]
PLACES = ["sidetable", "shelf", "drawer", "desk", "fridge", "cabinet", "countertop", "sinkbasin"]
QUERIES = [
    "put a hot mug in sidetable.",
    "clean some knife and put it in drawer",
    "put two vase in desk",
    "cool egg",
]


def _store(path: Path) -> Store:
    rng = random.Random(5)
    memories = []
    for i in range(160):
        kind = rng.choice(sorted(KINDS))
        obj, place = rng.choice(OBJECTS), rng.choice(PLACES)
        task = KINDS[kind].format(object=obj, receptacle=place) + "."
        for d in range(1 + (i % 9 == 0)):  # some memories twice: identical texts tie
            memories.append(
                Memory(
                    id=f"m{i:04d}{d}{rng.randrange(16**6):06x}",
                    kind="procedure",
                    task=task,
                    task_type=kind if i % 7 else "",  # no task type: the procedure is the family
                    success=True,
                    keys=[task],
                    steps=STEPS,
                    script={"title": KINDS[kind], "steps": ["go to {receptacle}"]},
                )
            )
    st = Store.open(path)
    st.save_memories(memories, event="test")
    return st


@pytest.mark.parametrize(("exact", "blank"), [(True, False), (False, False), (False, True)])
def test_scored_follows_the_formula(store: Path, exact: bool, blank: bool) -> None:
    st = _store(store)
    emb = store_embedder(st)
    idx, _ = index_mod.sync(st, emb)
    if blank:  # memories without a family (an index from before families): each its own
        idx.state.families = ["" if i % 3 else fam for i, fam in enumerate(idx.state.families)]
    n = len(idx)
    assert n > 170
    r = Retriever(index=idx, embedder=emb, k=1, exact=exact)  # 50 candidates per list
    w, p, f = r.lexical_weight, r.procedure_weight, r.family_weight
    mat = idx.vector_matrix()
    ids, labels = idx.state.ids, idx.state.labels
    fams = idx.state.families
    assert idx.lexical is not None and idx.procedure is not None
    for q in QUERIES:
        rows = r.scored([q])[0]
        qv = unit_rows(emb.embed([q]))[0]
        labs = [labels[pos] for pos, *_ in rows]
        assert len(set(labs)) == len(labs)
        # The candidates: the 50 nearest by cosine and both BM25 top 50s, and so more than 50.
        cos_all = mat[labels] @ qv
        above = cos_all > np.sort(cos_all)[-50] + 1e-6  # the graph may pick any of equal ones
        assert set(np.array(labels)[above].tolist()) <= set(labs)
        assert set(idx.lexical.top(q, 50)[0].tolist()) <= set(labs)
        assert set(idx.procedure.top(q, 50)[0].tolist()) <= set(labs)
        assert len(labs) > 50
        # Each part from full scoring, the family pooled over the candidates.
        sides = []
        for lex in (idx.lexical, idx.procedure):
            all_l, all_s = lex.scores(q)
            full = dict(zip(all_l.tolist(), all_s.tolist(), strict=True))
            sides.append([full.get(lab, 0.0) / (lex.max_score(q) or 1.0) for lab in labs])
        base = [
            (1 - p) * ((1 - w) * float(mat[lab] @ qv) + w * kl) + p * pr
            for lab, kl, pr in zip(labs, sides[0], sides[1], strict=True)
        ]
        family = [fams[pos] or ids[pos] for pos, *_ in rows]
        best: dict[str, list[float]] = {}
        for fam, b in sorted(zip(family, base, strict=True), key=lambda fb: -fb[1]):
            best.setdefault(fam, []).append(b)
        want = [
            (1 - f) * b + f * sum(best[fam][:FAMILY_POOL]) / FAMILY_POOL
            for fam, b in zip(family, base, strict=True)
        ]
        got = np.array([row[1] for row in rows])
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose([row[3] for row in rows], sides[0], atol=1e-6)
        np.testing.assert_allclose(
            [row[2] for row in rows], [float(mat[lab] @ qv) for lab in labs], atol=1e-6
        )
        # Best first; equal scores by cosine, then id (identical memories tie on both).
        keys = [(-row[1], -row[2], ids[row[0]]) for row in rows]
        assert keys == sorted(keys)
        assert any(a[:2] == b[:2] for a, b in itertools.pairwise(keys))


def test_vectors_come_from_the_mapped_file_else_from_the_graph(store: Path) -> None:
    """A retrieval reads the vectors of BM25-only candidates: rows of the mapped vectors file
    even when the graph is loaded, and from the graph when that file cannot be read."""
    st = _store(store)
    emb = store_embedder(st)
    index_mod.sync(st, emb)
    idx = index_mod.load(st)
    assert idx is not None and idx.hnsw_loaded and not idx.vectors_mapped
    labels = [3, 170, 8]
    got = idx.vectors(labels)
    assert idx.vectors_mapped
    np.testing.assert_array_equal(got, idx.vector_matrix()[labels])
    assert idx.hnsw is not None
    from_graph = np.asarray(idx.hnsw.get_items(labels), dtype=np.float32)
    np.testing.assert_allclose(got, from_graph, atol=1e-6)
    for path in st.index_dir.glob("vectors-*"):  # .npy before format 6, .f32 since
        path.unlink()
    idx = index_mod.load(st)
    assert idx is not None
    np.testing.assert_array_equal(idx.vectors(labels), from_graph)
    assert not idx.vectors_mapped


def test_a_large_index_searches_its_graph_beside_the_bm25_lists(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From OVERLAP_MIN memories the graph search runs on the retriever's own thread while the
    BM25 top lists are made (hnswlib lets go of the GIL): the same ranking as in line, and an
    error of the search reaches the caller."""
    import threading

    from memp_cli.retrieve import retriever as retriever_mod

    st = _store(store)
    emb = store_embedder(st)
    idx, _ = index_mod.sync(st, emb)
    serial = Retriever(index=idx, embedder=emb, k=1, exact=False)
    want = [serial.scored([q]) for q in QUERIES]
    monkeypatch.setattr(retriever_mod, "OVERLAP_MIN", 1)
    r = Retriever(index=idx, embedder=emb, k=1, exact=False)
    threads = []
    search = idx.search

    def spy(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread())
        return search(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(idx, "search", spy)
    assert [r.scored([q]) for q in QUERIES] == want
    assert serial._pool is None and len(threads) == len(QUERIES)
    assert {t.name for t in threads} != {threading.current_thread().name}
    assert len(set(threads)) == 1  # one thread for the retriever, not one per query

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("the graph file went away")

    monkeypatch.setattr(idx, "search", broken)
    with pytest.raises(RuntimeError, match="went away"):
        r.scored([QUERIES[0]])
