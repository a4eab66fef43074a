"""The store as a library: layout, atomic ingest, memory files, lock, journal, index freshness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FILES, read_lines
from hypothesis import given, settings
from hypothesis import strategies as st

from memp_cli import index as index_mod
from memp_cli.backends.embedders import get_embedder
from memp_cli.build.runner import distill
from memp_cli.config import Config
from memp_cli.errors import InputError, LockedError, MemoryFileError, NotFoundError, StoreError
from memp_cli.ingest import read_jsonl
from memp_cli.model.memory import Memory, load_memory_file, memory_from_toml, valid_id, valid_ids
from memp_cli.store import Store
from memp_cli.store.fsutil import StoreLock, atomic_write


def _hash_store(root: Path) -> Store:
    cfg = Config()
    cfg.embedder.name, cfg.embedder.dim = "hash", 256
    return Store.init(root, cfg)


def _lines(n: int | None = None) -> list[bytes]:
    lines = [(line + "\n").encode() for line in read_lines(FILES["native"])]
    return lines if n is None else lines[:n]


def test_init_layout_and_reopen(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _hash_store(root)
    for sub in ("memories", "trajectories", "index"):
        assert (root / sub).is_dir()
    assert (root / ".gitignore").read_text() == "index/\ncache/\n.lock\n"
    s = Store.open(root)
    assert s.config.embedder.name == "hash"
    assert [e["event"] for e in s.read_journal()] == ["init"]
    with pytest.raises(StoreError, match="already exists"):
        _hash_store(root)


def test_open_missing_and_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no memp store"):
        Store.open(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not a memp store"):
        Store.open(tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        _hash_store(tmp_path / "file")


def test_ingest_writes_one_segment_and_dedupes(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")
    rep = s.ingest(read_jsonl(_lines(), "a.jsonl"))
    assert (rep.read, rep.added, rep.duplicates, rep.bad) == (40, 40, 0, 0)
    assert [p.name for p in s.segments()] == [rep.segment]
    # Records in the segment start with their id (cheap scans) and round-trip.
    seg_lines = s.segments()[0].read_bytes().splitlines()
    assert all(line.startswith(b'{"id":"t') for line in seg_lines)
    assert len(s.trajectory_ids()) == 40
    assert len(list(s.iter_trajectories())) == 40
    again = s.ingest(read_jsonl(_lines(), "a.jsonl"))
    assert (again.added, again.duplicates, again.segment) == (0, 40, None)
    assert len(s.segments()) == 1
    events = [e["event"] for e in s.read_journal()]
    assert events == ["init", "ingest"]


def test_ingest_interrupted_midway_stores_nothing(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")

    def results():
        yield from list(read_jsonl(_lines(5), "a.jsonl"))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        s.ingest(results())
    assert s.segments() == []
    assert list(s.trajectories_dir.iterdir()) == []  # no temp file left either
    # The lock was released.
    with StoreLock(s.root / ".lock", wait=False):
        pass


def test_ingest_strict_stores_nothing(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")
    lines = [*_lines(3), b"{oops\n", *_lines(6)[3:]]
    with pytest.raises(InputError, match=r"a\.jsonl:4: not valid JSON"):
        s.ingest(read_jsonl(lines, "a.jsonl"), strict=True)
    assert s.segments() == []
    rep = s.ingest(read_jsonl(lines, "a.jsonl"))
    assert (rep.added, rep.bad) == (6, 1)
    assert str(rep.errors[0]).startswith("a.jsonl:4:")


def test_damaged_segment_line_names_file_and_line(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")
    s.ingest(read_jsonl(_lines(3), "a.jsonl"))
    seg = s.segments()[0]
    with open(seg, "ab") as f:
        f.write(b'{"id": "tdead", "task": \n')
    with pytest.raises(StoreError, match=rf"{seg.name}:4: damaged trajectory record"):
        list(s.iter_trajectories())


def test_memory_paths_never_escape_the_store(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")
    for bad in ("../../etc/passwd", "..", "a/b", "/etc/passwd", "A", "x.toml", "", "-x", "a" * 65):
        with pytest.raises(NotFoundError, match="not a valid memory id"):
            s.memory_path(bad)
        with pytest.raises(NotFoundError):
            s.load_memory(bad)
    assert s.memory_path("m0123_ab-c") == s.memories_dir / "m0123_ab-c.toml"


def test_memory_round_trip_and_validation(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")
    m = Memory(
        id="m1",
        kind="trajectory",
        task="heat some egg and put it in garbagecan.",
        keys=["heat some egg"],
        steps=[{"action": "go to fridge 1", "observation": 'The fridge 1 is closed. "quoted"\nline 2'}],
        success=True,
    )
    with s.lock:
        s.save_memory(m)
    back = s.load_memory("m1")
    assert back.steps == m.steps and back.keys == m.keys and back.success is True
    assert back.provenance.created and back.provenance.updated
    text = (s.memories_dir / "m1.toml").read_text()
    assert text.startswith("# memp memory.")
    # Validation errors name path and line.
    bad = text.replace('kind = "trajectory"', 'kind = "recipe"')
    line = bad.splitlines().index('kind = "recipe"') + 1
    with pytest.raises(MemoryFileError, match=rf"^m1\.toml:{line}: \"kind\" must be one of"):
        memory_from_toml(bad, "m1.toml")
    with pytest.raises(MemoryFileError, match=r"file is named m2\.toml"):
        memory_from_toml(text, "m2.toml")
    with pytest.raises(MemoryFileError, match=r"needs \[\[steps\]\]"):
        memory_from_toml(text.split("[[steps]]")[0], "m1.toml")
    (s.memories_dir / "m1.toml").write_bytes(b'id = "m1"\ntask = "caf\xe9"\n')
    with pytest.raises(MemoryFileError, match=r"m1\.toml:2: not UTF-8 text"):
        load_memory_file(s.memories_dir / "m1.toml")
    items = list(s.iter_memories())
    assert len(items) == 1 and isinstance(items[0], MemoryFileError)


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")
    with StoreLock(s.root / ".lock"):
        with pytest.raises(LockedError, match=rf"locked by another memp process \(pid {os.getpid()}\)"):
            StoreLock(s.root / ".lock", wait=False).acquire()
        with pytest.raises(LockedError):
            StoreLock(s.root / ".lock", wait=True, timeout=0.1).acquire()
        locked = Store.open(s.root, wait=False)
        with pytest.raises(LockedError):
            locked.ingest(read_jsonl(_lines(1), "a.jsonl"))
    rep = Store.open(s.root, wait=False).ingest(read_jsonl(_lines(1), "a.jsonl"))
    assert rep.added == 1
    # Re-entrant within one Store.
    with s.lock, s.lock:
        pass


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.txt"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_torn_journal_line_is_skipped(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")
    with open(s.journal_path, "ab") as f:
        f.write(b'{"time": "2024-01-01T00:00:00Z", "eve')
    assert [e["event"] for e in s.read_journal()] == ["init"]


def test_index_sync_tracks_new_changed_deleted_and_broken_files(tmp_path: Path) -> None:
    s = _hash_store(tmp_path / "s")
    s.ingest(read_jsonl(_lines(), "a.jsonl"))
    distill(s, "trajectory", only_success=False)
    emb = get_embedder("hash", dim=256)
    idx, rep = index_mod.sync(s, emb)
    assert (rep.added, rep.embedded, len(idx)) == (40, 40, 40)
    state = index_mod.read_state(s)
    assert index_mod.is_fresh(s, state)
    ids = s.memory_ids()

    # Nothing changed: nothing embedded, state not rewritten.
    before = index_mod.state_path(s).stat().st_mtime_ns
    _, rep = index_mod.sync(s, emb)
    assert (rep.changed, rep.embedded) == (False, 0)
    assert index_mod.state_path(s).stat().st_mtime_ns == before

    # A file broken in place (same directory mtime) is noticed and reported.
    p = s.memories_dir / f"{ids[0]}.toml"
    good = p.read_bytes()
    p.write_bytes(good.replace(b'kind = "trajectory"', b"kind = ["))
    assert not index_mod.is_fresh(s, index_mod.read_state(s))
    idx, rep = index_mod.sync(s, emb)
    assert len(idx) == 39 and len(rep.broken) == 1
    assert str(rep.broken[0]).startswith(f"{p}:")
    assert index_mod.is_fresh(s, index_mod.read_state(s))

    # Fixed in place again: back in the index (regression: it stayed out for good).
    p.write_bytes(good)
    assert not index_mod.is_fresh(s, index_mod.read_state(s))
    idx, rep = index_mod.sync(s, emb)
    assert len(idx) == 40 and rep.added == 1

    # Deleted: removed.
    (s.memories_dir / f"{ids[1]}.toml").unlink()
    idx, rep = index_mod.sync(s, emb)
    assert (len(idx), rep.removed) == (39, 1)
    assert ids[1] not in idx.state.ids


def test_index_rejects_another_embedder(tmp_path: Path) -> None:
    from memp_cli.errors import ModelError

    s = _hash_store(tmp_path / "s")
    s.ingest(read_jsonl(_lines(3), "a.jsonl"))
    distill(s, "trajectory", only_success=False)
    index_mod.sync(s, get_embedder("hash", dim=256))
    state = index_mod.read_state(s)
    with pytest.raises(ModelError, match="built with embedder 'hash', not 'minilm'"):
        index_mod.check_embedder(s, state, "minilm")
    with pytest.raises(ModelError, match="has dimension 256, the embedder gives 64"):
        index_mod.check_embedder(s, state, "hash", 64)
    with pytest.raises(ModelError, match="index rebuild"):
        index_mod.sync(s, get_embedder("hash", dim=64))
    _, rep = index_mod.sync(s, get_embedder("hash", dim=64), rebuild=True)
    assert rep.rebuilt and index_mod.read_state(s).dim == 64


def test_memory_stamps_are_each_files_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every memory file (a link followed, as a read would), no temp file, no other name; a file
    gone between the listing and its stat is left out."""
    s = _hash_store(tmp_path / "s")
    d = s.memories_dir
    for i in range(40):
        (d / f"m{i:03d}.toml").write_bytes(b"x" * i)
    (d / ".tmp-swap-abc.toml").write_bytes(b"tmp")
    (d / "notes.txt").write_bytes(b"other")
    (tmp_path / "elsewhere.toml").write_bytes(b"linked")
    (d / "mlink.toml").symlink_to(tmp_path / "elsewhere.toml")
    expected = {p.stem: (p.stat().st_mtime_ns, p.stat().st_size) for p in d.glob("m*.toml")}
    assert len(expected) == 41 and expected["mlink"][1] == 6
    assert s.memory_stamps() == expected
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: [*listdir(p), "mgone.toml"])
    assert s.memory_stamps() == expected


def test_memory_stamps_start_no_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large folder is stat'ed by the calling thread: threads statting on two cores took over
    twice as long at a million files, cached or not (see ``Store.memory_stamps``)."""
    import threading

    s = _hash_store(tmp_path / "s")
    for i in range(10_000):
        (s.memories_dir / f"m{i:05d}.toml").touch()
    monkeypatch.setattr(threading.Thread, "start", lambda self: pytest.fail("a thread was started"))
    assert len(s.memory_stamps()) == 10_000


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="ab0_-.Z\n/tml", max_size=12).map(lambda s: s + ".toml") | st.text(max_size=8))
)
def test_valid_ids_is_valid_id_over_a_listing(names: list[str]) -> None:
    """The one-pass form of valid_id the memories and history folders are filtered by. (A name
    holding a newline is no memory's: ``valid_id`` lets one end in it, the listing form does not.)"""
    expected = [n[:-5] for n in names if n.endswith(".toml") and "\n" not in n and valid_id(n[:-5])]
    assert valid_ids(names, ".toml") == expected
    assert valid_ids(["m" + "a" * 63 + ".toml", "m" + "a" * 64 + ".toml", ".tmp-abc.toml"], ".toml") == [
        "m" + "a" * 63
    ]
