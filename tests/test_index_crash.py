"""A writer of the index killed at every write point leaves a store that every command reads and
`memp doctor` judges correctly (tests/faults.py); an index in an older format is still read."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, memp
from faults import Killed, kill_at
from test_index_format import HEAT, VALID, _memories, _same_ranking

from memp_cli import index as index_mod
from memp_cli.backends.embedders.hashing import HashEmbedder
from memp_cli.errors import ExitCode
from memp_cli.index import filesync, lexseg, records, vecsync
from memp_cli.model.memory import load_memory_file
from memp_cli.store import Store

EMB = HashEmbedder(256)
QUERIES = [HEAT, *VALID[:3]]


def _change_memories(root: Path) -> None:
    """Remove two memories, add three, change the keys of one: a sync has work of every kind."""
    st = Store.open(root)
    ids = sorted(p.stem for p in st.memories_dir.glob("*.toml"))
    for mid in ids[:2]:
        (st.memories_dir / f"{mid}.toml").unlink()
    edited = load_memory_file(st.memories_dir / f"{ids[5]}.toml")
    edited.task = "cool a tomato and put it in the microwave."
    st.save_memories([edited, *_memories(3, seed=7, start=900)], event="test")


def _answers(root: Path) -> list[list[tuple[str, float]]]:
    """What `memp query` returns for QUERIES: (id, score) per hit."""
    out = []
    for q in QUERIES:
        r = memp("--store", root, "query", q, "-k", 5, "--min-score", -1)
        out.append([(h["id"], round(h["score"], 4)) for h in r.jsonl()])
    return out


def _same_answers(
    got: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]], where: str
) -> None:
    """Same scores, same memories but for the order of ties (and which ties the cut at k keeps)."""
    assert len(got) == len(want), where
    for g, w in zip(got, want, strict=True):
        try:
            _same_ranking(g, w, tol=1e-3)
        except AssertionError as e:
            raise AssertionError(f"{where}: {g} != {w}") from e


def _findings(root: Path, *args: str) -> tuple[int, list[dict[str, object]]]:
    r = memp("--store", root, "doctor", *args, expect=None)
    return r.code, [json.loads(line) for line in r.stdout.splitlines()]


def _index_matches_memories(root: Path) -> bool:
    state = index_mod.read_state(Store.open(root))
    return state is not None and sorted(state.ids) == sorted(
        p.stem for p in (root / "memories").glob("*.toml")
    )


def _check_after_kill(root: Path, where: str, reference: list[list[tuple[str, float]]]) -> None:
    ids = sorted(p.stem for p in (root / "memories").glob("*.toml"))
    # `memp list` reads the memory files only: the index cannot break it
    listed = memp("--store", root, "list", "--json").jsonl()
    assert sorted(m["id"] for m in listed) == ids, where
    # doctor: never an error (a kill leaves the last complete generation); a warning that says so
    # when the index does not match the memory files (the fix is the cheap `memp index sync`)
    fixed_copy = root.parent / "fixed"
    shutil.copytree(root, fixed_copy)
    code, findings = _findings(root)
    assert code == 0 and all(f["level"] == "warning" for f in findings), (where, findings)
    if not _index_matches_memories(root):
        assert any(
            "older than some memory files" in str(f["what"]) or "no index" in str(f["what"]) for f in findings
        ), (where, findings)
        assert any("memp index sync" in str(f["fix"]) for f in findings), (where, findings)
    # query answers as a clean index would (syncing what the kill left undone), and after it
    # doctor finds nothing left but harmless files of the interrupted write
    _same_answers(_answers(root), reference, where)
    code, findings = _findings(root)
    assert code == 0, (where, findings)
    assert all(
        "temporary file" in str(f["what"]) or "left over from an interrupted index write" in str(f["what"])
        for f in findings
    ), (where, findings)
    # doctor --fix repairs the killed store by itself, after which all is well
    code, findings = _findings(fixed_copy, "--fix")
    assert code == 0 and all(f["fixed"] for f in findings), (where, findings)
    assert _findings(fixed_copy) == (0, []), where
    _same_answers(_answers(fixed_copy), reference, where)
    shutil.rmtree(fixed_copy)


def _vector_rows_cut(root: Path, where: str) -> None:
    """The vectors file holds exactly the rows the state names, and each record file exactly what
    the generation's manifest names: what a killed sync appended past them was cut by the next
    sync."""
    st = Store.open(root)
    state = index_mod.read_state(st)
    assert state is not None and state.version == index_mod.INDEX_VERSION, where
    size = index_mod.state.vectors_path(st, state).stat().st_size
    assert size == state.next_label * state.dim * 4, where
    m = json.loads(records.manifest_path(st.index_dir, state.generation).read_bytes())
    want = {
        "rows": m["rows"] * records.row_dtype().itemsize,
        "text": m["text_bytes"],
        "kw": m["kw_count"] * 4,
        "words": m["words_bytes"],
    }
    for part, n in want.items():
        assert records.part_path(st.index_dir, m["tgen"], part).stat().st_size == n, (where, part)


# "sync" merges its delta into the base (MERGE_SHARE raised: the delta passes its share of the
# base; the BM25 delta too, MERGE_FRACTION 0); "delta-sync" is the same sync adding to the delta
# graph and to the BM25 delta (format 8: the base's arrays are not written); "compact-sync" is the same sync
# starting a new record generation (any dead record is too many).
@pytest.mark.parametrize("operation", ["sync", "delta-sync", "compact-sync", "rebuild", "first-sync"])
def test_a_kill_at_any_write_point_of_an_index_write_leaves_a_working_store(
    built: Path, tmp_path: Path, operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vecsync, "MERGE_SHARE", 1 if operation == "delta-sync" else 100)
    monkeypatch.setattr(lexseg, "MERGE_FRACTION", 100 if operation == "delta-sync" else 0)
    if operation == "compact-sync":
        monkeypatch.setattr(filesync, "COMPACT_MIN", -1)
        monkeypatch.setattr(filesync, "COMPACT_SHARE", 10**6)
    if operation != "rebuild":
        _change_memories(built)
    before = index_mod.read_state(Store.open(built))
    assert before is not None
    tgen = json.loads(records.manifest_path(built / "index", before.generation).read_bytes())["tgen"]
    if operation == "first-sync":
        shutil.rmtree(built / "index")
        (built / "index").mkdir()
    template = tmp_path / "template"
    shutil.copytree(built, template)
    clean = tmp_path / "clean"
    shutil.copytree(template, clean)
    index_mod.sync(Store.open(clean), EMB, rebuild=operation == "rebuild")
    state = index_mod.read_state(Store.open(clean))
    assert state is not None
    # the base graph is rewritten by all but the delta sync; the delta one writes a delta graph
    assert (state.base_gen == state.generation) == (operation != "delta-sync")
    assert (state.next_label > state.base_end) == (operation == "delta-sync")
    assert state.lexical is not None and ("delta" in state.lexical) == (operation == "delta-sync")
    now = json.loads(records.manifest_path(clean / "index", state.generation).read_bytes())["tgen"]
    if operation != "first-sync":  # appended to, or a new one
        assert (now == tgen) == (operation in ("sync", "delta-sync"))
    reference = _answers(clean)
    seen: list[str] = []
    for n in itertools.count(1):
        root = tmp_path / f"run{n}" / ".memp"
        shutil.copytree(template, root)
        st = Store.open(root)
        with kill_at(n) as kill, contextlib.suppress(Killed):
            index_mod.sync(st, EMB, rebuild=operation == "rebuild")
        seen.append(kill.where)
        _check_after_kill(root, f"killed at {kill.where}", reference)
        _vector_rows_cut(root, f"killed at {kill.where}")
        shutil.rmtree(root.parent)
        if not kill.fired:
            break
    # every file of the new generation was a write point, state.json among the last
    assert any("state.json" in w for w in seen) and any("lexical" in w for w in seen), seen
    lexical_writes = [w for w in seen if "lexical-" in w or "procedure-" in w]
    assert all(("-delta." in w or "-dead." in w) == (operation == "delta-sync") for w in lexical_writes), seen
    # format 7: each state column (and stamp) file too, before state.json
    for column in ("ids", "labels", "kinds", "families", "mtimes", "sizes"):
        at = [i for i, w in enumerate(seen) if w.startswith("replace index/columns-") and f".{column}." in w]
        assert len(at) == 1 and at[0] < seen.index("replace index/state.json"), (column, seen)
    assert n > 6


def test_an_index_in_format_2_is_read_and_upgraded_without_embedding(store_dir: Path) -> None:
    shutil.copytree(DATA / "index_v2", store_dir)
    st = Store.open(store_dir)
    assert json.loads((store_dir / "index" / "state.json").read_bytes())["index_version"] == 2
    code, findings = _findings(store_dir)
    assert code == 0 and findings and all(f["level"] == "warning" for f in findings)
    assert any("memp index sync" in str(f["fix"]) for f in findings)
    hits = memp("query", HEAT, "-k", 3).jsonl()
    assert len(hits) == 3
    state = index_mod.read_state(st)
    assert state is not None and state.version == index_mod.INDEX_VERSION
    assert not (store_dir / "index" / "lexical.json").exists()
    journal = [e for e in st.read_journal() if e["event"] == "index.sync"]
    assert journal[-1]["embedded"] == 0 and not journal[-1]["rebuilt"]
    assert memp("doctor").stdout == ""


def _fixture_and_reference(name: str, store_dir: Path, tmp_path: Path) -> tuple[Store, Path]:
    """The committed store ``tests/data/<name>`` at ``store_dir`` (opened), and a copy of it
    rebuilt from scratch in the current format: the answers an upgrade must give."""
    shutil.copytree(DATA / name, store_dir)
    ref = tmp_path / "ref" / ".memp"
    shutil.copytree(DATA / name, ref)
    index_mod.sync(Store.open(ref), EMB, rebuild=True)
    return Store.open(store_dir), ref


def test_an_index_in_format_5_is_upgraded_without_embedding_or_rewriting_its_graph(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vecsync, "MERGE_SHARE", 1)  # a delta as large as the base stays a delta
    st, ref = _fixture_and_reference("index_v5", store_dir, tmp_path)
    old = index_mod.read_state(st)
    assert old is not None and old.version == 5 and old.next_label > len(old.ids)  # a dead label
    graph = store_dir / "index" / f"hnsw-{old.generation}.bin"
    graph_bytes = graph.read_bytes()
    rows = np.load(store_dir / "index" / f"vectors-{old.generation}.npy")
    _, rep = index_mod.sync(st, EMB)
    assert rep.embedded == 0 and not rep.rebuilt
    new = index_mod.read_state(st)
    assert new is not None and new.version == index_mod.INDEX_VERSION == 8
    # the old graph is the new base as it is; its vectors are copied once into the new file
    assert (new.base_gen, new.base_end) == (old.generation, old.next_label)
    assert graph.read_bytes() == graph_bytes
    vec = store_dir / "index" / f"vectors-{new.vec_gen}.f32"
    assert np.array_equal(np.fromfile(vec, dtype=np.float32).reshape(-1, 256), rows)
    _same_answers(_answers(store_dir), _answers(ref), "after the upgrade")
    # the next sync adds a delta graph; the graph search (base + delta) agrees with the exact one
    removed = old.ids[0]
    for root in (store_dir, ref):
        (root / "memories" / f"{removed}.toml").unlink()
        Store.open(root).save_memories(_memories(3, seed=5, start=700), event="test")
    index_mod.sync(Store.open(ref), EMB)
    idx, rep = index_mod.sync(st, EMB)
    assert (rep.embedded, rep.removed) == (3, 1)
    assert idx.state.base_deleted == [old.labels[0]] and idx.delta is not None
    qv = EMB.embed([HEAT])
    found = idx.search(qv, len(idx))
    assert found is not None
    labels, dists = found
    assert sorted(labels[0].tolist()) == sorted(idx.state.labels)
    exact = 1.0 - idx.vector_matrix()[labels[0]] @ (qv[0] / np.linalg.norm(qv[0]))
    assert np.allclose(dists[0], exact, atol=1e-4) and (np.diff(dists[0]) >= -1e-6).all()
    _same_answers(_answers(store_dir), _answers(ref), "after a sync")
    assert memp("--store", store_dir, "doctor").stdout == ""


def test_an_index_in_format_6_is_upgraded_to_state_columns_without_embedding(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vecsync, "MERGE_SHARE", 1)  # the delta stays a delta: no graph is rewritten
    st, ref = _fixture_and_reference("index_v6", store_dir, tmp_path)
    old = index_mod.read_state(st)
    assert old is not None and old.version == 6 and old.base_deleted and old.next_label > old.base_end
    index = store_dir / "index"
    kept = {p.name: p.read_bytes() for p in index.iterdir() if p.suffix in (".bin", ".f32")}
    assert set(kept) >= {"hnsw-2.bin", "vectors-3.f32", f"delta-{old.generation}.bin"}
    _, rep = index_mod.sync(st, EMB)
    assert rep.embedded == 0 and not rep.rebuilt
    new = index_mod.read_state(st)
    assert new is not None and new.version == index_mod.INDEX_VERSION == 8
    # the graphs and the vectors stay as they are; the columns are new files of the generation
    assert {n: (index / n).read_bytes() for n in kept if n.startswith(("hnsw", "vectors"))} == {
        n: b for n, b in kept.items() if n.startswith(("hnsw", "vectors"))
    }
    assert (new.base_gen, new.base_end, new.base_deleted, new.vec_gen) == (2, 12, old.base_deleted, 3)
    raw = json.loads((index / "state.json").read_bytes())
    assert not {"ids", "labels", "label_runs", "kind_codes", "family_codes"} & set(raw)
    names = {
        f"columns-{new.generation}.{c}.npy" for c in ("ids", "labels", "kinds", "families", "mtimes", "sizes")
    }
    assert names <= {p.name for p in index.iterdir()}
    assert (new.ids, new.labels, new.kinds, new.families) == (old.ids, old.labels, old.kinds, old.families)
    table = index_mod.state.load_files(st, new)
    assert [new.stamp_at(p) for p in range(new.count)] == list(zip(table.mtimes, table.sizes, strict=True))
    _same_answers(_answers(store_dir), _answers(ref), "after the upgrade")
    assert memp("--store", store_dir, "doctor").stdout == ""


def test_doctor_reports_a_missing_bm25_array_and_sync_repairs_it(built: Path) -> None:
    st = Store.open(built)
    state = index_mod.read_state(st)
    assert state is not None
    (arr,) = (built / "index").glob(f"lexical-{state.generation}.doc_idx.npy")
    arr.unlink()
    code, findings = _findings(built)
    assert code == int(ExitCode.STORE)
    (f,) = findings
    assert str(f["what"]).startswith(f"{arr}: missing") and "memp index sync" in str(f["fix"])
    assert len(memp("query", HEAT, "-k", 2).jsonl()) == 2
    memp("index", "sync")
    assert memp("doctor").stdout == ""
