"""How distill writes what it built: in batches, each under a brief hold of the store lock,
re-checking each memory file (written meanwhile, edited by hand) first. What it wrote is kept
for the index sync that follows (:data:`memp_cli.index.entry.Fresh`), which then need not read
those files again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memp_cli.build.policies import built_with, needs_rebuild
from memp_cli.errors import MemoryFileError
from memp_cli.index.entry import Scan, entry
from memp_cli.model.memory import Memory, load_memory_file
from memp_cli.store.protocol import MemoryStore

if TYPE_CHECKING:
    from memp_cli.build.runner import DistillReport

ProgressFn = Callable[[int, int], None]


class Writer:
    """Writes finished memories in batches, each under a brief hold of the store lock."""

    def __init__(
        self,
        store: MemoryStore,
        policy: str,
        model: str,
        prompt_version: str,
        report: DistillReport,
        progress: ProgressFn | None,
        total: int,
    ) -> None:
        self.store, self.policy, self.model, self.prompt_version = store, policy, model, prompt_version
        self.report, self.progress, self.total = report, progress, total
        self.done = 0
        self.replace_edits = False

    def tick(self, n: int = 1) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, self.total)

    def write(self, batch: list[Memory]) -> None:
        if not batch:
            return
        store, report = self.store, self.report
        lock = store.lock
        wait = lock.wait
        lock.wait = True  # results already paid for: wait out a brief writer, never drop them
        try:
            with lock:
                t0 = time.perf_counter()
                out: list[Memory] = []
                from memp_cli.update.history import History

                history = History(store)
                for mem in batch:
                    path = store.memory_path(mem.id)
                    if path.exists():  # written meanwhile, or an older version
                        try:
                            if not needs_rebuild(
                                built_with(path), self.policy, self.model, self.prompt_version
                            ):
                                report.skipped += 1
                                continue
                            if not self.replace_edits and history.hand_edited(mem.id):
                                report.kept_edits += 1  # edited by hand while the model worked
                                continue
                            old = load_memory_file(path)
                        except MemoryFileError as e:
                            report.skipped += 1
                            report.warnings.append(f"{str(e).splitlines()[0]} (left as it is)")
                            continue
                        mem.version = old.version + 1
                        mem.stats = old.stats
                        mem.provenance.created = old.provenance.created
                        report.versioned += 1
                    out.append(mem)
                fields: dict[str, Any] = {"policy": self.policy}
                if self.model:
                    fields.update(model=self.model, prompt_version=self.prompt_version)
                scan = report.scan
                if scan is not None and store.memories_mtime_ns() != scan.dir_mtime_ns:
                    scan = report.scan = None  # changed by someone else since: the sync stats
                saved = store.save_memories(out, event="distill.write", **fields)
                if scan is not None:  # right after this run's own write, under the lock
                    report.scan = Scan(store.memories_mtime_ns(), scan.stamps)
                report.lock_seconds += time.perf_counter() - t0
        finally:
            lock.wait = wait
        report.fresh.update((mid, (entry(m), stamp)) for mid, (m, stamp) in saved.items())
        report.written += len(out)
        report.ids.extend(m.id for m in out)
        self.tick(len(batch))
