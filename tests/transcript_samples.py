"""Small coding-agent transcripts of each shape, written by the tests themselves.

The shapes follow the tools' own sources (see the docstrings of
memp_cli/ingest/transcripts/claude_code.py, codex.py and gemini_cli.py); each session asks for
one task, makes two tool calls (one failing) and ends with an answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLAUDE_SESSION = "5f0c7a52-1b7e-4c59-9d6e-3f1c2b7a9e01"
CODEX_SESSION = "0199a7e1-6c2d-7f10-b3a4-5e6f7a8b9c0d"
GEMINI_SESSION = "92f625c6-a764-48e3-b922-3766d41f9c4c"

TASKS = {
    "claude-code": "fix the failing unit test in the date parser module",
    "codex": "add a verbose flag to the backup shell script",
    "gemini-cli": "count the lines of python code in the repository",
}


def _claude(kind: str, uuid: str, content: Any, **more: Any) -> dict[str, Any]:
    rec = {
        "parentUuid": None,
        "isSidechain": False,
        "userType": "external",
        "cwd": "/home/dev/proj",
        "sessionId": CLAUDE_SESSION,
        "version": "2.1.12",
        "type": kind,
        "uuid": uuid,
        "timestamp": "2026-11-30T08:00:00.000Z",
        "message": {"role": kind, "content": content},
    }
    rec.update(more)
    return rec


def claude_code(*, unknown: int = 0, sidechain: bool = False) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = [
        {"type": "summary", "summary": "Date parser test fix", "leafUuid": "u9"},
        _claude("user", "u0", "<command-name>/clear</command-name>"),
        _claude(
            "user",
            "u1",
            [
                {"type": "text", "text": "<system-reminder>The date is 2026-11-30.</system-reminder>"},
                {"type": "text", "text": TASKS["claude-code"]},
            ],
        ),
        _claude(
            "assistant",
            "u2",
            [
                {
                    "type": "thinking",
                    "thinking": "The test suite will show which case fails.",
                    "signature": "x",
                }
            ],
        ),
        _claude("assistant", "u3", [{"type": "text", "text": "Let me run the date parser tests first."}]),
        _claude(
            "assistant",
            "u4",
            [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "Bash",
                    "input": {"command": "pytest tests/test_dates.py"},
                }
            ],
        ),
        _claude(
            "user",
            "u5",
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "FAILED tests/test_dates.py::test_leap_year",
                    "is_error": True,
                }
            ],
        ),
        _claude(
            "assistant",
            "u6",
            [
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "Edit",
                    "input": {"file_path": "dates.py", "old_string": "% 4", "new_string": "% 400"},
                }
            ],
        ),
        _claude(
            "user",
            "u7",
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "edited"}],
                }
            ],
        ),
        _claude("assistant", "u8", [{"type": "text", "text": "The leap year rule is fixed."}]),
    ]
    if sidechain:
        recs.insert(
            5,
            _claude(
                "assistant",
                "s1",
                [{"type": "tool_use", "id": "toolu_s", "name": "Grep", "input": {"pattern": "leap"}}],
                isSidechain=True,
                agentId="a1b2c3d4",
            ),
        )
    for i in range(unknown):
        recs.insert(3, {"type": "brand-new-record", "sessionId": CLAUDE_SESSION, "n": i})
    return recs


def claude_agent() -> list[dict[str, Any]]:
    """A sub-agent's file (agent-a1b2c3d4.jsonl): every record a sidechain of the parent session."""
    common = {"isSidechain": True, "agentId": "a1b2c3d4"}
    return [
        _claude("user", "a1", "search the code for the leap year rule", **common),
        _claude(
            "assistant",
            "a2",
            [{"type": "tool_use", "id": "toolu_a", "name": "Grep", "input": {"pattern": "leap"}}],
            **common,
        ),
        _claude(
            "user",
            "a3",
            [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "dates.py:12"}],
            **common,
        ),
        _claude("assistant", "a4", [{"type": "text", "text": "It is in dates.py line 12."}], **common),
    ]


def _codex(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"timestamp": "2026-11-30T08:00:00.000Z", "type": kind, "payload": payload}


def codex(*, unknown: int = 0) -> list[dict[str, Any]]:
    recs = [
        _codex(
            "session_meta",
            {
                "id": CODEX_SESSION,
                "timestamp": "2026-11-30T08:00:00Z",
                "cwd": "/home/dev/ops",
                "cli_version": "0.63.0",
            },
        ),
        _codex(
            "response_item",
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "<environment_context>\n  <cwd>/home/dev/ops</cwd>\n"}
                ],
            },
        ),
        _codex("turn_context", {"cwd": "/home/dev/ops", "model": "gpt-5-codex"}),
        _codex(
            "response_item",
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": TASKS["codex"]}]},
        ),
        _codex("event_msg", {"type": "user_message", "message": TASKS["codex"]}),
        _codex(
            "response_item",
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "Read the script before editing it."}],
            },
        ),
        _codex(
            "response_item",
            {
                "type": "function_call",
                "name": "shell",
                "arguments": json.dumps({"command": ["bash", "-lc", "cat backup.sh"]}),
                "call_id": "call_1",
            },
        ),
        _codex(
            "response_item",
            {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": json.dumps(
                    {"output": "cat: backup.sh: No such file", "metadata": {"exit_code": 1}}
                ),
            },
        ),
        _codex(
            "response_item",
            {
                "type": "custom_tool_call",
                "name": "apply_patch",
                "input": "*** Begin Patch\n*** Add File: scripts/backup.sh\n+set -x\n*** End Patch",
                "call_id": "call_2",
            },
        ),
        _codex(
            "response_item", {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Success."}
        ),
        _codex("event_msg", {"type": "token_count", "info": None}),
        _codex(
            "response_item",
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Added --verbose."}],
            },
        ),
    ]
    for i in range(unknown):
        recs.insert(2, {"timestamp": "2026-11-30T08:00:00Z", "type": "brand_new_item", "payload": {"n": i}})
    return recs


def gemini_cli(*, unknown: int = 0) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = [
        {
            "sessionId": GEMINI_SESSION,
            "projectHash": "a33c3345ed592a7d6c2eb32b6ad11a280e0cafc473b2669402655b56894f5391",
            "startTime": "2026-11-30T08:00:00.000Z",
            "lastUpdated": "2026-11-30T08:00:00.000Z",
            "kind": "main",
        },
        {"id": "m0", "timestamp": "t", "type": "info", "content": "Logged in."},
        {"id": "m1", "timestamp": "t", "type": "user", "content": [{"text": TASKS["gemini-cli"]}]},
        # The gemini message is written again, whole, as its tool calls complete: the last wins.
        {"id": "m2", "timestamp": "t", "type": "gemini", "content": "", "toolCalls": []},
        {
            "id": "m2",
            "timestamp": "t",
            "type": "gemini",
            "content": "I will find the python files.",
            "thoughts": [{"subject": "Plan", "description": "Glob first, then count.", "timestamp": "t"}],
            "toolCalls": [
                {
                    "id": "glob-1",
                    "name": "glob",
                    "args": {"pattern": "**/*.py"},
                    "status": "success",
                    "timestamp": "t",
                    "result": [
                        {
                            "functionResponse": {
                                "id": "glob-1",
                                "name": "glob",
                                "response": {"output": "a.py\nb.py"},
                            }
                        }
                    ],
                },
                {
                    "id": "shell-1",
                    "name": "run_shell_command",
                    "args": {"command": "wc -l a.py b.py"},
                    "status": "error",
                    "timestamp": "t",
                    "result": [
                        {
                            "functionResponse": {
                                "id": "shell-1",
                                "name": "run_shell_command",
                                "response": {"error": "denied"},
                            }
                        }
                    ],
                },
            ],
        },
        {"id": "m3", "timestamp": "t", "type": "user", "content": "a wrong turn"},
        {"$rewindTo": "m3"},
        {"$set": {"lastUpdated": "2026-11-30T08:05:00.000Z"}},
        {"id": "m4", "timestamp": "t", "type": "gemini", "content": "There are 2 python files, 120 lines."},
    ]
    for i in range(unknown):
        recs.insert(2, {"id": f"x{i}", "timestamp": "t", "type": "brand_new_message", "content": "?"})
    return recs


def gemini_legacy() -> dict[str, Any]:
    """An older Gemini CLI session: one pretty-printed ConversationRecord (.json)."""
    recs = gemini_cli()
    messages: dict[str, dict[str, Any]] = {}
    for r in recs[1:]:
        if "id" in r:
            messages[r["id"]] = r
    messages.pop("m3")
    return {**recs[0], "messages": list(messages.values())}


SAMPLES = {"claude-code": claude_code, "codex": codex, "gemini-cli": gemini_cli}
FILE_NAMES = {
    "claude-code": f"{CLAUDE_SESSION}.jsonl",
    "codex": f"rollout-2026-11-30T08-00-00-{CODEX_SESSION}.jsonl",
    "gemini-cli": "session-2026-11-30T08-00-92f625c6.jsonl",
}


def jsonl(records: list[Any], extra_lines: list[str] | None = None) -> str:
    return "".join(json.dumps(r) + "\n" for r in records) + "".join(line + "\n" for line in extra_lines or [])


def write(folder: Path, fmt: str, *, unknown: int = 0, extra_lines: list[str] | None = None) -> Path:
    path = folder / FILE_NAMES[fmt]
    path.write_text(jsonl(SAMPLES[fmt](unknown=unknown), extra_lines), encoding="utf-8")
    return path
