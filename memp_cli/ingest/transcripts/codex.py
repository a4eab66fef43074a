"""Codex CLI sessions ("rollouts"): ``~/.codex/sessions/YYYY/MM/DD/rollout-<time>-<id>.jsonl``.

Checked against openai/codex ``codex-rs/protocol/src/models.rs`` (``ResponseItem``,
``ContentItem``, ``FunctionCallOutputPayload``, ``LocalShellAction``) and the rollout line
``{timestamp, type, payload}`` of ``RolloutItem`` (``session_meta``, ``response_item``,
``event_msg``, ``turn_context``, ``compacted``), as the code search shows them:

- ``session_meta``: ``payload.id`` is the session id, ``payload.cwd`` the directory;
- ``response_item`` payloads: ``message`` (``role``, ``content`` of ``input_text`` /
  ``output_text`` items), ``reasoning`` (``summary`` of ``summary_text``, ``content`` of
  ``reasoning_text``), ``function_call`` (``name``, ``arguments`` a JSON string, ``call_id``),
  ``function_call_output`` (``call_id``, ``output``: a string, content items, or
  ``{content, success}``), ``custom_tool_call`` / ``custom_tool_call_output``,
  ``local_shell_call`` (``action.command``), ``web_search_call``; ``ghost_snapshot``,
  ``compaction`` and ``other`` are ignored;
- ``event_msg`` repeats what the TUI showed (``user_message``, ``agent_message``, token counts):
  only its ``user_message`` is used, when no ``response_item`` carries a user request;
- user messages that are context Codex injects (``<environment_context>``,
  ``<user_instructions>``, ``# AGENTS.md instructions``) are not requests; ``developer`` and
  ``system`` messages are not read.

Older rollouts (before the ``payload`` wrapper) put a ``{id, timestamp, instructions}`` line
first and bare response items after it: they are read the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from memp_cli.ingest.transcripts import Session, content_text

NAME = "codex"

ROLLOUT_TYPES = {"session_meta", "response_item", "event_msg", "turn_context", "compacted"}
IGNORED_ITEMS = {"ghost_snapshot", "compaction", "compaction_summary", "other"}
_INJECTED = re.compile(
    r"^\s*(?:<(environment_context|user_instructions|permissions|INSTRUCTIONS)\b|# AGENTS\.md)"
)


def detect(obj: dict[str, Any]) -> bool:
    return obj.get("type") in ROLLOUT_TYPES and isinstance(obj.get("payload"), dict) and "timestamp" in obj


def build(records: Iterator[tuple[int, Any]], s: Session) -> None:
    typed: list[str] = []  # event_msg user messages: the task when no response item has one
    for n, obj in records:
        s.records += 1
        if not isinstance(obj, dict):
            s.skip(type(obj).__name__)
            continue
        kind = obj.get("type")
        payload = obj.get("payload")
        if kind in ROLLOUT_TYPES and isinstance(payload, dict):
            if kind == "session_meta":
                _meta(payload["meta"] if isinstance(payload.get("meta"), dict) else payload, s)
            elif kind == "response_item":
                _item(payload, s)
            elif kind == "event_msg" and payload.get("type") == "user_message":
                typed.append(str(payload.get("message") or ""))
        elif n == 1 and "id" in obj and "timestamp" in obj and "type" not in obj:
            _meta(obj, s)  # an older rollout's first line
        elif "record_type" in obj:
            continue  # an older rollout's state line
        elif isinstance(kind, str) and "payload" not in obj:
            _item(obj, s)  # an older rollout's bare response item
        else:
            s.skip(str(kind))
    if not s.task:
        for text in typed:
            s.request(text)


def _meta(meta: dict[str, Any], s: Session) -> None:
    if s.session_id is None and isinstance(meta.get("id"), str):
        s.session_id = meta["id"]
    if s.cwd is None and isinstance(meta.get("cwd"), str):
        s.cwd = meta["cwd"]


def _output(output: Any) -> tuple[str, bool]:
    """(text, failed) of a tool output: a string, content items, or ``{content, success}``."""
    if isinstance(output, dict):
        text = output.get("content")
        return (text if isinstance(text, str) else content_text(text)), output.get("success") is False
    if isinstance(output, str):
        try:  # exec outputs are often {"output": ..., "metadata": {"exit_code": ...}} as a string
            decoded = orjson.loads(output)
        except orjson.JSONDecodeError:
            return output, False
        if isinstance(decoded, dict) and isinstance(decoded.get("output"), str):
            meta = decoded.get("metadata")
            code = meta.get("exit_code") if isinstance(meta, dict) else None
            return decoded["output"], isinstance(code, int) and code != 0
        return output, False
    return content_text(output), False


def _item(item: dict[str, Any], s: Session) -> None:
    kind = item.get("type")
    if kind == "message":
        text = content_text(item.get("content"))
        role = item.get("role")
        if role == "user":
            if not _INJECTED.match(text):
                s.request(text)
        elif role == "assistant":
            s.think(text)
    elif kind == "reasoning":
        s.think(content_text(item.get("summary")) or content_text(item.get("content")))
    elif kind == "function_call":
        args: Any = item.get("arguments")
        if isinstance(args, str):
            try:
                args = orjson.loads(args)
            except orjson.JSONDecodeError:
                pass
        s.call(item.get("call_id"), str(item.get("name") or ""), args)
    elif kind == "custom_tool_call":
        s.call(item.get("call_id"), str(item.get("name") or ""), item.get("input"))
    elif kind == "local_shell_call":
        action = item.get("action")
        command = action.get("command") if isinstance(action, dict) else None
        s.call(item.get("call_id") or item.get("id"), "shell", {"command": command})
    elif kind == "web_search_call":
        action = item.get("action")
        s.call(item.get("id"), "web_search", action if isinstance(action, dict) else None)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        text, failed = _output(item.get("output"))
        s.result(item.get("call_id"), text, error=failed)
    elif kind not in IGNORED_ITEMS:
        s.skip(f"response_item {kind}")
