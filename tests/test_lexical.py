from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from memp_cli.index import lexical
from memp_cli.index.lexical import LexicalIndex, term_hashes, terms, tokenize

LN16 = math.log(1.6)  # idf of a term in 2 of 3 documents: ln(1 + (3 - 2 + 0.5) / (2 + 0.5))


def _plain(docs: list[tuple[int, str]], **kw: float) -> LexicalIndex:
    """Textbook BM25 over words: no bigrams, full idf (the hand-computed values below)."""
    return LexicalIndex.build(docs, bigrams=False, idf_power=1.0, **kw)


def _tiny() -> LexicalIndex:
    # Document lengths 2, 3, 1: avgdl = 2.
    return _plain([(10, "red mug"), (20, "mug mug cup"), (30, "cup")])


def _docs() -> list[tuple[int, str]]:
    return [
        (3, "put a clean mug in coffeemachine."),
        (1, "heat some egg and put it in garbagecan."),
        (7, "put two mugs in the cabinet"),
        (2, "cool some apple and put it in fridge"),
        (5, "examine the book with the desklamp"),
        (4, "put a hot potato in the fridge"),
        (9, "the a an of"),
    ]


# ------------------------------------------------------------------ tokenize


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("put a clean mug in coffeemachine.", ["put", "clean", "mug", "coffeemachine"]),
        ("Heat some EGG and put it in GarbageCan.", ["heat", "egg", "put", "garbagecan"]),
        ("find two mugs and put them in cabinet 12", ["find", "two", "mug", "put", "cabinet", "12"]),
        ("glass glasses bus gas", ["glass", "glasse", "bus", "gas"]),
        ("knives, forks; spoons!", ["knive", "fork", "spoon"]),
        ("the apple's core isn't red", ["apple", "core", "isn", "red"]),
        ("2024 items 3s", ["2024", "item", "3s"]),
        ("café déjà-vu", ["caf", "d", "j", "vu"]),
        ("", []),
        ("the a an of to", []),
    ],
)
def test_tokenize(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "put a clean mug in coffeemachine.",
            ["put", "clean", "mug", "coffeemachine", "put clean", "clean mug", "mug coffeemachine"],
        ),
        (
            "find two mugs and put them in cabinet",
            ["find", "two", "mug", "put", "cabinet", "find two", "two mug", "mug put", "put cabinet"],
        ),
        ("put two\nmugs", ["put", "two", "mug", "put two"]),  # no bigram across a line break
        ("mug", ["mug"]),
        ("the a of", []),
    ],
)
def test_terms_with_bigrams(text: str, expected: list[str]) -> None:
    assert terms(text) == expected
    assert terms(text, bigrams=False) == tokenize(text)


def test_term_hashes_match_terms() -> None:
    text = "Put two mugs in the cabinet\nheat an egg and put it in the microwave"
    hashes = term_hashes(text)
    names = terms(text)
    assert len(hashes) == len(names)
    top = 1 << 63
    for name, h in zip(names, hashes, strict=True):
        assert 0 <= h < 1 << 64
        assert bool(h & top) == (" " in name)  # words and bigrams live in disjoint halves
    # Same term, same hash; different order, different bigram.
    assert term_hashes("mug heat")[0] == term_hashes("mug")[0]
    assert term_hashes("heat mug")[-1] != term_hashes("mug heat")[-1]
    assert term_hashes(text, bigrams=False) == hashes[: len(tokenize(text))]


def test_pair_hash_numpy_matches_python() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 1 << 63, size=200, dtype=np.uint64)
    b = rng.integers(0, 1 << 63, size=200, dtype=np.uint64)
    got = lexical._pair_hash_np(a, b)
    assert got.dtype == np.uint64
    assert got.tolist() == [lexical._pair_hash(int(x), int(y)) for x, y in zip(a, b, strict=True)]


def test_bigrams_reward_word_order_and_stay_within_lines() -> None:
    docs = [(1, "heat mug"), (2, "mug heat"), (3, "heat\nmug")]
    plain = LexicalIndex.build(docs, bigrams=False)
    _, flat = plain.scores("heat a mug")
    assert flat[0] == flat[1] == flat[2]  # bag of words: order does not matter
    ix = LexicalIndex.build(docs)
    assert ix.vocab_size == 4  # heat, mug, "heat mug", "mug heat"; none for doc 3
    labels, scores = ix.top("heat a mug", 3)
    # Doc 1 matches the bigram. Doc 2 has it the wrong way round; doc 3 has none but is shorter.
    assert labels.tolist() == [1, 3, 2]
    assert scores[0] > scores[1] > scores[2]


def test_idf_power_dampens_rare_terms() -> None:
    docs = [(i, "put mug" if i else "put soapbar") for i in range(20)]
    full = LexicalIndex.build(docs, bigrams=False, idf_power=1.0)
    half = LexicalIndex.build(docs, bigrams=False, idf_power=0.5)
    none = LexicalIndex.build(docs, bigrams=False, idf_power=0.0)
    idf_put = math.log(1 + 0.5 / 20.5)
    idf_soap = math.log(1 + 19.5 / 1.5)
    for ix, p in ((full, 1.0), (half, 0.5), (none, 0.0)):
        lab, sc = ix.scores("soapbar")
        assert lab.tolist() == [0]
        np.testing.assert_allclose(sc, [idf_soap**p], rtol=1e-6)  # tf 1 in an average-length doc
        assert ix.max_score("put soapbar") == pytest.approx((idf_put**p + idf_soap**p) * 2.2, rel=1e-6)
    # The rare word's share of a perfect match shrinks as the power goes down.
    shares = [ix.scores("soapbar")[1][0] / ix.max_score("put soapbar") for ix in (full, half, none)]
    assert shares[0] > shares[1] > shares[2] == pytest.approx(0.5 / 2.2, rel=1e-6)


@pytest.mark.parametrize("kw", [{"k1": -1.0}, {"b": 1.5}, {"b": -0.1}, {"idf_power": -0.5}])
def test_build_rejects_bad_parameters(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="bad BM25 parameters"):
        LexicalIndex.build(_docs(), **kw)


# ------------------------------------------------------------------ BM25 values


def test_bm25_hand_computed() -> None:
    ix = _tiny()
    assert len(ix) == 3
    assert ix.avgdl == pytest.approx(2.0)
    labels, scores = ix.scores("mug")
    assert labels.dtype == np.int64 and scores.dtype == np.float32
    assert labels.tolist() == [10, 20]
    # doc 10: tf 1, dl 2 -> 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 2 / 2)) = 1
    # doc 20: tf 2, dl 3 -> 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 3 / 2)) = 4.4 / 3.65
    np.testing.assert_allclose(scores, [LN16, LN16 * 4.4 / 3.65], rtol=1e-6)

    labels, scores = ix.scores("mug cup")
    assert labels.tolist() == [10, 20, 30]
    np.testing.assert_allclose(
        scores,
        [
            LN16,
            LN16 * 4.4 / 3.65 + LN16 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 3 / 2)),
            LN16 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 1 / 2)),
        ],
        rtol=1e-6,
    )


def test_idf_of_rare_term_and_query_repetition() -> None:
    ix = _tiny()
    labels, scores = ix.scores("red")
    idf_red = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    assert labels.tolist() == [10]
    np.testing.assert_allclose(scores, [idf_red], rtol=1e-6)
    # A repeated query token counts once per occurrence, in scores and max_score alike.
    _, twice = ix.scores("red red")
    np.testing.assert_allclose(twice, 2 * scores, rtol=1e-6)
    assert ix.max_score("red red") == pytest.approx(2 * ix.max_score("red"), rel=1e-6)


def test_max_score_value() -> None:
    ix = _tiny()
    assert ix.max_score("mug cup") == pytest.approx(2 * LN16 * 2.2, rel=1e-6)
    assert ix.max_score("mug unknownword") == pytest.approx(LN16 * 2.2, rel=1e-6)
    assert ix.max_score("unknownword") == 0.0
    assert ix.max_score("") == 0.0


def test_normalised_scores_within_unit_interval() -> None:
    rng = np.random.default_rng(1)
    words = ["mug", "cup", "egg", "apple", "fridge", "cabinet", "put", "heat", "clean", "two"]
    docs = [(i, " ".join(rng.choice(words, size=int(rng.integers(1, 30))))) for i in range(300)]
    docs.append((1000, "mug " * 500))  # a huge term frequency approaches the bound
    for k1, b, idf_power in ((1.2, 0.75, 1.0), (0.0, 0.75, 0.5), (2.0, 1.0, 0.5), (1.2, 0.0, 0.0)):
        ix = LexicalIndex.build(docs, k1=k1, b=b, idf_power=idf_power)
        for query in ("mug", "mug mug cup", "put two egg in fridge", "heat clean apple cabinet two"):
            _, scores = ix.scores(query)
            norm = scores / np.float32(ix.max_score(query))
            assert scores.size > 0
            assert float(norm.min()) >= 0.0
            assert float(norm.max()) <= 1.0


# ------------------------------------------------------------------ queries


def test_unknown_terms_give_empty_results() -> None:
    ix = LexicalIndex.build(_docs())
    for query in ("zebra", "", "the of and", "!!!"):
        labels, scores = ix.scores(query)
        assert labels.shape == (0,) and scores.shape == (0,)
        assert labels.dtype == np.int64 and scores.dtype == np.float32
        top_labels, top_scores = ix.top(query, 5)
        assert top_labels.size == 0 and top_scores.size == 0
        assert ix.max_score(query) == 0.0


def test_scores_only_docs_sharing_a_term_and_sorted_by_label() -> None:
    ix = LexicalIndex.build(_docs())
    labels, scores = ix.scores("put mug in fridge")
    assert labels.tolist() == [1, 2, 3, 4, 7]
    assert (scores > 0).all()


def test_top_orders_by_score_then_label() -> None:
    # Identical texts tie: the smaller label wins.
    docs = [(8, "red mug"), (2, "red mug"), (5, "red mug"), (1, "mug cup plate"), (9, "cup")]
    ix = LexicalIndex.build(docs)
    labels, scores = ix.top("red mug", 10)
    assert labels.tolist() == [2, 5, 8, 1]
    assert (np.diff(scores) <= 0).all()
    labels, scores = ix.top("red mug", 2)
    assert labels.tolist() == [2, 5]
    assert ix.top("red mug", 0)[0].size == 0
    assert ix.top("red mug", -3)[0].size == 0


def test_top_matches_full_sort_on_random_data() -> None:
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(30)]
    docs = [(int(lab), " ".join(rng.choice(words, size=4))) for lab in rng.permutation(5000)]
    ix = LexicalIndex.build(docs)
    for query in ("w1 w2", "w3", "w4 w4 w5 w6 w7"):
        labels, scores = ix.scores(query)
        order = sorted(range(len(labels)), key=lambda i: (-scores[i], labels[i]))
        for k in (1, 7, 50, len(labels) + 5):
            top_labels, top_scores = ix.top(query, k)
            assert top_labels.tolist() == [int(labels[i]) for i in order[:k]]
            np.testing.assert_array_equal(top_scores, scores[order[:k]])


def _naive_bm25(
    docs: list[tuple[int, str]],
    query: str,
    k1: float = 1.2,
    b: float = 0.75,
    idf_power: float = 1.0,
    bigrams: bool = False,
) -> dict[int, float]:
    toks = {lab: terms(text, bigrams=bigrams) for lab, text in docs}
    n = len(docs)
    avgdl = sum(len(t) for t in toks.values()) / n
    out: dict[int, float] = {}
    for term in terms(query, bigrams=bigrams):
        df = sum(term in t for t in toks.values())
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5)) ** idf_power
        for lab, t in toks.items():
            tf = t.count(term)
            if tf:
                norm = tf + k1 * (1 - b + b * len(t) / avgdl)
                out[lab] = out.get(lab, 0.0) + idf * tf * (k1 + 1) / norm
    return out


def test_matches_naive_bm25_on_dense_and_sparse_paths() -> None:
    # Few postings take the np.unique path, many take the dense bincount path.
    docs = [(i, f"put mug rare{i % 50} rare{i % 7}" if i % 2 else f"rare{i % 50}") for i in range(2000)]
    for bigrams, idf_power in ((False, 1.0), (True, 0.5), (True, 1.0), (False, 0.0)):
        ix = LexicalIndex.build(docs, bigrams=bigrams, idf_power=idf_power)
        for query in ("put mug", "rare1 rare2", "put rare3", "rare3 rare3 mug", "mug", "mug put"):
            expected = _naive_bm25(docs, query, idf_power=idf_power, bigrams=bigrams)
            labels, scores = ix.scores(query)
            assert labels.tolist() == sorted(expected)
            np.testing.assert_allclose(scores, [expected[lab] for lab in sorted(expected)], rtol=1e-6)


def test_score_labels() -> None:
    ix = LexicalIndex.build(_docs())
    labels, scores = ix.scores("put mug")
    by_label = dict(zip(labels.tolist(), scores.tolist(), strict=True))
    want = np.array([7, 5, 3, 9, 123, 1, 7], dtype=np.int64)
    got = ix.score_labels("put mug", want)
    assert got.dtype == np.float32 and got.shape == (7,)
    assert got.tolist() == [by_label.get(int(lab), 0.0) for lab in want]
    assert got[1] == 0.0 and got[3] == 0.0 and got[4] == 0.0  # no shared term / unknown label
    assert ix.score_labels("zebra", want).tolist() == [0.0] * 7
    assert ix.score_labels("put", np.array([], dtype=np.int64)).shape == (0,)


# ------------------------------------------------------------------ build


def test_build_validates_labels() -> None:
    with pytest.raises(ValueError, match="duplicate label 3"):
        LexicalIndex.build([(3, "a mug"), (1, "cup"), (3, "plate")])
    with pytest.raises(ValueError, match="non-negative"):
        LexicalIndex.build([(-1, "a mug")])


def test_empty_index(tmp_path: Path) -> None:
    ix = LexicalIndex.build([])
    assert len(ix) == 0
    assert ix.scores("mug")[0].size == 0
    loaded = LexicalIndex.load(tmp_path, "lex", ix.save(tmp_path, "lex"))
    assert len(loaded) == 0 and loaded.top("mug", 3)[0].size == 0


def test_all_stopword_documents_are_counted() -> None:
    ix = LexicalIndex.build([(0, "the a of"), (1, "mug")])
    assert len(ix) == 2
    assert ix.avgdl == pytest.approx(0.5)
    assert ix.scores("mug")[0].tolist() == [1]


def test_build_is_independent_of_input_order() -> None:
    docs = _docs()
    a = LexicalIndex.build(docs)
    b = LexicalIndex.build(list(reversed(docs)))
    for query in ("put mug", "fridge apple", "two"):
        for x, y in zip(a.scores(query), b.scores(query), strict=True):
            np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ save / load


def _assert_same(a: LexicalIndex, b: LexicalIndex, queries: list[str]) -> None:
    assert len(a) == len(b)
    for query in queries:
        for x, y in zip(a.scores(query), b.scores(query), strict=True):
            np.testing.assert_array_equal(x, y)
        assert a.max_score(query) == b.max_score(query)


def test_save_load_round_trip(tmp_path: Path) -> None:
    ix = LexicalIndex.build(_docs(), k1=1.5, b=0.6, idf_power=0.75)
    manifest = ix.save(tmp_path, "lexical-7")
    loaded = LexicalIndex.load(tmp_path, "lexical-7", manifest)
    assert (loaded.k1, loaded.b, loaded.idf_power, loaded.bigrams) == (1.5, 0.6, 0.75, True)
    assert (loaded.avgdl, loaded.vocab_size) == (ix.avgdl, ix.vocab_size)
    _assert_same(ix, loaded, ["put mug in fridge", "heat egg", "zebra", "examine book desklamp two"])
    np.testing.assert_array_equal(loaded.top("put mug", 3)[0], ix.top("put mug", 3)[0])
    names = sorted(os.listdir(tmp_path))
    assert set(names) <= {p.name for p in lexical.array_paths(tmp_path, "lexical-7").values()}
    assert names == sorted(
        f"lexical-7.{n}.npy" for n in ("terms", "indptr", "doc_idx", "tf", "doclen", "labels", "sig")
    )  # seven different documents: no classes of identical ones (memp_cli.index.classes)
    # the manifest is plain JSON data (the store keeps it in state.json)
    assert orjson.loads(orjson.dumps(manifest)) == manifest


def test_load_missing_raises_file_not_found(tmp_path: Path) -> None:
    manifest = LexicalIndex.build(_docs()).save(tmp_path, "lex")
    with pytest.raises(FileNotFoundError, match=r"lex-other\.terms\.npy: missing"):
        LexicalIndex.load(tmp_path, "lex-other", manifest)
    (tmp_path / "lex.tf.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"lex\.tf\.npy: missing"):
        LexicalIndex.load(tmp_path, "lex", manifest)


def test_load_rejects_a_bad_manifest(tmp_path: Path) -> None:
    """A manifest of another version (1: vocabulary in the manifest, no bigrams) means: rebuild."""
    manifest = LexicalIndex.build(_docs()).save(tmp_path, "lex")
    for bad in (None, [], {"format": "something-else"}):
        with pytest.raises(ValueError, match="not a memp lexical"):
            LexicalIndex.load(tmp_path, "lex", bad)
    for version in (1, 3, None):
        with pytest.raises(ValueError, match="unsupported lexical index version"):
            LexicalIndex.load(tmp_path, "lex", {**manifest, "version": version})
    with pytest.raises(ValueError, match="unknown term hash"):
        LexicalIndex.load(tmp_path, "lex", {**manifest, "term_hash": "md5"})
    with pytest.raises(ValueError, match="bigrams"):
        LexicalIndex.load(tmp_path, "lex", {**manifest, "bigrams": "yes"})
    with pytest.raises(ValueError, match="missing or bad manifest field"):
        LexicalIndex.load(tmp_path, "lex", {k: v for k, v in manifest.items() if k != "idf_power"})
    with pytest.raises(ValueError, match="do not match"):
        LexicalIndex.load(tmp_path, "lex", {**manifest, "n_docs": manifest["n_docs"] + 1})


def test_load_rejects_mismatched_arrays(tmp_path: Path) -> None:
    manifest = LexicalIndex.build(_docs()).save(tmp_path, "lex")
    np.save(tmp_path / "lex.labels.npy", np.arange(3, dtype=np.int64))
    with pytest.raises(ValueError, match="do not match"):
        LexicalIndex.load(tmp_path, "lex", manifest)
    np.save(tmp_path / "lex.labels.npy", np.arange(len(_docs()), dtype=np.int32))
    with pytest.raises(ValueError, match="expected 1-d int64"):
        LexicalIndex.load(tmp_path, "lex", manifest)
    (tmp_path / "lex.labels.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="unreadable array"):
        LexicalIndex.load(tmp_path, "lex", manifest)


def test_a_failed_save_leaves_no_partial_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each array is written atomically: a save that fails leaves whole files or none (and the
    store's index names the arrays of a generation only once all of them are written)."""
    real_save = np.save
    calls: list[object] = []

    def disk_full(f: object, arr: object, **kw: object) -> None:
        calls.append(f)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(f, arr, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(lexical.np, "save", disk_full)
    with pytest.raises(OSError, match="disk full"):
        LexicalIndex.build(_docs()).save(tmp_path, "lex")
    assert sorted(os.listdir(tmp_path)) == ["lex.indptr.npy", "lex.terms.npy"]


def test_arrays_are_plain_npy_without_pickle(tmp_path: Path) -> None:
    manifest = LexicalIndex.build(_docs()).save(tmp_path, "lex")
    for name, path in lexical.array_paths(tmp_path, "lex").items():
        if name in lexical._ARRAYS or name == "sig":
            arr = np.load(path, allow_pickle=False)
            assert arr.dtype == lexical._DTYPES[name]
    assert manifest["n_docs"] == len(_docs())
    assert "vocab" not in manifest  # the vocabulary is the sorted hash array
    vocab = np.load(tmp_path / "lex.terms.npy")
    assert (vocab[1:] > vocab[:-1]).all()
    want = np.array(
        term_hashes("put mug coffeemachine fridge", bigrams=False) + term_hashes("put clean"), np.uint64
    )
    assert np.isin(want, vocab).all()
    assert manifest["n_terms"] == vocab.shape[0] == LexicalIndex.build(_docs()).vocab_size


def test_a_query_finds_its_terms_once_and_top_and_score_labels_never_score_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retrieval asks one index for the query's top documents, then the scores of other
    candidates, then the bound: the query's terms are found once per query text, and neither
    top nor score_labels scores every posting (at 100k memories that was most of a query's time)."""
    ix = LexicalIndex.build(_docs())
    walks: list[str] = []
    real_terms, real_scores = LexicalIndex._find_terms, LexicalIndex._score_postings

    def terms_counted(self: LexicalIndex, query: str) -> dict[int, int]:
        walks.append(query)
        return real_terms(self, query)

    def scores_counted(self: LexicalIndex, query: str) -> tuple[np.ndarray, np.ndarray]:
        walks.append("all:" + query)
        return real_scores(self, query)

    monkeypatch.setattr(LexicalIndex, "_find_terms", terms_counted)
    monkeypatch.setattr(LexicalIndex, "_score_postings", scores_counted)
    labels, scores = ix.top("put a clean mug in the microwave", 3)
    again = ix.score_labels("put a clean mug in the microwave", labels)
    assert np.array_equal(again, scores)
    ix.max_score("put a clean mug in the microwave")
    assert walks == ["put a clean mug in the microwave"]  # its terms once, no full scoring
    ix.top("heat an egg", 3)
    assert walks[-1] == "heat an egg" and len(walks) == 2
    assert ix.scores("heat an egg")[0].size and walks[-1] == "all:heat an egg"
    # scores() remembers its result: the same arrays each time, and nobody can change them.
    first = ix.scores("heat an egg")
    assert ix.scores("heat an egg")[1] is first[1] and not first[1].flags.writeable
