"""memp ingest of coding-agent transcripts (Claude Code, Codex CLI, Gemini CLI), through the CLI.

The transcripts are small sessions of each shape written by tests/transcript_samples.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import transcript_samples as ts
from conftest import FILES, memory_ids, memp, set_update_policy, stored_trajectories

from memp_cli.errors import ExitCode

FORMATS = ["claude-code", "codex", "gemini-cli"]


def _only(store_dir: Path) -> dict[str, Any]:
    (t,) = stored_trajectories(store_dir)
    return t


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("named", [True, False], ids=["format", "auto"])
def test_a_session_becomes_one_trajectory_then_a_memory_found_by_query(
    store: Path, isolated: Path, fmt: str, named: bool
) -> None:
    path = ts.write(isolated, fmt)
    args = ["--format", fmt] if named else []
    r = memp("ingest", path, *args)
    assert f"{path}: 1 trajectories read, 1 added" in r.stderr
    assert "unknown type" not in r.stderr
    t = _only(store)
    assert t["task"] == ts.TASKS[fmt]
    assert t["success"] is None and t["reward"] is None
    assert t["source"] == fmt
    session = {"claude-code": ts.CLAUDE_SESSION, "codex": ts.CODEX_SESSION, "gemini-cli": ts.GEMINI_SESSION}[
        fmt
    ]
    assert t["task_id"] == session and t["extra"]["session_id"] == session
    calls = [s for s in t["steps"] if s["action"]]
    assert len(calls) == 2
    # One call failed: its observation says so; the thought before the first call is kept.
    assert sum(c["observation"].startswith("error: ") for c in calls) == 1
    assert calls[0]["thought"]
    # The final answer is a last step with a thought and no action.
    assert t["steps"][-1]["action"] == "" and t["steps"][-1]["thought"]

    r = memp("distill", "--with-failures", "--json")
    assert r.jsonl()[-1]["written"] == 1
    hits = memp("query", ts.TASKS[fmt], "--min-score", "-1", "--no-collapse", "--json").jsonl()
    assert hits[0]["task"] == ts.TASKS[fmt]
    assert hits[0]["success"] is None


def test_each_shape_maps_calls_results_and_thoughts(store: Path, isolated: Path) -> None:
    for fmt in FORMATS:
        memp("ingest", ts.write(isolated, fmt))
    by_source = {t["source"]: t for t in stored_trajectories(store)}
    claude = by_source["claude-code"]["steps"]
    assert claude[0] == {
        "action": "Bash[pytest tests/test_dates.py]",
        "observation": "error: FAILED tests/test_dates.py::test_leap_year",
        "thought": "The test suite will show which case fails.\n\nLet me run the date parser tests first.",
    }
    assert json.loads(claude[1]["action"].removeprefix("Edit[").removesuffix("]")) == {
        "file_path": "dates.py",
        "old_string": "% 4",
        "new_string": "% 400",
    }
    assert claude[1]["observation"] == "edited"  # tool_result content given as blocks
    codex = by_source["codex"]
    assert codex["extra"]["cwd"] == "/home/dev/ops"
    assert codex["steps"][0] == {
        "action": "shell[bash -lc 'cat backup.sh']",
        "observation": "error: cat: backup.sh: No such file",  # exit code 1
        "thought": "Read the script before editing it.",
    }
    assert codex["steps"][1]["action"].startswith("apply_patch[*** Begin Patch")
    assert codex["steps"][1]["observation"] == "Success."
    gemini = by_source["gemini-cli"]["steps"]
    # The message rewritten with its tool calls is read once, its last version; the rewound
    # user turn is gone; the CLI's own info message is not a request.
    assert [s["action"] for s in gemini] == ["glob[**/*.py]", "run_shell_command[wc -l a.py b.py]", ""]
    assert gemini[0]["thought"] == "Plan: Glob first, then count.\n\nI will find the python files."
    assert gemini[0]["observation"] == "a.py\nb.py"
    assert gemini[1]["observation"] == "error: denied"
    assert "wrong turn" not in json.dumps(by_source["gemini-cli"])


def test_an_older_gemini_json_session_is_read_as_the_same_session(store: Path, isolated: Path) -> None:
    legacy = isolated / "session-2026-11-30T08-00-92f625c6.json"
    legacy.write_text(json.dumps(ts.gemini_legacy(), indent=2), encoding="utf-8")
    memp("ingest", legacy)
    first = _only(store)
    r = memp("ingest", ts.write(isolated, "gemini-cli"))
    assert "0 added, 1 already stored" in r.stderr  # the same session id: stored once
    assert [s["action"] for s in first["steps"]][:2] == [
        "glob[**/*.py]",
        "run_shell_command[wc -l a.py b.py]",
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_record_types_are_skipped_and_counted(store: Path, isolated: Path, fmt: str) -> None:
    r = memp("ingest", ts.write(isolated, fmt, unknown=2))
    assert "1 added" in r.stderr
    kind = {
        "claude-code": "brand-new-record",
        "codex": "brand_new_item",
        "gemini-cli": "message brand_new_message",
    }
    assert f"2 records of unknown type skipped ({kind[fmt]} x2)" in r.stderr
    assert _only(store)["task"] == ts.TASKS[fmt]
    row = memp("ingest", ts.write(isolated, fmt, unknown=3), "--json").jsonl()[0]
    assert row["transcript"] == {
        "format": fmt,
        "records": len(ts.SAMPLES[fmt](unknown=3)),
        "unknown": {kind[fmt]: 3},
        "not_stored": None,
    }
    assert (row["added"], row["duplicates"]) == (0, 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_malformed_line_is_one_bad_line_and_the_session_is_still_stored(
    store: Path, isolated: Path, fmt: str
) -> None:
    path = ts.write(isolated, fmt, extra_lines=['{"type": "user", "message": ', ""])
    n = len(ts.SAMPLES[fmt]()) + 1
    r = memp("ingest", path, "--format", fmt, expect=ExitCode.BAD_INPUT)
    assert f"{path}:{n}: not valid JSON" in r.stderr
    assert "1 trajectories read, 1 added, 0 already stored, 1 bad line" in r.stderr
    assert _only(store)["task"] == ts.TASKS[fmt]
    r = memp("ingest", path, "--format", fmt, "--strict", expect=ExitCode.BAD_INPUT)
    assert len(stored_trajectories(store)) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_ingesting_a_session_again_stores_nothing_new(store: Path, isolated: Path, fmt: str) -> None:
    path = ts.write(isolated, fmt)
    memp("ingest", path)
    r = memp("ingest", path, "--success", "--format", fmt)
    assert "1 trajectories read, 0 added, 1 already stored" in r.stderr
    # The id is the session's: a copy of the file under another name is the same session.
    copy = isolated / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    r = memp("ingest", "-", input=copy.read_bytes())
    assert "0 added, 1 already stored" in r.stderr
    assert len(stored_trajectories(store)) == 1


def test_success_and_failure_label_the_session_and_only_transcripts(store: Path, isolated: Path) -> None:
    memp("ingest", ts.write(isolated, "claude-code"), "--success")
    memp("ingest", ts.write(isolated, "codex"), "--failure")
    by_source = {t["source"]: t["success"] for t in stored_trajectories(store)}
    assert by_source == {"claude-code": True, "codex": False}
    r = memp("ingest", FILES["native"], "--success", expect=ExitCode.BAD_INPUT)
    assert "--success/--failure set the outcome of a transcript session" in r.stderr


def test_a_claude_sub_agent_file_is_a_session_of_its_own(store: Path, isolated: Path) -> None:
    main = isolated / f"{ts.CLAUDE_SESSION}.jsonl"
    main.write_text(ts.jsonl(ts.claude_code(sidechain=True)), encoding="utf-8")
    agent = isolated / "agent-a1b2c3d4.jsonl"
    agent.write_text(ts.jsonl(ts.claude_agent()), encoding="utf-8")
    memp("ingest", main, agent)
    by_task = {t["task"]: t for t in stored_trajectories(store)}
    assert set(by_task) == {ts.TASKS["claude-code"], "search the code for the leap year rule"}
    main_t, agent_t = by_task[ts.TASKS["claude-code"]], by_task["search the code for the leap year rule"]
    assert "Grep" not in json.dumps(main_t["steps"])  # the sidechain record stays out of the main session
    assert agent_t["extra"] == {
        "session_id": ts.CLAUDE_SESSION,
        "agent_id": "a1b2c3d4",
        "cwd": "/home/dev/proj",
    }
    assert agent_t["steps"][0]["action"] == "Grep[leap]"
    assert main_t["id"] != agent_t["id"]


def test_a_session_without_a_tool_call_is_not_stored_and_says_why(store: Path, isolated: Path) -> None:
    recs = [r for r in ts.claude_code() if r["type"] != "assistant" or r["uuid"] == "u8"]
    path = isolated / "chat.jsonl"
    path.write_text(ts.jsonl([r for r in recs if "tool_result" not in json.dumps(r)]), encoding="utf-8")
    r = memp("ingest", path)
    assert "not stored: the session has no tool call" in r.stderr
    only_meta = isolated / "meta.jsonl"  # Claude Code leaves files with a summary line only
    only_meta.write_text(ts.jsonl(ts.claude_code()[:1]), encoding="utf-8")
    r = memp("ingest", only_meta, "--format", "claude-code")
    assert "not stored: the session has no request from the user" in r.stderr
    assert stored_trajectories(store) == []


def test_pretty_printed_json_of_another_shape_is_not_taken_for_a_gemini_session(
    store: Path, isolated: Path
) -> None:
    path = isolated / "runs.json"
    path.write_text(json.dumps({"task": "x", "steps": ["look"]}, indent=2), encoding="utf-8")
    r = memp("ingest", path, expect=ExitCode.BAD_INPUT)
    assert f"{path}:1: not valid JSON" in r.stderr  # read line by line, as before


def test_later_requests_are_observations_and_injected_context_is_not_the_task(
    store: Path, isolated: Path
) -> None:
    recs = ts.codex()
    later = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "also keep -q"}]}
    recs.insert(8, {"timestamp": "t", "type": "response_item", "payload": later})
    path = isolated / "rollout.jsonl"
    path.write_text(ts.jsonl(recs), encoding="utf-8")
    memp("ingest", path)
    t = _only(store)
    assert t["task"] == ts.TASKS["codex"]
    assert t["steps"][0]["observation"].endswith("[user] also keep -q")


def test_unknown_outcomes_never_count_as_successes(store_dir: Path, isolated: Path) -> None:
    """A session without a label: not built by --only-success nor by the validation policy,
    counted as unknown by stats, and a memory built from it has no success; an "unknown" outcome
    of a memory used counts as a use, never as a success."""
    memp("init", "--embedder", "hash")
    memp("ingest", ts.write(isolated, "claude-code"))
    rep = memp("distill", "--only-success", "--json").jsonl()[-1]
    assert (rep["written"], rep["filtered"], rep["unlabeled"]) == (0, 1, 1)
    set_update_policy(store_dir, "validation")
    r = memp("distill", "--json")
    assert (r.jsonl()[-1]["written"], r.jsonl()[-1]["unlabeled"]) == (0, 1)
    assert "0 failed runs not built" in r.stderr and "1 runs of unknown outcome not built" in r.stderr
    stats = memp("stats", "--json").jsonl()[0]
    assert stats["outcomes"] == {"unknown": 1}
    memp("distill", "--with-failures")
    (mid,) = memory_ids(store_dir)
    assert "success" not in memp("show", mid, "--json").jsonl()[0]  # written only when known
    assert memp("list", "--json").jsonl()[0]["success"] is None
    # A run that used the memory and has no outcome: one use, no success, no failure.
    run = {"task": "fix a date test", "steps": [{"action": "Bash[pytest]"}], "memories_used": [mid]}
    memp("ingest", "-", input=json.dumps(run) + "\n")
    stats_after = memp("show", mid, "--json").jsonl()[0]["stats"]
    assert (stats_after["retrieved"], stats_after["successes"], stats_after["failures"]) == (1, 0, 0)


def test_cycle_ingests_transcripts_too(store: Path, isolated: Path) -> None:
    d = memp("cycle", ts.write(isolated, "codex"), ts.write(isolated, "claude-code"), "--json").jsonl()[0]
    assert d["ingest"]["added"] == 2
    assert d["distill"]["written"] == 0  # outcome unknown: the default policy builds successes only
    assert {t["source"] for t in stored_trajectories(store)} == {"codex", "claude-code"}


def test_a_resumed_claude_session_is_known_by_its_own_id(store: Path, isolated: Path) -> None:
    """A resumed session's file starts with the history it resumed, under the old session's id."""
    recs = ts.claude_code()
    for r in recs[:4]:
        if "sessionId" in r:
            r["sessionId"] = "0ld5e551-0000-4000-8000-000000000000"
    path = isolated / "resumed.jsonl"
    path.write_text(ts.jsonl(recs), encoding="utf-8")
    memp("ingest", path)
    assert _only(store)["extra"]["session_id"] == ts.CLAUDE_SESSION


KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3kLm6n"
TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def _session_with_secrets(folder: Path) -> Path:
    """A Claude session whose Bash command carries a token and whose tool result has a key
    straddling the transcript field limit (MAX_FIELD_CHARS), where the field is cut."""
    from memp_cli.ingest.transcripts import MAX_FIELD_CHARS

    recs = ts.claude_code()
    recs[5]["message"]["content"][0]["input"]["command"] = f'curl -H "Authorization: token {TOKEN}" https://x'
    recs[6]["message"]["content"][0]["content"] = (
        "x " * ((MAX_FIELD_CHARS - 40) // 2) + "key " + KEY + " tail"
    )
    path = folder / "secret-session.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


@pytest.mark.parametrize("redact", [True, False], ids=["redact", "no-redact"])
def test_secrets_in_a_transcript_are_not_stored_whole_or_in_part(
    store: Path, isolated: Path, redact: bool
) -> None:
    path = _session_with_secrets(isolated)
    memp("ingest", path, *([] if redact else ["--no-redact"]))
    stored = json.dumps(stored_trajectories(store))
    if redact:
        assert TOKEN[:12] not in stored and "[REDACTED:" in stored
    else:
        assert TOKEN in stored  # the user's choice, kept whole
    # The field limit falls inside the key: no prefix of it is kept, with or without redaction.
    assert KEY[:12] not in stored
