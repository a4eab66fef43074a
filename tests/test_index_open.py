"""memp_cli.index.open_index: when the index is loaded, synced or rebuilt (the library decides,
so the CLI, an MCP server and eval share it), and readers that never wait behind writers nor
write a store they cannot write."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, memp
from test_index_format import HEAT, _memories

from memp_cli import index as index_mod
from memp_cli.backends.embedders.hashing import HashEmbedder
from memp_cli.store import Store
from memp_cli.store.fsutil import StoreLock

EMB = HashEmbedder(256)


def _open(st: Store, **kw: Any) -> index_mod.Opened:
    return index_mod.open_index(st, EMB, **kw)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file of the store with its mtime and size: what a read-only reader must not change."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _add_memory(st: Store, start: int = 500) -> str:
    (mem,) = _memories(1, seed=3, start=start)
    st.save_memories([mem], event="test")
    return mem.id


# --------------------------------------------------------------------------- what open decides


def test_a_fresh_index_is_loaded_as_it_is(built: Path) -> None:
    st = Store.open(built)
    before = _snapshot(built)
    opened = _open(st, exact=True)
    assert opened.index is not None and len(opened.index) == 40 and opened.index.vectors_mapped
    assert opened.report is None and opened.notes == [] and not opened.stale
    assert _snapshot(built) == before


def test_a_stale_index_is_synced(built: Path) -> None:
    st = Store.open(built)
    new = _add_memory(st)
    opened = _open(st)
    assert opened.report is not None and (opened.report.added, opened.report.embedded) == (1, 1)
    assert opened.index is not None and new in opened.index.state.ids and opened.notes == []
    assert _open(st).report is None  # fresh now


def test_keywords_missing_are_built_when_asked_for(built: Path) -> None:
    st = Store.open(built)
    for p in (built / "index").glob("keywords-*"):
        p.unlink()
    state = index_mod.read_state(st)
    assert state is not None
    assert _open(st).report is None  # the query key does not need them
    opened = _open(st, keywords=True)
    assert opened.report is not None and opened.report.embedded == 0
    assert opened.index is not None and opened.index.keyword_index().words


def test_a_damaged_state_is_rebuilt_and_says_why(built: Path) -> None:
    st = Store.open(built)
    (built / "index" / "state.json").write_bytes(b"{")
    notes: list[str] = []
    opened = _open(st, on_note=notes.append)
    assert opened.report is not None and opened.report.rebuilt and opened.report.embedded == 40
    assert notes == opened.notes and len(notes) == 1
    assert "damaged index state" in notes[0] and "rebuilt the index" in notes[0]


def test_no_memories_no_index(store: Path) -> None:
    opened = _open(Store.open(store))
    assert opened.index is None and opened.report is None and not (store / "index" / "state.json").exists()


def test_an_index_in_format_2_is_upgraded_without_embedding(store_dir: Path) -> None:
    shutil.copytree(DATA / "index_v2", store_dir)
    st = Store.open(store_dir)
    opened = _open(st)
    assert opened.report is not None and opened.report.embedded == 0 and not opened.report.rebuilt
    state = index_mod.read_state(st)
    assert state is not None and state.version == index_mod.INDEX_VERSION and state.lexical


# --------------------------------------------------------------------------- readers and writers


def _hold_lock(root: Path) -> StoreLock:
    """The writers' lock, held as another process would hold it (its own open file)."""
    lock = StoreLock(root / ".lock", wait=False)
    lock.acquire()
    return lock


def test_a_reader_never_waits_behind_a_writer(built: Path) -> None:
    st = Store.open(built)
    new = _add_memory(st)
    lock = _hold_lock(built)
    try:
        t0 = time.monotonic()
        opened = _open(st)
        assert time.monotonic() - t0 < 5
        assert opened.stale and opened.report is None and opened.index is not None
        assert len(opened.index) == 40 and new not in opened.index.state.ids  # the last generation
        (note,) = opened.notes
        assert "locked by another memp process" in note and "answering from the index as last written" in note
        # the CLI: answers, and says why on stderr
        r = memp("query", HEAT, "-k", 2)
        assert len(r.jsonl()) == 2 and "updating the index" in r.stderr
    finally:
        lock.release()
    assert _open(st).report is not None  # the lock is free: synced


def test_a_query_during_a_rebuild_reads_the_last_generation(built: Path) -> None:
    """`memp index rebuild` holds the lock and embeds; the index it replaces stays readable."""
    st = Store.open(built)
    before = memp("query", HEAT, "-k", 3).jsonl()
    lock = _hold_lock(built)
    try:
        t0 = time.monotonic()
        r = memp("query", HEAT, "-k", 3)
        assert time.monotonic() - t0 < 5 and r.jsonl() == before and r.stderr == ""
    finally:
        lock.release()
    assert index_mod.read_state(st) is not None


def test_with_no_usable_index_a_reader_waits_and_says_so(built: Path) -> None:
    st = Store.open(built)
    (built / "index" / "state.json").write_bytes(b"{")
    lock = _hold_lock(built)
    notes: list[str] = []
    timer = threading.Timer(0.5, lock.release)
    timer.start()
    try:
        t0 = time.monotonic()
        opened = _open(st, on_note=notes.append)
        assert time.monotonic() - t0 >= 0.4
    finally:
        timer.join()
    assert "waiting for it to finish writing the index" in notes[0]
    assert opened.index is not None and len(opened.index) == 40 and opened.report is not None


def _deny_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """No file can be created or opened for writing (a store of another user, or chmod 0555):
    os.open with a write flag (how memp creates its lock, temp and journal files) raises
    PermissionError. Root ignores file modes, so this stands in for them deterministically."""
    real_open = os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def no_write(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if flags & write_flags:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", no_write)


def test_a_read_only_store_answers_from_its_last_generation(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Store.open(built)
    new = _add_memory(st)
    before = _snapshot(built)
    _deny_writes(monkeypatch)
    opened = _open(st)
    assert opened.stale and opened.index is not None and new not in opened.index.state.ids
    (note,) = opened.notes
    assert "cannot write the store" in note and "Permission denied" in note
    r = memp("query", HEAT, "-k", 2)
    assert len(r.jsonl()) == 2 and "cannot write the store" in r.stderr
    monkeypatch.undo()
    assert _snapshot(built) == before  # no lock file, no index file, no journal line


def test_a_read_only_store_without_an_index_builds_one_in_memory(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Store.open(built)
    (built / "index" / "state.json").unlink()  # no usable index
    before = _snapshot(built)
    _deny_writes(monkeypatch)
    opened = _open(st, exact=True)
    assert opened.index is not None and len(opened.index) == 40 and opened.report is not None
    assert opened.report.embedded == 40 and "building the index in memory" in opened.notes[0]
    r = memp("query", HEAT, "-k", 1)
    assert r.jsonl()[0]["task"] == HEAT and "in memory" in r.stderr
    assert _snapshot(built) == before
