"""The AgentInstruct / ETO shape: ``{"conversations": [{"from", "value"}...]}``."""

from __future__ import annotations

from typing import Any

from memp_cli.ingest.dialogue import ROLES, TASK_MARKERS, dialogue_to_trajectory
from memp_cli.ingest.fields import text_field
from memp_cli.model.trajectory import RecordError, Trajectory
from memp_cli.redact import shown

NAME = "conversations"


def detect(obj: dict[str, Any]) -> int:
    return 2 if "conversations" in obj else 0


def parse(obj: dict[str, Any]) -> Trajectory:
    conv = obj.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError('"conversations" must be a non-empty list of {"from", "value"}')
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(conv, 1):
        if not isinstance(m, dict) or "from" not in m:
            raise RecordError(f'turn {i} must be an object with "from" and "value"')
        role = ROLES.get(str(m["from"]).lower())
        if role is None:
            raise RecordError(f"turn {i} has unknown speaker {shown(m['from'])}")
        turns.append((role, text_field(m.get("value"), f'turn {i} "value"')))
    # AgentInstruct puts an instruction preamble and a canned "OK" exchange before
    # the real task: take the last user turn that names a task before the first
    # real action.
    task_turn = None
    for i, (role, text) in enumerate(turns):
        if role == "user" and any(mk in text for mk in TASK_MARKERS):
            task_turn = i
        elif role == "assistant" and task_turn is not None and text.strip() != "OK":
            break  # the first real action: later observations may repeat the task text
    if task_turn is not None:
        turns = turns[task_turn:]
    return dialogue_to_trajectory(turns, obj, '"conversations"')
