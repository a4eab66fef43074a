"""Gemini CLI sessions: ``~/.gemini/tmp/<project>/chats/session-<time>-<id>.jsonl`` (older
sessions: one ``.json`` document).

Checked against google-gemini/gemini-cli ``packages/core/src/services/chatRecordingTypes.ts``
(``ConversationRecord``, ``MessageRecord``, ``ToolCallRecord``, ``RewindRecord``,
``MetadataUpdateRecord``) and ``chatRecordingService.ts``, as the code search shows them:

- ``.jsonl``: a metadata record first (``sessionId``, ``projectHash``, ``startTime``,
  ``kind``...), then message records ``{id, timestamp, type, content, ...}``. A message is
  written again, whole, each time its tool calls or results change: the last record of an id
  wins, at the place the id first appeared. ``{"$rewindTo": id}`` drops that message and all
  after it; ``{"$set": {...}}`` updates the metadata (its ``messages``, when present, are taken
  only while no message has been read: after a compression they would shrink the session);
- ``.json``: one ``ConversationRecord`` with a ``messages`` list;
- message ``type``: ``user`` (the request), ``gemini`` (``content`` text, ``thoughts``
  ``[{subject, description}]``, ``toolCalls`` ``[{id, name, args, result, status}]``, ``result``
  a list of parts whose ``functionResponse.response`` holds ``output`` or ``error``), and
  ``info``, ``error``, ``warning`` (messages of the CLI itself, ignored); ``content`` is a string
  or parts (``{text}``). Other types are skipped and counted.

A sub-agent's recording (``kind: "subagent"``) is a session of its own, with its own id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from memp_cli.ingest.transcripts import Session

NAME = "gemini-cli"

IGNORED = {"info", "error", "warning"}
FAILED = {"error", "cancelled"}


def detect(obj: dict[str, Any]) -> bool:
    return ("sessionId" in obj and "projectHash" in obj) or (obj.get("type") == "gemini" and "id" in obj)


def build(records: Iterator[tuple[int, Any]], s: Session) -> None:
    messages: dict[str, dict[str, Any]] = {}
    for _, obj in records:
        s.records += 1
        if not isinstance(obj, dict):
            s.skip(type(obj).__name__)
            continue
        if isinstance(obj.get("$rewindTo"), str):
            ids = list(messages)
            target = obj["$rewindTo"]
            for mid in ids[ids.index(target) :] if target in messages else ids:
                del messages[mid]
        elif isinstance(obj.get("id"), str) and "type" in obj:
            messages[obj["id"]] = obj
        else:
            meta = obj["$set"] if isinstance(obj.get("$set"), dict) else obj
            if s.session_id is None and isinstance(meta.get("sessionId"), str):
                s.session_id = meta["sessionId"]
            listed = meta.get("messages")
            if isinstance(listed, list) and not messages:
                for m in listed:
                    if isinstance(m, dict) and isinstance(m.get("id"), str):
                        messages[m["id"]] = m
    for m in messages.values():
        _message(m, s)


def parts_text(value: Any) -> str:
    """The text of a PartListUnion: a string, a part, or a list of them; a function response
    gives its ``output`` (or ``error``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(t for t in (parts_text(v) for v in value) if t)
    if not isinstance(value, dict):
        return ""
    if isinstance(value.get("text"), str):
        return str(value["text"])
    response = value.get("functionResponse")
    if isinstance(response, dict):
        body = response.get("response")
        if isinstance(body, dict):
            for key in ("output", "error", "content"):
                if key in body:
                    got = body[key]
                    return got if isinstance(got, str) else orjson.dumps(got).decode()
            return orjson.dumps(body).decode()
    return ""


def _message(m: dict[str, Any], s: Session) -> None:
    kind = m.get("type")
    if kind == "user":
        s.request(parts_text(m.get("content")))
    elif kind == "gemini":
        thoughts = m.get("thoughts")
        for t in thoughts if isinstance(thoughts, list) else []:
            if isinstance(t, dict):
                subject, text = str(t.get("subject") or ""), str(t.get("description") or "")
                s.think(f"{subject}: {text}" if subject and text else subject or text)
        s.think(parts_text(m.get("content")))
        calls = m.get("toolCalls")
        for c in calls if isinstance(calls, list) else []:
            if not isinstance(c, dict):
                continue
            s.call(c.get("id"), str(c.get("name") or ""), c.get("args"))
            result = parts_text(c.get("result"))
            if not result and isinstance(c.get("resultDisplay"), str):
                result = c["resultDisplay"]
            if result or c.get("status") in FAILED:
                s.result(c.get("id"), result, error=c.get("status") in FAILED)
    elif kind not in IGNORED:
        s.skip(f"message {kind}")
