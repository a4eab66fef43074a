"""The OpenAI chat shape: ``{"messages": [{"role", "content"}...], "success"?, "reward"?}``.

The task is the first user turn, each assistant turn an action (its tool calls
when it has no text) and the following user/tool turn its observation.
"""

from __future__ import annotations

from typing import Any

from memp_cli.ingest.dialogue import ROLES, dialogue_to_trajectory
from memp_cli.model.trajectory import RecordError, Trajectory
from memp_cli.redact import shown

NAME = "openai"


def detect(obj: dict[str, Any]) -> int:
    return 2 if "messages" in obj else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is None:
        return ""
    raise RecordError(f"message content must be text, got {type(content).__name__}")


def parse(obj: dict[str, Any]) -> Trajectory:
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError('"messages" must be a non-empty list of {"role", "content"}')
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or "role" not in m:
            raise RecordError(f'message {i} must be an object with "role" and "content"')
        role = ROLES.get(str(m["role"]).lower())
        if role is None:
            raise RecordError(f"message {i} has unknown role {shown(m['role'])}")
        text = _content_text(m.get("content"))
        if role == "assistant" and not text and m.get("tool_calls"):
            calls = m["tool_calls"]
            text = "; ".join(
                f"{c.get('function', {}).get('name', '')}({c.get('function', {}).get('arguments', '')})"
                for c in calls
                if isinstance(c, dict)
            )
        turns.append((role, text))
    return dialogue_to_trajectory(turns, obj, '"messages"')
