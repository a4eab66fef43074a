"""``memp stats``: what the store holds."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from memp_cli import index as index_mod
from memp_cli.errors import MemoryFileError, StoreError
from memp_cli.store import Store


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
    outcomes: Counter[str] = Counter()
    n_traj = 0
    for t in store.iter_trajectories():
        n_traj += 1
        outcomes[{True: "success", False: "failure", None: "unknown"}[t.success]] += 1
    kinds: Counter[str] = Counter()
    broken = 0
    for m in store.iter_memories():
        if isinstance(m, MemoryFileError):
            broken += 1
        else:
            kinds[m.kind] += 1
    index_problem = None
    try:
        state = index_mod.read_state(store)
        fresh = index_mod.is_fresh(store, state)
    except StoreError as e:  # stats describes the store; a damaged or old index is one fact among others
        state, fresh = None, False
        index_problem = str(e).splitlines()[0]
    return {
        "store": str(store.root),
        "trajectories": n_traj,
        "outcomes": dict(outcomes),
        "memories": sum(kinds.values()),
        "kinds": dict(kinds),
        "broken_memory_files": broken,
        "embedder": store.config.embedder.name,
        "index": {
            "indexed": len(state.ids) if state else 0,
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
