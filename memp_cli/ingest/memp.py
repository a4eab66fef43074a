"""The Mem^p reference shape: ``{"query", "trajectory", "reward"}``, where
``trajectory`` is a list of steps or a ReAct-style text (``Thought:``/``Action:``/
``Observation:`` lines, or ``> action`` lines followed by their observation)."""

from __future__ import annotations

import re
from typing import Any

from memp_cli.ingest.fields import memories_used, outcome, task_field
from memp_cli.ingest.native import parse_steps
from memp_cli.model.trajectory import RecordError, Step, Trajectory

NAME = "memp"


def detect(obj: dict[str, Any]) -> int:
    return 2 if "query" in obj and "trajectory" in obj else 0


_REACT_LINE = re.compile(r"^\s*(Thought|Action|Act|Observation|Obs)\s*:\s*(.*)$", re.IGNORECASE)


def steps_from_react_text(text: str) -> list[Step]:
    steps: list[Step] = []
    thought = ""
    for line in text.splitlines():
        m = _REACT_LINE.match(line)
        if not m:
            if line.strip().startswith(">"):
                steps.append(Step(action=line.strip()[1:].strip(), thought=thought))
                thought = ""
            elif steps:
                steps[-1].observation = (steps[-1].observation + "\n" + line.strip()).strip()
            continue
        kind, body = m.group(1).lower(), m.group(2).strip()
        if kind == "thought":
            thought = body
        elif kind in ("action", "act"):
            steps.append(Step(action=body, thought=thought))
            thought = ""
        elif steps:
            steps[-1].observation = (steps[-1].observation + "\n" + body).strip()
    return steps


def parse(obj: dict[str, Any]) -> Trajectory:
    raw = obj.get("trajectory")
    if isinstance(raw, str):
        steps = steps_from_react_text(raw)
    elif isinstance(raw, list):
        steps = parse_steps(raw)
    else:
        raise RecordError('"trajectory" must be a list of steps or a ReAct-style text')
    if not steps:
        raise RecordError('"trajectory" holds no "Action:" lines or steps')
    success, reward = outcome(obj)
    tid = obj.get("task_id", obj.get("id"))
    return Trajectory(
        task=task_field(obj.get("query"), '"query"'),
        steps=steps,
        success=success,
        reward=reward,
        task_id=None if tid is None else str(tid),
        memories_used=memories_used(obj),
    )
