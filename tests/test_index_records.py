"""Format 7's record files (memp_cli.index.records): a sync appends its batch's records and leaves
every record a complete generation names as it is; the records hold what a rebuild would make of
the memory files; a sync compacts them once most rows are dead; and a writer's scan handed to a
sync spares it statting every file while the memories folder is as the writer left it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import pytest
from test_index_format import EMB, HEAT, _memories, _store

from memp_cli import index as index_mod
from memp_cli.index import filesync, records
from memp_cli.index.entry import Scan
from memp_cli.index.state import file_stamps, load_files
from memp_cli.model.memory import load_memory_file
from memp_cli.store import Store


def _manifest(st: Store) -> dict[str, int]:
    state = index_mod.read_state(st)
    assert state is not None
    m: dict[str, int] = orjson.loads(records.manifest_path(st.index_dir, state.generation).read_bytes())
    return m


def _parts(st: Store, tgen: int) -> dict[str, bytes]:
    return {p: records.part_path(st.index_dir, tgen, p).read_bytes() for p in records.PARTS}


def _table(st: Store) -> dict[str, tuple[object, ...]]:
    state = index_mod.read_state(st)
    assert state is not None
    t = load_files(st, state)
    kw = index_mod.load(st, keywords=True)
    assert kw is not None
    k = kw.keyword_index()
    return {
        mid: (
            t.key_hashes[i],
            t.mtimes[i],
            t.sizes[i],
            t.texts[i],
            t.procedures[i],
            t.built[i],
            sorted(k.words[lab] for lab in k.row(i).tolist()),
        )
        for i, mid in enumerate(state.ids)
    }


def _rebuilt(st: Store, tmp_path: Path) -> dict[str, tuple[object, ...]]:
    """What a rebuild of a copy of the store makes of its memory files."""
    import shutil

    copy = tmp_path / "copy" / ".memp"
    shutil.copytree(st.root, copy)
    other = Store.open(copy)
    index_mod.sync(other, EMB, rebuild=True)
    return _table(other)


def test_a_sync_appends_its_batch_and_leaves_the_named_records_as_they_are(
    store: Path, tmp_path: Path
) -> None:
    st = _store(store, 60)
    before = _manifest(st)
    old = _parts(st, before["tgen"])
    st.save_memories(_memories(3, seed=4, start=500), event="test")
    edited = load_memory_file(st.memories_dir / "m0007.toml")
    edited.task = "cool a tomato and put it in the microwave."
    st.save_memories([edited], event="test")
    (st.memories_dir / "m0009.toml").unlink()
    _, rep = index_mod.sync(st, EMB)
    assert (rep.added, rep.updated, rep.removed) == (3, 1, 1)
    after = _manifest(st)
    assert after["tgen"] == before["tgen"] and after["rows"] == before["rows"] + 4  # the batch only
    new = _parts(st, after["tgen"])
    for part in records.PARTS:  # every record the last generation named is unchanged
        assert new[part][: len(old[part])] == old[part], part
    assert len(new["rows"]) - len(old["rows"]) == 4 * records.row_dtype().itemsize
    assert _table(st) == _rebuilt(st, tmp_path)
    # the keyword words file only grows; its lines are the keyword graph's labels
    words = [orjson.loads(line) for line in new["words"].splitlines()]
    assert words == index_mod.load(st, keywords=True).keyword_index().words  # type: ignore[union-attr]


def test_records_are_compacted_once_most_rows_are_dead(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesync, "COMPACT_MIN", 10)
    st = _store(store, 30)
    tgen = _manifest(st)["tgen"]
    for rnd in range(4):  # every memory's file changes each round: its old record is dead
        mems = [load_memory_file(p) for p in sorted(st.memories_dir.glob("*.toml"))]
        for m in mems:
            m.keywords = [f"round {rnd}"]
            m.task = f"{m.task.split(' round ')[0]} round {rnd}"
        st.save_memories(mems, event="test")
        _, rep = index_mod.sync(st, EMB)
        assert rep.updated == 30 and rep.embedded == 30
        m = _manifest(st)
        if rnd == 0:
            assert (m["tgen"], m["rows"]) == (tgen, 60)  # half dead: not yet
    m = _manifest(st)
    assert m["tgen"] > tgen and m["rows"] < 90  # a new record generation with the live ones
    assert not records.part_path(st.index_dir, tgen, "rows").exists()  # the old one went
    assert _table(st) == _rebuilt(st, tmp_path)
    assert len(index_mod.load(st).state.ids) == 30  # type: ignore[union-attr]


def test_a_scan_handed_over_spares_the_sync_a_stat_of_every_file(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _store(store, 40)
    taken = st.memory_stamps()
    mems = _memories(2, seed=9, start=800)
    st.save_memories(mems, event="test")
    dir_mtime = st.memories_mtime_ns()
    from memp_cli.index.entry import entry

    fresh = {m.id: (entry(m), taken_stamp(st, m.id)) for m in mems}

    def no_scan() -> dict[str, tuple[int, int]]:
        raise AssertionError("statted every file")

    monkeypatch.setattr(st, "memory_stamps", no_scan)
    idx, rep = index_mod.sync(st, EMB, fresh=fresh, scanned=Scan(dir_mtime, taken))
    assert rep.added == 2 and len(idx) == 42
    state = index_mod.read_state(st)
    assert state is not None
    monkeypatch.undo()
    assert file_stamps(st, state) == st.memory_stamps()


def taken_stamp(st: Store, mid: str) -> tuple[int, int]:
    s = os.stat(st.memory_path(mid))
    return s.st_mtime_ns, s.st_size


def test_a_handed_scan_is_not_used_once_the_folder_changed(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _store(store, 40)
    taken = st.memory_stamps()
    dir_mtime = st.memories_mtime_ns()
    # someone else saves a memory by rename and adds one after the scan: the folder's mtime moves
    edited = load_memory_file(st.memories_dir / "m0003.toml")
    edited.task = HEAT
    os.utime(st.memories_dir, ns=(dir_mtime - 10**9, dir_mtime - 10**9))
    st.save_memories([edited, *_memories(1, seed=3, start=900)], event="test")
    assert st.memories_mtime_ns() != dir_mtime
    idx, rep = index_mod.sync(st, EMB, scanned=Scan(dir_mtime, taken))
    assert (rep.added, rep.updated) == (1, 1) and len(idx) == 41
    state = index_mod.read_state(st)
    assert state is not None and file_stamps(st, state) == st.memory_stamps()


def test_the_positions_name_records_in_state_order(store: Path) -> None:
    st = _store(store, 25)
    state = index_mod.read_state(st)
    assert state is not None
    rec = records.load_records(st, state)
    assert rec.pos.dtype == np.int64 and len(rec.pos) == len(state.ids) == 25
    assert [records.khash_str(h) for h in rec.column("khash").tolist()] == [
        load_memory_file(st.memory_path(mid)).key_hash() for mid in state.ids
    ]


def test_what_a_killed_sync_appended_past_the_named_records_is_cut(store: Path) -> None:
    st = _store(store, 20)
    m = _manifest(st)
    for part in records.PARTS:  # as a sync killed after appending its records leaves them
        with open(records.part_path(st.index_dir, m["tgen"], part), "ab") as f:
            f.write(b"\x07" * 4096)
    assert len(index_mod.load(st).state.ids) == 20  # type: ignore[union-attr]
    st.save_memories(_memories(1, seed=2, start=700), event="test")
    index_mod.sync(st, EMB)
    m = _manifest(st)
    sizes = {p: len(b) for p, b in _parts(st, m["tgen"]).items()}
    assert sizes == {
        "rows": m["rows"] * records.row_dtype().itemsize,
        "text": m["text_bytes"],
        "kw": m["kw_count"] * 4,
        "words": m["words_bytes"],
    }


def _edited_and_two_new(store: Path) -> Store:
    """An indexed store of 30 memories, then one edited (its keys) and two new."""
    st = _store(store, 30)
    edited = load_memory_file(st.memories_dir / "m0004.toml")
    edited.task = HEAT
    st.save_memories([edited, *_memories(2, seed=5, start=700)], event="test")
    return st


def test_a_sync_gathers_the_records_once_for_the_keywords_not_again_for_the_stamp_columns(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sync holds each position's stat already: the state columns take them from it, not
    # from a second gather of every record (a pass over every memory at 1M).
    st = _edited_and_two_new(store)
    calls = []
    real = records.RecordLog.records

    def counted(self: records.RecordLog, pos: np.ndarray) -> records.Records:
        calls.append(len(pos))
        return real(self, pos)

    monkeypatch.setattr(records.RecordLog, "records", counted)
    idx, rep = index_mod.sync(st, EMB)
    assert (rep.added, rep.updated, len(idx)) == (2, 1, 32)
    assert calls == [32]  # the keyword rows' gather only
    state = index_mod.read_state(st)
    assert state is not None
    monkeypatch.undo()
    assert file_stamps(st, state) == st.memory_stamps()
    # the columns a query checks a memory file against: each as statted now
    assert {mid: state.stamp_at(i) for i, mid in enumerate(state.ids)} == st.memory_stamps()


def test_a_sync_matches_the_memories_to_the_old_state_by_its_mapped_columns(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sync finds each memory's old position by array search over the last generation's id
    # column: it never builds that generation's ids, labels, kinds or families as lists (a
    # million strings and ints at 1M, where the arrays are mapped).
    from memp_cli.index import columns

    st = _edited_and_two_new(store)
    (st.memories_dir / "m0007.toml").unlink()
    built: list[str] = []
    real = columns.Columns.as_list

    def as_list(self: columns.Columns, name: str) -> list[object]:
        built.append(name)
        return real(self, name)

    monkeypatch.setattr(columns.Columns, "as_list", as_list)
    idx, rep = index_mod.sync(st, EMB)
    assert (rep.added, rep.updated, rep.removed, len(idx)) == (2, 1, 1, 31)
    assert built == []
    monkeypatch.undo()
    state = index_mod.read_state(st)
    assert state is not None and state.ids == sorted(st.memory_stamps())


@pytest.mark.parametrize("ordered", [True, False])
def test_old_positions_are_found_in_sorted_ids_and_in_any_other_order(ordered: bool) -> None:
    from memp_cli.index.plan import _old_positions

    old = ["m01", "m03", "m05", "m07"] if ordered else ["m05", "m01", "m07", "m03"]
    got = _old_positions(np.array(old, dtype=np.bytes_), ["m00", "m01", "m04", "m05", "m07", "m09"])
    assert got.tolist() == [-1, old.index("m01"), -1, old.index("m05"), old.index("m07"), -1]
    assert _old_positions(np.zeros(0, dtype="S1"), ["m01"]).tolist() == [-1]
