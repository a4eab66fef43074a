"""Trajectories: the agent runs memp learns from.

A trajectory is a task, the steps the agent took (action, observation,
optional thought) and the outcome. This module holds the data types and the
stable content-derived id; the record shapes memp reads (native, OpenAI,
Mem^p, AgentInstruct) are parsed into a :class:`Trajectory` by
:mod:`memp_cli.ingest`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson


class RecordError(ValueError):
    """A record that cannot be read as a trajectory; the message says why."""


@dataclass(slots=True)
class Step:
    action: str
    observation: str = ""
    thought: str = ""

    def to_dict(self) -> dict[str, str]:
        d = {"action": self.action, "observation": self.observation}
        if self.thought:
            d["thought"] = self.thought
        return d


@dataclass(slots=True)
class Trajectory:
    task: str
    steps: list[Step]
    success: bool | None = None
    reward: float | None = None
    task_id: str | None = None
    task_type: str | None = None
    initial_observation: str = ""
    memories_used: list[str] = field(default_factory=list)
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = trajectory_id(self)

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON form; ``id`` first so segment scans stay cheap."""
        d: dict[str, Any] = {"id": self.id, "task": self.task}
        if self.task_id is not None:
            d["task_id"] = self.task_id
        if self.task_type is not None:
            d["task_type"] = self.task_type
        if self.initial_observation:
            d["initial_observation"] = self.initial_observation
        d["steps"] = [s.to_dict() for s in self.steps]
        d["success"] = self.success
        d["reward"] = self.reward
        if self.memories_used:
            d["memories_used"] = list(self.memories_used)
        if self.source is not None:
            d["source"] = self.source
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> Trajectory:
        return cls(
            id=d["id"],
            task=d["task"],
            task_id=d.get("task_id"),
            task_type=d.get("task_type"),
            initial_observation=d.get("initial_observation", ""),
            steps=[Step(s["action"], s.get("observation", ""), s.get("thought", "")) for s in d["steps"]],
            success=d.get("success"),
            reward=d.get("reward"),
            memories_used=list(d.get("memories_used", [])),
            source=d.get("source"),
            extra=dict(d.get("extra", {})),
        )


def trajectory_id(t: Trajectory) -> str:
    """A stable id from the content that defines a run (not its labels).

    The same run ingested twice, even under another ``task_id`` or with
    different extra keys, gets the same id and is stored once.
    """
    canon = orjson.dumps(
        [
            t.task,
            t.initial_observation,
            [[s.action, s.observation, s.thought] for s in t.steps],
            t.success,
            t.reward,
            sorted(t.memories_used),
        ]
    )
    return "t" + hashlib.sha256(canon).hexdigest()[:15]
