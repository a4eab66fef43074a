"""`memp stats` counts from the trajectory ledger and a fresh index: the same numbers, in the same
order, as reading every segment and every memory file (the reference below is the code stats ran
before the ledger)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, memp

import memp_cli.store as store_mod
from memp_cli import index as index_mod
from memp_cli.errors import MemoryFileError
from memp_cli.model.trajectory import Trajectory
from memp_cli.store import Store
from memp_cli.store import stats as stats_mod
from memp_cli.store.ledger import LEDGER_NAME


def _reference(store_dir: Path) -> dict[str, Any]:
    """Trajectories and memory kinds as stats read them before: every run, every file parsed."""
    store = Store.open(store_dir)
    outcomes: Counter[str] = Counter()
    for t in store.iter_trajectories():
        outcomes[{True: "success", False: "failure", None: "unknown"}[t.success]] += 1
    kinds: Counter[str] = Counter()
    broken = 0
    for m in store.iter_memories():
        if isinstance(m, MemoryFileError):
            broken += 1
        else:
            kinds[m.kind] += 1
    return {
        "trajectories": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "memories": sum(kinds.values()),
        "kinds": dict(kinds),
        "broken_memory_files": broken,
    }


def _stats(store_dir: Path) -> dict[str, Any]:
    (st,) = memp("stats", "--json").jsonl()
    return st


def _same(store_dir: Path, st: dict[str, Any]) -> None:
    ref = _reference(store_dir)
    got = {k: st[k] for k in ref}
    assert got == ref
    assert list(got["outcomes"]) == list(ref["outcomes"]) and list(got["kinds"]) == list(ref["kinds"])


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Path], list[str]]:
    """Memory files stats parses (through the store's reader), and runs it parses."""
    files: list[Path] = []
    runs: list[str] = []
    load, from_stored = store_mod.load_memory_file, Trajectory.from_stored
    parse = store_mod.parse_memory_bytes

    def load_spy(path: Path) -> Any:
        files.append(path)
        return load(path)

    def parse_spy(d: dict[str, Any]) -> Trajectory:
        runs.append(d["id"])
        return from_stored(d)

    def bytes_spy(raw: bytes, path: Path) -> Any:  # Store.iter_memories reads ahead, then parses
        files.append(path)
        return parse(raw, path)

    monkeypatch.setattr(store_mod, "load_memory_file", load_spy)
    monkeypatch.setattr(store_mod, "parse_memory_bytes", bytes_spy)
    monkeypatch.setattr(Trajectory, "from_stored", staticmethod(parse_spy))
    return files, runs


def _mixed(built: Path) -> None:
    """A second kind of memory, a broken file, a hand edit, runs of every outcome."""
    memp("ingest", DATA / "distill_webshop.jsonl")
    memp("distill", "--policy", "script", "--with-failures", "--limit", "2")
    mems = sorted((built / "memories").glob("*.toml"))
    mems[0].write_text("not [[ toml\n")
    text = mems[1].read_text()
    mems[1].write_text(text.replace('task = "', 'task = "edited by hand: ', 1) + "# edited\n")


def test_stats_from_the_ledger_and_a_fresh_index_is_stats_from_the_files(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mixed(built)
    memp("index", "sync")  # the index knows the edit and the broken file: fresh
    (built / "cache" / LEDGER_NAME).unlink()  # (the distill wrote it)
    files, runs = _spy_reads(monkeypatch)
    first = _stats(built)  # no ledger: every segment read, and entered
    assert files == [] and len(runs) == 44
    runs.clear()
    second = _stats(built)
    assert second == first and files == [] and runs == []  # nothing parsed at all
    monkeypatch.undo()
    _same(built, second)
    assert second["broken_memory_files"] == 1 and set(second["kinds"]) == {"trajectory", "script"}


def test_stats_with_a_stale_index_reads_the_files(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mixed(built)  # the edit and the broken file are newer than the index
    files, _ = _spy_reads(monkeypatch)
    st = _stats(built)
    assert st["index"]["fresh"] is False and len(files) == len(list((built / "memories").glob("*.toml")))
    monkeypatch.undo()
    _same(built, st)


def test_a_memory_file_the_index_does_not_count_means_the_slow_path(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dangling link named like a memory: the index's scan passes over it, stats counts it
    broken (as it always did)."""
    (built / "memories" / "mdangling0001.toml").symlink_to(built / "nowhere.toml")
    memp("index", "sync")
    st = _stats(built)
    assert st["index"]["fresh"] is True
    _same(built, st)
    assert st["broken_memory_files"] == 1


def test_stats_without_or_with_a_damaged_ledger(built: Path) -> None:
    memp("ingest", DATA / "distill_webshop.jsonl")
    ledger = built / "cache" / LEDGER_NAME
    for damage in (None, b"", b"[1,2", b'{"ledger_version":1,"segments":{"x":[[0,0,0],["t1"],"q"]}}'):
        if damage is None:
            ledger.unlink(missing_ok=True)
        else:
            ledger.write_bytes(damage)
        st = _stats(built)
        _same(built, st)
        assert st["outcomes"] == {"success": 31, "failure": 13}
        assert ledger.is_file() and ledger.read_bytes() != damage  # written anew


def test_a_segment_changed_after_the_ledger_is_read_again(built: Path) -> None:
    _stats(built)
    (seg,) = sorted((built / "trajectories").glob("*.jsonl"))
    st = seg.stat()
    data = seg.read_bytes()
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns - 1_000_000))
    with open(seg, "r+b") as f:  # in place: the same size and inode, a new mtime
        f.write(data.replace(b'"success":true', b'"success":null', 1))
    got = _stats(built)
    _same(built, got)
    assert got["outcomes"]["unknown"] == 1


def test_kinds_in_the_order_of_the_sorted_ids_whatever_the_index_order(built: Path) -> None:
    memp("distill", "--policy", "script", "--limit", "3", "--replace-edits")
    store = Store.open(built)
    kinds = {m.id: m.kind for m in store.iter_memories() if not isinstance(m, MemoryFileError)}
    first_script = min(m for m, k in kinds.items() if k == "script")
    for mid in [m for m, k in kinds.items() if k == "trajectory" and m < first_script]:
        (built / "memories" / f"{mid}.toml").unlink()  # sorted, the first kind is script...
    last = max(kinds)
    if kinds[last] == "script":
        (built / "memories" / f"{last}.toml").unlink()  # ...and the last one trajectory
    memp("index", "sync")
    state = index_mod.read_state(store)
    assert state is not None and index_mod.is_fresh(store, state)
    slow = stats_mod.memory_kinds(store, None)
    for order in (state.ids, state.ids[::-1]):
        rows = dict(zip(state.ids, state.kinds, strict=True))
        state.ids, state.kinds = list(order), [rows[m] for m in order]
        fast = stats_mod.memory_kinds(store, state)
        assert fast == slow and list(fast[0]) == list(slow[0]) == ["script", "trajectory"]
