"""The trajectory ledger, ``cache/trajectories.json``: what each segment holds (its runs' ids and
outcomes, in order), so that what needs no more than those (distill's plan, ``memp stats``)
does not parse a segment it has seen.

A segment is written once by ingest and never changed in place (scrub replaces it by an atomic
rename, a new file). An entry names a segment and the ``(size, mtime_ns, inode)`` it had when it
was read, and is used only while the segment still has exactly that stat (as git, make and rsync
trust a file's stat: a segment rewritten in place with its size and nanosecond mtime put back
by hand would not be noticed; the ctime is left out, since hard-linking a store's files, as
``cp -al`` backups do, changes it and would make every entry stale).

Derived data, never needed: a missing, damaged or foreign ledger (a link, not a regular file,
too large, another format) is ignored and rebuilt from the segments; a write that fails is
skipped. It holds no trajectory content (ids are content hashes, outcomes one letter), so a
secret that reached a segment never reaches it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson

from memp_cli.errors import StoreError
from memp_cli.model.trajectory import Trajectory
from memp_cli.store.fsutil import atomic_write, check_no_links, unlink_own

if TYPE_CHECKING:
    from memp_cli.store import Store

LEDGER_NAME = "trajectories.json"
LEDGER_VERSION = 1
MAX_LEDGER_BYTES = 1 << 30  # ~40 bytes a run: far more than any store holds
TEMP_KIND = "ledger-"  # a save's temp file: .tmp-ledger-<pid>-<12 hex> (remove_dead_temps)
_TEMP = re.compile(r"^\.tmp-ledger-([0-9]{1,10})-[0-9a-f]{12}$")
SEGMENT_ID = re.compile(rb'^\{"id":"(t[0-9a-f]+)"')
_CODES = {"s": True, "f": False, "u": None}
OUTCOME_NAMES = {True: "success", False: "failure", None: "unknown"}

SkipFn = Callable[[str], bool]


class Settles(Protocol):
    policy: str  # the policy the plan builds with
    others: list[str]  # the other policies (a failed run's memory may be under one of them)

    def hashes(self, ids: list[str], policy: str) -> str:
        """The runs' memory ids under ``policy``, without their "m", joined (12 hex each)."""
        ...

    def segment(self, ids: list[str], codes: str, kept: Kept | None = None) -> list[int] | None:
        """None: parse the segment. Else the positions of the runs to yield as outlines (the
        caller needs nothing of the others); no other effect on a segment it returns None for.
        ``kept(policy)``: :meth:`hashes` of ``ids`` under a policy, as the ledger keeps them."""
        ...


Kept = Callable[[str], str]  # a policy -> a segment's memory ids under it, as the ledger keeps them


Stat = tuple[int, int, int]


def _code(success: Any) -> str | None:
    """The ledger's letter for an outcome; None for a value that is none of True, False, None
    (such a segment is not entered: its runs are parsed every time, as they were)."""
    return "s" if success is True else "f" if success is False else "u" if success is None else None


def _stat(st: os.stat_result) -> Stat:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


MID_HEX = 12  # a memory id is "m" and 12 hex digits (memp_cli.build.policies.memory_id)
_HEX = re.compile(r"[0-9a-f]*")


@dataclass
class Entry:
    stat: Stat
    ids: list[str]
    codes: str  # one of "sfu" per run
    # policy -> the runs' memory ids under it (Settles.hashes), so a settled segment is not
    # hashed again on every plan (about 1.3M sha256 at 1M memories, and two more per failed run:
    # its memory under another policy). Derived from ``ids`` only.
    mids: dict[str, str] = field(default_factory=dict)


@dataclass
class _Rows:
    """The runs of a segment as it is read; ``ok`` False once one cannot be entered."""

    ids: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, t: Trajectory) -> None:
        code = _code(t.success)
        if code is None or not isinstance(t.id, str):
            self.ok = False
        else:
            self.ids.append(t.id)
            self.codes.append(code)

    def add_line(self, line: bytes) -> None:
        """A run the reader passes over unparsed: parsed here (as it would be) to enter it."""
        try:
            self.add(Trajectory.from_stored(orjson.loads(line)))
        except Exception:  # any run that does not parse keeps its segment out of the ledger
            self.ok = False


def read_segment(
    seg: Path, f: IO[bytes], skip: SkipFn | None = None, rows: _Rows | None = None
) -> Iterator[Trajectory]:
    """The runs of one open segment, parsed (``skip(id)`` true: passed over unparsed); a damaged
    line raises StoreError naming it. ``rows`` gets every run's id and outcome."""
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        if skip is not None and (m := SEGMENT_ID.match(line)) and skip(m.group(1).decode()):
            if rows is not None and rows.ok:
                rows.add_line(line)
            continue
        try:
            t = Trajectory.from_stored(orjson.loads(line))
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise StoreError(
                f"{seg}:{lineno}: damaged trajectory record ({e})", hint="run `memp doctor`"
            ) from None
        if rows is not None:
            rows.add(t)
        yield t


class Ledger:
    """The ledger of one store, read once; :meth:`save` writes it back if it changed."""

    def __init__(self, store: Store) -> None:
        self.path = store.cache_dir / LEDGER_NAME
        self.entries, self.changed = _load(self.path)
        self.seen: set[str] = set()

    def entry(self, seg: Path) -> Entry | None:
        """The segment's entry while its stat is the one entered, else None."""
        self.seen.add(seg.name)
        e = self.entries.get(seg.name)
        if e is None:
            return None
        try:
            if _stat(os.stat(seg)) == e.stat:
                return e
        except OSError:
            pass
        del self.entries[seg.name]
        self.changed = True
        return None

    def read(self, seg: Path, skip: SkipFn | None = None, *, enter: bool = True) -> Iterator[Trajectory]:
        """The segment's runs, parsed as :meth:`Store.iter_trajectories` does; once all are
        read (and the segment did not change meanwhile), entered (``enter`` False: not, and
        the runs ``skip`` passes over stay unparsed)."""
        if not enter:
            with open(seg, "rb") as f:
                yield from read_segment(seg, f, skip)
            return
        rows = _Rows()
        with open(seg, "rb") as f:
            before = _stat(os.fstat(f.fileno()))
            yield from read_segment(seg, f, skip, rows)
            if rows.ok and _stat(os.fstat(f.fileno())) == before:
                self.entries[seg.name] = Entry(before, rows.ids, "".join(rows.codes))
                self.changed = True

    def save(self) -> None:
        """Write the entries of the segments seen (best effort: the ledger is never needed)."""
        for name in set(self.entries) - self.seen:
            del self.entries[name]
            self.changed = True
        if not self.changed:
            return
        data = {
            "ledger_version": LEDGER_VERSION,
            "segments": {
                n: [list(e.stat), e.ids, e.codes, *([e.mids] if e.mids else [])]
                for n, e in sorted(self.entries.items())
            },
        }
        with contextlib.suppress(OSError, StoreError):
            remove_dead_temps(self.path.parent)
            atomic_write(self.path, orjson.dumps(data), durable=False, kind=f"{TEMP_KIND}{os.getpid()}-")
            self.changed = False


def remove_dead_temps(cache_dir: Path) -> int:
    """Remove the temp files of ledger writers that are gone (killed during :meth:`Ledger.save`,
    which may run without the store lock: ``memp stats``); a live writer's is left alone. The
    temp files of a ledger written before they were named by pid (``.tmp-<12 hex>``: nothing
    else writes a temp file in ``cache/``) are left to the recovery of a killed writer (which
    holds the lock, so no save of that version runs meanwhile) and ``memp doctor``. Returns
    how many were removed."""
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return 0
    n = 0
    for name in names:
        m = _TEMP.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError, StoreError):
            unlink_own(cache_dir / name)
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


def _load(path: Path) -> tuple[dict[str, Entry], bool]:
    """The entries, and whether the file must be written again (damaged: True; none: False)."""
    try:
        check_no_links(path, last=False)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return {}, False
    except OSError:
        return {}, True  # a link (ELOOP), no permission...: ignored; a save replaces it
    except StoreError:
        return {}, False  # a link among its directories: never read, never written
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_LEDGER_BYTES:
            return {}, True
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read()
    except OSError:
        return {}, True
    finally:
        os.close(fd)
    try:
        d = orjson.loads(raw)
        if d["ledger_version"] != LEDGER_VERSION:
            return {}, True
        entries: dict[str, Entry] = {}
        for name, (st_list, ids, codes, *more) in d["segments"].items():
            mids = more[0] if len(more) == 1 else {} if not more else None
            if not (
                isinstance(mids, dict)
                and all(
                    isinstance(m, str) and len(m) == MID_HEX * len(ids) and _HEX.fullmatch(m)
                    for m in mids.values()
                )
                and isinstance(st_list, list)
                and len(st_list) == 3
                and all(type(x) is int for x in st_list)
                and isinstance(ids, list)
                and isinstance(codes, str)
                and len(ids) == len(codes)
                and not codes.strip("sfu")
                and all(type(x) is str for x in ids)
            ):
                return {}, True
            entries[name] = Entry((st_list[0], st_list[1], st_list[2]), ids, codes, mids)
        return entries, False
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return {}, True


def runs(store: Store, skip: SkipFn | None, settled: Settles, *, record: bool = True) -> Iterator[Trajectory]:
    """:meth:`Store.iter_trajectories` for a caller that needs only the id and outcome of the
    runs ``settled`` settles: a segment the ledger knows that ``settled.segment(ids, codes)``
    settles whole is not parsed; of its runs, only those at the positions it returns come, as
    outlines (:class:`Trajectory` with the id and the outcome, no task and no steps; the others
    it accounted for itself). Every other segment is parsed as before, ``skip(id)`` passing over
    runs (and entered, unless ``record`` is False: then nothing is written)."""
    ledger = Ledger(store)
    for seg in store.segments():
        e = ledger.entry(seg)
        keep = None
        if e is not None:

            def kept(policy: str, e: Entry = e) -> str:
                hashes = e.mids.get(policy)
                if hashes is None:  # kept for the next plan (derived from the ids alone)
                    hashes = e.mids[policy] = settled.hashes(e.ids, policy)
                    ledger.changed = True
                return hashes

            keep = settled.segment(e.ids, e.codes, kept)
        if e is not None and keep is not None:
            for i in keep:
                yield Trajectory(task="", steps=[], success=_CODES[e.codes[i]], id=e.ids[i])
            continue
        yield from ledger.read(seg, skip, enter=record)
        entered = ledger.entries.get(seg.name) if record else None
        if entered is not None and not entered.mids:
            # Entered just now: its memory ids under each policy too, while the ids are at hand
            # (~1 us a run each), so the next plan settles the segment without hashing it.
            entered.mids = {p: settled.hashes(entered.ids, p) for p in (settled.policy, *settled.others)}
    if record:
        ledger.save()


def outcome_counts(store: Store) -> Counter[str]:
    """Runs by outcome ("success", "failure", "unknown", in the order first met), every stored
    run counted: from the ledger, and the segments it does not know parsed (and entered)."""
    out: Counter[str] = Counter()
    ledger = Ledger(store)
    names = {c: OUTCOME_NAMES[v] for c, v in _CODES.items()}
    for seg in store.segments():
        e = ledger.entry(seg)
        if e is not None:
            out.update(map(names.__getitem__, e.codes))
        else:
            out.update(OUTCOME_NAMES[t.success] for t in ledger.read(seg))
    ledger.save()
    return out
