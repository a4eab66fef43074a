"""BM25 over classes of identical documents (memp_cli.index.classes): signatures, saving and
loading, indexes saved before them, and top/score_labels against full scoring on ties."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from memp_cli.index import classes, topk
from memp_cli.index.lexical import LexicalIndex


def _reference(ix: LexicalIndex, query: str, k: int) -> tuple[list[int], np.ndarray]:
    labels, scores = ix.scores(query)
    order = sorted(range(len(labels)), key=lambda i: (-scores[i], labels[i]))[: max(k, 0)]
    return [int(labels[i]) for i in order], scores[order]


def _assert_exact(ix: LexicalIndex, queries: list[str], ks: list[int]) -> None:
    probe = np.concatenate([ix.labels, [-5, 10**9]]).astype(np.int64)
    for q in queries:
        for k in ks:
            want = _reference(ix, q, k)
            got = ix.top(q, k)
            assert got[0].tolist() == want[0], (q, k)
            np.testing.assert_array_equal(got[1], want[1])
        labels, scores = ix.scores(q)
        by_label = dict(zip(labels.tolist(), scores.tolist(), strict=True))
        assert ix.score_labels(q, probe).tolist() == [by_label.get(int(lab), 0.0) for lab in probe]


def _copies(n: int, texts: list[str], seed: int = 0) -> list[tuple[int, str]]:
    rng = np.random.default_rng(seed)
    return [(int(lab), texts[int(rng.integers(0, len(texts)))]) for lab in rng.permutation(3 * n)[:n]]


def test_signatures_equal_exactly_for_the_same_terms_and_frequencies() -> None:
    docs = [(0, "red mug"), (1, "mug red"), (2, "red red mug"), (3, "the a"), (4, "cup"), (5, "")]
    ix = LexicalIndex.build(docs, bigrams=False)
    sig = ix.signatures()
    assert sig.dtype == np.uint64 and sig.shape == (6,)
    assert sig[0] == sig[1]  # the same terms in another order
    assert len({int(sig[0]), int(sig[2]), int(sig[3]), int(sig[4])}) == 4  # tf 2, no terms, other
    assert sig[3] == sig[5] == 0  # no terms at all
    with_bigrams = LexicalIndex.build(docs).signatures()
    assert with_bigrams[0] != with_bigrams[1]  # "red mug" and "mug red" are different bigrams
    many = LexicalIndex.build(_copies(500, ["put mug in fridge", "heat egg", "mug", "a b c d e f"]))
    with mock.patch.object(classes, "_CHUNK", 7):  # postings hashed a few terms at a time
        again = LexicalIndex.build(_copies(500, ["put mug in fridge", "heat egg", "mug", "a b c d e f"]))
    assert again.signatures().tobytes() == many.signatures().tobytes()


def test_classes_group_identical_documents_and_top_expands_them() -> None:
    docs = _copies(400, ["put a clean mug in the fridge", "put a mug in the fridge", "heat an egg", "cup"])
    ix = LexicalIndex.build(docs)
    cl = ix._classes
    assert cl is not None and len(cl) == 4
    # each class's members are documents with its text, by ascending label
    text_of = dict(docs)
    for c in range(len(cl)):
        members = cl.members[cl.cstart[c] : cl.cstart[c + 1]]
        assert (np.diff(members) > 0).all()
        assert len({text_of[int(ix.labels[m])] for m in members}) == 1
        assert (cl.cls[members] == c).all()
    assert cl.cdoc_idx.shape[0] * 50 < ix._doc_idx.shape[0]  # one document's postings per class
    _assert_exact(
        ix, ["put a clean mug in the fridge", "mug fridge", "egg", "zebra", ""], [1, 3, 99, 100, 101, 500]
    )


def test_ties_between_classes_at_the_kth_score_go_to_the_smaller_labels() -> None:
    """ "x1 common" .. "x5 common" score the same for "common": the k-th best score is shared by five
    classes whose members interleave, so the first k documents come from several of them."""
    texts = [f"x{i} common" for i in range(5)] + ["common common", "other"]
    docs = _copies(300, texts, seed=3)
    ix = LexicalIndex.build(docs, bigrams=False)
    assert ix._classes is not None
    _assert_exact(ix, ["common", "common x2", "x1 x2 x3", "other common"], [*range(0, 60, 7), 250, 299, 300])


def test_a_class_path_and_the_maxscore_path_agree_on_many_documents() -> None:
    rng = np.random.default_rng(11)
    words = [f"w{i}" for i in range(25)]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 6)))) for _ in range(300)]
    docs = _copies(6000, texts, seed=5)
    ix = LexicalIndex.build(docs)
    assert ix._classes is not None
    queries = ["w1 w2", "w3", "w4 w4 w5 w6 w7", " ".join(words)]
    _assert_exact(ix, queries, [1, 10, 50, 400])
    plain = LexicalIndex.build(docs)
    plain._classes = None
    for q in queries:
        for a, b in zip(ix.top(q, 50), plain.top(q, 50), strict=True):
            np.testing.assert_array_equal(a, b)


def test_no_classes_when_documents_are_mostly_different() -> None:
    ix = LexicalIndex.build([(i, f"task {i} item{i % 3}") for i in range(40)])
    assert ix._classes is None
    assert ix.signatures().shape == (40,)


def test_classes_are_saved_and_loaded(tmp_path: Path) -> None:
    docs = _copies(200, ["put mug in fridge", "heat egg", "cool apple in fridge"])
    ix = LexicalIndex.build(docs)
    manifest = ix.save(tmp_path, "lex")
    assert manifest["classes"] == 3 and manifest["sig"] is True
    loaded = LexicalIndex.load(tmp_path, "lex", manifest)
    assert loaded._classes is not None and len(loaded._classes) == 3
    for name, arr in ix._classes.arrays().items() if ix._classes else ():
        got = getattr(loaded._classes, name)
        assert got.dtype == arr.dtype and np.array_equal(got, arr), name
    np.testing.assert_array_equal(loaded.signatures(), ix.signatures())
    _assert_exact(loaded, ["mug fridge", "egg", "apple"], [1, 5, 150])
    for bad in (4, 0):
        with pytest.raises(ValueError, match="class arrays do not match"):
            LexicalIndex.load(tmp_path, "lex", {**manifest, "classes": bad})
    with pytest.raises(ValueError, match="bad manifest field"):
        LexicalIndex.load(tmp_path, "lex", {**manifest, "classes": "many"})
    (tmp_path / "lex.members.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"lex\.members\.npy: missing"):
        LexicalIndex.load(tmp_path, "lex", manifest)


def test_an_index_saved_before_classes_loads_and_its_update_has_them(tmp_path: Path) -> None:
    """An index saved without signatures or classes (memp before them) scores by MaxScore; the
    next sync's update computes the kept documents' signatures and has the same classes and
    arrays as a fresh build."""
    docs = _copies(200, ["put mug in fridge", "heat egg", "cool apple in fridge"])
    manifest = LexicalIndex.build(docs).save(tmp_path, "lex")
    old_manifest = {k: v for k, v in manifest.items() if k not in ("sig", "classes")}
    for name in ("sig", *classes.ARRAYS):
        (tmp_path / f"lex.{name}.npy").unlink()
    old = LexicalIndex.load(tmp_path, "lex", old_manifest)
    assert old._classes is None and old._sig is None
    _assert_exact(old, ["mug fridge", "egg"], [1, 7, 150])
    drop = np.array([lab for lab, _ in docs[:30]], dtype=np.int64)
    new = [(10_000 + i, "heat egg" if i % 2 else "wash plate") for i in range(20)]
    got = old.updated(drop, new)
    want = LexicalIndex.build([d for d in docs[30:]] + new)
    assert got._classes is not None and want._classes is not None
    np.testing.assert_array_equal(got.signatures(), want.signatures())
    for name, arr in want._classes.arrays().items():
        assert np.array_equal(getattr(got._classes, name), arr), name
    _assert_exact(got, ["mug fridge", "egg plate", "wash"], [1, 40, 300])


def test_the_class_threshold() -> None:
    docs = [(i, f"t{i % 10}") for i in range(39)]  # 10 classes of 39 documents: 3.9 per class
    assert LexicalIndex.build(docs)._classes is None
    assert LexicalIndex.build([*docs, (39, "t0")])._classes is not None  # 4 per class
    with mock.patch.object(classes, "MIN_CLASS_SIZE", 1):
        assert LexicalIndex.build(docs[:3])._classes is not None


def test_class_scores_are_the_documents_float64_sums_bit_for_bit() -> None:
    """A class's float64 score is the sum a document's lookup path adds (topk.exact), in the same
    order: not just the same after rounding to float32."""
    rng = np.random.default_rng(2)
    words = [f"w{i}" for i in range(15)]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 9)))) for _ in range(60)]
    ix = LexicalIndex.build(_copies(2000, texts, seed=9), k1=1.3, b=0.7, idf_power=0.5)
    cl = ix._classes
    assert cl is not None
    pos = np.arange(len(ix))
    for q in ["w1 w2 w3", "w4 w4 w1 w9", " ".join(words), "w14"]:
        terms = {t: n for t, n in ix._query_terms(q).items() if ix._indptr[t + 1] > ix._indptr[t]}
        plan = [(t, n * ix._idf(t) * (ix.k1 + 1.0)) for t, n in terms.items()]
        got = cl.scores(plan, ix.k1, ix.b, ix.avgdl)[cl.cls]
        assert got.dtype == np.float64
        assert got.tobytes() == topk.exact(ix, terms, pos).tobytes(), q
