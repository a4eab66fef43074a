"""The index files: slim state.json + files-<gen>.json, the vectors file and exact search over it,
generations, and indexes from older or newer memp versions."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from conftest import FILES, memory_ids, memp, read_records
from faults import kill_at

from memp_cli import index as index_mod
from memp_cli.backends.embedders.hashing import HashEmbedder
from memp_cli.errors import ExitCode, StoreError
from memp_cli.model.memory import Memory, load_memory_file
from memp_cli.retrieve.retriever import EXACT_MAX_QUERIES, Retriever
from memp_cli.store import Store

HEAT = next(r["task"] for r in read_records(FILES["native"]) if r["task_type"] == "heat")
VALID = list(
    dict.fromkeys(r["task"] for r in read_records(Path(FILES["native"]).parent / "alfworld_valid_seen.jsonl"))
)
# more real tasks than EXACT_MAX_QUERIES: valid first, then train
QUERIES = list(dict.fromkeys([*VALID, *(r["task"] for r in read_records(FILES["native"]))]))
EMB = HashEmbedder(256)
KINDS = ("trajectory", "script", "procedure")


def _memories(n: int, seed: int = 0, start: int = 0) -> list[Memory]:
    rng = random.Random(seed)
    verbs = ["put", "heat", "cool", "clean", "find", "examine", "slice", "take"]
    objs = ["egg", "mug", "apple", "knife", "plate", "book", "lamp", "pan", "cup", "bowl", "vase"]
    recs = ["fridge", "sinkbasin", "microwave", "cabinet", "drawer", "countertop", "shelf", "desk"]
    out = []
    for i in range(start, start + n):
        task = f"{rng.choice(verbs)} some {rng.choice(objs)} and put it in {rng.choice(recs)} {i}."
        out.append(
            Memory(
                id=f"m{i:04d}",
                kind=KINDS[i % 3],
                task=task,
                steps=[{"action": "look", "observation": "nothing"}],
                script={"title": task, "steps": ["look"]} if i % 3 else {},
            )
        )
    return out


def _store(store: Path, n: int = 300) -> Store:
    st = Store.open(store)
    st.save_memories(_memories(n), event="test")
    index_mod.sync(st, EMB)
    return st


def _brute_force(st: Store, query: str, kind: str | None = None) -> list[tuple[str, float]]:
    """(id, cosine) of every memory (of ``kind``), best first, ties by id."""
    mems = [load_memory_file(p) for p in sorted(st.memories_dir.glob("*.toml"))]
    mems = [m for m in mems if kind is None or m.kind == kind]
    q = EMB.embed([query])[0]
    sims = EMB.embed([m.key_text() for m in mems]) @ q
    return sorted(((m.id, float(s)) for m, s in zip(mems, sims, strict=True)), key=lambda r: (-r[1], r[0]))


# The ranking by embedding cosine alone (no BM25 part, no procedure, no family pooling).
COSINE = {"lexical_weight": 0.0, "procedure_weight": 0.0, "family_weight": 0.0}


def _vec_path(st: Store, state: index_mod.State) -> Path:
    return index_mod.state.vectors_path(st, state)


def _index_files(st: Store) -> list[str]:
    return sorted(
        p.name for p in st.index_dir.iterdir() if not p.name.startswith(("lexical", "procedure", "columns"))
    )


def _hits(r: Retriever, query: str) -> list[tuple[str, float]]:
    return [(h.memory.id, h.score) for h in r.search([query])[0]]


def _same_ranking(a: list[tuple[str, float]], b: list[tuple[str, float]], tol: float = 1e-5) -> None:
    """Same scores, and the same memories except among equal scores (their order, and which of
    them the cut at k keeps, depends on float rounding: the hash embedder makes many ties)."""
    assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=tol)
    if not a:
        return
    cut = a[-1][1] + tol
    groups_a: dict[float, set[str]] = {}
    groups_b: dict[float, set[str]] = {}
    for ranking, groups in ((a, groups_a), (b, groups_b)):
        for m, s in ranking:
            if s > cut:
                groups.setdefault(round(s / tol), set()).add(m)
    assert {m for g in groups_a.values() for m in g} == {m for g in groups_b.values() for m in g}


# --------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("kind", [None, "script"])
def test_exact_search_equals_brute_force(store: Path, kind: str | None) -> None:
    st = _store(store)
    idx = index_mod.load(st, exact=True)
    assert idx is not None and idx.vectors_mapped
    r = Retriever(idx, EMB, k=20, min_score=-1.0, kind=kind, **COSINE)
    for query in [HEAT, *VALID[:10]]:
        truth = _brute_force(st, query, kind)
        hits = _hits(r, query)
        _same_ranking(hits, truth[:20])
        # the candidates are the exact top max(10 k, 50) by cosine
        (rows,) = r.scored([query])
        n_cand = min(len(truth), 200)
        assert sorted(cos for _, _, cos, _ in rows) == pytest.approx(
            sorted(s for _, s in truth[:n_cand]), abs=1e-5
        )
    assert not idx.hnsw_loaded  # the exact path never reads the graph


def test_hnsw_and_exact_paths_agree(store: Path) -> None:
    st = _store(store, 400)
    by_graph = index_mod.load(st)
    by_file = index_mod.load(st, exact=True)
    assert by_graph is not None and by_file is not None
    for kind in (None, "procedure"):
        g = Retriever(by_graph, EMB, k=5, kind=kind, lexical_weight=0.3, exact=False)
        f = Retriever(by_file, EMB, k=5, kind=kind, lexical_weight=0.3)
        for query in [HEAT, *VALID[:20]]:
            _same_ranking(_hits(g, query), _hits(f, query))
    assert not by_file.hnsw_loaded
    # a large batch on an index loaded for exact search loads the graph (lazily) instead
    queries = QUERIES[:EXACT_MAX_QUERIES]
    batch = Retriever(by_file, EMB, k=5).search(queries)
    assert by_file.hnsw_loaded
    for q, hits in zip(queries, batch, strict=True):
        assert [(h.memory.id, h.score) for h in hits] == _hits(Retriever(by_graph, EMB, k=5), q)


def test_cli_single_query_and_batch_agree(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`memp query TEXT` (exact, never reads the graph) and a batch (the graph) answer alike."""
    queries = QUERIES[:EXACT_MAX_QUERIES]
    assert len(queries) == EXACT_MAX_QUERIES  # a batch that loads the graph
    batch = memp("query", "-", "-k", 3, input="\n".join(json.dumps(q) for q in queries)).jsonl()

    def no_graph(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a single query loaded the hnsw graph")

    monkeypatch.setattr(index_mod.vectors, "load_hnsw", no_graph)
    for q, line in zip(queries, batch, strict=True):
        single = memp("query", q, "-k", 3).jsonl()
        _same_ranking(
            [(h["id"], h["score"]) for h in single], [(h["id"], h["score"]) for h in line["results"]]
        )
    small = memp("query", "-", "-k", 3, input="\n".join(json.dumps(q) for q in queries[:3])).jsonl()
    # the same memories, the same scores up to float32 rounding (graph vs exact cosines)
    for a, b in zip(small, batch[:3], strict=True):
        _same_ranking(
            [(h["id"], h["score"]) for h in a["results"]], [(h["id"], h["score"]) for h in b["results"]]
        )


def test_deleted_memories_never_come_back(store: Path) -> None:
    st = _store(store, 200)
    n = 200
    for k in range(3):
        # delete the best matches of a query, add a few new memories (new labels, more rows)
        idx = index_mod.load(st, exact=True)
        assert idx is not None
        top = [m for m, _ in _brute_force(st, HEAT)[:15]]
        for mid in top:
            (st.memories_dir / f"{mid}.toml").unlink()
        st.save_memories(_memories(5, seed=k + 1, start=1000 + 10 * k), event="test")
        _, rep = index_mod.sync(st, EMB)
        n += 5 - 15
        assert (rep.removed, rep.added) == (15, 5)
        idx = index_mod.load(st, exact=True)
        assert idx is not None and len(idx) == n
        assert idx.vector_matrix().shape[0] == idx.state.next_label > len(idx)
        r = Retriever(idx, EMB, k=n, min_score=-1.0, **COSINE)
        got = [m for m, _ in _hits(r, HEAT)]
        assert sorted(got) == memory_ids(store) and not set(top) & set(got)
        _same_ranking(
            _hits(Retriever(idx, EMB, k=5, min_score=-1.0, **COSINE), HEAT), _brute_force(st, HEAT)[:5]
        )
        # rows of labels no memory has stay in the append-only vectors file (never searched)
        dead = np.setdiff1d(np.arange(idx.state.next_label), idx.label_array())
        assert len(dead) == 15 * (k + 1)


# --------------------------------------------------------------------------- the files


def test_files_are_written_with_one_generation(store: Path) -> None:
    st = _store(store, 50)
    for step in range(3):
        if step:
            (st.memories_dir / f"m{step:04d}.toml").unlink()
            st.save_memories(_memories(2, seed=step, start=100 * step), event="test")
        with kill_at(10**9) as writes:  # counts the write points, kills at none
            index_mod.sync(st, EMB, rebuild=not step)
        written = [path.split("/")[-1] for fn, path in writes.calls if fn == "replace"]
        removed = [path.split("/")[-1] for fn, path in writes.calls if fn == "unlink"]
        state = index_mod.read_state(st)
        assert state is not None
        g = state.generation
        assert g == step + 2
        # format 6: the rebuild writes the base graph and a new vectors file; a sync of a few
        # memories appends to that file (no rename: not a write point) and writes a delta graph.
        # The graph comes last but for state.json: a merge's base is made once the texts are
        # written and out of memory.
        graph = f"delta-{g}.bin" if step else f"hnsw-{g}.bin"
        # format 7: the records of the memories are appended to the rebuild's record files (no
        # rename either); a generation writes their manifest and each position's record
        # format 8: the BM25 arrays as a base plus a delta. The first sync after the rebuild (2
        # added, 1 removed of 50) writes the delta and the base's dead document only; the second
        # (4 added, 2 dead: past 50 / 16) merges them into a new base.
        arrays = ("terms", "indptr", "doc_idx", "tf", "doclen", "labels", "sig")
        stems = [f"{{f}}-{g}-delta", f"{{f}}-{g}-dead"] if step == 1 else [f"{{f}}-{g}"]
        expected = [
            f"keywords-{g}.bin",
            f"records-{g}.pos.npy",
            f"records-{g}.json",
            *(f"columns-{g}.{c}.npy" for c in ("ids", "labels", "kinds", "families", "mtimes", "sizes")),
            *(
                f"{stem.format(f=f)}.{a}.npy"
                for f in ("lexical", "procedure")
                for stem in stems
                for a in arrays
            ),
            graph,
            "state.json",
        ]
        assert written == expected  # state.json last: it names the generation of the others
        old_base = ("lexical-2.", "procedure-2.") if step == 2 else ()  # merged: the old base goes
        assert removed and all(
            f"-{g - 1}." in name or f"-{g - 1}-" in name or name.startswith(old_base) for name in removed
        )  # then the older generation
        kept = ["vectors-2.f32", *(["hnsw-2.bin"] if step else [])]  # the rebuild's, still named
        kept += [f"records-2.{part}.bin" for part in ("rows", "text", "kw", "words")]
        kept += [f"{f}-2.{a}.npy" for f in ("lexical", "procedure") for a in arrays] if step == 1 else []
        assert sorted(p.name for p in st.index_dir.iterdir()) == sorted(expected + kept)
        raw = orjson.loads((st.index_dir / "state.json").read_bytes())
        assert raw["index_version"] == index_mod.INDEX_VERSION == 8
        assert raw["lexical"].get("base_gen", g) == (2 if step == 1 else g)
        assert (raw["vec_gen"], raw["base_gen"]) == (2, 2)
        assert not {"texts", "key_hashes", "mtimes", "sizes"} & set(raw)
        idx = index_mod.load(st)
        assert idx is not None and idx.hnsw is not None and (idx.delta is not None) == bool(step)
        table = idx.file_table()
        assert table.texts == [load_memory_file(st.memories_dir / f"{m}.toml").key_text() for m in state.ids]
        vec = idx.vector_matrix()
        assert vec.shape == (state.next_label, 256) and vec.dtype == np.float32
        assert np.allclose(vec[state.labels], idx.graph_vectors(state.labels), atol=1e-6)


def test_nothing_changed_writes_nothing(store: Path) -> None:
    st = _store(store, 30)
    before = {p.name: p.stat().st_mtime_ns for p in st.index_dir.iterdir()}
    _, rep = index_mod.sync(st, EMB)
    assert not rep.changed and not rep.rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in st.index_dir.iterdir()} == before


def test_sync_restores_a_missing_vectors_file_from_the_graph(store: Path) -> None:
    st = _store(store, 60)
    state = index_mod.read_state(st)
    assert state is not None
    vec = _vec_path(st, state)
    old = np.fromfile(vec, dtype=np.float32).reshape(-1, 256)[: state.next_label]
    vec.unlink()
    with pytest.raises(StoreError, match=f"{vec.name}: missing"):
        index_mod.load(st, exact=True)
    idx, rep = index_mod.sync(st, EMB)
    assert rep.embedded == 0 and not rep.rebuilt  # nothing embedded again
    assert np.allclose(idx.vector_matrix(), old, atol=1e-6)
    again = index_mod.load(st, exact=True)
    assert again is not None and again.state.generation == state.generation + 1


@pytest.mark.parametrize("damage", ["truncate-vectors", "delete-vectors", "garbage-files", "delete-files"])
def test_damaged_index_files_are_rebuilt_by_query(built: Path, damage: str) -> None:
    st = Store.open(built)
    state = index_mod.read_state(st)
    assert state is not None
    vec = _vec_path(st, state)
    files = built / "index" / f"records-{state.generation}.json"
    if damage == "truncate-vectors":
        vec.write_bytes(vec.read_bytes()[:1000])
        expect = f"{vec}: damaged vectors file"
    elif damage == "delete-vectors":
        vec.unlink()
        expect = f"{vec}: missing"
    elif damage == "garbage-files":
        files.write_bytes(b'{"index_version": 2, "generation"')
        expect = f"{files}: damaged index records"
    else:
        files = files.with_name(f"records-{state.generation}.pos.npy")
        files.unlink()
        expect = f"{files}: missing"
    r = memp("doctor", expect=ExitCode.STORE)
    (f,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert f["level"] == "error" and f["what"].startswith(expect) and "memp index sync" in f["fix"]
    q = memp("query", HEAT, "-k", 1)
    assert q.jsonl()[0]["task"] == HEAT
    # the query names the damaged file and has it rebuilt by a sync: the vectors from the graph
    # without embedding anything, a file table by a rebuild
    assert expect in q.stderr and "rebuilt the" in q.stderr
    last = [e for e in st.read_journal() if e["event"] == "index.sync"][-1]
    assert last["embedded"] == (0 if "vectors" in damage else 40)
    assert memp("doctor").stdout == ""
    new = index_mod.read_state(st)
    assert new is not None and new.generation > state.generation
    # the graph is rewritten only by the rebuild (a new vectors file is copied from it)
    base = state.generation if "vectors" in damage else new.generation
    # the records are appended to (a vectors file restored) or start afresh (a rebuild)
    tgen = state.generation if "vectors" in damage else new.generation
    assert _index_files(st) == sorted(
        [f"hnsw-{base}.bin"]
        + [f"{p}-{new.generation}.{e}" for p, e in (("vectors", "f32"), ("records", "json"))]
        + [f"records-{tgen}.{part}.bin" for part in ("rows", "text", "kw", "words")]
        + [f"records-{new.generation}.pos.npy", f"keywords-{new.generation}.bin", "state.json"]
    )


def test_doctor_fix_regenerates_the_vectors_file(built: Path) -> None:
    st = Store.open(built)
    state = index_mod.read_state(st)
    assert state is not None
    vec = _vec_path(st, state)
    arr = np.fromfile(vec, dtype=np.float32).reshape(-1, 256)
    arr[state.labels[3]] = 0.0  # a mismatch between the file and the graph
    arr.tofile(vec)
    r = memp("doctor", expect=ExitCode.STORE)
    assert "does not match the vector index" in r.stdout
    r = memp("doctor", "--fix")
    assert all(json.loads(line)["fixed"] for line in r.stdout.splitlines())
    assert memp("doctor").stdout == ""


# --------------------------------------------------------------------------- versions


def _old_format(built: Path) -> bytes:
    """state.json as INDEX_VERSION 1 wrote it: every column in one file, no files/vectors."""
    st = Store.open(built)
    idx = index_mod.load(st)
    assert idx is not None
    table = idx.file_table()
    d = {"index_version": 1, **dataclasses.asdict(idx.state), **vars(table)}
    for p in built.joinpath("index").glob("vectors-*.*"):
        p.unlink()
    for p in built.joinpath("index").glob("files-*.json"):
        p.unlink()
    raw = orjson.dumps(d)
    (built / "index" / "state.json").write_bytes(raw)
    return raw


def test_index_from_an_older_memp_is_rebuilt_by_query(built: Path) -> None:
    _old_format(built)
    r = memp("doctor", expect=ExitCode.STORE)
    assert f"older format (1, now {index_mod.INDEX_VERSION})" in r.stdout
    q = memp("query", HEAT, "-k", 1)
    assert "older format" in q.stderr and "rebuilt the index" in q.stderr
    assert q.jsonl()[0]["task"] == HEAT
    state = index_mod.read_state(Store.open(built))
    assert state is not None and len(state.ids) == 40
    assert memp("doctor").stdout == ""


def test_index_from_an_older_memp_is_rebuilt_by_sync(built: Path) -> None:
    _old_format(built)
    r = memp("index", "sync")
    assert "older format" in r.stderr and "rebuilt the index" in r.stderr
    assert memp("doctor").stdout == ""
    assert memp("query", HEAT, "-k", 1).jsonl()[0]["task"] == HEAT


def test_index_from_a_newer_memp_is_left_alone(built: Path) -> None:
    sp = built / "index" / "state.json"
    d = orjson.loads(sp.read_bytes())
    d["index_version"] = index_mod.INDEX_VERSION + 1
    sp.write_bytes(orjson.dumps(d))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (built / "index").iterdir())
    for args in (("query", HEAT), ("index", "sync")):
        r = memp(*args, expect=ExitCode.STORE)
        assert "written by a newer memp" in r.stderr and "upgrade memp" in r.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (built / "index").iterdir()) == before
    memp("index", "rebuild")  # the way out other than upgrading
    assert memp("query", HEAT, "-k", 1).jsonl()[0]["task"] == HEAT


class _Unsearchable(list[str]):
    def index(self, *args: object) -> int:
        raise AssertionError("the names table was searched again")

    def __contains__(self, item: object) -> bool:
        raise AssertionError("the names table was searched again")


@pytest.mark.parametrize("labels", ["rebuilt", "fragmented", "empty"])
def test_state_json_roundtrip(tmp_path: Path, labels: str) -> None:
    n = {"rebuilt": 1000, "fragmented": 1000, "empty": 0}[labels]
    lab = list(range(n))
    if labels == "fragmented":
        random.Random(1).shuffle(lab)
    state = index_mod.State(
        embedder="hash",
        dim=256,
        generation=7,
        next_label=n + 5,
        dir_mtime_ns=123,
        ids=[f"m{i:05d}" for i in range(n)],
        labels=lab,
        kinds=[KINDS[(i * 7) % 3] for i in range(n)],
        families=[["put", "heat", ""][i % 3] for i in range(n)],
        broken={"mbad": [1, 2]},
        kw_version=1,
    )
    state.write_columns(tmp_path, (list(range(n)), [100 + i for i in range(n)]))
    raw = state.to_json()
    d = orjson.loads(raw)
    assert not {"ids", "labels", "kinds", "families", "label_runs", "kind_codes"} & set(d)  # in the columns
    read = index_mod.State.from_json(raw, tmp_path / "state.json")
    # a query's accessors answer from the mapped columns, without building the lists
    assert read.count == n and read.label_array().tolist() == lab
    assert [read.id_at(p) for p in range(n)] == state.ids
    assert [(read.kind_at(p), read.family_at(p)) for p in range(n)] == list(
        zip(state.kinds, state.families, strict=True)
    )
    assert read.kind_mask("trajectory").tolist() == [k == "trajectory" for k in state.kinds]
    # the array forms a query's fusion takes, from the columns and from the lists alike
    some = np.array([p for p in range(n) if p % 7 != 3][::-1], dtype=np.int64)
    for st in (read, state):
        assert [i.decode() if isinstance(i, bytes) else i for i in st.id_array(some)] == [
            state.ids[p] for p in some
        ]
        codes = st.family_codes(some).tolist()
        fams = [state.families[p] for p in some]
        assert [c == -1 for c in codes] == [f == "" for f in fams]
        assert len({(c, f) for c, f in zip(codes, fams, strict=True)}) == len(set(fams))
    # the names table (~18k at 1M memories) is searched once, not by every query's fusion
    mapped = read.family_codes(some).tolist()
    cols = read.__dict__["_columns"]
    cols.family_names = _Unsearchable(cols.family_names)
    assert read.family_codes(some).tolist() == mapped
    assert not read.kind_mask("nosuchkind").any() and len(read.kind_mask("nosuchkind")) == n
    assert not {"ids", "labels", "kinds", "families"} & set(vars(read))
    assert [read.stamp_at(p) for p in range(n)] == [(i, 100 + i) for i in range(n)]
    assert read == state  # the lists, built on first use
    again = index_mod.State.from_json(raw, tmp_path / "state.json")
    assert again.to_json() == raw  # written again without building a list
    again.generation = 8
    again.write_columns(tmp_path)  # the stamps as read
    assert not {"ids", "labels", "kinds", "families"} & set(vars(again))
    assert np.array_equal(np.load(tmp_path / "columns-8.sizes.npy"), np.arange(100, 100 + n))
    state.generation = 8
    assert index_mod.State.from_json(again.to_json(), tmp_path / "state.json") == state
    d.pop("kind_names")
    with pytest.raises(StoreError, match="damaged index state"):
        index_mod.State.from_json(orjson.dumps(d), tmp_path / "state.json")


def _columns_state(tmp_path: Path) -> bytes:
    state = index_mod.State(
        embedder="hash",
        dim=8,
        generation=3,
        next_label=4,
        ids=["ma", "mb", "mc"],
        labels=[0, 3, 2],
        kinds=["workflow", "trajectory", "workflow"],
        families=["put", "", "put"],
    )
    with pytest.raises(ValueError, match="stamps are needed"):
        state.write_columns(tmp_path)
    state.write_columns(tmp_path, ([5, 6, 7], [10, 20, 30]))
    return state.to_json()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "unreadable"),
        ("truncated", "damaged index state"),
        ("short", "damaged index state"),
        ("dtype", "damaged index state"),
        ("code", "damaged index state"),
        ("name", "damaged index state"),
        ("garbage", "damaged index state"),
    ],
)
def test_damaged_state_columns_are_a_damaged_state(tmp_path: Path, damage: str, message: str) -> None:
    raw = _columns_state(tmp_path)
    ids, kinds = tmp_path / "columns-3.ids.npy", tmp_path / "columns-3.kinds.npy"
    if damage == "missing":
        ids.unlink()
    elif damage == "truncated":
        ids.write_bytes(ids.read_bytes()[:-2])
    elif damage == "short":
        np.save(ids, np.array([b"ma", b"mb"]))
    elif damage == "dtype":
        np.save(ids, np.array([1, 2, 3]))
    elif damage == "code":
        np.save(kinds, np.array([0, 1, 2], dtype=np.int32))  # two kind names
    elif damage == "name":
        d = orjson.loads(raw)
        d["family_names"][0] = 7
        raw = orjson.dumps(d)
    else:
        kinds.write_bytes(b"not numpy")
    with pytest.raises(StoreError, match=message):
        index_mod.State.from_json(raw, tmp_path / "state.json")


def test_base_and_delta_graphs_search_as_one(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Syncs that add, re-key and delete memories: the new vectors go to the delta graph (the base
    file stays, its dropped labels listed in the state) until the delta passes 1/MERGE_SHARE of the
    base, then a merge writes a new base. Throughout, the two graphs searched as one return every
    live memory once, at its exact cosine distance, nearest first."""
    monkeypatch.setattr(index_mod.vecsync, "MERGE_SHARE", 3)
    st = _store(store, 80)
    kinds = []
    for step in range(6):
        ids = memory_ids(store)
        for mid in ids[step : step + 2]:
            (st.memories_dir / f"{mid}.toml").unlink()
        edited = load_memory_file(st.memories_dir / f"{ids[40 + step]}.toml")
        edited.task = f"slice a lamp {step} and put it in the bowl."
        st.save_memories([edited, *_memories(4, seed=step, start=500 + 10 * step)], event="test")
        before = index_mod.read_state(st)
        _, rep = index_mod.sync(st, EMB)
        assert (rep.added, rep.removed, rep.updated, rep.embedded) == (4, 2, 1, 5)
        idx = index_mod.load(st)
        assert idx is not None and before is not None
        state = idx.state
        merged = state.base_gen == state.generation
        kinds.append(merged)
        if merged:
            assert state.base_end == state.next_label and not state.base_deleted and idx.delta is None
        else:  # the base file is the last one's; the deleted and re-keyed memories' labels listed
            assert state.base_gen == before.base_gen and idx.delta is not None
            assert len(state.base_deleted) >= 3 and not set(state.base_deleted) & set(state.labels)
        vecs = idx.vector_matrix()
        q = vecs[state.labels[7]] + vecs[state.labels[-1]]
        found = idx.search(q[np.newaxis], len(idx))
        assert found is not None
        labels, dists = found
        assert sorted(labels[0].tolist()) == sorted(state.labels)
        assert np.allclose(dists[0], 1.0 - vecs[labels[0]] @ (q / np.linalg.norm(q)), atol=1e-4)
        assert (np.diff(dists[0]) >= -1e-6).all()
        # a filtered search (the retriever's --kind) sees only the allowed labels
        some = set(state.labels[::3])
        f = idx.search(q[np.newaxis], 5, some)
        assert f is not None and set(f[0][0].tolist()) <= some and f[0].shape[1] == 5
    assert any(kinds) and not all(kinds), kinds  # both a delta sync and a merge happened


def test_rows_a_killed_sync_appended_are_never_read_and_cut_by_the_next(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_mod.vecsync, "MERGE_SHARE", 1)  # the syncs below add to the delta
    st = _store(store, 40)
    state = index_mod.read_state(st)
    assert state is not None
    vec = _vec_path(st, state)
    row = state.dim * 4
    st.save_memories(_memories(6, seed=3, start=700), event="test")
    real = index_mod.generation.atomic_write

    def killed_at_state(path: Path, data: bytes | str, **kw: Any) -> None:
        if path.name == "state.json":
            raise KeyboardInterrupt("killed before state.json")
        real(path, data, **kw)

    monkeypatch.setattr(index_mod.generation, "atomic_write", killed_at_state)
    with pytest.raises(KeyboardInterrupt):
        index_mod.sync(st, EMB)
    monkeypatch.setattr(index_mod.generation, "atomic_write", real)
    assert vec.stat().st_size == (state.next_label + 6) * row  # appended, not named
    idx = index_mod.load(st, exact=True)
    assert idx is not None and idx.state.generation == state.generation
    assert idx.vector_matrix().shape == (state.next_label, state.dim)  # only the named rows
    (st.memories_dir / "m0700.toml").unlink()
    _, rep = index_mod.sync(st, EMB)
    assert rep.embedded == 5
    assert vec.stat().st_size == (state.next_label + 5) * row  # the sixth row was cut


def _lexical_answers(st: Store, queries: list[str]) -> list[list[tuple[str, float]]]:
    idx = index_mod.load(st)
    assert idx is not None
    r = Retriever(idx, EMB, k=10, min_score=-1.0, lexical_weight=0.5, exact=True)
    return [[(h.memory.id, h.score) for h in hits] for hits in r.search(queries)]


def test_a_format_7_index_keeps_its_bm25_files_as_the_base_of_format_8(store: Path) -> None:
    """Format 8 reads a format 7 index's BM25 arrays as a base; its first sync writes only the
    delta and the dead documents next to them, and queries answer as after a rebuild."""
    st = _store(store, 120)
    state = index_mod.read_state(st)
    assert state is not None and "base_gen" not in state.lexical
    g7 = state.generation
    for name in ("state.json", f"records-{g7}.json"):  # what format 7 wrote: the same files
        raw = orjson.loads((st.index_dir / name).read_bytes())
        raw["index_version"] = 7
        (st.index_dir / name).write_bytes(orjson.dumps(raw))
    base_files = {p.name: p.stat().st_mtime_ns for p in st.index_dir.glob(f"lexical-{g7}.*")}
    assert base_files
    (st.memories_dir / "m0003.toml").unlink()
    st.save_memories(_memories(3, seed=9, start=500), event="test")
    assert not index_mod.sync(st, EMB)[1].rebuilt
    new = index_mod.read_state(st)
    assert new is not None and new.version == 8 and new.generation == g7 + 1
    assert new.lexical["base_gen"] == new.procedure["base_gen"] == g7
    assert {p.name: p.stat().st_mtime_ns for p in st.index_dir.glob(f"lexical-{g7}.*")} == base_files
    assert (st.index_dir / f"lexical-{g7 + 1}-delta.terms.npy").exists()
    assert (st.index_dir / f"procedure-{g7 + 1}-dead.terms.npy").exists()
    got = _lexical_answers(st, QUERIES[:15])
    assert index_mod.load(st).lexical.top("heat some egg", 5)[0].shape[0]  # type: ignore[union-attr]
    index_mod.sync(st, EMB, rebuild=True)
    rebuilt = index_mod.read_state(st)
    assert rebuilt is not None and "base_gen" not in rebuilt.lexical
    assert _lexical_answers(st, QUERIES[:15]) == got
