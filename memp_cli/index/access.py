"""Opening the index for reading: :func:`open_index` decides, in one place, whether the index on
disk can answer as it is, needs a sync (memory files changed, or a format this memp upgrades) or
a rebuild (damaged), and what to do when the process cannot write (another process holds the
writers' lock, or the store is read-only). The CLI, an MCP server and eval all call it.

Readers never wait silently behind writers: every file of the index is replaced atomically and
``state.json`` names one complete generation, so a reader needs no lock. Only a reader that
must bring a stale index up to date tries the writers' lock, without waiting; when another
process holds it, the reader answers from the last complete generation and says so.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memp_cli.errors import LockedError, StoreError
from memp_cli.index.reader import Index, load
from memp_cli.index.state import (
    INDEX_VERSION,
    KW_VERSION,
    IndexVersionError,
    check_embedder,
    is_fresh,
    read_state,
)
from memp_cli.index.writer import Progress, SyncReport, build_in_memory, sync

if TYPE_CHECKING:
    from memp_cli.backends.embedders import Embedder
    from memp_cli.store.protocol import MemoryStore

# What makes a store unwritable for this process (no permission, read-only file system).
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


@dataclass
class Opened:
    """What :func:`open_index` found and did."""

    index: Index | None  # None: the store has no memories
    report: SyncReport | None = None  # the sync (or in-memory build) it ran, if any
    notes: list[str] = field(default_factory=list)  # for the user: why it rebuilt, or answers stale
    stale: bool = False  # the index answers, but is older than some memory files


def open_index(
    store: MemoryStore,
    embedder: Embedder,
    *,
    keywords: bool = False,
    exact: bool = False,
    progress: Progress | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Opened:
    """The index of ``store``, up to date with its memory files when this process can make it so.

    - fresh: loaded as it is (no lock, nothing written);
    - memory files changed, keyword files missing (``keywords``), an older format this memp
      upgrades, or damaged files: synced under the writers' lock, which rebuilds what is damaged
      (``Opened.report``; why, in ``notes``);
    - stale, and another process holds the writers' lock: the last complete generation answers
      (``stale``), and a note says the index is being updated; when there is no usable
      generation, it waits for the lock and says so first;
    - stale on a store this process cannot write: the last generation answers (``stale``), or,
      when there is none, the index is built in memory without writing anything.

    ``exact``: map the vectors file instead of loading the graph (a few queries). ``progress``:
    ``(done, total)`` of texts embedded. ``on_note``: called with each note as it happens (a note
    about waiting comes before the wait). An index from a newer memp raises
    :class:`IndexVersionError`; another embedder than the index's raises ModelError.
    """
    opened = Opened(None)

    def note(msg: str) -> None:
        opened.notes.append(msg)
        if on_note is not None:
            on_note(msg)

    why: str | None = None  # why the index on disk cannot answer as it is
    last: Index | None = None  # the last complete generation, when it can answer (stale)
    try:
        state = read_state(store)
    except IndexVersionError:
        raise
    except StoreError as e:
        state, why = None, e.message
    if state is not None:
        check_embedder(store, state, embedder.name)
        # The name first: reading .dim may cost a probe call (litellm without a known dim).
        check_embedder(store, state, embedder.name, embedder.dim)
    if why is None:
        stale = not is_fresh(store, state)
        if state is None:
            if not stale:
                return opened  # no index and no memories
            why = ""  # no index yet: nothing to say about it
        else:
            try:
                last = load(store, keywords=keywords, state=state, exact=exact)
            except IndexVersionError:
                raise
            except StoreError as e:
                why = e.message
            else:
                if last is None:
                    why = ""  # removed since: as if there never was one
                elif last.problems:
                    why = last.problems[0]  # worked around in memory: it answers; a sync repairs it
                elif (
                    not stale
                    and state.version == INDEX_VERSION
                    and not (keywords and state.kw_version != KW_VERSION)
                ):
                    opened.index = last
                    return opened
                if keywords and last is not None and not last.has_keywords:
                    last = None  # cannot answer an avefact query

    # The index needs writing: try the writers' lock, without waiting.
    held = _try_lock(store)
    if isinstance(held, LockedError):
        if last is not None:
            note(f"{held.message}: it is updating the index; answering from the index as last written")
            opened.index, opened.stale = last, True
            return opened
        note(f"{held.message}; waiting for it to finish writing the index")
        store.lock.acquire()
        held = None
    if isinstance(held, OSError):
        return _read_only(store, embedder, opened, last, held, note, progress)
    try:
        index, report = sync(store, embedder, progress=progress)
    except (OSError, StoreError) as e:
        refused = _refused(e)
        if refused is None:
            raise
        return _read_only(store, embedder, opened, last, refused, note, progress)
    finally:
        store.lock.release()
    if report.rebuild_reason:
        note(f"{report.rebuild_reason}; rebuilt the index from the memories of {store.root}")
    elif report.repaired:
        note(f"{report.repaired[0]}; repaired the index from the memories of {store.root}")
    elif why:  # damaged files a sync rewrote without calling it a rebuild
        note(f"{why}; rebuilt the damaged index files from the memories of {store.root}")
    opened.index, opened.report = index, report
    return opened


def _try_lock(store: MemoryStore) -> LockedError | OSError | None:
    """Take the writers' lock without waiting: None when taken (release it), the LockedError when
    another process holds it, the OSError when this process cannot create or open the lock file
    (a read-only store)."""
    lock = store.lock
    saved = lock.wait
    lock.wait = False
    try:
        lock.acquire()
    except LockedError as e:
        return e
    except (OSError, StoreError) as e:
        refused = _refused(e)
        if refused is None:
            raise
        return refused
    finally:
        lock.wait = saved
    return None


def _refused(err: BaseException) -> OSError | None:
    """The refused write behind ``err`` (an OSError, or the StoreError the store's writers turn
    one into), or None when ``err`` is something else."""
    cause = err if isinstance(err, OSError) else err.__cause__
    if isinstance(cause, OSError) and cause.errno in _READ_ONLY:
        return cause
    return None


def _read_only(
    store: MemoryStore,
    embedder: Embedder,
    opened: Opened,
    last: Index | None,
    err: OSError,
    note: Callable[[str], None],
    progress: Progress | None,
) -> Opened:
    """Answer without writing: from the last generation, else from an index built in memory."""
    cannot = f"cannot write the store {store.root} ({err.strerror or err})"
    if last is not None:
        note(f"{cannot}: answering from the index as last written, older than some memory files")
        opened.index, opened.stale = last, True
        return opened
    note(f"{cannot}: building the index in memory for this command (not saved)")
    index, report = build_in_memory(store, embedder, progress=progress)
    opened.index = index if index.state.count else None
    opened.report = report
    return opened
