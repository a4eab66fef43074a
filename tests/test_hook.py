"""memp hook: a coding agent's SessionEnd hook event on stdin -> the session ingested, fast and quiet.

Whatever happens the hook exits 0 and writes nothing on stdout; stderr gets one line only on
trouble. A busy store queues the session in its inbox, which the next writer drains.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import transcript_samples as ts
from conftest import memory_ids, memp, memp_subprocess, stored_trajectories

from memp_cli.ingest.transcripts import inbox
from memp_cli.store.fsutil import StoreLock


def event(transcript: Path | str, cwd: Path | str, name: str | None = "SessionEnd") -> str:
    e: dict[str, Any] = {
        "session_id": ts.CLAUDE_SESSION,
        "transcript_path": str(transcript),
        "cwd": str(cwd),
        "reason": "exit",
    }
    if name is not None:
        e["hook_event_name"] = name
    return json.dumps(e)


def quiet(run: Any) -> None:
    assert run.code == 0 and run.stdout == "" and run.stderr == "", repr(run)


@pytest.mark.parametrize("fmt", ["claude-code", "gemini-cli"])
def test_the_hook_ingests_the_session_of_the_event(store: Path, isolated: Path, fmt: str) -> None:
    path = ts.write(isolated, fmt)
    quiet(memp("hook", fmt, input=event(path, isolated)))
    (t,) = stored_trajectories(store)
    assert (t["task"], t["source"]) == (ts.TASKS[fmt], fmt)
    quiet(memp("hook", fmt, input=event(path, isolated)))  # the same session again: stored once
    assert len(stored_trajectories(store)) == 1


def test_the_store_is_found_from_the_event_cwd_else_nothing_happens(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MEMP_STORE")
    project = isolated / "proj"
    memp("--store", project / ".memp", "init", "--embedder", "hash")
    (project / "src" / "deep").mkdir(parents=True)
    path = ts.write(tmp_path, "claude-code")
    quiet(memp("hook", "claude-code", input=event(path, project / "src" / "deep")))
    assert len(stored_trajectories(project / ".memp")) == 1
    # A project without a store: the hook does nothing, quietly, and creates nothing.
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    quiet(memp("hook", "claude-code", input=event(path, elsewhere)))
    assert not (elsewhere / ".memp").exists()


def test_a_busy_store_queues_the_session_within_a_bounded_time_and_the_next_writer_drains_it(
    store: Path, isolated: Path
) -> None:
    path = ts.write(isolated, "claude-code")
    lock = StoreLock(store / ".lock", wait=False)
    lock.acquire()
    try:
        t0 = time.monotonic()
        run = memp_subprocess(
            "hook", "claude-code", "--lock-wait", "0.5", input=event(path, isolated), expect=None
        )
        elapsed = time.monotonic() - t0
    finally:
        lock.release()
    quiet(run)
    assert elapsed < 10  # interpreter start-up, the 0.5 s wait, a queue file
    assert len(inbox.pending(store)) == 1
    assert stored_trajectories(store) == []
    # The next writer (here distill) ingests the queued session first, then empties the inbox.
    r = memp("distill", "--with-failures")
    assert "inbox: 1 queued session read, 1 added" in r.stderr
    assert [t["task"] for t in stored_trajectories(store)] == [ts.TASKS["claude-code"]]
    assert len(memory_ids(store)) == 1
    assert inbox.pending(store) == []


def test_ingest_drains_the_inbox_and_drops_an_entry_whose_transcript_is_gone(
    store: Path, isolated: Path
) -> None:
    kept = ts.write(isolated, "codex")
    gone = isolated / "gone.jsonl"
    inbox.queue(store, "codex", str(kept), success=True, session_id=None)
    inbox.queue(store, "claude-code", str(gone), success=None, session_id=None)
    inbox.queue(store, "codex", str(kept), success=True, session_id=None)  # queued twice: once
    assert len(inbox.pending(store)) == 2
    r = memp("ingest", ts.write(isolated, "gemini-cli"))
    assert f"queued session {gone}" in r.stderr and "dropped from the inbox" in r.stderr
    assert inbox.pending(store) == []
    by_source = {t["source"]: t["success"] for t in stored_trajectories(store)}
    assert by_source == {"codex": True, "gemini-cli": None}


@pytest.mark.parametrize(
    ("stdin", "says"),
    [
        ("not json", "stdin is not a hook event"),
        ("[1, 2]", "stdin is not a hook event"),
        ('{"hook_event_name": "SessionEnd", "cwd": "."}', "the hook event has no transcript_path"),
    ],
)
def test_a_bad_event_exits_0_with_one_line(store: Path, stdin: str, says: str) -> None:
    r = memp("hook", "claude-code", input=stdin)
    assert r.stdout == "" and r.stderr.count("\n") == 1 and says in r.stderr
    assert stored_trajectories(store) == []


def test_a_per_turn_event_is_refused_with_one_line(store: Path, isolated: Path) -> None:
    r = memp("hook", "claude-code", input=event(ts.write(isolated, "claude-code"), isolated, "Stop"))
    assert r.stdout == "" and r.stderr.count("\n") == 1
    assert "ignored a Stop event: run memp hook as a SessionEnd hook" in r.stderr
    assert stored_trajectories(store) == []
    quiet(memp("hook", "claude-code", input=event(ts.write(isolated, "claude-code"), isolated, None)))
    assert len(stored_trajectories(store)) == 1  # an event without a name is taken


def test_trouble_with_the_transcript_exits_0_with_one_line(store: Path, isolated: Path) -> None:
    r = memp("hook", "claude-code", input=event(isolated / "missing.jsonl", isolated))
    assert r.code == 0 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "missing.jsonl: No such file or directory" in r.stderr
    bad = ts.write(isolated, "claude-code", extra_lines=["{oops"])
    r = memp("hook", "claude-code", input=event(bad, isolated))
    assert r.code == 0 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "not valid JSON" in r.stderr
    assert len(stored_trajectories(store)) == 1  # the good lines are stored


def test_a_broken_store_exits_0_with_one_line(isolated: Path, store_dir: Path) -> None:
    store_dir.mkdir()
    (store_dir / "memp.toml").write_text("this is [not toml", encoding="utf-8")
    run = memp_subprocess(
        "hook", "claude-code", input=event(ts.write(isolated, "claude-code"), isolated), expect=0
    )
    assert run.stdout == "" and run.stderr.count("\n") == 1 and "memp.toml" in run.stderr


def test_a_broken_inbox_entry_costs_one_line_never_the_session(store: Path, isolated: Path) -> None:
    (store / "inbox").mkdir()
    (store / "inbox" / "0123456789abcdef.json").write_text("{torn", encoding="utf-8")
    r = memp("hook", "claude-code", input=event(ts.write(isolated, "claude-code"), isolated))
    assert r.code == 0 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "not an inbox entry" in r.stderr
    assert len(stored_trajectories(store)) == 1
    assert inbox.pending(store) == []
