"""``memp query --key avefact``: keyword vectors in the index, exact AveFact scores, hand-edited
keywords, query keywords from the built-in extractor or an LLM (local server, no network)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import memory_ids, memp
from llm_server import LLMServer, serve

from memp_cli import index as index_mod
from memp_cli.backends import llm
from memp_cli.backends.embedders.hashing import HashEmbedder
from memp_cli.build.builtin.keywords import extract_keywords
from memp_cli.errors import ExitCode
from memp_cli.model.memory import Memory, load_memory_file
from memp_cli.retrieve import avefact as retrieve
from memp_cli.retrieve.retriever import Retriever
from memp_cli.store import Store

HEAT = "heat some egg and put it in garbagecan."
KEY = "sk-test-0123456789abcdef"


def effective_keywords(m: Memory) -> list[str]:
    return list(dict.fromkeys(" ".join(k.split()) for k in m.keywords if k.strip())) or extract_keywords(
        m.task
    )


def brute_force(store_dir: Path, query_keywords: list[str]) -> dict[str, float]:
    """AveFact by hand: mean over query keywords of the best cosine with a memory keyword."""
    emb = HashEmbedder(256)
    qv = emb.embed(query_keywords)
    out = {}
    for p in sorted((store_dir / "memories").glob("*.toml")):
        m = load_memory_file(p)
        kws = effective_keywords(m)
        if kws:
            out[m.id] = float((qv @ emb.embed(kws).T).max(axis=1).mean())
    return out


def set_keywords(path: Path, keywords: list[str]) -> None:
    text = path.read_text(encoding="utf-8")
    new = "keywords = " + json.dumps(keywords)
    text, n = re.subn(r"^keywords = \[[^\]]*\]", lambda _: new, text, count=1, flags=re.M)
    assert n == 1
    path.write_text(text, encoding="utf-8")


def avefact(*args: object, expect: int = 0) -> list[dict]:
    return memp("query", *args, "--key", "avefact", "--json", expect=expect).jsonl()


# --------------------------------------------------------------------------- the index


def test_index_holds_one_vector_per_distinct_keyword(built: Path) -> None:
    store = Store.open(built)
    idx = index_mod.load(store, keywords=True)
    assert idx is not None and idx.has_keywords
    kwi = idx.keyword_index()
    mems = {mid: load_memory_file(built / "memories" / f"{mid}.toml") for mid in idx.state.ids}
    expected = [effective_keywords(mems[mid]) for mid in idx.state.ids]
    assert [[kwi.words[lab] for lab in kwi.row(p).tolist()] for p in range(len(idx))] == expected
    distinct = sorted({w for kws in expected for w in kws})
    assert sorted(kwi.words) == distinct  # each keyword once, shared across memories
    assert kwi.hnsw is not None and kwi.hnsw.get_current_count() == len(distinct)
    vecs = kwi.vectors(np.arange(len(kwi.words)))
    np.testing.assert_allclose(vecs, HashEmbedder(256).embed(kwi.words), atol=1e-6)
    # `memp index rebuild` regenerates the keyword files too
    (built / "index" / f"keywords-{idx.state.generation}.bin").unlink()
    memp("index", "rebuild")
    files = sorted(p.name for p in (built / "index").glob("keywords-*"))
    state = index_mod.read_state(store)
    assert state is not None and state.kw_version == index_mod.KW_VERSION
    # format 7: each memory's keyword labels are in its record; the generation's keyword file is the graph
    assert files == [f"keywords-{state.generation}.bin"]
    again = index_mod.load(store, keywords=True)
    assert again is not None and sorted(again.keyword_index().words) == distinct


def test_index_from_before_avefact_is_upgraded_lazily(built: Path) -> None:
    sp = built / "index" / "state.json"
    d = orjson.loads(sp.read_bytes())
    del d["kw_version"]
    sp.write_bytes(orjson.dumps(d))
    for p in (built / "index").glob("keywords-*"):
        p.unlink()
    assert memp("query", HEAT, "--json").jsonl()  # the query key never reads keyword files
    assert not list((built / "index").glob("keywords-*"))
    hits = avefact(HEAT, "-k", 2)
    assert hits and hits[0]["query_keywords"] == extract_keywords(HEAT)
    assert list((built / "index").glob("keywords-*.bin"))  # format 7: the graph; labels in the records


def test_damaged_keyword_file_is_reported_and_repaired(built: Path) -> None:
    state = index_mod.read_state(Store.open(built))
    assert state is not None
    (built / "index" / f"keywords-{state.generation}.bin").write_text("{oops", encoding="utf-8")
    assert memp("query", HEAT, "--json").jsonl()  # the query key does not read it
    memp("doctor", "--json", expect=ExitCode.STORE)
    r = memp("query", HEAT, "--key", "avefact", "--json")  # derived data: rebuilt on the spot
    assert "keywords-" in r.stderr and "keyword index" in r.stderr and "repaired the index" in r.stderr
    assert r.jsonl()
    memp("doctor", "--json")
    state = index_mod.read_state(Store.open(built))
    assert state is not None
    (built / "index" / f"keywords-{state.generation}.bin").write_text("{oops", encoding="utf-8")
    memp("doctor", "--json", expect=ExitCode.STORE)
    memp("doctor", "--fix", "--json")
    assert avefact(HEAT, "-k", 1)


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("exact_limit", [10**6, 0], ids=["exact-search", "hnsw-search"])
def test_scores_equal_brute_force(store: Path, monkeypatch: pytest.MonkeyPatch, exact_limit: int) -> None:
    """Random keyword sets over a shared vocabulary: the top k and their scores are exact."""
    monkeypatch.setattr(retrieve, "KW_EXACT_LIMIT", exact_limit)
    rng = random.Random(3)
    vocab = [f"w{i:02d}" for i in range(40)]
    phrases = sorted({" ".join(rng.sample(vocab, rng.choice((1, 2)))) for _ in range(400)})
    st = Store.open(store)
    mems = [
        Memory(
            id=f"m{i:03d}",
            kind="trajectory",
            task=f"task {i}",
            keywords=rng.sample(phrases, rng.randint(1, 4)),
            steps=[{"action": "look", "observation": "nothing"}],
        )
        for i in range(150)
    ]
    st.save_memories(mems, event="test")
    emb = HashEmbedder(256)
    idx, _ = index_mod.sync(st, emb)
    assert len(idx.keyword_index().live()) > 100  # more than the first candidate round (50)
    queries = [[*rng.sample(phrases, rng.randint(1, 4)), rng.choice(vocab)] for _ in range(12)]
    r = Retriever(idx, emb, k=5, min_score=-1.0, key="avefact", keyword_extractor=lambda qs: queries)
    for qkws, hits in zip(queries, r.search([str(i) for i in range(len(queries))]), strict=True):
        truth = brute_force(store, qkws)
        best = sorted(truth.values(), reverse=True)[:5]
        assert [h.score for h in hits] == pytest.approx(best, abs=1e-5)
        for h in hits:
            assert h.score == pytest.approx(truth[h.memory.id], abs=1e-5)
            assert h.query_keywords == qkws
            assert [q for q, _, _ in h.matches or []] == qkws


def test_cli_scores_on_the_built_store(built: Path) -> None:
    hits = avefact(HEAT, "-k", 5)
    qkws = extract_keywords(HEAT)
    truth = brute_force(built, qkws)
    assert [h["score"] for h in hits] == pytest.approx(sorted(truth.values(), reverse=True)[:5], abs=1e-5)
    for h in hits:
        assert h["score"] == pytest.approx(truth[h["id"]], abs=1e-5)
        assert h["query_keywords"] == qkws
        assert [m["query"] for m in h["matched_keywords"]] == qkws
    top = hits[0]
    best = max(m["similarity"] for m in top["matched_keywords"])
    assert best == pytest.approx(1.0)  # "heat" matched a memory keyword exactly
    # --min-score and -k apply
    floor = hits[1]["score"] + 1e-3
    assert all(h["score"] >= floor for h in avefact(HEAT, "-k", 5, "--min-score", floor))
    assert len(avefact(HEAT, "-k", 2)) == 2
    assert avefact(HEAT, "--kind", "script") == []


def test_hand_edited_keywords_change_the_results(built: Path) -> None:
    target = memory_ids(built)[7]
    before = avefact("zebra lamp", "-k", 3)
    assert all(h["id"] != target for h in before) or before[0]["score"] < 1
    set_keywords(built / "memories" / f"{target}.toml", ["zebra lamp", "  zebra   lamp "])
    hits = avefact("zebra lamp", "-k", 3)
    assert hits[0]["id"] == target and hits[0]["score"] == pytest.approx(1.0)
    assert hits[0]["keywords"] == ["zebra lamp", "  zebra   lamp "]  # the file as written
    set_keywords(built / "memories" / f"{target}.toml", ["sinkbasin"])
    again = avefact("zebra lamp", "-k", 3)
    assert not again or again[0]["id"] != target or again[0]["score"] < 1
    kwi = index_mod.load(Store.open(built), keywords=True)
    assert kwi is not None and "zebra lamp" not in [
        kwi.keyword_index().words[lab] for lab in kwi.keyword_index().live().tolist()
    ]


def test_batch_queries(built: Path) -> None:
    queries = [HEAT, {"task": "put a clean mug in coffeemachine.", "id": 2}, "cool some apple."]
    data = "\n".join(json.dumps(q) for q in queries)
    lines = memp("query", "-", "--key", "avefact", "-k", 2, input=data).jsonl()
    assert [x["query"] for x in lines] == [HEAT, "put a clean mug in coffeemachine.", "cool some apple."]
    assert [x["id"] for x in lines] == [None, 2, None]
    for x in lines:
        assert x["query_keywords"] == extract_keywords(x["query"])
        assert len(x["results"]) == 2
        assert all(r["query_keywords"] == x["query_keywords"] for r in x["results"])


def test_store_without_keywords_warns(store: Path) -> None:
    st = Store.open(store)
    st.save_memories(
        [
            Memory(id=f"m{i}", kind="trajectory", task=t, steps=[{"action": "look", "observation": "x"}])
            for i, t in enumerate(["do this", "do it", "do that"])
        ],
        event="test",
    )
    assert all(extract_keywords(t) == [] for t in ["do this", "do it", "do that"])
    r = memp("query", HEAT, "--key", "avefact", "--json")
    assert r.stdout == "" and "no memory has keywords" in r.stderr
    assert memp("query", HEAT, "--json", "--min-score", -1).jsonl()  # the query key still works


def test_query_without_keywords_warns(built: Path) -> None:
    r = memp("query", "do this", "--key", "avefact", "--json")
    assert r.stdout == "" and "no keywords found in the query" in r.stderr


# --------------------------------------------------------------------------- LLM keywords


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with serve() as s:
        yield s


@pytest.fixture
def srv(server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> LLMServer:
    server.clear()
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return server


def _llm_args(srv: LLMServer) -> list[str]:
    return ["--model", "openai/test-model", "--api-base", srv.url]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def test_llm_extracts_query_keywords(built: Path, srv: LLMServer) -> None:
    srv.script(['{"keywords": ["Heat", "egg", "garbage can"]}'])
    hits = avefact(HEAT, "-k", 3, *_llm_args(srv))
    assert len(srv.requests) == 1 and srv.paths == ["/v1/chat/completions"]
    assert HEAT.rstrip(".") in json.dumps(srv.requests[0]["messages"])
    assert hits and all(h["query_keywords"] == ["heat", "egg", "garbage can"] for h in hits)
    truth = brute_force(built, ["heat", "egg", "garbage can"])
    assert hits[0]["score"] == pytest.approx(max(truth.values()), abs=1e-5)
    assert list((built / "cache" / "llm").rglob("*.json"))
    # cached: the same query costs no request
    assert avefact(HEAT, "-k", 3, *_llm_args(srv)) == hits
    assert len(srv.requests) == 1


def test_llm_malformed_reply_twice_exits_8(built: Path, srv: LLMServer) -> None:
    memories_before = _tree_digest(built / "memories")
    srv.script(["no JSON here", '{"words": ["heat"]}'])
    r = memp("query", HEAT, "--key", "avefact", *_llm_args(srv), expect=ExitCode.LLM)
    assert r.stdout == ""
    assert "did not return valid JSON" in r.stderr and "keywords" in r.stderr
    assert len(srv.requests) == 2
    assert not list((built / "cache" / "llm").rglob("*.json")) if (built / "cache" / "llm").exists() else True
    assert _tree_digest(built / "memories") == memories_before


def test_model_is_ignored_by_the_query_key(built: Path, srv: LLMServer) -> None:
    r = memp("query", HEAT, "--json", *_llm_args(srv))
    assert r.jsonl() and "only apply to --key avefact" in r.stderr
    assert srv.requests == []
