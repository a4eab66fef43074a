"""LexicalIndex.top (MaxScore pruning) and score_labels (lookup per term) against full scoring:
the same labels, the same float32 scores, the same tie order, on random indexes."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memp_cli.index import classes, topk
from memp_cli.index.lexical import LexicalIndex

# A skewed vocabulary: w0 is in most documents, w11 in few, so the pruning has work to do.
WORDS = [f"w{i}" for i in range(12)]


def _reference(ix: LexicalIndex, query: str, k: int) -> tuple[list[int], np.ndarray]:
    labels, scores = ix.scores(query)
    order = sorted(range(len(labels)), key=lambda i: (-scores[i], labels[i]))[: max(k, 0)]
    return [int(labels[i]) for i in order], scores[order]


@st.composite
def _indexes(draw: st.DrawFn) -> tuple[list[LexicalIndex], list[str], list[int], np.ndarray]:
    n = draw(st.integers(1, 120))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p = 0.6 ** np.arange(len(WORDS))
    p /= p.sum()
    labels = rng.choice(5 * n, size=n, replace=False)
    docs = []
    for lab in labels.tolist():
        size = int(rng.integers(0, 7))
        lines = [" ".join(rng.choice(WORDS, size=size, p=p))]
        if rng.random() < 0.2:
            lines.append(" ".join(rng.choice(WORDS, size=2)))
        docs.append((lab, "\n".join(lines)))
    params = {
        "k1": draw(st.sampled_from([0.0, 0.5, 1.2, 3.0])),
        "b": draw(st.sampled_from([0.0, 0.4, 0.75, 1.0])),
        "idf_power": draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        "bigrams": draw(st.booleans()),
    }
    if rng.random() < 0.5:  # many copies of few texts: large classes of identical documents
        docs = [(lab, docs[int(rng.integers(0, min(4, n)))][1]) for lab, _ in docs]
    ixs = _variants(docs, **params)
    queries = [
        " ".join(draw(st.lists(st.sampled_from([*WORDS, "zz", "the"]), min_size=0, max_size=8)))
        for _ in range(3)
    ]
    ks = draw(st.lists(st.integers(-1, n + 3), min_size=1, max_size=4))
    probe = rng.choice(6 * n, size=int(rng.integers(0, 2 * n + 1)))  # known and unknown labels
    return ixs, queries, ks, probe


def _variants(docs: list[tuple[int, str]], **params: object) -> list[LexicalIndex]:
    """The index of ``docs`` scored through classes of identical documents, and through MaxScore
    over the documents (no classes)."""
    with mock.patch.object(classes, "MIN_CLASS_SIZE", 1):  # classes however few the copies
        with_classes = LexicalIndex.build(docs, **params)  # type: ignore[arg-type]
    assert with_classes._classes is not None or not docs
    without = LexicalIndex.build(docs, **params)  # type: ignore[arg-type]
    without._classes = None
    return [with_classes, without]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_indexes())
def test_top_and_score_labels_equal_full_scoring(
    case: tuple[list[LexicalIndex], list[str], list[int], np.ndarray],
) -> None:
    ixs, queries, ks, probe = case
    for ix in ixs:
        _check(ix, queries, ks, probe)


def _check(ix: LexicalIndex, queries: list[str], ks: list[int], probe: np.ndarray) -> None:
    for query in queries:
        for k in ks:
            want_labels, want_scores = _reference(ix, query, k)
            for cost in (topk._LOOKUP_COST, 0):  # 0: whole scores of the best few every time
                with mock.patch.object(topk, "_LOOKUP_COST", cost):
                    got_labels, got_scores = ix.top(query, k)
                assert got_labels.tolist() == want_labels
                assert got_labels.dtype == np.int64 and got_scores.dtype == np.float32
                np.testing.assert_array_equal(got_scores, want_scores)
        labels, scores = ix.scores(query)
        by_label = dict(zip(labels.tolist(), scores.tolist(), strict=True))
        got = ix.score_labels(query, probe)
        assert got.dtype == np.float32
        assert got.tolist() == [by_label.get(int(lab), 0.0) for lab in probe]


def test_top_skips_the_postings_of_common_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the bounds are known, a query with a rare term and common ones walks only the rare
    term's postings: the common terms' weights are looked up for the candidates."""
    docs = [(i, "common often" + (" rare" if i % 97 == 0 else "")) for i in range(2000)]
    ix = LexicalIndex.build(docs, bigrams=False)
    ix._classes = None  # MaxScore over the documents (their 3 classes would score them at once)
    query = "rare common often"
    want = _reference(ix, query, 3)
    ix.top(query, 3)  # learns each term's bound
    walked: list[int] = []
    real = LexicalIndex._weights

    def counted(
        self: LexicalIndex, tid: int, qtf: int, sel: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        idx, w = real(self, tid, qtf, sel)
        walked.append(len(idx))
        return idx, w

    monkeypatch.setattr(LexicalIndex, "_weights", counted)
    labels, scores = ix.top(query, 3)
    assert labels.tolist() == want[0]
    np.testing.assert_array_equal(scores, want[1])
    assert max(walked) <= 2000 // 97 + 1  # never a common term's 2000 postings
