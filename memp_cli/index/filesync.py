"""The per-memory side of a sync (:mod:`~memp_cli.index.records`): what the last generation knows
of each memory (:class:`Old`, from its records, or from an older format's file table and keyword
file), and the new generation's records (:func:`place`): an unchanged memory keeps its record, a
memory read again (or handed over by a writer) gets a new one, appended."""

from __future__ import annotations

import contextlib
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memp_cli.errors import MemoryFileError, StoreError
from memp_cli.index.entry import Entry, Fresh, Scan, Stamp, Stamps
from memp_cli.index.keywords import KeywordIndex, load_keywords, memory_keywords
from memp_cli.index.records import (
    COMPACT_MIN,
    COMPACT_SHARE,
    RecordLog,
    Records,
    khash_int,
    khash_str,
    load_records,
)
from memp_cli.index.state import FileTable, State, load_files, scan

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.store.protocol import MemoryStore

# Where a memory of the new generation comes from: its old state position, or what was read.
Source = int | Entry
_UNSET = -(2**62)  # a position whose memory is not placed yet
_TEXTS = 6  # an entry's texts packed: key, kind, family, lexical, procedure, built


class Sources:
    """The :data:`Source` of each position of the new generation. The entries read are kept
    packed as they come (their texts in one byte buffer, key hashes and keywords in int arrays),
    not as Python objects: a rebuild reads every memory of the store before any is written,
    and a few hundred bytes of objects per memory was most of its peak at 1M memories. An
    entry is unpacked again when asked for (:meth:`__getitem__`, :meth:`__iter__`, :meth:`key`)."""

    def __init__(self) -> None:
        self._at = array("q")  # per position: its old position (>= 0), or -1 - its entry number
        self._text = bytearray()
        self._ends = array("q")  # _TEXTS ends into _text per entry
        self._khash = array("Q")
        self._kw = array("i")  # keyword numbers into _words, back to back
        self._kw_ends = array("q")
        self._words: list[str] = []
        self._word_of: dict[str, int] = {}

    def extend(self, old: np.ndarray) -> None:
        """Positions at the end: their old positions, an int array (-1: placed later with
        ``[p] = entry``)."""
        import numpy as np

        at = np.where(old >= 0, old, _UNSET).astype(np.int64)
        self._at.frombytes(at.tobytes())

    def positions(self) -> np.ndarray:
        """Each position's old position, or a negative number for an entry read (a copy)."""
        import numpy as np

        return np.frombuffer(self._at, dtype=np.int64).copy() if len(self._at) else np.zeros(0, np.int64)

    def read(self) -> list[tuple[int, Entry]]:
        """The positions of the entries read, with their entries, in position order."""
        at = self._at
        return [(p, self._entry(-1 - at[p])) for p in range(len(at)) if at[p] < 0]

    def __len__(self) -> int:
        return len(self._at)

    def __setitem__(self, p: int, ent: Entry) -> None:
        self._at[p] = -1 - len(self._khash)
        for text in (ent.key, ent.kind, ent.family, ent.lexical, ent.procedure, ent.built):
            self._text += text.encode()
            self._ends.append(len(self._text))
        self._khash.append(khash_int(ent.key_hash))
        for w in ent.keywords:
            n = self._word_of.get(w)
            if n is None:
                n = self._word_of[w] = len(self._words)
                self._words.append(w)
            self._kw.append(n)
        self._kw_ends.append(len(self._kw))

    def _texts(self, j: int) -> list[str]:
        start = self._ends[j * _TEXTS - 1] if j else 0
        out = []
        for end in self._ends[j * _TEXTS : (j + 1) * _TEXTS]:
            out.append(self._text[start:end].decode())
            start = end
        return out

    def _entry(self, j: int) -> Entry:
        key, kind, family, lexical, procedure, built = self._texts(j)
        kw = self._kw[self._kw_ends[j - 1] if j else 0 : self._kw_ends[j]]
        words = [self._words[n] for n in kw]
        return Entry(key, khash_str(self._khash[j]), kind, family, lexical, procedure, built, words)

    def __getitem__(self, p: int) -> Source:
        at = self._at[p]
        return at if at >= 0 else self._entry(-1 - at)

    def key(self, p: int) -> str:
        """The key text of the entry read at position ``p``."""
        return self._texts(-1 - self._at[p])[0]

    def kept(self) -> int:
        """How many positions keep their old position."""
        return int((self.positions() >= 0).sum())

    def keep(self, positions: list[int]) -> None:
        """Only ``positions``, in this order (an entry left out stays in the buffers, unnamed)."""
        self._at = array("q", (self._at[p] for p in positions))


@dataclass
class Old:
    """Per state position of the last generation: its file's stat, key hash and built key; its
    record (format 7) or its file-table row and keyword row (formats 2-6)."""

    mtimes: list[int]
    sizes: list[int]
    khash: list[int]
    built: list[str]
    records: Records | None = None
    table: FileTable | None = None
    kw: KeywordIndex | None = None  # an older format's keyword index, when it can be read

    def texts(self, i: int) -> tuple[str, str]:
        if self.records is not None:
            return self.records.texts(int(self.records.pos[i]))
        assert self.table is not None
        return self.table.texts[i], self.table.procedures[i]


def load_old(store: MemoryStore, old: State) -> Old:
    """What ``old``'s generation knows of its memories; StoreError when its files are damaged."""
    if old.version >= 7:
        rec = load_records(store, old)
        return Old(
            rec.column("mtime").tolist(),
            rec.column("size").tolist(),
            rec.column("khash").tolist(),
            rec.built(),
            records=rec,
        )
    table = load_files(store, old)
    kw = None
    with contextlib.suppress(StoreError):  # else each memory's keywords are read again
        kw = load_keywords(store, old)
    try:
        khash = [khash_int(h) for h in table.key_hashes]
    except (TypeError, ValueError):
        raise StoreError(f"{store.index_dir}: damaged key hashes in the file table") from None
    return Old(table.mtimes, table.sizes, khash, table.built, table=table, kw=kw)


def appendable(old: Old | None, sources: Sources) -> Records | None:
    """The records a sync appends to: the last generation's, unless there are none (an older
    format, a rebuild) or, after this sync, most of their rows would be named by no position
    (then a new record generation, with the live records only)."""
    rec = old.records if old is not None else None
    if rec is None:
        return None
    kept = sources.kept()
    dead = len(rec.rows) - kept
    if dead > COMPACT_MIN and dead * COMPACT_SHARE > len(rec.rows) + len(sources) - kept:
        return None
    return rec


def place(
    store: MemoryStore,
    log: RecordLog,
    old: Old | None,
    ids: list[str],
    sources: Sources,
    stamps: Stamps,
) -> np.ndarray:
    """The record of each position of the new generation: an unchanged memory keeps its record
    when ``log`` appends to the old records, else (a new record generation) its old record is
    copied; a memory read gets a new record. Returns the positions' records."""
    import numpy as np

    pos = np.empty(len(sources), dtype=np.int64)
    base = log.base
    todo: Iterable[int] = range(len(sources))
    if base is not None:  # the unchanged keep their records: one gather
        at = sources.positions()
        kept = at >= 0
        pos[kept] = base.pos[at[kept]]
        todo = np.flatnonzero(~kept).tolist()
    for p in todo:
        src = sources[p]
        if isinstance(src, int):
            assert old is not None
            lex, proc = old.texts(src)
            kw = _old_keywords(store, log, old, src, ids[p])
            row = log.add(stamps[p], old.khash[src], old.built[src], lex, proc, kw)
        else:
            labels = [log.word_label(w) for w in src.keywords]
            row = log.add(stamps[p], khash_int(src.key_hash), src.built, src.lexical, src.procedure, labels)
        pos[p] = row
    return pos


def _old_keywords(store: MemoryStore, log: RecordLog, old: Old, i: int, mid: str) -> list[int]:
    """The keyword labels of an unchanged memory at old position ``i`` in ``log``'s words."""
    if old.records is not None:  # the words of the old records are the log's first ones
        rec = old.records
        row = int(rec.pos[i])
        start = int(rec.rows["kw_end"][row - 1]) if row else 0
        return [int(x) for x in rec.kw[start : int(rec.rows["kw_end"][row])]]
    if old.kw is not None:
        return [log.word_label(old.kw.words[lab]) for lab in old.kw.row(i).tolist()]
    try:  # no usable old keyword data: read the (unchanged) file again
        words = memory_keywords(store.read_memory(mid))
    except MemoryFileError:
        words = []
    return [log.word_label(w) for w in words]


def stamps_now(
    store: MemoryStore, dir_mtime: int, fresh: Fresh | None, scanned: Scan | None
) -> dict[str, Stamp]:
    """Each memory file's stamp: from a scan the caller handed over (:class:`Scan`) while the
    memories folder is as it left it, its own memories statted again; else statted now."""
    if scanned is None or scanned.dir_mtime_ns != dir_mtime or dir_mtime < 0:
        return scan(store)
    files = dict(scanned.stamps)
    for mid in fresh or ():
        try:
            st = os.stat(store.memory_path(mid))
        except FileNotFoundError:
            files.pop(mid, None)
            continue
        files[mid] = (st.st_mtime_ns, st.st_size)
    return files
