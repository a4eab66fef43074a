"""Chat transcripts -> a trajectory: shared by the OpenAI and AgentInstruct shapes.

The task is the first user turn (after a task marker such as ``Your task is to:``,
the text before it being the initial observation); each assistant turn is an
action (``Thought: ... Action: ...`` split when ReAct-styled) and the user or
tool turns after it its observation.
"""

from __future__ import annotations

import re
from typing import Any

from memp_cli.ingest.fields import memories_used, optional_str, outcome
from memp_cli.model.trajectory import RecordError, Step, Trajectory

TASK_MARKERS = ("Your task is to:", "Your task is to", "Task:", "Instruction:")

ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "tool": "user",
    "function": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}


def split_task(text: str) -> tuple[str, str]:
    """Split a first user turn into (task, preceding observation)."""
    for marker in TASK_MARKERS:
        pos = text.rfind(marker)
        if pos >= 0:
            task = text[pos + len(marker) :].strip()
            task = task.split("\n", 1)[0].strip()
            if task:
                return task, text[:pos].strip()
    return text.strip(), ""


_ACTION_RE = re.compile(r"^\s*Action\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_THOUGHT_RE = re.compile(
    r"^\s*Thought\s*:\s*(.*?)(?=^\s*Action\s*:|\Z)", re.IGNORECASE | re.MULTILINE | re.DOTALL
)


def turn_to_step(content: str) -> Step:
    """An agent turn in ReAct style (``Thought: ... Action: ...``) or plain."""
    m = _ACTION_RE.search(content)
    if m:
        thought_m = _THOUGHT_RE.search(content)
        thought = thought_m.group(1).strip() if thought_m else ""
        return Step(action=m.group(1).strip(), thought=thought)
    return Step(action=content.strip())


def dialogue_to_trajectory(turns: list[tuple[str, str]], obj: dict[str, Any], what: str) -> Trajectory:
    """turns: (role in {system,user,assistant}, text). Task = first user turn."""
    first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
    if first_user is None:
        raise RecordError(f"{what} has no user turn to take the task from")
    task, initial = split_task(turns[first_user][1])
    if not task:
        raise RecordError(f"{what}: the first user turn is empty")
    steps: list[Step] = []
    for role, text in turns[first_user + 1 :]:
        if role == "assistant":
            steps.append(turn_to_step(text))
        elif role == "user" and steps:
            obs = text.strip()
            if obs.lower().startswith("observation:"):
                obs = obs[len("observation:") :].strip()
            steps[-1].observation = (steps[-1].observation + "\n" + obs).strip()
    success, reward = outcome(obj)
    tid = obj.get("task_id", obj.get("id"))
    return Trajectory(
        task=task,
        steps=steps,
        success=success,
        reward=reward,
        task_id=None if tid is None else str(tid),
        task_type=optional_str(obj, "task_type"),
        initial_observation=initial,
        memories_used=memories_used(obj),
    )
