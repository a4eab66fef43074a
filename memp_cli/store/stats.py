"""``memp stats``: what the store holds."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from memp_cli import index as index_mod
from memp_cli.errors import MemoryFileError, StoreError
from memp_cli.model.memory import valid_id
from memp_cli.store import Store
from memp_cli.store.ledger import outcome_counts


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total


def store_stats(store: Store) -> dict[str, Any]:
    outcomes = outcome_counts(store)  # from the trajectory ledger; new segments parsed
    index_problem = None
    try:
        state = index_mod.read_state(store)
        fresh = index_mod.is_fresh(store, state)
    except StoreError as e:  # stats describes the store; a damaged or old index is one fact among others
        state, fresh = None, False
        index_problem = str(e).splitlines()[0]
    kinds, broken = memory_kinds(store, state if fresh else None)
    return {
        "store": str(store.root),
        "trajectories": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "memories": sum(kinds.values()),
        "kinds": dict(kinds),
        "broken_memory_files": broken,
        "embedder": store.config.embedder.name,
        "index": {
            "indexed": state.count if state else 0,
            "fresh": fresh,
            "problem": index_problem,
            "embedder": state.embedder if state else None,
            "dim": state.dim if state else None,
        },
        "bytes": {
            "memories": disk_usage(store.memories_dir),
            "trajectories": disk_usage(store.trajectories_dir),
            "index": disk_usage(store.index_dir),
        },
        "segments": len(store.segments()),
    }


def memory_kinds(store: Store, state: index_mod.State | None) -> tuple[Counter[str], int]:
    """Memories by kind (in the order of their sorted ids) and the number of broken memory
    files: from a fresh index's ``state`` when it names every memory file, else by reading
    each file."""
    ids = store.memory_ids()
    if state is not None:
        rows = sorted((mid, kind) for mid, kind in zip(state.ids, state.kinds, strict=True) if valid_id(mid))
        broken = sum(map(valid_id, state.broken))
        if len(rows) + broken == len(ids):  # else a file the index does not count (a dangling link)
            return Counter(kind for _, kind in rows), broken
    kinds: Counter[str] = Counter()
    broken = 0
    for m in store.iter_memories():
        if isinstance(m, MemoryFileError):
            broken += 1
        else:
            kinds[m.kind] += 1
    return kinds, broken
