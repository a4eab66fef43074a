"""What the next writer does after a writer was killed holding the store lock.

A killed writer (``kill -9``, a crash, a power cut) may leave two loose ends, both tied up by the
next process that takes the lock (it knows one was killed: :class:`StoreLock` empties the lock
file on release, so a pid still named there died holding it):

- temporary files of interrupted atomic writes (a killed ingest's segment is as large as its
  input): removed. Only regular files with the names memp gives its own temp files, in the
  folders only lock holders write; a link is never followed nor removed.
- memory files written with no journal line: a batch of memory writes first names its ids in
  ``<store>/.pending`` and removes it after the journal line. The next writer records each memory
  file of a pending batch as a version of its history (unless it is one already) and journals
  those on disk as ``recovered``, saying so on stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.model.memory import now_iso, valid_id
from memp_cli.store.fsutil import refused_as_store_error

if TYPE_CHECKING:
    from memp_cli.store import Store

PENDING_NAME = ".pending"
JOURNAL_TAIL = 16 << 20  # bytes of the journal searched for the killed process's own line
# The names fsutil._new_temp and history.swap_in give temp files (.tmp-<12 hex>, .tmp-swap-..., .tmp-old-...).
_OWN_TEMP = re.compile(r"^\.tmp-(?:swap-|old-)?[0-9a-f]{12}$")


@contextlib.contextmanager
def pending(store: Store, event: str, ids: list[str]) -> Iterator[None]:
    """Name ``ids`` as being written by this process until the block ends (it ends with the
    journal line). Not fsynced: it is for a killed process, whose written data the kernel keeps."""
    path = store.root / PENDING_NAME
    rec = {"pid": os.getpid(), "command": store.command, "event": event, "started": now_iso(), "ids": ids}
    with refused_as_store_error(store.root):
        path.write_bytes(orjson.dumps(rec))
    yield
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def recover(store: Store, killed_pid: int, note: Callable[[str], None]) -> None:
    """Tie up what the writer ``killed_pid`` left (the caller holds the lock)."""
    removed = _remove_temp_files(store)
    if removed:
        note(
            f"a memp process (pid {killed_pid}) was killed while writing: removed {removed} temporary "
            f"file{'s' if removed != 1 else ''} it left in {store.root}"
        )
    path = store.root / PENDING_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    rec = _parse(raw)
    if rec is not None:
        found = _record_versions(store, rec)
        if found and not _journaled(store, rec):
            store.journal(
                "recovered",
                interrupted=rec["event"],
                ids=found,
                count=len(found),
                killed_pid=rec["pid"],
                killed_command=rec["command"],
            )
            n = len(found)
            note(
                f"memp {rec['command']} (pid {rec['pid']}) was killed after writing {n} "
                f"memor{'ies' if n != 1 else 'y'} it had not journaled: journaled "
                f'{"them" if n != 1 else "it"} now (event "recovered" in {store.journal_path.name})'
            )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The pending record, or None when it is torn (the kill came before any memory was written)."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("ids"), list):
        return None
    rec["ids"] = [i for i in rec["ids"] if isinstance(i, str) and valid_id(i)]
    for key in ("command", "event", "started"):
        rec[key] = str(rec.get(key, ""))
    rec["pid"] = rec.get("pid") if isinstance(rec.get("pid"), int) else None
    return rec


def _record_versions(store: Store, rec: dict[str, Any]) -> list[str]:
    """The pending memories the killed process wrote: each file on disk that its history lacks
    (recorded now, as the killed command's write) or that the killed command's own version
    records (written, then killed before the journal line)."""
    from memp_cli.update.history import History

    history = History(store)
    by = f"memp {rec['command']}"
    why = "written by a killed process; recorded by the next writer"
    found = []
    for mid in rec["ids"]:
        if not (store.memories_dir / f"{mid}.toml").is_file():
            continue
        ver = history.notice(mid, by=by, why=why)
        if ver is None:
            versions = history.versions(mid)
            last = versions[-1] if versions else None
            if last is None or last.by != by or last.time < rec["started"]:
                continue  # the file as it was before the killed command
        found.append(mid)
    return found


def _journaled(store: Store, rec: dict[str, Any]) -> bool:
    """Whether the killed process wrote its journal line (killed before removing .pending)."""
    try:
        with open(store.journal_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - JOURNAL_TAIL))
            tail = f.read()
    except FileNotFoundError:
        return False
    for line in reversed(tail.splitlines()):
        try:
            e = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(e, dict):
            continue
        if str(e.get("time", "")) < rec["started"]:
            return False
        # The same process's line for these memories: an earlier batch of the same command
        # (same pid and event, times equal to the second) names other memories.
        ids = e.get("ids")
        if not isinstance(ids, list) or e.get("pid") != rec["pid"] or e.get("event") != rec["event"]:
            continue
        if set(rec["ids"]) & {i for i in ids if isinstance(i, str)}:
            return True
    return False


def _remove_temp_files(store: Store) -> int:
    from memp_cli.store.ledger import remove_dead_temps

    n = remove_dead_temps(store.cache_dir)  # a killed ledger save's (cache/.tmp-ledger-<pid>-...)
    dirs = [store.root, store.memories_dir, store.trajectories_dir, store.index_dir, store.trash_dir]
    dirs.append(store.cache_dir)  # a ledger save's temp file from before they were named by pid
    dirs += [store.history_dir, *_subdirs(store.history_dir / "objects")]
    for d in dirs:
        if os.path.islink(d):
            continue  # never followed: a link in the store is not memp's to clean
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if _OWN_TEMP.match(e.name) and e.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
                    n += 1
    return n


def _subdirs(d: Path) -> list[Path]:
    try:
        with os.scandir(d) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
