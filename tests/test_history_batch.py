"""History.write_many: a batch of memory files made durable at once, each still a version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import memp

from memp_cli.store import Store, fsutil
from memp_cli.update.history import History, sha256


@pytest.fixture
def st(store: Path) -> Store:
    return Store.open(store)


def _data(mid: str, task: str) -> bytes:
    return (
        f'schema_version = 1\nid = "{mid}"\nkind = "trajectory"\nversion = 1\ntask = "{task}"\n'
        '[[steps]]\naction = "look"\n'
    ).encode()


def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        out.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return out


def _syncfs_calls(monkeypatch: pytest.MonkeyPatch, works: bool) -> list[Path]:
    calls: list[Path] = []

    def syncfs(within: Path) -> bool:
        calls.append(within)
        return works

    monkeypatch.setattr(fsutil, "_syncfs", syncfs)
    return calls


def test_each_file_a_version_with_the_stamp_it_was_written_with(st: Store) -> None:
    h = History(st)
    items = [(f"m{i:02d}", _data(f"m{i:02d}", f"task {i}")) for i in range(5)]
    stamps = h.write_many(items, by="memp test", why="batch")
    assert set(stamps) == {mid for mid, _ in items}
    for mid, data in items:
        path = st.memory_path(mid)
        assert path.read_bytes() == data
        s = path.stat()
        assert stamps[mid] == (s.st_mtime_ns, s.st_size)
        (v,) = h.versions(mid)
        assert (v.by, v.why, v.sha256) == ("memp test", "batch", sha256(data))
        assert h.content(mid, 1) == data
    # Unchanged data: no new version, and not returned; changed: version 2.
    again = h.write_many([items[0], ("m01", _data("m01", "changed"))], by="memp test")
    assert set(again) == {"m01"} and len(h.versions("m00")) == 1 and len(h.versions("m01")) == 2
    assert not [p for p in st.memories_dir.iterdir() if p.name.startswith(fsutil.TMP_PREFIX)]


def test_a_hand_edit_since_the_last_version_is_kept_first(st: Store) -> None:
    h = History(st)
    h.write_many([("m1", _data("m1", "one"))], by="memp test")
    hand = _data("m1", "by hand")
    st.memory_path("m1").write_bytes(hand)
    h.write_many([("m1", _data("m1", "two"))], by="memp test")
    assert [(v.v, v.by) for v in h.versions("m1")] == [(1, "memp test"), (2, "hand edit"), (3, "memp test")]
    assert h.content("m1", 2) == hand


def test_an_id_given_twice_is_written_once_with_its_last_data(st: Store) -> None:
    h = History(st)
    h.write_many([("m1", _data("m1", "first")), ("m1", _data("m1", "last"))], by="memp test")
    assert st.memory_path("m1").read_bytes() == _data("m1", "last")
    assert len(h.versions("m1")) == 1


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fsynced paths from /proc")
def test_a_large_batch_is_flushed_by_syncfs_not_file_by_file(
    st: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsynced = _fsynced(monkeypatch)
    calls = _syncfs_calls(monkeypatch, works=True)
    n = fsutil.SYNCFS_MIN
    History(st).write_many([(f"m{i}", _data(f"m{i}", str(i))) for i in range(n)], by="memp test")
    assert len(calls) == 2  # the objects and temp files, then the history logs
    mem_dir = str(st.memories_dir.resolve())
    assert fsynced == [mem_dir]  # the renames: one fsync of the folder


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fsynced paths from /proc")
@pytest.mark.parametrize(("n", "syncfs_works"), [(3, True), (fsutil.SYNCFS_MIN, False)])
def test_a_small_batch_or_no_syncfs_fsyncs_every_file(
    st: Store, monkeypatch: pytest.MonkeyPatch, n: int, syncfs_works: bool
) -> None:
    fsynced = _fsynced(monkeypatch)
    calls = _syncfs_calls(monkeypatch, works=syncfs_works)
    History(st).write_many([(f"m{i}", _data(f"m{i}", str(i))) for i in range(n)], by="memp test")
    assert len(calls) == (0 if n < fsutil.SYNCFS_MIN else 2)
    mem_dir = str(st.memories_dir.resolve())
    temps = [
        p for p in fsynced if os.path.dirname(p) == mem_dir and os.path.basename(p).startswith(".tmp-swap-")
    ]
    logs = [p for p in fsynced if p.endswith(".jsonl") and "/history/" in p]
    objects = [p for p in fsynced if "/history/objects/" in p and len(os.path.basename(p)) == 64]
    assert len(temps) == len(logs) == len(objects) == n
    assert mem_dir in fsynced
    # each temp file is fsynced before any is renamed, each log line after every rename
    last_temp = max(i for i, p in enumerate(fsynced) if p in temps)
    renamed = max(i for i, p in enumerate(fsynced) if p == mem_dir)
    assert renamed > last_temp + 1  # the folder's fsync of the renames (not the last temp file's)
    assert min(i for i, p in enumerate(fsynced) if p in logs) > renamed


def test_the_real_syncfs_runs(st: Store) -> None:
    assert fsutil._syncfs(st.memories_dir) is os.uname().sysname.startswith("Linux")
    memp("doctor")


@pytest.mark.parametrize("linked", ["objects", "objects/xx", "memories-later"])
def test_a_link_among_the_folders_of_a_batch_is_refused(st: Store, tmp_path: Path, linked: str) -> None:
    """write_many checks each folder once per batch, not per file: a history objects folder that
    is a link (the one of a digest, or all of them) fails the batch before anything goes through
    it, and so does a memories folder made a link after the temp files are written, before the
    renames (the check before them); the link's target is never written."""
    h = History(st)
    items = [(f"m{i:02d}", _data(f"m{i:02d}", f"task {i}")) for i in range(5)]
    victim = tmp_path / "victim"
    victim.mkdir()
    if linked == "objects":
        (st.history_dir / "objects").parent.mkdir(parents=True, exist_ok=True)
        (st.history_dir / "objects").symlink_to(victim)
    elif linked == "objects/xx":
        d = st.history_dir / "objects" / sha256(items[2][1])[:2]
        d.parent.mkdir(parents=True)
        d.symlink_to(victim)
    else:
        real = fsutil.sync_files

        def swap_folder(paths: object) -> None:  # between the temp files and the renames
            real(paths)  # type: ignore[arg-type]
            os.rename(st.memories_dir, tmp_path / "moved")
            st.memories_dir.symlink_to(victim)

        monkeypatch = pytest.MonkeyPatch()
        monkeypatch.setattr("memp_cli.update.history.sync_files", swap_folder)
    try:
        with pytest.raises(fsutil.StoreLinkError):
            h.write_many(items, by="memp test")
    finally:
        if linked == "memories-later":
            monkeypatch.undo()
    assert list(victim.iterdir()) == []
    assert all(not (tmp_path / "moved" / f"{mid}.toml").exists() for mid, _ in items)


def test_ids_but_leaves_out_the_known_and_what_is_no_id(st: Store) -> None:
    """The ids with a history in none of the given collections: distill's plan asks for those
    without a memory file or a trash entry (hand deletes) without a set of every history id."""
    h = History(st)
    h.write_many([(f"m{i:03d}", _data(f"m{i:03d}", f"task {i}")) for i in range(6)], by="test")
    (st.history_dir / "not an id.jsonl").write_bytes(b"")
    (st.history_dir / "m900.txt").write_bytes(b"")
    assert h.ids() == {f"m{i:03d}" for i in range(6)}
    assert h.ids_but({"m000", "m001"}, {"m005": 1}.keys()) == {"m002", "m003", "m004"}
    assert h.ids_but(h.ids()) == set()
