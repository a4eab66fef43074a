"""Forgetting on purpose: the trash and its tombstones.

``memp forget ID`` (and prune) moves ``memories/<id>.toml`` to ``trash/<id>.toml`` and writes
``trash/<id>.json`` (when, by which command, why, and the rule and figures of a prune). A
memory in the trash is a tombstone: distill never rebuilds it, retrieval never returns it (it
is not in ``memories/``, so the next index sync removes it). ``memp restore ID`` moves it back
whole. A memory file deleted by hand is noticed (its history has content, the file is gone): it
is put in the trash from its last version, so it is a tombstone too and can be restored.
Emptying the trash is explicit (``memp trash empty``), and removes only what is in the trash.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.errors import NotFoundError, StoreError
from memp_cli.model.memory import now_iso, read_memory_bytes, valid_id
from memp_cli.store.fsutil import atomic_write, fsync_dir, make_dirs, rename_own, unlink_own
from memp_cli.update.history import History

if TYPE_CHECKING:
    from memp_cli.store.protocol import MemoryStore


@dataclass
class TrashEntry:
    id: str
    time: str = ""
    by: str = ""
    why: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "by": self.by, "why": self.why, **self.details}


def _write_entry(store: MemoryStore, entry: TrashEntry) -> None:
    """``trash/<id>.json``: when, by what and why a memory went to the trash."""
    atomic_write(
        store.trash_dir / f"{entry.id}.json", orjson.dumps(entry.to_dict(), option=orjson.OPT_INDENT_2)
    )


def is_trashed(store: MemoryStore, memory_id: str) -> bool:
    return (store.trash_dir / f"{memory_id}.toml").exists()


def trashed_ids(store: MemoryStore) -> set[str]:
    try:
        names = os.listdir(store.trash_dir)
    except FileNotFoundError:
        return set()
    return {n[:-5] for n in names if n.endswith(".toml") and valid_id(n[:-5])}


def entries(store: MemoryStore) -> list[TrashEntry]:
    out: list[TrashEntry] = []
    for mid in sorted(trashed_ids(store)):
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            loaded = orjson.loads((store.trash_dir / f"{mid}.json").read_bytes())
            if isinstance(loaded, dict):
                meta = loaded
        details = {k: v for k, v in meta.items() if k not in ("id", "time", "by", "why")}
        out.append(
            TrashEntry(
                mid, str(meta.get("time", "")), str(meta.get("by", "")), str(meta.get("why", "")), details
            )
        )
    return out


def check_forgettable(store: MemoryStore, memory_ids: list[str]) -> None:
    """Raise NotFoundError unless every id is a memory in ``memories/`` (checked before any
    is moved, so a typo in a list changes nothing)."""
    for memory_id in memory_ids:
        if not store.memory_path(memory_id).exists():
            if is_trashed(store, memory_id):
                raise NotFoundError(
                    f"{memory_id} is already in the trash", hint=f"`memp restore {memory_id}`"
                )
            raise NotFoundError(f"no memory {memory_id!r} in {store.root}", hint="see `memp list`")


def forget(
    store: MemoryStore, memory_id: str, *, by: str, why: str, details: dict[str, Any] | None = None
) -> TrashEntry:
    """Move one memory to the trash (caller holds the store lock). Its last content is kept in
    its history too, so even an emptied trash leaves ``memp history``/``revert`` able to bring
    it back."""
    check_forgettable(store, [memory_id])
    path = store.memory_path(memory_id)
    history = History(store)
    history.notice(memory_id)  # a hand edit since the last version is kept as a version
    entry = TrashEntry(memory_id, now_iso(), by, why, dict(details or {}))
    # Metadata first, then the move: a kill between them leaves a memory in place with a
    # stray .json, which the next forget overwrites and restore ignores.
    _write_entry(store, entry)
    make_dirs(store.trash_dir)
    rename_own(path, store.trash_dir / f"{memory_id}.toml")
    fsync_dir(store.trash_dir)
    fsync_dir(path.parent)
    history.record_deleted(memory_id, by=by, why=why)
    return entry


def check_restorable(store: MemoryStore, memory_ids: list[str]) -> None:
    """Raise unless every id is in the trash and free to come back (checked before any moves)."""
    for memory_id in memory_ids:
        if not valid_id(memory_id) or not is_trashed(store, memory_id):
            raise NotFoundError(f"{memory_id!r} is not in the trash", hint="`memp trash list` shows what is")
        dst = store.memory_path(memory_id)
        if dst.exists():
            raise StoreError(
                f"{dst} exists: a memory {memory_id} was made again since it was forgotten",
                hint=f"move it aside (or `memp forget {memory_id}` it) first, then restore",
            )


def restore(store: MemoryStore, memory_id: str, *, by: str = "memp restore") -> None:
    """Bring a memory back from the trash (caller holds the store lock)."""
    check_restorable(store, [memory_id])
    src = store.trash_dir / f"{memory_id}.toml"
    data = read_memory_bytes(src)  # a link in the trash is refused, never read through
    History(store).write(memory_id, data, by=by, why="restored from the trash")
    unlink_own(src)
    with contextlib.suppress(FileNotFoundError):
        unlink_own(store.trash_dir / f"{memory_id}.json")
    fsync_dir(store.trash_dir)


def notice_hand_deletes(store: MemoryStore, candidates: set[str]) -> list[str]:
    """Of ``candidates`` (ids whose file is missing), those deleted by hand: put each in the
    trash from its last version, as a tombstone. Returns their ids (caller holds the lock)."""
    history = History(store)
    found: list[str] = []
    for mid in sorted(candidates):
        if is_trashed(store, mid) or store.memory_path(mid).exists():
            continue
        versions = history.versions(mid)
        if not versions:
            continue
        last_content = next((v for v in reversed(versions) if not v.deleted), None)
        if last_content is None:
            continue
        if not versions[-1].deleted:
            history.record_deleted(mid, by="hand edit", why="deleted by hand")
            entry = TrashEntry(mid, now_iso(), "hand edit", "the file was deleted by hand")
        _write_entry(store, entry)
        atomic_write(store.trash_dir / f"{mid}.toml", history.content(mid, last_content.v))
        found.append(mid)
    return found


def empty(store: MemoryStore, ids: list[str] | None = None) -> list[str]:
    """Remove memories from the trash for good (all, or ``ids``). Their history stays."""
    removed: list[str] = []
    targets = sorted(trashed_ids(store)) if ids is None else ids
    for mid in targets:
        if not is_trashed(store, mid):
            raise NotFoundError(f"{mid!r} is not in the trash", hint="`memp trash list` shows what is")
    for mid in targets:
        for suffix in (".toml", ".json"):
            with contextlib.suppress(FileNotFoundError):
                unlink_own(store.trash_dir / f"{mid}{suffix}")
        removed.append(mid)
    if removed:
        fsync_dir(store.trash_dir)
    return removed
