"""Issue 13's "done when", end to end through the CLI: a session of each coding agent (Claude Code
through its SessionEnd hook, Codex CLI and Gemini CLI through `memp ingest`) is ingested,
distilled and exported as Agent Skills that `memp export skills --check` passes.
(The MCP half, a real client against `memp mcp`, is tests/test_mcp.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import transcript_samples as ts
from conftest import memp

from memp_cli.integrations.skillspec import NAME_RE, parse_frontmatter


def test_three_agent_sessions_become_skills_that_pass_the_spec(store: Path, isolated: Path) -> None:
    claude = ts.write(isolated, "claude-code")
    event = {"session_id": ts.CLAUDE_SESSION, "transcript_path": str(claude), "cwd": str(isolated)}
    hook = memp("hook", "claude-code", input=json.dumps({**event, "hook_event_name": "SessionEnd"}))
    assert (hook.code, hook.stdout, hook.stderr) == (0, "", "")
    for fmt in ("codex", "gemini-cli"):
        memp("ingest", ts.write(isolated, fmt), "--success")

    built = memp("distill", "--with-failures", "--json").jsonl()[-1]
    assert built["written"] == 3
    ids = {m["id"]: m for m in memp("list", "--json").jsonl()}
    by_task = {m["task"]: m for m in ids.values()}
    assert set(by_task) == set(ts.TASKS.values())
    # The hook's session has no outcome (unknown: never a success), the two labelled ones succeed.
    assert by_task[ts.TASKS["claude-code"]]["success"] is None

    out = isolated / "skills"
    memp("export", "skills", out)
    exported = sorted(p.parent.name for p in out.glob("*/SKILL.md"))
    assert len(exported) == 2  # by default only procedures that succeed
    memp("export", "skills", out, "--min-success", "0")
    folders = sorted(p.parent for p in out.glob("*/SKILL.md"))
    assert len(folders) == 3
    for folder in folders:
        text = (folder / "SKILL.md").read_text(encoding="utf-8")
        meta = parse_frontmatter(text).fields
        assert meta["name"] == folder.name and NAME_RE.fullmatch(folder.name)
        assert 1 <= len(meta["description"]) <= 1024
        assert set(meta) <= {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
        assert any(mid in json.dumps(meta["metadata"]) for mid in ids)
    check = memp("export", "skills", "--check", out)
    assert check.code == 0, check.stderr
