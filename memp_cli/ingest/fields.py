"""Field readers shared by the record shapes: strings, the outcome, the task, memory ids."""

from __future__ import annotations

from typing import Any

from memp_cli.model.trajectory import RecordError
from memp_cli.redact import shown


def text_field(value: Any, what: str) -> str:
    """A string field; numbers are taken as their text, null as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RecordError(f"{what} must be a string, got {type(value).__name__}")


def outcome(obj: dict[str, Any]) -> tuple[bool | None, float | None]:
    """(success, reward); a reward without ``success`` counts as success when >= 1."""
    success = obj.get("success")
    reward = obj.get("reward")
    if success is not None and not isinstance(success, bool):
        if success in (0, 1):
            success = bool(success)
        else:
            raise RecordError(f'"success" must be true, false or null, got {shown(success)}')
    if reward is not None:
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            raise RecordError(f'"reward" must be a number or null, got {shown(reward)}')
        reward = float(reward)
        if reward != reward:  # NaN
            raise RecordError('"reward" is NaN')
    if success is None and reward is not None and "success" not in obj:
        success = reward >= 1.0
    return success, reward


def task_field(value: Any, what: str = '"task"') -> str:
    task = text_field(value, what).strip()
    if not task:
        raise RecordError(f"{what} is missing or empty")
    return task


def memories_used(obj: dict[str, Any]) -> list[str]:
    used = obj.get("memories_used") or []
    if not isinstance(used, list) or not all(isinstance(u, str) for u in used):
        raise RecordError('"memories_used" must be a list of memory ids (strings)')
    return used


def optional_str(obj: dict[str, Any], key: str) -> str | None:
    """``obj[key]`` when it is a string, else None (labels that are kept only when well-formed)."""
    value = obj.get(key)
    return value if isinstance(value, str) else None
