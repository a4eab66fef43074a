"""What a sync keeps of each memory (format 7), append-only: a sync writes about its batch.

A *record* is one memory file as a sync saw it: its stat (mtime_ns, size), key hash, what it was
built with, its two BM25 texts and its keyword labels. Records live in files of a *record
generation* ``tgen`` (like the vectors file's ``vec_gen``), which a sync only appends to:

- ``records-<tgen>.rows.bin``: fixed-width rows (:data:`ROW`), row = record number;
- ``records-<tgen>.text.bin``: the texts, UTF-8, back to back (a row holds where its end);
- ``records-<tgen>.kw.bin``: the keyword labels (int32), back to back (likewise);
- ``records-<tgen>.words.bin``: the keyword strings, one JSON string a line (label = line).

Each index generation ``gen`` adds two small files, written before state.json names them:
``records-<gen>.json`` (the manifest: ``tgen`` and how much of each file is valid, the built
names) and ``records-<gen>.pos.npy`` (per state position, the memory's record number). A sync
cuts each file to the length its last manifest names (what a killed sync appended goes), appends
its batch's records, fsyncs them, then writes the manifest, the positions and state.json. A
record a complete generation names is never rewritten. A memory edited again gets a new record;
the old one stays until the files are compacted (a new ``tgen`` with the live records only).
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.errors import StoreError
from memp_cli.index.state import INDEX_VERSION, REBUILD_HINT
from memp_cli.store.fsutil import atomic_output, atomic_write, open_own

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.index.state import State
    from memp_cli.store.protocol import MemoryStore

PARTS = ("rows", "text", "kw", "words")
# A sync starts a new record generation with the live records only once the records no
# position names pass this share of all rows (and COMPACT_MIN rows).
COMPACT_SHARE = 2
COMPACT_MIN = 4096


# One row of row_dtype() packed (it has no padding between its fields).
_ROW = struct.Struct("<qqQiiqqq")


def row_dtype() -> np.dtype[Any]:
    """One record's fixed part: its file's stat, key hash (the 16 hex digits as an integer),
    code into the manifest's built names, and the ends of its texts and keyword labels."""
    import numpy as np

    return np.dtype(
        [
            ("mtime", "<i8"),
            ("size", "<i8"),
            ("khash", "<u8"),
            ("built", "<i4"),
            ("pad", "<i4"),
            ("lex_end", "<i8"),
            ("proc_end", "<i8"),
            ("kw_end", "<i8"),
        ]
    )


def part_path(index_dir: Path, tgen: int, part: str) -> Path:
    return index_dir / f"records-{tgen}.{part}.bin"


def manifest_path(index_dir: Path, gen: int) -> Path:
    return index_dir / f"records-{gen}.json"


def pos_path(index_dir: Path, gen: int) -> Path:
    return index_dir / f"records-{gen}.pos.npy"


def generation_names(index_dir: Path, gen: int, tgen: int) -> set[str]:
    """The record files a generation ``gen`` over record generation ``tgen`` names."""
    parts = {part_path(index_dir, tgen, p).name for p in PARTS}
    return parts | {manifest_path(index_dir, gen).name, pos_path(index_dir, gen).name}


def khash_int(key_hash: str) -> int:
    return int(key_hash, 16)


def khash_str(value: int) -> str:
    return f"{value:016x}"


@dataclass
class Records:
    """The records a generation names: ``rows`` (every valid row), ``pos`` (per state position,
    its row), the keyword labels ``kw`` (int32), ``words``, ``built_names``. The texts are read
    on demand (:meth:`texts`): from ``text`` (the valid bytes of the text file, mapped) and, for
    rows a sync has just added, ``new_text`` (their bytes, the first at byte ``new_text_at``)."""

    tgen: int
    rows: np.ndarray
    pos: np.ndarray
    kw: np.ndarray
    words: list[str]
    built_names: list[str]
    text: Any  # bytes-like
    words_bytes: int = 0  # the valid length of the words file
    new_text: Any = b""  # bytes-like
    new_from: int = -1  # the first row whose texts are in new_text (-1: none)
    new_text_at: int = 0

    def column(self, name: str) -> np.ndarray:
        """A fixed column per state position (``mtime``, ``size``, ``khash``, ``built``)."""
        return self.rows[name][self.pos]

    def built(self) -> list[str]:
        names = self.built_names
        return [names[c] for c in self.column("built").tolist()]

    def texts(self, row: int) -> tuple[str, str]:
        """The BM25 text and the procedure text of record ``row``."""
        buf, at = (self.new_text, self.new_text_at) if 0 <= self.new_from <= row else (self.text, 0)
        start = int(self.rows["proc_end"][row - 1]) if row else 0
        mid, end = int(self.rows["lex_end"][row]), int(self.rows["proc_end"][row])
        raw = bytes(buf[start - at : end - at])
        return raw[: mid - start].decode(), raw[mid - start :].decode()

    def all_texts(self) -> tuple[list[str], list[str]]:
        lex: list[str] = []
        proc: list[str] = []
        for row in self.pos.tolist():
            a, b = self.texts(row)
            lex.append(a)
            proc.append(b)
        return lex, proc

    def iter_texts(self, which: int) -> Iterator[str]:
        """Per state position its BM25 text (``which`` 0) or procedure text (1), one at a time."""
        for row in self.pos.tolist():
            yield self.texts(row)[which]

    def keyword_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Per state position its keyword labels, as CSR (offsets, labels: int64)."""
        import numpy as np

        ends = self.rows["kw_end"]
        starts = np.concatenate([np.zeros(1, dtype=np.int64), ends[:-1]])[self.pos]
        lens = ends[self.pos] - starts
        offsets = np.zeros(len(self.pos) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        idx = np.repeat(starts - offsets[:-1], lens) + np.arange(int(offsets[-1]), dtype=np.int64)
        return offsets, self.kw[idx].astype(np.int64)

    @property
    def garbage(self) -> int:
        """Rows no position names."""
        return len(self.rows) - len(self.pos)


def _map(path: Path, length: int, dtype: Any) -> np.ndarray:
    import numpy as np

    if not length:
        return np.zeros(0, dtype=dtype)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        need = length * np.dtype(dtype).itemsize
        if size < need:
            raise ValueError(f"{path.name} holds {size} bytes, the manifest names {need}")
        return np.memmap(f, dtype=dtype, mode="r", shape=(length,))


def load_records(store: MemoryStore, state: State) -> Records:
    """The records of ``state``'s generation (format 7); StoreError when missing or damaged."""
    import numpy as np

    d = store.index_dir
    mpath = manifest_path(d, state.generation)
    try:
        m = orjson.loads(mpath.read_bytes())
        if m["index_version"] != state.version or m["generation"] != state.generation:
            raise ValueError("another index version or generation")
        tgen = int(m["tgen"])
        pos = np.load(pos_path(d, state.generation), allow_pickle=False)
        if pos.ndim != 1 or pos.dtype != np.int64 or len(pos) != state.count:
            raise ValueError(f"{len(pos)} positions for {state.count} memories")
        rows = _map(part_path(d, tgen, "rows"), int(m["rows"]), row_dtype())
        kw = _map(part_path(d, tgen, "kw"), int(m["kw_count"]), np.int32)
        text = _map(part_path(d, tgen, "text"), int(m["text_bytes"]), np.uint8)
        with open(part_path(d, tgen, "words"), "rb") as f:
            raw = f.read(int(m["words_bytes"]))
        words = [orjson.loads(line) for line in raw.splitlines()]
        built_names = m["built_names"]
        if len(words) != int(m["words"]) or not all(isinstance(w, str) for w in (*words, *built_names)):
            raise ValueError("keyword words do not match the manifest")
        if len(pos) and (int(pos.min()) < 0 or int(pos.max()) >= len(rows)):
            raise ValueError("a position names no record")
        if len(rows) and (
            int(rows["proc_end"][-1]) != len(text)
            or int(rows["kw_end"][-1]) != len(kw)
            or int(rows["built"].max()) >= len(built_names)
            or int(rows["built"].min()) < 0
        ):
            raise ValueError("records do not match the manifest")
        if len(kw) and (int(kw.min()) < 0 or int(kw.max()) >= len(words)):
            raise ValueError("a keyword label names no word")
    except FileNotFoundError as e:
        raise StoreError(f"{e.filename}: missing", hint=REBUILD_HINT) from None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise StoreError(f"{mpath}: damaged index records ({e})", hint=REBUILD_HINT) from None
    return Records(tgen, rows, pos, kw, words, built_names, text, int(m["words_bytes"]))


class RecordLog:
    """The records a sync writes: those of ``base`` (the last generation's, unless a new record
    generation starts) plus the ones :meth:`add` appends, held in memory until :meth:`write`:
    packed into byte buffers and int arrays as they come, not a Python object per record (a
    rebuild adds one for every memory of the store)."""

    def __init__(self, tgen: int, base: Records | None, words: list[str] | None = None) -> None:
        """``base``: the records to append to (None: a new record generation, empty, whose
        keyword labels go on from ``words``, the keyword graph's words)."""
        import numpy as np

        self.tgen = tgen
        self.base = base
        self.words: list[str] = list(base.words if base is not None else words or [])
        self._words_written = len(base.words) if base is not None else 0
        self.built_names: list[str] = list(base.built_names) if base is not None else []
        self._code = {b: i for i, b in enumerate(self.built_names)}
        self._label = {w: i for i, w in enumerate(self.words)}
        self._rows = bytearray()  # _ROW each
        self._text = bytearray()
        self._kw = array("i")
        n = len(base.rows) if base is not None else 0
        self.first = n
        self.pos: np.ndarray = np.zeros(0, dtype=np.int64)  # the new generation's (set by the sync)
        self._text_end = int(base.rows["proc_end"][-1]) if n and base is not None else 0
        self._kw_end = int(base.rows["kw_end"][-1]) if n and base is not None else 0
        self._empty = np.zeros(0, dtype=row_dtype())

    @property
    def n_rows(self) -> int:
        return self.first + len(self._rows) // _ROW.size

    def word_label(self, word: str) -> int:
        lab = self._label.get(word)
        if lab is None:
            lab = self._label[word] = len(self.words)
            self.words.append(word)
        return lab

    def add(
        self, stamp: tuple[int, int], khash: int, built: str, lexical: str, procedure: str, kw: list[int]
    ) -> int:
        """Append a record; returns its row."""
        code = self._code.get(built)
        if code is None:
            code = self._code[built] = len(self.built_names)
            self.built_names.append(built)
        a, b = lexical.encode(), procedure.encode()
        self._text += a
        self._text += b
        lex_end = self._text_end + len(a)
        self._text_end = lex_end + len(b)
        self._kw.extend(kw)
        self._kw_end += len(kw)
        self._rows += _ROW.pack(stamp[0], stamp[1], khash, code, 0, lex_end, self._text_end, self._kw_end)
        return self.n_rows - 1

    def _new_rows(self) -> np.ndarray:
        import numpy as np

        return np.frombuffer(bytes(self._rows), dtype=row_dtype()) if self._rows else self._empty

    def records(self, pos: np.ndarray) -> Records:
        """The records with ``pos`` as the positions (the base's rows and the added ones)."""
        import numpy as np

        new_rows = self._new_rows()
        new_kw = np.array(self._kw, dtype=np.int32)
        base = self.base
        rows = np.concatenate([base.rows, new_rows]) if base is not None else new_rows
        kw = np.concatenate([base.kw, new_kw]) if base is not None else new_kw
        text = base.text if base is not None else b""
        return Records(
            self.tgen,
            rows,
            pos,
            kw,
            self.words,
            self.built_names,
            text,
            new_text=bytes(self._text),
            new_from=self.first,
            new_text_at=self._text_end - len(self._text),
        )

    def write(self, store: MemoryStore, gen: int, pos: np.ndarray) -> set[str]:
        """Append the added records to the record files (each cut first to the base's valid
        length: what a killed sync appended goes; a new record generation starts empty), fsync
        them, then write generation ``gen``'s manifest and positions (each atomically). Returns
        the names of the files the generation names."""
        import numpy as np

        d = store.index_dir
        base = self.base
        starts = {
            "rows": self.first * row_dtype().itemsize,
            "text": len(base.text) if base is not None else 0,
            "kw": len(base.kw) * 4 if base is not None else 0,
            "words": base.words_bytes if base is not None else 0,
        }
        words_old = self._words_written
        data: dict[str, bytes | bytearray] = {
            "rows": self._rows,
            "text": self._text,
            "kw": np.array(self._kw, dtype=np.int32).tobytes(),
            "words": b"".join(orjson.dumps(w) + b"\n" for w in self.words[words_old:]),
        }
        for part in PARTS:
            path = part_path(d, self.tgen, part)
            fd = open_own(path, os.O_RDWR, what="the index's record file")
            try:
                start = starts[part]
                os.ftruncate(fd, start)
                view, off = memoryview(data[part]), start
                while view:
                    n = os.pwrite(fd, view, off)
                    view, off = view[n:], off + n
                os.fsync(fd)
            finally:
                os.close(fd)
        with atomic_output(pos_path(d, gen)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(pos, dtype=np.int64), allow_pickle=False)
        manifest = {
            "index_version": INDEX_VERSION,
            "generation": gen,
            "tgen": self.tgen,
            "rows": self.n_rows,
            "text_bytes": self._text_end,
            "kw_count": self._kw_end,
            "words": len(self.words),
            "words_bytes": starts["words"] + len(data["words"]),
            "built_names": self.built_names,
        }
        atomic_write(manifest_path(d, gen), orjson.dumps(manifest))
        return generation_names(d, gen, self.tgen)
