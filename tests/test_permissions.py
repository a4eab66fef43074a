"""Store files follow the umask (so a group can share a store), and a write the file system
refuses is a store error that says what to do, not an "unexpected error" (exit 1).

The tests run as root, where file modes do not stop writes: a refused write is simulated by
making the os functions raise PermissionError for paths inside the store.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FILES, memp, read_lines

from memp_cli import index as index_mod
from memp_cli.backends.embedders import get_embedder
from memp_cli.build.runner import distill
from memp_cli.config import Config
from memp_cli.errors import ExitCode, StoreError
from memp_cli.ingest import read_jsonl
from memp_cli.store import Store
from memp_cli.store.fsutil import TMP_PREFIX, StoreLock, atomic_output, atomic_write


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    try:
        yield set_mask
    finally:
        os.umask(saved)


def _hash_store(root: Path) -> Store:
    cfg = Config()
    cfg.embedder.name, cfg.embedder.dim = "hash", 256
    return Store.init(root, cfg)


def _full_store(root: Path) -> Store:
    """A store with every kind of file: config, segment, memories, journal, lock, index."""
    s = _hash_store(root)
    lines = [(line + "\n").encode() for line in read_lines(FILES["native"])][:10]
    s.ingest(read_jsonl(lines, "a.jsonl"))
    distill(s, "trajectory")
    index_mod.sync(s, get_embedder("hash", dim=256))
    return s


def _modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    files: dict[str, int] = {}
    dirs: dict[str, int] = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            dirs[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
        for f in filenames:
            p = Path(dirpath) / f
            files[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return files, dirs


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_store_files_follow_the_umask(
    tmp_path: Path, umask: Callable[[int], None], mask: int, file_mode: int, dir_mode: int
) -> None:
    umask(mask)
    s = _full_store(tmp_path / "s")
    files, dirs = _modes(s.root)
    # every kind of file is there, so the check below covers each writer
    names = set(files)
    assert {"memp.toml", ".gitignore", "journal.jsonl", ".lock"} <= names
    assert any(n.startswith("memories/") for n in names)
    assert any(n.startswith("trajectories/") for n in names)
    assert sum(n.startswith("index/") for n in names) >= 4  # state, files table, vectors, BM25
    assert {"memories", "trajectories", "index"} <= set(dirs)
    assert {n: m for n, m in files.items() if m != file_mode} == {}
    assert {n: m for n, m in dirs.items() if m != dir_mode} == {}


def test_group_writable_umask_gives_group_writable_files(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    umask(0o002)  # a shared store: the group may write too (lock, journal and all)
    files, dirs = _modes(_full_store(tmp_path / "s").root)
    assert set(files.values()) == {0o664}
    assert set(dirs.values()) == {0o775}


def test_umask_000_makes_nothing_others_can_write(tmp_path: Path, umask: Callable[[int], None]) -> None:
    """A umask that lets everyone write is no choice to respect: memp's own folders and files
    lose group and other write (0755, 0644), and doctor finds nothing to flag."""
    umask(0)
    s = _full_store(tmp_path / "s")
    s.journal("extra")  # an append log made under umask 0 too
    with StoreLock(s.cache_dir / "distill.lock"):
        pass
    files, dirs = _modes(s.root)
    assert {"cache", "history"} <= set(dirs) and "cache/distill.lock" in files
    assert {n: oct(m) for n, m in files.items() if m & 0o022} == {}
    assert {n: oct(m) for n, m in dirs.items() if m & 0o022} == {}
    assert set(dirs.values()) == {0o755}
    from memp_cli.store.doctor import permission_findings

    assert permission_findings(Store.open(s.root)) == []


def test_atomic_writers_follow_the_umask(tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(0o077)
    atomic_write(tmp_path / "a" / "x.toml", "x = 1\n")
    with atomic_output(tmp_path / "b" / "y.bin") as tmp, open(tmp, "wb") as f:
        f.write(b"y")
    assert stat.S_IMODE((tmp_path / "a" / "x.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b" / "y.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert [p.name for p in tmp_path.rglob(f"{TMP_PREFIX}*")] == []


# ------------------------------------------------------------- refused writes
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _deny(monkeypatch: pytest.MonkeyPatch, under: Path, *, only: Callable[[str], bool] | None = None) -> None:
    """Make every write below ``under`` (optionally: whose path passes ``only``) fail with EACCES."""
    real_open, real_replace, real_mkdir = os.open, os.replace, os.mkdir
    root = str(under)

    def hit(path: Any) -> bool:
        p = os.fsdecode(os.fspath(path))
        return p.startswith(root) and (only is None or only(p))

    def refuse(path: Any) -> PermissionError:
        return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(os.fspath(path)))

    def fake_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & _WRITE_FLAGS and hit(path):
            raise refuse(path)
        return real_open(path, flags, *args, **kw)

    def fake_replace(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        if hit(dst):
            raise refuse(src)
        real_replace(src, dst, *args, **kw)

    def fake_mkdir(path: Any, *args: Any, **kw: Any) -> None:
        if hit(path) and not os.path.isdir(path):
            raise refuse(path)
        real_mkdir(path, *args, **kw)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "replace", fake_replace)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def _no_write_permission(e: StoreError, path: Path) -> None:
    assert e.exit_code == ExitCode.STORE
    assert f"no write permission on {path}" in str(e)
    assert "ask" in str(e) and "owner" in str(e)


def test_refused_temp_file_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    _deny(monkeypatch, tmp_path / "d")
    with pytest.raises(StoreError) as ei:
        atomic_write(tmp_path / "d" / "x.toml", "x = 1\n")
    _no_write_permission(ei.value, tmp_path / "d")
    with pytest.raises(StoreError) as ei, atomic_output(tmp_path / "d" / "y.bin"):
        pytest.fail("atomic_output yielded a path it could not create")
    _no_write_permission(ei.value, tmp_path / "d")


def test_refused_rename_is_a_store_error_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d").mkdir()
    _deny(monkeypatch, tmp_path / "d", only=lambda p: p.endswith(".toml") or p.endswith(".bin"))
    with pytest.raises(StoreError) as ei:
        atomic_write(tmp_path / "d" / "x.toml", "x = 1\n")
    _no_write_permission(ei.value, tmp_path / "d")
    with pytest.raises(StoreError) as ei, atomic_output(tmp_path / "d" / "y.bin") as tmp:
        tmp.write_bytes(b"y")
    _no_write_permission(ei.value, tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []


def test_refused_mkdir_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _deny(monkeypatch, tmp_path / "d")
    with pytest.raises(StoreError) as ei:
        atomic_write(tmp_path / "d" / "sub" / "x.toml", "x = 1\n")
    _no_write_permission(ei.value, tmp_path)


def test_refused_lock_and_journal_are_store_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _hash_store(tmp_path / "s")
    with s.lock:  # the lock file now exists
        pass
    _deny(monkeypatch, s.root)
    with pytest.raises(StoreError) as ei:
        StoreLock(s.root / ".lock").acquire()
    _no_write_permission(ei.value, s.root / ".lock")  # the lock file exists: it is what is refused
    with pytest.raises(StoreError) as ei:
        s.journal("test")
    _no_write_permission(ei.value, s.root / "journal.jsonl")


def test_lock_file_missing_in_a_read_only_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _deny(monkeypatch, tmp_path)
    with pytest.raises(StoreError) as ei:
        StoreLock(tmp_path / ".lock").acquire()
    _no_write_permission(ei.value, tmp_path)  # no lock file yet: the directory refuses it


def test_write_commands_on_a_read_only_store_exit_with_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    memp("--store", root, "init", "--embedder", "hash")
    memp("--store", root, "ingest", FILES["native"])
    memp("--store", root, "distill", "--policy", "trajectory")
    memp("--store", root, "query", "put a clean mug in the coffeemachine", "--json")
    _deny(monkeypatch, root)
    for args in (("ingest", FILES["native"]), ("distill", "--policy", "trajectory"), ("index", "rebuild")):
        r = memp("--store", root, *args, expect=None)
        assert r.code == ExitCode.STORE, (args, r.stderr)
        assert "no write permission on" in r.stderr and "bug" not in r.stderr
    # reading still works: the index is fresh, so a query writes nothing
    r = memp("--store", root, "query", "put a clean mug in the coffeemachine", "--json")
    assert r.stdout.strip()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes")
def test_real_read_only_store(tmp_path: Path) -> None:  # pragma: no cover - runs as a normal user
    root = tmp_path / "s"
    memp("--store", root, "init", "--embedder", "hash")
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        r = memp("--store", root, "ingest", FILES["native"], expect=ExitCode.STORE)
        assert "no write permission on" in r.stderr
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_doctor_walks_a_large_store_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """doctor's check for links and for paths others can write walks the store once, keeps only
    counts and a few examples (not every path with its stat: at a million memories that was
    hundreds of MB), and looks a group up once per (group, owner), not once per path."""
    import tracemalloc

    from memp_cli.store import doctor

    s = Store.init(tmp_path / "s")
    for i in range(3000):
        p = s.memories_dir / f"m{i:05d}.toml"
        p.write_text("x")
        os.chmod(p, 0o664 if i % 2 else 0o666)
    lookups: list[tuple[int, int]] = []

    def shared(gid: int, uid: int) -> bool:
        lookups.append((gid, uid))
        return False

    monkeypatch.setattr(doctor, "_private_group", shared)
    tracemalloc.start()
    try:
        tree = doctor.scan_tree(s)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tree.by_all.count, tree.by_group.count) == (1500, 1500)
    assert len(tree.by_all.some) == len(tree.by_group.some) == 3
    assert len(lookups) == 1
    assert peak < 400_000, peak  # a list of 3,000 paths with their stats is ~1 MB
    what = " ".join(f.what for f in doctor.permission_findings(s, tree))
    assert "1500 paths" in what and "writable by everyone" in what and "writable by group" in what
