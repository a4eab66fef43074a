"""Claude Code sessions: ``~/.claude/projects/<project>/<session-id>.jsonl``.

Checked against the shape Claude Code writes (no official schema exists; compared with the
format notes and parsers of several public projects found with the code search, e.g.
DRMacIver/claude-reliability notes/transcript-format.md, jeremedia/claude-code-log-format,
Huntehhh/claude-code-chat docs/claude-cli-jsonl-format.md, for Claude Code 2.0-2.1):

- one JSON record per line; ``type`` ``user`` / ``assistant`` carry ``message`` (``role``,
  ``content``: a string or a list of blocks), ``uuid``, ``parentUuid``, ``sessionId``, ``cwd``,
  ``isSidechain``, and for sub-agents ``agentId``;
- assistant blocks: ``text``, ``thinking`` (``thinking``), ``redacted_thinking``,
  ``tool_use`` (``id``, ``name``, ``input``); one assistant message may be written as several
  records, a block each;
- user blocks: ``text``, ``image``, ``tool_result`` (``tool_use_id``, ``content`` a string or
  blocks, ``is_error``); ``isMeta`` records and ``isCompactSummary`` records are context Claude
  Code injects, not requests; nor are slash commands (``<command-name>...``), ``!`` shell lines
  (``<bash-input>``) and reminders (``<system-reminder>``) in user text;
- other record types: ``summary``, ``system``, ``file-history-snapshot``, ``queue-operation``,
  ``custom-title`` (read and ignored); any other type is skipped and counted.

Sub-agents (the Task tool) write ``agent-<id>.jsonl`` files whose records all have
``isSidechain: true`` and the parent's ``sessionId``: such a file is read as a session of its
own (its task is the prompt the sub-agent was given, its id derived from the parent session and
the agent id). Sidechain records inside a main session file (older versions wrote them there)
are left out of the main session: the Task call and its result already stand for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from memp_cli.ingest.transcripts import Session, content_text

NAME = "claude-code"

IGNORED = {"summary", "system", "file-history-snapshot", "queue-operation", "custom-title"}
# Text Claude Code puts in user records that the user did not ask: slash commands and their
# output, `!` shell input/output, context reminders, the caveat before local command output.
_NOT_REQUESTS = (
    "<command-",
    "<local-command-",
    "<bash-",
    "<system-reminder>",
    "<user-memory-input>",
    "Caveat: The messages below",
)


def detect(obj: dict[str, Any]) -> bool:
    kind = obj.get("type")
    if kind in ("user", "assistant"):
        return "sessionId" in obj and "uuid" in obj and isinstance(obj.get("message"), dict)
    return (kind == "summary" and "leafUuid" in obj) or (
        kind in ("file-history-snapshot", "queue-operation") and ("snapshot" in obj or "sessionId" in obj)
    )


def build(records: Iterator[tuple[int, Any]], s: Session) -> None:
    name = os.path.basename(s.path)
    sub_agent: bool | None = True if name.startswith("agent-") else None
    for _, obj in records:
        s.records += 1
        if not isinstance(obj, dict):
            s.skip(type(obj).__name__)
            continue
        kind = obj.get("type")
        if kind in IGNORED:
            continue
        if kind not in ("user", "assistant"):
            s.skip(str(kind))
            continue
        if sub_agent is None:  # the first message says whether the file is a sub-agent's
            sub_agent = obj.get("isSidechain") is True
        if obj.get("isSidechain") is True and not sub_agent:
            continue
        if isinstance(obj.get("sessionId"), str):  # the last: a resumed session's copied history
            s.session_id = obj["sessionId"]  # may carry the id of the session it resumed
            if s.cwd is None and isinstance(obj.get("cwd"), str):
                s.cwd = obj["cwd"]
        if sub_agent and s.agent_id is None:
            agent = obj.get("agentId")
            stem = name.removeprefix("agent-").removesuffix(".jsonl")
            s.agent_id = agent if isinstance(agent, str) else stem
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if kind == "user":
            if not (obj.get("isMeta") or obj.get("isCompactSummary")):
                _user(content, s)
        else:
            _assistant(content, s)
    if s.session_id is None and s.path != "<stdin>":
        s.session_id = name.removesuffix(".jsonl") or None


def _user_text(text: str, s: Session) -> None:
    stripped = text.strip()
    if stripped.startswith(_NOT_REQUESTS):
        return
    if stripped.startswith("[Request interrupted"):
        s.note(stripped)
    else:
        s.request(stripped)


def _user(content: Any, s: Session) -> None:
    if isinstance(content, str):
        _user_text(content, s)
        return
    if not isinstance(content, list):
        return
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            _user_text(content_text(block), s)
        elif kind == "tool_result":
            assert isinstance(block, dict)
            failed = block.get("is_error") is True
            s.result(block.get("tool_use_id"), content_text(block.get("content")), error=failed)
        elif kind not in ("image", "document"):
            s.skip(f"user block {kind}")


def _assistant(content: Any, s: Session) -> None:
    if isinstance(content, str):
        s.think(content)
        return
    if not isinstance(content, list):
        return
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            s.think(content_text(block))
        elif kind == "thinking":
            s.think(str(block.get("thinking") or ""))
        elif kind in ("tool_use", "server_tool_use"):
            s.call(block.get("id"), str(block.get("name") or ""), block.get("input"))
        elif isinstance(kind, str) and kind.endswith("_tool_result"):  # a server tool's result
            s.result(block.get("tool_use_id"), content_text(block.get("content")))
        elif kind != "redacted_thinking":
            s.skip(f"assistant block {kind}")
