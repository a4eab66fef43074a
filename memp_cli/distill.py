"""Build memories from ingested trajectories (the paper's *build* step).

Policies:

- ``trajectory``: the memory keeps the task and the concrete steps (trimmed
  to ``[distill] max_steps``, long observations cut). No LLM.

A memory's id derives from the policy and the trajectory id, so distilling
again skips what is done and a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .memory import Memory, Provenance
from .store import Store
from .trajectories import Trajectory

POLICIES = ("trajectory",)
KIND_OF_POLICY = {"trajectory": "trajectory", "script": "script", "proceduralization": "procedure"}
BATCH = 500


@dataclass
class DistillReport:
    policy: str
    read: int = 0
    written: int = 0
    skipped: int = 0
    filtered: int = 0
    failed: int = 0
    ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "ids"}


def memory_id(policy: str, trajectory_id: str) -> str:
    return "m" + hashlib.sha256(f"{policy}:{trajectory_id}".encode()).hexdigest()[:12]


def trim_steps(t: Trajectory, max_steps: int, max_obs_chars: int) -> list[dict[str, str]]:
    """The concrete steps kept in a memory: long runs keep head and tail."""

    def cut(s: str) -> str:
        s = s.strip()
        return s if len(s) <= max_obs_chars else s[: max(max_obs_chars - 1, 0)] + "…"

    steps = [s.to_dict() for s in t.steps]
    for s in steps:
        s["observation"] = cut(s.get("observation", ""))
        if "thought" in s:
            s["thought"] = cut(s["thought"])
    if len(steps) > max_steps:
        head = max_steps // 2
        tail = max_steps - head - 1
        skipped = len(steps) - head - tail
        marker = {"action": f"[... {skipped} steps omitted ...]", "observation": ""}
        steps = steps[:head] + [marker] + (steps[-tail:] if tail else [])
    return steps


def trajectory_memory(t: Trajectory, store: Store) -> Memory:
    cfg = store.config.distill
    return Memory(
        id=memory_id("trajectory", t.id),
        kind="trajectory",
        task=t.task,
        keys=[t.task],
        task_type=t.task_type or "",
        success=t.success,
        steps=trim_steps(t, cfg.max_steps, cfg.max_observation_chars),
        provenance=Provenance(trajectories=[t.id], policy="trajectory"),
    )


def pending(store: Store, policy: str, *, only_success: bool = False) -> Iterator[tuple[str, Trajectory]]:
    """Every stored trajectory with its status for ``policy``: todo, done or filtered."""
    existing = set(store.memory_ids())
    for t in store.iter_trajectories():
        if memory_id(policy, t.id) in existing:
            yield "done", t
        elif only_success and t.success is not True:
            yield "filtered", t
        else:
            yield "todo", t


def distill(
    store: Store,
    policy: str = "trajectory",
    *,
    only_success: bool = False,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> DistillReport:
    """Write a memory for each trajectory that has none for ``policy`` yet."""
    if policy not in POLICIES:
        raise InputError(f"unknown policy {policy!r}", hint=f"choose one of {', '.join(POLICIES)}")
    report = DistillReport(policy=policy)
    with store.lock:
        batch: list[Memory] = []

        def flush() -> None:
            if batch:
                store.save_memories(batch, event="distill", policy=policy)
                report.written += len(batch)
                batch.clear()
                if progress:
                    progress(report.written)

        for status, t in pending(store, policy, only_success=only_success):
            if status == "done":
                report.skipped += 1
                continue
            if status == "filtered":
                report.filtered += 1
                continue
            if limit is not None and report.read >= limit:
                continue
            report.read += 1
            mem = trajectory_memory(t, store)
            report.ids.append(mem.id)
            if not dry_run:
                batch.append(mem)
                if len(batch) >= BATCH:
                    flush()
        flush()
    return report
