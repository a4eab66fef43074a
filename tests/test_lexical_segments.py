"""BM25 as a base plus a delta (memp_cli.index.lexseg): the scores, labels, tie order and bound
of one index over the live documents, bit for bit, through updates, saving, loading and merges."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memp_cli.index import lexseg
from memp_cli.index.lexical import LexicalIndex
from memp_cli.index.lexseg import Segmented

WORDS = ["put", "clean", "mug", "coffeemachine", "apple", "fridge", "two", "heat", "cool", "sink"]
QUERIES = [
    "put a clean mug in coffeemachine",
    "heat the apple",
    "two mug two mug",
    "cool apple in fridge\nput it in sink",
    "nothing matches zebra",
]


def _assert_same(
    got: Segmented, want: LexicalIndex, queries: list[str], ks: tuple[int, ...] = (1, 3, 10)
) -> None:
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.avgdl == want.avgdl
    assert got.vocab_size == want.vocab_size
    probe = np.concatenate([want.labels, [-1, 10**9], got.dead.labels]).astype(np.int64)
    for q in queries:
        for k in ks:
            g, w = got.top(q, k), want.top(q, k)
            assert g[0].tolist() == w[0].tolist(), (q, k)
            np.testing.assert_array_equal(g[1], w[1])
        gl, gs = got.scores(q)
        wl, ws = want.scores(q)
        assert gl.tolist() == wl.tolist()
        np.testing.assert_array_equal(gs, ws)
        np.testing.assert_array_equal(got.score_labels(q, probe), want.score_labels(q, probe))
        assert got.max_score(q) == want.max_score(q)


def _docs(draw: st.DrawFn, n: int, first: int) -> list[tuple[int, str]]:
    text = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(" ".join)
    return [(first + i, draw(text)) for i in range(n)]


@st.composite
def _histories(
    draw: st.DrawFn,
) -> tuple[list[tuple[int, str]], list[tuple[list[int], list[tuple[int, str]]]]]:
    """A base's documents and a few syncs: (labels dropped, documents added) each."""
    base = _docs(draw, draw(st.integers(1, 40)), 0)
    live = [lab for lab, _ in base]
    nxt = len(base)
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        drop = draw(st.lists(st.sampled_from(live), unique=True, max_size=6)) if live else []
        live = [lab for lab in live if lab not in drop]
        add = _docs(draw, draw(st.integers(0, 8)), nxt)
        nxt += len(add)
        live += [lab for lab, _ in add]
        steps.append((drop, add))
    return base, steps


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_histories(), st.booleans())
def test_base_and_delta_score_as_one_index_of_the_live_documents(
    history: tuple[list[tuple[int, str]], list[tuple[list[int], list[tuple[int, str]]]]], copies: bool
) -> None:
    base_docs, steps = history
    if copies:  # many identical texts: the base scores classes (memp_cli.index.classes)
        base_docs = [(lab, base_docs[lab % 3][1]) for lab, _ in base_docs]
    docs = dict(base_docs)
    seg = Segmented.whole(LexicalIndex.build(base_docs))
    with mock.patch.object(lexseg, "MERGE_FRACTION", 100.0):  # never merged: the delta grows
        for drop, add in steps:
            seg = seg.updated(np.asarray(drop, dtype=np.int64), add)
            for lab in drop:
                del docs[lab]
            docs.update(add)
            _assert_same(seg, LexicalIndex.build(list(docs.items())), QUERIES, ks=(1, 4, 50))


def _bigger() -> tuple[list[tuple[int, str]], list[int], list[tuple[int, str]]]:
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 7)))) for _ in range(12)]
    base = [(i, texts[int(rng.integers(0, 12))]) for i in range(400)]  # classes pay: 12 texts
    drop = sorted(int(x) for x in rng.choice(400, size=30, replace=False))
    add = [(400 + i, texts[int(rng.integers(0, 12))] + " heat") for i in range(20)]
    return base, drop, add


def test_dead_documents_never_come_back_even_when_they_top_the_base() -> None:
    base, drop, add = _bigger()
    # The dropped documents are the best matches of the query: the base's top k is all dead.
    base = [(lab, "zebra zebra zebra" if lab in drop else text) for lab, text in base]
    seg = Segmented.whole(LexicalIndex.build(base))
    with mock.patch.object(lexseg, "MERGE_FRACTION", 1.0):
        seg = seg.updated(np.asarray(drop), add)
    assert len(seg.dead) == 30 and len(seg.delta) == 20
    live = [(lab, text) for lab, text in base if lab not in drop] + add
    want = LexicalIndex.build(live)
    _assert_same(seg, want, [*QUERIES, "zebra", "zebra heat", "heat"], ks=(1, 5, 30, 500))
    assert seg.top("zebra", 10)[0].shape[0] == 0


def test_saved_and_loaded_parts_keep_the_base_files_and_score_the_same(tmp_path: Path) -> None:
    base, drop, add = _bigger()
    seg = Segmented.whole(LexicalIndex.build(base))
    m1 = seg.save(tmp_path, "lexical", 1)
    assert "base_gen" not in m1 and "delta" not in m1
    loaded = lexseg.load(tmp_path, "lexical", 1, m1)
    assert isinstance(loaded, LexicalIndex) and loaded.base_gen == 1
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with mock.patch.object(lexseg, "MERGE_FRACTION", 1.0):
        seg2 = lexseg.as_segmented(loaded).updated(np.asarray(drop), add)
    m2 = seg2.save(tmp_path, "lexical", 2)
    assert m2["base_gen"] == 1 and "delta" in m2 and "dead" in m2
    # The base's files are not written again: the new generation adds only its delta and dead.
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name in before} == before
    new = {p.name for p in lexseg.paths(tmp_path, "lexical", 2, m2)} - set(before)
    assert new and all("-2-delta." in n or "-2-dead." in n for n in new)
    got = lexseg.load(tmp_path, "lexical", 2, m2)
    assert isinstance(got, Segmented)
    live = [(lab, text) for lab, text in base if lab not in drop] + add
    _assert_same(got, LexicalIndex.build(live), QUERIES)
    with pytest.raises(ValueError, match="bad base generation"):
        lexseg.load(tmp_path, "lexical", 2, {**m2, "base_gen": 3})
    with pytest.raises(FileNotFoundError):
        lexseg.load(tmp_path, "lexical", 2, {**m2, "base_gen": 0})


def test_a_delta_past_the_fraction_is_merged_into_a_new_base(tmp_path: Path) -> None:
    base, drop, add = _bigger()
    seg = Segmented.whole(LexicalIndex.build(base))
    seg.save(tmp_path, "lexical", 1)
    with mock.patch.object(lexseg, "MERGE_FRACTION", 0.1):  # 30 dead + 20 added > 40
        merged = seg.updated(np.asarray(drop), add)
    assert merged.base_gen is None and len(merged.delta) == 0 and len(merged.dead) == 0
    m = merged.save(tmp_path, "lexical", 2)
    assert "base_gen" not in m and "delta" not in m
    live = [(lab, text) for lab, text in base if lab not in drop] + add
    _assert_same(merged, LexicalIndex.build(live), QUERIES)
    with mock.patch.object(lexseg, "MERGE_FRACTION", 0.2):  # 50 <= 80: kept apart
        kept = seg.updated(np.asarray(drop), add)
    assert kept.base_gen == 1 and len(kept.delta) == 20


def test_subset_holds_exactly_the_asked_documents_postings() -> None:
    base, drop, _ = _bigger()
    ix = LexicalIndex.build(base)
    sub = lexseg.subset(ix, np.asarray(drop, dtype=np.int64))
    want = LexicalIndex.build([(lab, text) for lab, text in base if lab in drop])
    for name in ("terms", "indptr", "doc_idx", "tf", "doclen", "labels"):
        np.testing.assert_array_equal(getattr(sub, f"_{name}"), getattr(want, f"_{name}"))


def test_delta_documents_with_a_base_class_score_as_that_class() -> None:
    base, drop, add = _bigger()
    texts = sorted({text for _, text in base})
    same = [(500 + i, texts[i % len(texts)]) for i in range(25)]  # the base's texts again
    seg = Segmented.whole(LexicalIndex.build(base))
    assert seg.base._classes is not None
    with mock.patch.object(lexseg, "MERGE_FRACTION", 1.0):
        seg = seg.updated(np.asarray(drop), same + add)
    found = seg._delta_classes()
    assert found is not None
    assert found[1].tolist() == [lab for lab, _ in same] and found[2].tolist() == [lab for lab, _ in add]
    live = [(lab, text) for lab, text in base if lab not in drop] + same + add
    _assert_same(seg, LexicalIndex.build(live), [*QUERIES, "heat", texts[0], texts[3]], ks=(1, 5, 30, 500))


def test_a_large_delta_of_base_texts_is_scored_by_class_not_by_its_own_postings() -> None:
    """At a million memories a delta past ``_SCORE_ALL`` was searched by MaxScore over its own
    postings (1-2 ms a query side) though every document of it was in a class of the base, whose
    scores the base had just computed: a gather would do. The documents outside the base's
    classes still count against ``_SCORE_ALL``."""
    base, drop, add = _bigger()
    texts = sorted({text for _, text in base})
    same = [(500 + i, texts[i % len(texts)]) for i in range(25)]
    seg = Segmented.whole(LexicalIndex.build(base))
    with mock.patch.object(lexseg, "MERGE_FRACTION", 1.0):
        seg = seg.updated(np.asarray(drop), same + add[:5])
    live = [(lab, text) for lab, text in base if lab not in drop] + same + add[:5]
    queries = [*QUERIES, "heat", texts[0], texts[3]]
    with (
        mock.patch.object(lexseg, "_SCORE_ALL", 10),  # the delta (30) is past it, its rest (5) not
        mock.patch.object(LexicalIndex, "top", autospec=True, side_effect=LexicalIndex.top) as top,
    ):
        _assert_same(seg, LexicalIndex.build(live), queries, ks=(1, 5, 30))
        assert seg.delta not in {call.args[0] for call in top.call_args_list}
        with mock.patch.object(lexseg, "_SCORE_ALL", 4):  # now the rest is past it too
            seg.top(queries[0], 5)
        assert seg.delta in {call.args[0] for call in top.call_args_list}
    # a lookup of the delta's documents asks the delta only for those outside the base's classes
    with mock.patch.object(
        LexicalIndex, "score_labels", autospec=True, side_effect=LexicalIndex.score_labels
    ) as looked_up:
        _assert_same(seg, LexicalIndex.build(live), queries, ks=(5,))
    asked = {
        lab for call in looked_up.call_args_list if call.args[0] is seg.delta for lab in call.args[2].tolist()
    }
    assert asked and not asked & {lab for lab, _ in same}
