"""The outcome ledger: ``<store>/outcomes.jsonl``, one line per use of a memory.

A line says that run ``trajectory`` used memory ``memory`` and ended in ``outcome``
(``success``, ``failure``, or ``unknown`` when the run does not say), where the line came
from (``ingest`` of a trajectory whose ``memories_used`` names the memory, or ``feedback``)
and when. The ledger is append-only; a memory's statistics (uses, successes, failures, last
use) are derived from it when they are shown or used for ranking and pruning, so counting an
outcome never rewrites a memory file.

Counting is idempotent: a (memory, trajectory) pair is counted once, however often the same
run is ingested or reported (a feedback without a trajectory id is counted every time it is
given). A torn last line, left by a killed writer, is skipped when read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.errors import InputError
from memp_cli.model.memory import now_iso, valid_id
from memp_cli.redact import shown
from memp_cli.store import appendlog

if TYPE_CHECKING:
    from memp_cli.model.memory import Memory
    from memp_cli.store.protocol import MemoryStore

OUTCOMES = ("success", "failure", "unknown")


@dataclass(frozen=True)
class Outcome:
    """One use of one memory."""

    memory: str
    outcome: str  # one of OUTCOMES
    trajectory: str | None = None
    source: str = "feedback"
    time: str = ""

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"time": self.time or now_iso(), "memory": self.memory, "outcome": self.outcome}
        if self.trajectory is not None:
            d["trajectory"] = self.trajectory
        d["source"] = self.source
        return orjson.dumps(d) + b"\n"


@dataclass
class Usage:
    """A memory's statistics, derived from the ledger."""

    uses: int = 0
    successes: int = 0
    failures: int = 0
    last_used: str = ""
    trajectories: list[str] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        self.uses += 1
        if o.outcome == "success":
            self.successes += 1
        elif o.outcome == "failure":
            self.failures += 1
        if o.time > self.last_used:
            self.last_used = o.time
        if o.trajectory is not None:
            self.trajectories.append(o.trajectory)

    @property
    def judged(self) -> int:
        """Uses whose outcome is known."""
        return self.successes + self.failures

    def success_rate(self, prior_successes: float = 1.0, prior_failures: float = 1.0) -> float:
        """Posterior mean of the success rate under a Beta prior (default: uniform), so an
        unused memory scores 0.5 rather than 0 or 1."""
        a = self.successes + prior_successes
        return a / (a + self.failures + prior_failures)

    def upper_bound(self, z: float = 1.96) -> float:
        """Upper end of the Wilson score interval of the success rate (1.0 with no judged use):
        a memory is judged failing only when even this bound is low, so one unlucky run does
        not condemn a new memory."""
        n = self.judged
        if n == 0:
            return 1.0
        p = self.successes / n
        centre = p + z * z / (2 * n)
        margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return min(1.0, (centre + margin) / (1 + z * z / n))

    def to_dict(self) -> dict[str, Any]:
        return {
            "uses": self.uses,
            "successes": self.successes,
            "failures": self.failures,
            "last_used": self.last_used,
        }


def add_usage(store: MemoryStore, memories: list[Memory]) -> None:
    """Add each memory's ledger statistics to ``memory.stats`` (for display and ranking): uses
    count as ``retrieved``. The file's own ``[stats]`` (0 unless set by hand or by an older
    memp) are the base."""
    usage = Ledger.of(store).usage(m.id for m in memories)
    for m in memories:
        _add(m, usage)


def with_usage(store: MemoryStore, memories: Iterable[Memory]) -> Iterator[Memory]:
    """:func:`add_usage` one memory at a time, the ledger read once: for a stream of memories
    that is not to be held whole (``memp list --json`` at a million memories)."""
    usage = Ledger.of(store).usage()
    for m in memories:
        _add(m, usage)
        yield m


def _add(m: Memory, usage: dict[str, Usage]) -> None:
    u = usage.get(m.id)
    if u is None:
        return
    m.stats.retrieved += u.uses
    m.stats.successes += u.successes
    m.stats.failures += u.failures
    m.stats.last_used = max(m.stats.last_used, u.last_used)


def outcome_of(success: bool | None) -> str:
    return "unknown" if success is None else ("success" if success else "failure")


def _parse(line: bytes) -> Outcome | None:
    try:
        d = orjson.loads(line)
        o = Outcome(
            memory=d["memory"],
            outcome=d["outcome"],
            trajectory=d.get("trajectory"),
            source=d.get("source", "feedback"),
            time=d.get("time", ""),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None  # a torn last line from a killed writer, or a line edited into nonsense
    if not isinstance(o.memory, str) or o.outcome not in OUTCOMES:
        return None
    return o


class Ledger:
    """Read and append ``outcomes.jsonl``. Appending needs the store lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, store: MemoryStore) -> Ledger:
        return cls(store.outcomes_path)

    def __iter__(self) -> Iterator[Outcome]:
        """Every counted outcome, in order: a repeated (memory, trajectory) pair only once."""
        seen: set[tuple[str, str]] = set()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in raw.splitlines():
            o = _parse(line)
            if o is None:
                continue
            if o.trajectory is not None:
                key = (o.memory, o.trajectory)
                if key in seen:
                    continue
                seen.add(key)
            yield o

    def usage(self, memory_ids: Iterable[str] | None = None) -> dict[str, Usage]:
        """Statistics per memory (only ``memory_ids`` when given)."""
        wanted = set(memory_ids) if memory_ids is not None else None
        out: dict[str, Usage] = {}
        for o in self:
            if wanted is not None and o.memory not in wanted:
                continue
            out.setdefault(o.memory, Usage()).add(o)
        return out

    def counted_pairs(self) -> set[tuple[str, str]]:
        return {(o.memory, o.trajectory) for o in self if o.trajectory is not None}

    def append(self, outcomes: list[Outcome]) -> int:
        """Append the outcomes not counted yet; returns how many were written. Caller holds
        the store lock. One write call, then fsync: a kill leaves whole lines and at most one
        torn last line, which readers skip."""
        counted = self.counted_pairs()
        fresh: list[Outcome] = []
        for o in outcomes:
            if o.outcome not in OUTCOMES:
                raise InputError(
                    f"unknown outcome {shown(o.outcome)}", hint=f"use one of {', '.join(OUTCOMES)}"
                )
            if o.trajectory is not None:
                if (o.memory, o.trajectory) in counted:
                    continue
                counted.add((o.memory, o.trajectory))
            fresh.append(o)
        if not fresh:
            return 0
        stamp = now_iso()
        data = b"".join(
            Outcome(o.memory, o.outcome, o.trajectory, o.source, o.time or stamp).to_json() for o in fresh
        )
        appendlog.append(self.path, data)
        return len(fresh)


@dataclass
class RecordReport:
    recorded: int = 0
    already: int = 0
    unknown_ids: list[str] = field(default_factory=list)


def record(store: MemoryStore, outcomes: list[Outcome]) -> RecordReport:
    """Count ``outcomes`` (under the store lock). An outcome for a memory the store does not
    have (neither in ``memories/`` nor in the trash) is not counted and is reported in
    ``unknown_ids`` (a warning, not an error)."""
    from memp_cli.update import trash

    report = RecordReport()
    with store.lock:
        known: list[Outcome] = []
        existing = set(store.memory_ids())
        for o in outcomes:
            if not valid_id(o.memory) or (o.memory not in existing and not trash.is_trashed(store, o.memory)):
                if o.memory not in report.unknown_ids:
                    report.unknown_ids.append(o.memory)
                continue
            known.append(o)
        report.recorded = Ledger.of(store).append(known)
        report.already = len(known) - report.recorded
        if report.recorded:
            store.journal(
                "outcomes",
                count=report.recorded,
                ids=sorted({o.memory for o in known}),
                sources=sorted({o.source for o in known}),
            )
    return report
