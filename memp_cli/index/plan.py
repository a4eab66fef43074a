"""Which memory files a sync reads again (:func:`plan_sync`): a file whose stat is the one the
last generation recorded keeps its old position's entry, found by array search over the old
state's sorted ids; the others (new, changed, or of unknown build) are read, or taken from what
a writer handed over (:data:`~memp_cli.index.entry.Fresh`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from memp_cli.errors import MemoryFileError
from memp_cli.index.columns import ascending, id_bytes
from memp_cli.index.entry import Fresh, Stamps, entry
from memp_cli.index.filesync import Old, Sources
from memp_cli.index.records import khash_int
from memp_cli.index.state import State

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.index.writer import SyncReport
    from memp_cli.store.protocol import MemoryStore


def plan_sync(
    store: MemoryStore,
    files: dict[str, tuple[int, int]],
    old: State | None,
    old_side: Old | None,
    state: State,
    sources: Sources,
    report: SyncReport,
    fresh: Fresh | None = None,
) -> tuple[list[int], list[int], Stamps]:
    """Fill ``state`` and ``sources`` with the memory files (in id order): unchanged ones (same
    stat) by their old position, the others read, or taken from ``fresh`` while their stat is
    the one recorded there (only these are visited one by one: the unchanged ones are found by
    array search and copied column by column). Returns the state positions to embed (their
    entries are in ``sources``), the labels to remove from the graph, and the files' stamps.
    Only :class:`Entry` texts are kept of a memory read, packed (:class:`Sources`), never the
    memory."""
    import numpy as np

    fresh = fresh or {}
    to_embed: list[int] = []
    removed_labels: list[int] = []
    ids = sorted(files)
    stamps = Stamps.of(map(files.__getitem__, ids), len(ids))
    # Each memory's old position (-1: new), found by array search in the old ids (sorted).
    none = {"ids": np.zeros(0, dtype="S1"), "labels": np.zeros(0, dtype=np.int64)}
    arrays = old.column_arrays() if old is not None else none
    old_ids, old_labels = arrays["ids"], arrays["labels"]
    prev = _old_positions(old_ids, ids)
    # (An index from before format 4 has no procedure texts: its memories are re-read.)
    if old is not None and old_side is not None and old.version >= 4:
        had = np.flatnonzero(prev >= 0)
        redo = np.ones(len(ids), dtype=bool)  # new, or another stat
        if len(had):
            was = prev[had]
            redo[had] = (stamps.mtimes[had] != np.asarray(old_side.mtimes, dtype=np.int64)[was]) | (
                stamps.sizes[had] != np.asarray(old_side.sizes, dtype=np.int64)[was]
            )
        if "" in old_side.built:  # what it was built with is unknown: read again
            unknown = np.zeros(len(old_ids), dtype=bool)
            unknown[[i for i, b in enumerate(old_side.built) if not b]] = True
            redo[had[unknown[prev[had]]]] = True
        at = np.flatnonzero(redo).tolist()
    else:
        at = list(range(len(ids)))
    # Every memory as unchanged (its old position), then those to read again in their place.
    src: list[int] = prev.tolist()
    take = np.where(prev >= 0, prev, 0)
    if old is not None and len(old_ids):
        labels = old_labels[take].tolist()
        # (one string per kind and family name, not one per memory)
        kinds, families = (
            list(map(old.names(n).__getitem__, arrays[n][take].tolist())) for n in ("kinds", "families")
        )
    else:
        labels, kinds, families = [0] * len(ids), [""] * len(ids), [""] * len(ids)
    sources.extend(prev)
    broken: list[int] = []
    for p in at:
        mid, stamp, i = ids[p], stamps[p], (src[p] if src[p] >= 0 else None)
        handed = fresh.get(mid)
        try:
            ent = handed[0] if handed is not None and handed[1] == stamp else entry(store.read_memory(mid))
        except MemoryFileError as e:
            report.broken.append(e)
            state.broken[mid] = list(stamp)
            if i is not None and old is not None:
                removed_labels.append(int(old_labels[i]))
            broken.append(p)
            continue
        khash = khash_int(ent.key_hash)
        if i is not None and old is not None and old_side is not None and old_side.khash[i] == khash:
            label = int(old_labels[i])  # content edit that leaves the keys alone: no re-embed
            if (old_side.mtimes[i], old_side.sizes[i]) != stamp:
                report.updated += 1
                report.updated_ids.append(mid)
        else:
            if i is not None and old is not None:
                label = int(old_labels[i])
                report.updated += 1
                report.updated_ids.append(mid)
            else:
                label = state.next_label
                state.next_label += 1
                report.added += 1
            to_embed.append(p - len(broken))
        # (kinds and families repeat: one string each, not one per memory read)
        labels[p], kinds[p], families[p] = label, sys.intern(ent.kind), sys.intern(ent.family)
        sources[p] = ent
    if broken:  # broken files are left out
        gone_at = set(broken)
        keep = [p for p in range(len(ids)) if p not in gone_at]
        ids, kinds, families = [ids[p] for p in keep], [kinds[p] for p in keep], [families[p] for p in keep]
        labels = [labels[p] for p in keep]
        sources.keep(keep)
        stamps = stamps.keep(keep)
    state.ids, state.labels, state.kinds, state.families = ids, labels, kinds, families
    if old is not None:
        gone = np.ones(len(old_ids), dtype=bool)
        gone[prev[prev >= 0]] = False
        removed_labels.extend(old_labels[gone].tolist())
        report.removed = int(gone.sum())
    return to_embed, removed_labels, stamps


def _old_positions(old_ids: np.ndarray, ids: list[str]) -> np.ndarray:
    """The position of each of ``ids`` in ``old_ids`` (sorted id bytes), -1 where it is not."""
    import numpy as np

    prev = np.full(len(ids), -1, dtype=np.int64)
    if not len(old_ids) or not ids:
        return prev
    new = id_bytes(ids)
    if not ascending(old_ids):  # not as a sync writes them
        where = {mid: i for i, mid in enumerate(old_ids.tolist())}
        return np.fromiter((where.get(m, -1) for m in new.tolist()), dtype=np.int64, count=len(ids))
    at = np.searchsorted(old_ids, new)
    inside = at < len(old_ids)
    hit = np.zeros(len(ids), dtype=bool)
    hit[inside] = old_ids[at[inside]] == new[inside]
    prev[hit] = at[hit]
    return prev
