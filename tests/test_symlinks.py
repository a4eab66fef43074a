"""Symbolic links inside a store are never written through (issue 12, "Symlinks and permissions").

Each case first reproduces what the probing found (a linked ``index/`` emptied the directory it
pointed to; a linked ``.lock`` or ``cache/distill.lock`` had its target truncated; a linked
``journal.jsonl`` had journal lines appended to its target), then checks that the command now
fails with exit 5 naming the link, and that the target is byte for byte what it was. A store
whose own path is a link keeps working: that link is the user's choice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import FILES, memory_ids, memp

from memp_cli.errors import ExitCode
from memp_cli.store.fsutil import StoreLinkError, atomic_write, register_store, remove_owned

STORE = int(ExitCode.STORE)


def _victim(tmp_path: Path) -> Path:
    """A directory of someone's files that a link in the store points at."""
    d = tmp_path / "victim"
    d.mkdir()
    for name in ("notes.txt", "state.json", "files-1.json", "vectors-1.npy"):
        (d / name).write_text(f"precious {name}\n")
    return d


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _assert_names_link(err: str, link: Path) -> None:
    assert f"{link} is a symbolic link" in err
    assert f"rm {link}" in err
    assert "Traceback" not in err


def test_linked_index_dir_is_not_emptied_by_rebuild(built: Path, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    before = _snapshot(victim)
    shutil.rmtree(built / "index")
    (built / "index").symlink_to(victim)
    r = memp("index", "rebuild", expect=STORE)
    _assert_names_link(r.stderr, built / "index")
    assert _snapshot(victim) == before
    r = memp("index", "sync", expect=STORE)
    assert _snapshot(victim) == before


def test_linked_index_dir_and_doctor_fix(built: Path, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    shutil.copytree(built / "index", victim, dirs_exist_ok=True)
    (victim / ".tmp-0123").write_text("someone's temp file")
    (victim / "files-9.json").write_text("not of this generation")
    before = _snapshot(victim)
    shutil.rmtree(built / "index")
    (built / "index").symlink_to(victim)
    r = memp("doctor", "--fix", "--json", expect=STORE)
    assert _snapshot(victim) == before
    found = [json.loads(line) for line in r.stdout.splitlines()]
    assert [f["fixed"] for f in found] == [False] * len(found)  # --fix fixes nothing while a link is in
    links = [f for f in found if "symbolic link" in f["what"]]
    assert [f["what"].split(";")[0] for f in links] == [
        f"{built / 'index'}: a symbolic link (to {victim}) inside the store"
    ]


@pytest.mark.parametrize("name", [".lock", "journal.jsonl"])
def test_linked_lock_or_journal_target_untouched(store: Path, tmp_path: Path, name: str) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate or append\n")
    link = store / name
    if link.exists():
        link.unlink()
    link.symlink_to(target)
    r = memp("ingest", FILES["native"], expect=STORE)
    _assert_names_link(r.stderr, link)
    assert target.read_text() == "do not truncate or append\n"
    assert memory_ids(store) == []


def test_linked_distill_lock_target_untouched(store: Path, tmp_path: Path) -> None:
    memp("ingest", FILES["native"])
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (store / "cache").mkdir(exist_ok=True)
    (store / "cache" / "distill.lock").symlink_to(target)
    r = memp("distill", "--policy", "trajectory", expect=STORE)
    _assert_names_link(r.stderr, store / "cache" / "distill.lock")
    assert target.read_text() == "keep me\n"


def test_linked_cache_dir_refused(store: Path, tmp_path: Path) -> None:
    memp("ingest", FILES["native"])
    victim = _victim(tmp_path)
    before = _snapshot(victim)
    (store / "cache").symlink_to(victim)
    r = memp("distill", "--policy", "trajectory", expect=STORE)
    _assert_names_link(r.stderr, store / "cache")
    assert _snapshot(victim) == before


def test_linked_memories_dir_refused(store: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (store / "memories").rmdir()
    (store / "memories").symlink_to(victim)
    memp("ingest", FILES["native"])  # trajectories/ is real
    r = memp("distill", "--policy", "trajectory", expect=STORE)
    _assert_names_link(r.stderr, store / "memories")
    assert list(victim.iterdir()) == []


def test_linked_history_and_trash_refused(built: Path, tmp_path: Path) -> None:
    mid = memory_ids(built)[0]
    victim = _victim(tmp_path)
    before = _snapshot(victim)
    (built / "trash").symlink_to(victim)
    r = memp("forget", mid, expect=STORE)
    _assert_names_link(r.stderr, built / "trash")
    assert _snapshot(victim) == before
    assert mid in memory_ids(built)


def test_memory_file_linked_to_a_secret_is_not_copied_into_history(built: Path, tmp_path: Path) -> None:
    """A memory file replaced by a link to a private file: a new version replaces the link (the
    target untouched), and the target's bytes never land in the history, trash or index."""
    mid = memory_ids(built)[0]
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY----- hunter2\n")
    path = built / "memories" / f"{mid}.toml"
    path.unlink()
    path.symlink_to(secret)
    memp("forget", mid, expect=None)
    memp("restore", mid, expect=None)
    assert secret.read_text() == "-----BEGIN PRIVATE KEY----- hunter2\n"
    for p in built.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert b"hunter2" not in p.read_bytes(), p


def test_store_path_itself_a_link_keeps_working(isolated: Path, tmp_path: Path) -> None:
    real = tmp_path / "real-store"
    real.mkdir()
    link = isolated / "linked"
    link.symlink_to(real)
    memp("--store", link, "init", "--embedder", "hash")
    memp("--store", link, "ingest", FILES["native"])
    memp("--store", link, "distill", "--policy", "trajectory")
    memp("--store", link, "index", "rebuild")
    assert memory_ids(real)
    assert (real / "journal.jsonl").is_file() and not (real / "journal.jsonl").is_symlink()
    r = memp("--store", link, "doctor", expect=None)
    assert "symbolic link" not in r.stdout


def test_remove_owned_only_removes_own_regular_files(tmp_path: Path) -> None:
    import re

    root = tmp_path / "s"
    (root / "index").mkdir(parents=True)
    register_store(root)
    outside = tmp_path / "outside.npy"
    outside.write_text("x")
    (root / "index" / "vectors-1.npy").write_text("old")
    (root / "index" / "vectors-2.npy").write_text("new")
    (root / "index" / "notes.txt").write_text("mine")
    (root / "index" / "vectors-3.npy").symlink_to(outside)
    removed = remove_owned(root / "index", {"vectors-2.npy"}, re.compile(r"vectors-\d+\.npy"))
    assert removed == ["vectors-1.npy"]
    assert sorted(p.name for p in (root / "index").iterdir()) == [
        "notes.txt",
        "vectors-2.npy",
        "vectors-3.npy",
    ]
    assert outside.read_text() == "x"


def test_atomic_write_refuses_a_linked_parent_in_a_store(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    register_store(root)
    victim = tmp_path / "victim"
    victim.mkdir()
    (root / "cache").symlink_to(victim)
    with pytest.raises(StoreLinkError) as e:
        atomic_write(root / "cache" / "llm" / "ab" / "x.json", b"{}")
    assert e.value.link == root / "cache"
    assert list(victim.iterdir()) == []
    # outside any store a path is the caller's business: links are followed as usual
    (tmp_path / "out").symlink_to(victim)
    atomic_write(tmp_path / "out" / "x.txt", b"ok")
    assert (victim / "x.txt").read_bytes() == b"ok"


# ------------------------------------------------------------------- doctor
def _doctor(expect: int) -> list[dict[str, object]]:
    r = memp("doctor", "--json", expect=expect)
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_doctor_reports_links_at_any_depth(built: Path, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    before = _snapshot(victim)
    assert _doctor(0) == []
    (built / "cache" / "llm").mkdir(parents=True)
    (built / "cache" / "llm" / "ab").symlink_to(victim)
    (built / "outcomes.jsonl").symlink_to(victim / "notes.txt")
    found = [f for f in _doctor(STORE) if "symbolic link" in str(f["what"])]
    assert [(f["level"], str(f["what"]).split(":")[0]) for f in found] == [
        ("error", str(built / "cache" / "llm" / "ab")),
        ("error", str(built / "outcomes.jsonl")),
    ]
    assert f"(to {victim})" in str(found[0]["what"])
    assert f"rm {built / 'cache' / 'llm' / 'ab'}" in str(found[0]["fix"])
    memp("doctor", "--fix", expect=STORE)  # links are reported, never removed by --fix
    assert (built / "outcomes.jsonl").is_symlink() and _snapshot(victim) == before


def test_doctor_flags_a_store_everyone_can_write(built: Path) -> None:
    (built / "memories").chmod(0o777)
    (built / "memp.toml").chmod(0o666)
    found = _doctor(STORE)
    assert len(found) == 1
    (f,) = found
    assert f["level"] == "error"
    assert "2 paths" in str(f["what"]) and "writable by everyone" in str(f["what"])
    assert str(built / "memories") in str(f["what"])
    assert f["fix"] == f"run `chmod -R go-w {built}` (memp itself makes none, even under umask 000)"
    os.system(f"chmod -R go-w {built}")  # what the finding says to run
    assert _doctor(0) == []


def test_doctor_warns_of_a_shared_group_only(built: Path) -> None:
    import grp
    import pwd

    (built / "memp.toml").chmod(0o664)  # as under umask 002: the owner's private group may write
    own = grp.getgrgid(os.getgid())
    if own.gr_name == pwd.getpwuid(os.getuid()).pw_name and not own.gr_mem:
        assert _doctor(0) == []
    shared = next(g for g in grp.getgrall() if g.gr_gid != os.getgid())
    try:
        os.chown(built / "memp.toml", -1, shared.gr_gid)
    except PermissionError:
        pytest.skip("needs root (or membership of another group) to hand a file to another group")
    (f,) = _doctor(0)  # a warning: exit 0
    assert f["level"] == "warning"
    what = str(f["what"])
    assert f"writable by group {shared.gr_name}" in what and str(built / "memp.toml") in what
    assert f"chmod -R g-w {built}" in str(f["fix"])


def test_rebuild_removes_old_generations_but_no_foreign_file(built: Path, tmp_path: Path) -> None:
    index = built / "index"
    (index / "notes.txt").write_text("mine")
    outside = tmp_path / "outside.npy"
    outside.write_text("x")
    (index / "vectors-999.npy").symlink_to(outside)  # a link with an index name: left (doctor says)
    (index / ".tmp-hnsw-7.bin").write_text("left by a killed writer")
    old = sorted(p.name for p in index.glob("files-*.json"))
    memp("index", "rebuild")
    names = {p.name for p in index.iterdir()}
    assert "notes.txt" in names and not set(old) & names and ".tmp-hnsw-7.bin" not in names
    assert (index / "vectors-999.npy").is_symlink() and outside.read_text() == "x"
