"""doctor, index rebuild, memp.toml errors, embedder mismatch, the lock, and killed writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    FILES,
    memory_ids,
    memp,
    memp_subprocess,
    read_records,
    segments,
    subprocess_env,
    tmp_files,
)
from test_index_format import _memories

from memp_cli import index as index_mod
from memp_cli.backends.embedders.hashing import HashEmbedder
from memp_cli.errors import ExitCode
from memp_cli.retrieve.retriever import EXACT_MAX_QUERIES
from memp_cli.store import Store
from memp_cli.store.fsutil import StoreLock

HEAT = next(r["task"] for r in read_records(FILES["native"]) if r["task_type"] == "heat")


def _findings(run) -> list[dict]:
    return run.jsonl()


def _set(store: Path, old: str, new: str) -> int:
    """Replace one line of memp.toml; -> its line number."""
    cfg = store / "memp.toml"
    lines = cfg.read_text(encoding="utf-8").splitlines()
    n = lines.index(old)
    lines[n] = new
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return n + 1


# -------------------------------------------------------------------- doctor


def test_doctor_on_a_healthy_store(cli, built: Path) -> None:
    r = cli("doctor")
    assert r.stdout == ""
    assert "all good" in r.stderr


def test_doctor_fix_removes_temp_files(built: Path) -> None:
    for sub in ("memories", "trajectories", "index", "."):
        (built / sub / ".tmp-abc123").write_bytes(b"half a file")
    r = memp("doctor")  # warnings only: exit 0
    tmp_findings = [f for f in _findings(r) if ".tmp-abc123" in f["what"]]
    assert len(tmp_findings) == 4 and all(f["level"] == "warning" for f in tmp_findings)
    r = memp("doctor", "--fix")
    assert all(f["fixed"] for f in _findings(r))
    assert tmp_files(built) == []
    assert memp("doctor").stdout == ""


@pytest.mark.parametrize("damage", ["delete-index", "truncate-state", "garbage-state", "truncate-hnsw"])
def test_doctor_fix_rebuilds_a_damaged_index(built: Path, damage: str) -> None:
    index = built / "index"
    state = index / "state.json"
    (hnsw,) = index.glob("hnsw-*.bin")
    if damage == "delete-index":
        for p in index.iterdir():
            p.unlink()
        expect_in = f"{index}: no index for 40 memories"
    elif damage == "truncate-state":
        state.write_bytes(b"")
        expect_in = f"{state}: damaged index state"
    elif damage == "garbage-state":
        state.write_bytes(state.read_bytes()[:50])
        expect_in = f"{state}: damaged index state"
    else:
        hnsw.write_bytes(hnsw.read_bytes()[:100])
        expect_in = f"{hnsw}: cannot load the vector index"
    # no index at all is a warning (any query builds it); damaged files are an error. Both are
    # fixed by the cheap `memp index sync`, which rebuilds what is damaged
    missing = damage == "delete-index"
    r = memp("doctor", expect=0 if missing else ExitCode.STORE)
    (f,) = _findings(r)
    assert f["level"] == ("warning" if missing else "error") and f["what"].startswith(expect_in)
    assert not f["fixed"] and "memp index sync" in f["fix"]
    if damage != "delete-index":
        # The index is derived data: a query names the damaged file and rebuilds it.
        if damage == "truncate-hnsw":
            # One query searches the vectors file exactly and never reads the graph; a batch
            # large enough to use the graph does.
            assert memp("query", HEAT, "-k", 1).jsonl()[0]["task"] == HEAT
            batch = "\n".join(json.dumps(HEAT) for _ in range(EXACT_MAX_QUERIES))
            q = memp("query", "-", "-k", 1, input=batch)
            assert expect_in in q.stderr and "rebuilt the index" in q.stderr
            assert q.jsonl()[0]["results"][0]["task"] == HEAT
            assert memp("doctor").stdout == ""
            return
        q = memp("query", HEAT, "-k", 1)
        assert expect_in in q.stderr and "rebuilt the index" in q.stderr
        assert q.jsonl()[0]["task"] == HEAT
        assert memp("doctor").stdout == ""
        return
    r = memp("doctor", "--fix")
    assert [f["fixed"] for f in _findings(r)] == [True]
    assert memp("doctor").stdout == ""
    assert memp("query", HEAT, "-k", 1).jsonl()[0]["task"] == HEAT


def test_doctor_damaged_segment_and_torn_journal(built: Path) -> None:
    (seg,) = segments(built)
    n = len(seg.read_bytes().splitlines())
    with open(seg, "ab") as f:
        f.write(b'{"id": "tbroken", "task": "x"\n')
    with open(built / "journal.jsonl", "ab") as f:
        f.write(b'{"time": "2024')
    journal_lines = len((built / "journal.jsonl").read_bytes().splitlines())
    r = memp("doctor", expect=ExitCode.STORE)
    what = {f["what"].split(" (")[0]: f["level"] for f in _findings(r)}
    assert what[f"{seg}:{n + 1}: damaged trajectory record"] == "error"
    assert what[f"{built / 'journal.jsonl'}:{journal_lines}: torn journal line"] == "warning"


def test_doctor_stray_files(built: Path) -> None:
    (built / "memories" / "notes.txt").write_text("mine")
    (built / "memories" / "Bad Name.toml").write_text('id = "x"\n')
    r = memp("doctor", expect=ExitCode.STORE)
    what = [f["what"] for f in _findings(r)]
    assert any(w.startswith(f"{built / 'memories' / 'notes.txt'}: not a memory file") for w in what)
    assert any(
        w.startswith(f"{built / 'memories' / 'Bad Name.toml'}: file name is not a valid") for w in what
    )


# ------------------------------------------------------------ index rebuild


def test_index_rebuild_and_sync(built: Path) -> None:
    before = memp("query", HEAT, "-k", 5).jsonl()
    r = memp("index", "rebuild")
    assert "index rebuilt: 40 memories embedded with hash (dim 256)" in r.stderr
    after = memp("query", HEAT, "-k", 5).jsonl()
    assert [h["id"] for h in after] == [h["id"] for h in before]
    r = memp("index", "sync")
    assert "0 added, 0 updated, 0 removed, 40 memories indexed" in r.stderr


def test_querying_with_another_embedder_exits_7(built: Path, monkeypatch) -> None:
    r = memp("--embedder", "minilm", "query", HEAT, expect=ExitCode.MODEL)
    assert "built with embedder 'hash', not 'minilm'" in r.stderr
    assert "memp index rebuild" in r.stderr
    assert r.stdout == ""
    monkeypatch.setenv("MEMP_EMBEDDER", "minilm")
    memp("query", HEAT, expect=ExitCode.MODEL)


def test_switching_the_embedder_then_rebuilding(isolated: Path, store_dir: Path) -> None:
    """A store configured for one embedder, indexed with another: mismatch, then rebuild."""
    memp("init")  # the default embedder (minilm): never loaded in this test
    assert 'name = "minilm"' in (store_dir / "memp.toml").read_text()
    memp("--embedder", "hash", "ingest", FILES["native"])
    memp("--embedder", "hash", "distill", "--policy", "trajectory", "--with-failures")
    assert memp("--embedder", "hash", "query", HEAT, "-k", 1).jsonl()[0]["task"] == HEAT

    r = memp("query", HEAT, expect=ExitCode.MODEL)  # the store says minilm, the index is hash
    assert "built with embedder 'hash', not 'minilm'" in r.stderr and "memp index rebuild" in r.stderr
    r = memp("doctor", expect=ExitCode.STORE)
    assert "the index was built with embedder 'hash' but memp.toml says 'minilm'" in r.stdout

    _set(store_dir, 'name = "minilm"', 'name = "hash"')  # dim stays 384: differs from the index
    r = memp("query", HEAT, expect=ExitCode.MODEL)
    assert "has dimension 256, the embedder gives 384" in r.stderr and "memp index rebuild" in r.stderr

    r = memp("index", "rebuild")
    assert "40 memories embedded with hash (dim 384)" in r.stderr
    assert memp("query", HEAT, "-k", 1).jsonl()[0]["task"] == HEAT
    memp("doctor")


def test_changed_dim_is_caught_not_crashing(built: Path) -> None:
    """Regression: a dim edited in memp.toml reached hnswlib (null scores, then a segfault)."""
    _set(built, "dim = 256", "dim = 64")
    r = memp_subprocess("query", HEAT, expect=ExitCode.MODEL)
    assert "has dimension 256, the embedder gives 64" in r.stderr
    memp("index", "rebuild")
    hits = memp("query", HEAT, "-k", 3).jsonl()
    assert hits[0]["task"] == HEAT and all(isinstance(h["score"], float) for h in hits)


# ---------------------------------------------------------------- memp.toml


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("k = 3", 'k = "three', "TOML syntax error"),
        ("k = 3", 'k = "three"', "[retrieval] k must be a whole number, got 'three'"),
        ("k = 3", "k = 0", "[retrieval] k must be between 1 and 1000, got 0"),
        (
            "lexical_weight = 0.25",
            "lexical_weight = 1.5",
            "[retrieval] lexical_weight must be between 0.0 and 1.0",
        ),
        ('key = "query"', 'key = "magic"', "[retrieval] key must be one of query, avefact, random"),
        ("min_score = 0.15", "min_score = true", "[retrieval] min_score must be a number, got True"),
        ("k = 3", "colour = 3", "unknown setting [retrieval] colour"),
        ("[retrieval]", "[retrieve]", "unknown setting or section 'retrieve'"),
        ("timeout = 60.0", 'timeout = "soon"', "[llm] timeout must be a number"),
        ('api_base = ""', "api_base = 5", "[embedder] api_base must be a string, got 5"),
    ],
)
def test_broken_config_names_the_line(store: Path, old: str, new: str, message: str) -> None:
    line = _set(store, old, new)
    cfg = store / "memp.toml"
    for args in (["query", HEAT], ["list"], ["ingest", str(FILES["openai"])], ["stats"]):
        r = memp(*args, expect=ExitCode.STORE)
        assert f"memp: error: {cfg}:{line}: {message}" in r.stderr, r
        assert r.stdout == ""
    r = memp("doctor", expect=ExitCode.STORE)
    (f,) = _findings(r)
    assert f["what"].startswith(f"{cfg}:{line}: {message}")
    assert list((store / "trajectories").iterdir()) == []


def test_config_error_in_the_second_section_with_the_same_key(store: Path) -> None:
    """Regression: `api_base` is in [embedder] and [llm]; the error named the first one's line."""
    cfg = store / "memp.toml"
    lines = cfg.read_text().splitlines()
    n = [i for i, line in enumerate(lines) if line.startswith("api_base =")][1]
    lines[n] = "api_base = 42"
    cfg.write_text("\n".join(lines) + "\n")
    r = memp("stats", expect=ExitCode.STORE)
    assert f"{cfg}:{n + 1}: [llm] api_base must be a string, got 42" in r.stderr


def test_config_missing_schema_version_and_newer(store: Path) -> None:
    _set(store, "schema_version = 1", "schema_version = 99")
    r = memp("list", expect=ExitCode.STORE)
    assert "schema_version 99 is newer than this memp understands" in r.stderr
    _set(store, "schema_version = 99", "# no version")
    r = memp("list", expect=ExitCode.STORE)
    assert "schema_version is missing" in r.stderr


def test_config_not_utf8(store: Path) -> None:
    (store / "memp.toml").write_bytes(b"schema_version = 1\n# caf\xe9\n")
    r = memp("list", expect=ExitCode.STORE)
    assert f"{store / 'memp.toml'}: not UTF-8 text" in r.stderr


def test_not_a_store(isolated: Path, store_dir: Path) -> None:
    store_dir.mkdir()
    (store_dir / "something").write_text("x")
    r = memp("list", expect=ExitCode.STORE)
    assert f"{store_dir} has no memp.toml: not a memp store" in r.stderr


# --------------------------------------------------------------------- lock


def test_no_wait_while_another_process_writes(built: Path) -> None:
    with StoreLock(built / ".lock"):
        for args in (
            ["ingest", str(FILES["openai"])],
            ["distill", "--policy", "trajectory"],
            ["index", "rebuild"],
        ):
            r = memp("--no-wait", *args, expect=ExitCode.LOCKED)
            assert f"the store is locked by another memp process (pid {os.getpid()})" in r.stderr
            assert "without --no-wait" in r.stderr
        r = memp_subprocess("--no-wait", "ingest", FILES["openai"], expect=ExitCode.LOCKED)
        assert "locked by another memp process" in r.stderr
        # Readers never take the lock: a query on a fresh index answers.
        assert memp("--no-wait", "query", HEAT, "-k", 1).jsonl()[0]["task"] == HEAT
    assert len(segments(built)) == 1
    memp("--no-wait", "ingest", FILES["openai"])
    assert len(segments(built)) == 2


def test_no_wait_from_the_environment(built: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEMP_WAIT", "0")
    with StoreLock(built / ".lock"):
        memp("ingest", FILES["openai"], expect=ExitCode.LOCKED)


# ------------------------------------------------------------- killed writer


def test_killed_ingest_leaves_the_store_valid(store: Path) -> None:
    """kill -9 in the middle of an ingest: no partial segment; doctor --fix cleans up."""
    lines = FILES["native"].read_bytes().splitlines(keepends=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "memp_cli", "ingest", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"".join(lines[:20]))
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while not list((store / "trajectories").glob(".tmp-*")):
            assert proc.poll() is None, "ingest ended before it was killed"
            assert time.monotonic() < deadline, "ingest never started writing"
            time.sleep(0.02)
        time.sleep(0.2)  # let it read what it was given
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin:
            proc.stdin.close()
    assert proc.returncode == -signal.SIGKILL
    assert segments(store) == []
    assert [p.parent.name for p in tmp_files(store)] == ["trajectories"]
    assert not any(
        json.loads(x)["event"] == "ingest" for x in (store / "journal.jsonl").read_text().splitlines()
    )

    r = memp("doctor")  # a leftover temp file is a warning
    (f,) = _findings(r)
    assert f["level"] == "warning" and "leftover temporary file" in f["what"]
    memp("doctor", "--fix")
    assert tmp_files(store) == []
    assert memp("doctor").stdout == ""

    # The lock died with the process: the next writer goes ahead, and gets everything.
    (rep,) = memp("--no-wait", "ingest", FILES["native"], "--json").jsonl()
    assert rep["added"] == 40
    memp("distill", "--policy", "trajectory", "--with-failures")
    assert len(memory_ids(store)) == 40


def test_doctor_after_a_touch_recommends_the_cheap_sync(built: Path) -> None:
    """A touched memory file (same content) makes the index stale, not damaged: `memp index sync`
    (which re-reads that one file and embeds nothing) fixes it, not a full rebuild."""
    (mem,) = sorted((built / "memories").glob("*.toml"))[:1]
    st = mem.stat()
    os.utime(mem, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    r = memp("doctor")  # a warning only: the next command that reads the index syncs it
    (f,) = _findings(r)
    assert f["level"] == "warning" and "older than some memory files" in f["what"]
    assert f["fix"].startswith("run `memp index sync`") and "rebuild" not in f["fix"]
    s = memp("index", "sync")
    assert "0 added, 1 updated, 0 removed, 40 memories indexed" in s.stderr
    last = [e for e in Store.open(built).read_journal() if e["event"] == "index.sync"][-1]
    assert last["embedded"] == 0 and not last["rebuilt"]
    assert memp("doctor").stdout == ""


@pytest.mark.parametrize("args", [("index", "rebuild"), ("index", "sync")])
def test_index_commands_show_progress_on_a_terminal_only(
    built: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    import io

    from rich.console import Console

    from memp_cli.cli import output

    new, other = _memories(2, start=7000)
    buf = io.StringIO()
    monkeypatch.setattr(output, "stderr_console", lambda: Console(file=buf, force_terminal=True, width=100))
    Store.open(built).save_memories([new], event="test")
    r = memp(*args)  # stderr is not a terminal: no bar
    assert buf.getvalue() == "" and "embedding" not in r.stderr
    monkeypatch.setattr(type(output.env), "stderr_isatty", property(lambda self: True))
    Store.open(built).save_memories([other], event="test")
    memp(*args)
    total = 42 if args[1] == "rebuild" else 1
    assert "memp: embedding memories" in buf.getvalue() and f"{total}/{total}" in buf.getvalue()
    buf.truncate(0)
    buf.seek(0)
    memp("-q", *args)  # --quiet: no bar
    assert buf.getvalue() == ""


def test_sync_reports_progress_to_the_library_caller(built: Path) -> None:
    st = Store.open(built)
    seen: list[tuple[int, int]] = []
    index_mod.sync(
        st, HashEmbedder(st.config.embedder.dim), rebuild=True, progress=lambda d, t: seen.append((d, t))
    )
    assert seen and seen[-1] == (40, 40) and all(t == 40 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
