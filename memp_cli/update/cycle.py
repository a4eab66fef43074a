"""One cron-friendly learning cycle: ingest -> distill -> reflect -> prune.

Each step takes the store lock only while it writes (distill never holds it during LLM calls)
and is idempotent: a trajectory is stored once, built once per policy/model/prompt, a failure is
reflected on once per memory, and prune decides again from what is there. So a cycle killed at
any point is simply run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memp_cli.build.runner import DistillReport
    from memp_cli.ingest import ReadResult
    from memp_cli.store import IngestReport
    from memp_cli.store.protocol import MemoryStore
    from memp_cli.update.prune import Decision
    from memp_cli.update.reflect import ReflectReport


@dataclass
class CycleReport:
    ingested: list[IngestReport] = field(default_factory=list)
    distill: DistillReport | None = None
    reflect: ReflectReport | None = None
    pruned: list[Decision] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = self.distill
        return {
            "ingest": {
                "added": sum(r.added for r in self.ingested),
                "duplicates": sum(r.duplicates for r in self.ingested),
                "bad": sum(r.bad for r in self.ingested),
                "outcomes": sum(r.outcomes for r in self.ingested),
            },
            "distill": {
                "written": d.written if d else 0,
                "failed": d.failed if d else 0,
                "pending": d.pending if d else 0,
                "tokens_in": d.tokens_in if d else 0,
                "tokens_out": d.tokens_out if d else 0,
                "cost_usd": d.cost_usd if d else None,
            },
            "reflect": self.reflect.to_dict() if self.reflect else None,
            "prune": {"moved_to_trash": len(self.pruned), "ids": [p.id for p in self.pruned]},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def run_cycle(
    store: MemoryStore,
    inputs: Iterable[Iterable[ReadResult]] = (),
    *,
    model: str | None = None,
    prune: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> CycleReport:
    """Run one cycle with the store's settings. ``inputs``: parsed JSONL inputs to ingest first."""
    from memp_cli.build.runner import distill
    from memp_cli.index import sync
    from memp_cli.store import store_embedder
    from memp_cli.update.prune import prune_store
    from memp_cli.update.reflect import pending, reflect

    report = CycleReport()

    def step(name: str) -> float:
        if on_step:
            on_step(name)
        return time.perf_counter()

    t = step("ingest")
    for results in inputs:
        report.ingested.append(store.ingest(results))
    report.seconds["ingest"] = time.perf_counter() - t

    t = step("distill")
    report.distill = distill(store, None, model=model)
    if report.distill.error is not None:
        raise report.distill.error
    report.seconds["distill"] = time.perf_counter() - t

    t = step("reflect")
    adjustment = store.config.update.policy == "adjustment"
    report.reflect = reflect(
        store, pending(store, unattributed=adjustment), model=model or store.config.llm.model
    )
    report.seconds["reflect"] = time.perf_counter() - t

    if prune:
        t = step("prune")
        report.pruned = prune_store(store)
        report.seconds["prune"] = time.perf_counter() - t
    t = step("index")
    # What reflect and prune rewrote is read. Distill's scan of the memory files is taken over
    # only when they wrote nothing (the sync also checks the folder is as distill left it).
    wrote = bool(report.pruned) or (report.reflect is not None and report.reflect.written > 0)
    scanned = None if wrote else report.distill.scan
    sync(store, store_embedder(store), fresh=report.distill.fresh, scanned=scanned)
    report.seconds["index"] = time.perf_counter() - t
    store.journal("cycle", **{k: v for k, v in report.to_dict().items() if k != "seconds"})
    return report
