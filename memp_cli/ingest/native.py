"""The native shape: ``{"task_id"|"id", "task", "steps": [{"action", "observation",
"thought"?}], "success", "reward", "memories_used"?}``; unknown keys are kept in ``extra``."""

from __future__ import annotations

from typing import Any

from memp_cli.ingest.fields import memories_used, optional_str, outcome, task_field, text_field
from memp_cli.model.trajectory import RecordError, Step, Trajectory

NAME = "native"

_KNOWN = {
    "task_id",
    "id",
    "task",
    "task_type",
    "initial_observation",
    "steps",
    "success",
    "reward",
    "memories_used",
    "source",
}


def detect(obj: dict[str, Any]) -> int:
    """2: both ``task`` and ``steps``; 1: one of them (the fallback when no shape is sure)."""
    if "steps" in obj and "task" in obj:
        return 2
    return 1 if "steps" in obj or "task" in obj else 0


def parse_steps(steps_raw: Any) -> list[Step]:
    if not isinstance(steps_raw, list):
        raise RecordError('"steps" must be a list of {"action", "observation"} objects')
    steps: list[Step] = []
    for i, s in enumerate(steps_raw, 1):
        if isinstance(s, str):
            steps.append(Step(action=s))
            continue
        if not isinstance(s, dict):
            raise RecordError(f"step {i} must be an object, got {type(s).__name__}")
        action = text_field(s.get("action"), f'step {i} "action"')
        if not action and not s.get("thought"):
            raise RecordError(f'step {i} has no "action"')
        steps.append(
            Step(
                action=action,
                observation=text_field(s.get("observation"), f'step {i} "observation"'),
                thought=text_field(s.get("thought"), f'step {i} "thought"'),
            )
        )
    return steps


def parse(obj: dict[str, Any]) -> Trajectory:
    steps = parse_steps(obj.get("steps"))
    success, reward = outcome(obj)
    task_id = obj.get("task_id", obj.get("id"))
    return Trajectory(
        task=task_field(obj.get("task")),
        steps=steps,
        success=success,
        reward=reward,
        task_id=None if task_id is None else text_field(task_id, '"task_id"'),
        task_type=optional_str(obj, "task_type"),
        initial_observation=text_field(obj.get("initial_observation"), '"initial_observation"'),
        memories_used=memories_used(obj),
        source=optional_str(obj, "source"),
        extra={k: v for k, v in obj.items() if k not in _KNOWN},
    )
