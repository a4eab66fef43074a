"""Adding a batch costs about the batch, not the store: a sync tokenizes only the memories it
reads (the BM25 arrays of the last generation are updated, and equal a full build), distill plans
without opening the memory files the index already knows, and an index from format 4 is upgraded
without embedding."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pytest
from conftest import FILES, memp, state_json_before_7

from memp_cli import index as index_mod
from memp_cli.backends.embedders.hashing import HashEmbedder
from memp_cli.build import runner
from memp_cli.index import classes, lexical
from memp_cli.index.lexical import LexicalIndex
from memp_cli.model.memory import Memory
from memp_cli.model.trajectory import Trajectory
from memp_cli.store import Store

EMB = HashEmbedder(256)
ARRAYS = ("terms", "indptr", "doc_idx", "tf", "doclen", "labels")


def _memories(n: int, start: int = 0, seed: int = 0) -> list[Memory]:
    rng = random.Random(seed)
    verbs = ["put", "heat", "cool", "clean", "find", "examine"]
    objs = ["egg", "mug", "apple", "knife", "plate", "book", "lamp"]
    recs = ["fridge", "sinkbasin", "microwave", "cabinet", "drawer", "shelf"]
    out = []
    for i in range(start, start + n):
        task = f"{rng.choice(verbs)} some {rng.choice(objs)} and put it in {rng.choice(recs)} {i}."
        out.append(
            Memory(
                id=f"m{i:04d}",
                kind="procedure",
                task=task,
                keywords=[rng.choice(objs)],
                steps=[{"action": "look", "observation": "nothing"}],
                script={"title": task, "steps": [f"go to {rng.choice(recs)}", "look"]},
            )
        )
    return out


def _same_arrays(a: LexicalIndex, b: LexicalIndex) -> None:
    for name in ARRAYS:
        x, y = getattr(a, f"_{name}"), getattr(b, f"_{name}")
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.avgdl == b.avgdl
    np.testing.assert_array_equal(a.signatures(), b.signatures())
    assert (a._classes is None) == (b._classes is None)
    for name, arr in b._classes.arrays().items() if b._classes is not None else ():
        got = getattr(a._classes, name)
        assert got.dtype == arr.dtype and np.array_equal(got, arr), name


def test_updated_equals_a_full_build() -> None:
    with contextlib.ExitStack() as stack:
        _updated_equals_a_full_build(stack)


def _updated_equals_a_full_build(stack: contextlib.ExitStack) -> None:
    rng = random.Random(7)
    words = [f"w{i}" for i in range(80)] + ["the", "a", "mugs", "mug", "in"]

    def text() -> str:
        lines = [
            " ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(1, 2))
        ]
        return "\n".join(lines)

    for trial in range(60):
        if trial % 2:  # classes of identical documents however few the copies
            stack.enter_context(mock.patch.object(classes, "MIN_CLASS_SIZE", 1))
        docs = {lab: text() for lab in rng.sample(range(100), rng.randint(0, 40))}
        base = LexicalIndex.build(docs.items())
        drop = [lab for lab in docs if rng.random() < 0.3]
        new = {lab: text() for lab in drop if rng.random() < 0.5}  # changed: same label, new text
        new.update({lab: text() for lab in rng.sample(range(100, 150), rng.randint(0, 8))})
        final = {lab: t for lab, t in docs.items() if lab not in drop} | new
        _same_arrays(
            base.updated(np.array(drop, dtype=np.int64), list(new.items())), LexicalIndex.build(final.items())
        )
        q = text()
        assert np.allclose(
            base.updated(np.array(drop, dtype=np.int64), list(new.items())).scores(q)[1],
            LexicalIndex.build(final.items()).scores(q)[1],
        )


def test_updated_refuses_a_label_it_has() -> None:
    base = LexicalIndex.build([(1, "put mug"), (2, "heat egg")])
    with pytest.raises(ValueError, match="already"):
        base.updated(np.array([], dtype=np.int64), [(2, "cool egg")])


def _count_built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Documents per LexicalIndex.build call (what a sync tokenizes)."""
    sizes: list[int] = []
    real = LexicalIndex.build.__func__  # type: ignore[attr-defined]

    def build(cls: Any, docs: Any, **kw: Any) -> LexicalIndex:
        docs = list(docs)
        sizes.append(len(docs))
        return real(cls, docs, **kw)

    monkeypatch.setattr(lexical.LexicalIndex, "build", classmethod(build))
    return sizes


def test_a_sync_tokenizes_only_what_it_reads_and_equals_a_rebuild(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Store.open(store)
    st.save_memories(_memories(60), event="test")
    index_mod.sync(st, EMB)
    sizes = _count_built(monkeypatch)
    st.save_memories(_memories(3, start=100, seed=1), event="test")  # 3 new
    edited = _memories(1, start=5, seed=9)[0]  # one changed (same id, other text)
    st.save_memories([edited], event="test")
    (st.memories_dir / "m0007.toml").unlink()  # one removed
    _idx, rep = index_mod.sync(st, EMB)
    assert (rep.added, rep.updated, rep.removed) == (3, 1, 1)
    # key texts and procedures of the 4 memories read, nothing else (and an empty delta's builds)
    assert [n for n in sizes if n] == [4, 4]
    again = index_mod.load(st)
    assert again is not None and again.lexical is not None and again.procedure is not None
    sizes.clear()
    full, _ = index_mod.sync(st, EMB, rebuild=True)
    assert [n for n in sizes if n] == [62, 62]
    # labels differ (a rebuild numbers them afresh): compare by memory id
    for field in ("lexical", "procedure"):
        inc, reb = getattr(again, field), getattr(full, field)
        for q in ("put some mug in fridge", "heat egg microwave 101", "go to shelf"):
            a = dict(
                zip(
                    (again.id_of_label(int(x)) for x in inc.scores(q)[0]),
                    inc.scores(q)[1].tolist(),
                    strict=True,
                )
            )
            b = dict(
                zip(
                    (full.id_of_label(int(x)) for x in reb.scores(q)[0]),
                    reb.scores(q)[1].tolist(),
                    strict=True,
                )
            )
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)


def test_incremental_syncs_rank_as_a_rebuild(built: Path) -> None:
    st = Store.open(built)
    st.save_memories(_memories(5, start=500, seed=3), event="test")
    memp("index", "sync")
    q = [
        "query",
        "heat some egg and put it in microwave 501.",
        "--json",
        "--min-score",
        "-1",
        "--no-collapse",
    ]
    inc = [(h["id"], h["score"]) for h in memp(*q, "-k", 100).jsonl()]
    memp("index", "rebuild")
    reb = [(h["id"], h["score"]) for h in memp(*q, "-k", 100).jsonl()]
    assert [s for _, s in inc] == pytest.approx([s for _, s in reb], abs=1e-5)
    assert {m for m, _ in inc} == {m for m, _ in reb}


def test_distill_plans_from_the_index_not_the_memory_files(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memp("ingest", FILES["native"])
    memp("distill")  # writes the memories and syncs the index
    st = Store.open(store)
    opened: list[Path] = []
    real = runner.built_with

    def built_with(path: Path) -> tuple[str, str, str]:
        opened.append(path)
        return real(path)

    monkeypatch.setattr(runner, "built_with", built_with)
    parsed: list[str] = []
    real_parse = Trajectory.from_stored.__func__  # type: ignore[attr-defined]

    def from_stored(cls: Any, d: dict[str, Any]) -> Trajectory:
        parsed.append(d["id"])
        return real_parse(cls, d)

    monkeypatch.setattr(Trajectory, "from_stored", classmethod(from_stored))
    report = runner.distill(st, None)
    assert report.written == 0 and report.skipped > 0 and opened == []
    # the runs whose memory is current are counted without being parsed, and so are the failed
    # runs the default update policy does not build: the trajectory ledger (written by the first
    # distill) settles the whole segment
    assert (report.total, report.skipped, report.filtered) == (40, 30, 10)
    assert parsed == []
    # a memory file changed since the index saw it is read
    mid = st.memory_ids()[0]
    path = st.memory_path(mid)
    path.write_text(path.read_text() + "\n")
    report = runner.distill(st, None)
    assert report.written == 0 and opened == [path]


def test_an_index_from_format_4_is_upgraded_without_embedding(built: Path) -> None:
    st = Store.open(built)
    q = ["query", "heat some egg and put it in garbagecan.", "--json", "--min-score", "-1", "--no-collapse"]
    before = memp(*q).jsonl()
    state_path = st.index_dir / "state.json"
    current = index_mod.read_state(st)
    assert current is not None
    d = state_json_before_7(st.index_dir, 4)
    gen = d["generation"]
    state_path.write_bytes(orjson.dumps(d))
    files = st.index_dir / f"files-{gen}.json"
    f = orjson.loads(index_mod.state.load_files(st, current).to_json(gen))  # as format 4 wrote it
    f["index_version"] = 4
    files.write_bytes(orjson.dumps(f))
    for p in st.index_dir.glob("records-*"):  # format 7's
        p.unlink()
    assert len(runner.built_stamps(st)) == 0  # distill falls back to reading the files
    assert memp(*q).jsonl() == before  # the query upgrades it (a sync) and ranks as before
    state = index_mod.read_state(st)
    assert state is not None and state.version == index_mod.INDEX_VERSION == 8
    assert len(runner.built_stamps(st)) == len(state.ids)
    last = [e for e in st.read_journal() if e["event"] == "index.sync"][-1]
    assert last["embedded"] == 0 and last["updated"] == 0
    assert memp("doctor").stdout == ""
