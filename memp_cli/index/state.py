"""The index state: ``state.json`` (:class:`State`), ``files-<gen>.json`` (:class:`FileTable`),
the file names of a generation, and the freshness check against ``memories/``.

See :mod:`memp_cli.index` for the files and what reads them.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.errors import ModelError, StoreError
from memp_cli.index.columns import COLUMNS, STAMPS, Columns, column_file_name, id_bytes

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.store.protocol import MemoryStore

STATE_NAME = "state.json"
#: Every name memp gives a file of the index directory (any generation, any format since 2, a
#: temp file): what a sync may remove there, and nothing else.
INDEX_FILE_NAME = re.compile(
    r"(state|lexical)\.json|\.tmp-[\w.-]+"
    r"|(files|built|hnsw|delta|vectors|keywords|lexical|procedure|records|columns)-[0-9a-f-]+(-delta|-dead)?"
    r"(\.[a-z_]+)?\.(json|bin|npy|f32)"
)
# 2: state.json split into state.json (query) + files-<gen>.json (sync); vectors-<gen>.npy.
# 3: the BM25 arrays are files of the generation too (lexical-<gen>.*.npy), their manifest is
#    in state.json (format 2 kept it in lexical.json under a generation counter of its own).
# 4: a second BM25 index over each memory's procedure (procedure-<gen>.*.npy, manifest
#    ``procedure``), the procedure texts in files-<gen>.json, and each memory's procedure
#    family in state.json (``family_codes`` into ``family_names``). A sync upgrades a format 3
#    index by re-reading the memory files, without embedding anything.
# 5: ``built-<gen>.json``: what each memory was built with (policy, model, prompt version) and
#    its file's stat, so `memp distill` plans without opening every memory file; the BM25 arrays
#    of a sync are the last generation's updated with the memories read again. A sync upgrades a
#    format 4 index by re-reading the memory files, without embedding anything.
# 6: the vectors in one append-only file ``vectors-<vec_gen>.f32`` (``next_label`` rows are
#    valid), the graph as a base (``hnsw-<base_gen>.bin``, labels below ``base_end``, minus
#    ``base_deleted``) plus a small ``delta-<gen>.bin`` (labels from ``base_end``): a sync writes
#    about its batch, not the whole index. A sync upgrades a format 2-5 index without embedding
#    (the old graph becomes the base, the vectors are copied once into the new file).
# 7: what a sync keeps of each memory (stat, key hash, built key, BM25 texts, keyword labels) is
#    in append-only record files (``records-<tgen>.*.bin``) plus a small manifest and the
#    positions' records per generation (``records-<gen>.json``, ``records-<gen>.pos.npy``), not in
#    ``files-``/``built-``/``keywords-<gen>.json`` rewritten whole (see :mod:`~memp_cli.index.records`).
#    A sync upgrades a format 2-6 index without embedding (a new record generation).
#    And the per-memory columns of state.json (ids, labels, kind and family codes) are binary files
#    of the generation, ``columns-<gen>.<column>.npy``, written before state.json (the commit
#    point, now small): a one-shot query maps them instead of parsing ~21 MB of JSON at 882k
#    memories. A sync upgrades a format 2-6 index without embedding.
# 8: BM25 as a base (``base_gen``'s files) plus ``<field>-<gen>-delta/-dead`` (index/lexseg.py).
INDEX_VERSION = 8
# The oldest format this memp still reads (a sync upgrades it without embedding anything).
OLDEST_READ = 2
# Format of the keyword files; a state with another kw_version (0: none yet, an
# index from before AveFact) gets its keyword files built at the next sync.
KW_VERSION = 1
# Below this many memories every command stats every file to notice hand
# edits; above it, `query` checks the memories directory's mtime only (editors
# save by rename, which changes it) and write commands do the full scan.
FULL_SCAN_LIMIT = 20_000
EMBED_BATCH = 256
REBUILD_HINT = "the index is derived data: `memp index sync` rebuilds what is damaged"


class IndexVersionError(StoreError):
    """The index was written by a newer memp: this one neither reads nor overwrites it."""


@dataclass
class State:
    """``state.json``: what a query needs (see the module docstring).

    Its per-memory columns (``ids``, ``labels``, ``kinds``, ``families``, in id order) are
    lists. A format 7 state read from disk keeps them in the mapped ``columns-<gen>.*.npy``
    files until a caller touches one as a list (then that column is built, once): a query
    asks only about its candidates, through :meth:`label_array`, :meth:`id_at`,
    :meth:`family_at`, :meth:`kind_at`, :meth:`kind_mask` and :attr:`count`."""

    embedder: str
    dim: int
    generation: int = 0
    next_label: int = 0
    dir_mtime_ns: int = 0
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    # Memory files that failed to load at the last sync: id -> [mtime_ns, size]. A
    # broken file fixed in place (same directory mtime) is noticed by its new stat.
    broken: dict[str, list[int]] = field(default_factory=dict)
    # KW_VERSION of keywords-<generation>.* (0: there are none).
    kw_version: int = 0
    # The BM25 manifest of lexical-<generation>.*.npy (None: an index in format 2, whose BM25
    # files are not part of the generation; readers build BM25 from the texts, a sync upgrades).
    lexical: dict[str, Any] | None = None
    # The same for the procedure BM25 (procedure-<generation>.*.npy); None before format 4.
    procedure: dict[str, Any] | None = None
    # Per position, the memory's procedure family (retrieve.procedure.family_key): memories of
    # one family are the same procedure, and a query's ranking pools their evidence.
    families: list[str] = field(default_factory=list)
    # Format 6 (see INDEX_VERSION): the vectors file's generation, the base graph's generation,
    # the labels below which a label is in the base graph (the others are in the delta graph),
    # and the base's labels no memory has any more (sorted; a query drops them until a merge).
    # An older state reads as one with its whole graph as the base and no delta.
    vec_gen: int = 0
    base_gen: int = 0
    base_end: int = 0
    base_deleted: list[int] = field(default_factory=list)
    # The format this state was read in (written always as INDEX_VERSION).
    version: int = INDEX_VERSION

    def __getattr__(self, name: str) -> list[Any]:
        # Only reached for an attribute the instance lacks: a column of a format 7 state not
        # built as a list yet.
        cols: Columns | None = self.__dict__.get("_columns")
        if cols is None or name not in COLUMNS:
            raise AttributeError(name)
        value = cols.as_list(name)
        setattr(self, name, value)
        return value

    def _mapped(self, name: str) -> Columns | None:
        """The mapped columns while column ``name`` has not been built as a list (the list,
        once built, is what counts: a caller may have changed it)."""
        return None if name in self.__dict__ else self.__dict__.get("_columns")

    @property
    def count(self) -> int:
        """How many memories (``len(state.ids)``, without building the list)."""
        cols = self._mapped("ids")
        return len(cols.ids) if cols is not None else len(self.ids)

    def label_array(self) -> np.ndarray:
        """``labels`` as an int64 array (the mapped column of a format 7 state)."""
        import numpy as np

        cols = self._mapped("labels")
        return cols.labels if cols is not None else np.asarray(self.labels, dtype=np.int64)

    def id_at(self, pos: int) -> str:
        cols = self._mapped("ids")
        return cols.ids[pos].decode() if cols is not None else self.ids[pos]

    def id_array(self, pos: np.ndarray) -> np.ndarray:
        """The ids at positions ``pos`` as an array that sorts as the ids do (bytes, from the
        mapped column: ids are ASCII)."""
        import numpy as np

        cols = self._mapped("ids")
        if cols is not None:
            return np.asarray(cols.ids[pos])
        return np.array([self.ids[i] for i in np.asarray(pos).tolist()], dtype=str)

    def family_codes(self, pos: np.ndarray) -> np.ndarray:
        """Per position of ``pos``: an int64 code of its family, the same for the same family,
        -1 for a memory in none."""
        import numpy as np

        cols = self._mapped("families")
        if cols is not None:
            codes = np.asarray(cols.families[pos], dtype=np.int64)
            if cols.no_family >= 0:
                codes[codes == cols.no_family] = -1
            return codes
        fams = [self.families[i] if i < len(self.families) else "" for i in np.asarray(pos).tolist()]
        numbers = {"": -1}
        return np.array([numbers.setdefault(f, len(numbers) - 1) for f in fams], dtype=np.int64)

    def kind_at(self, pos: int) -> str:
        cols = self._mapped("kinds")
        return cols.kind_names[cols.kinds[pos]] if cols is not None else self.kinds[pos]

    def family_at(self, pos: int) -> str:
        cols = self._mapped("families")
        if cols is not None:
            return cols.family_names[cols.families[pos]]
        return self.families[pos] if pos < len(self.families) else ""

    def kind_mask(self, kind: str) -> np.ndarray:
        """A boolean array over positions: the memories of ``kind``."""
        import numpy as np

        cols = self._mapped("kinds")
        if cols is None:
            return np.array([k == kind for k in self.kinds], dtype=bool)
        if kind not in cols.kind_names:
            return np.zeros(len(cols.kinds), dtype=bool)
        return np.asarray(cols.kinds == cols.kind_names.index(kind))

    def to_json(self) -> bytes:
        """``state.json`` in format 7: everything but the columns, which :meth:`write_columns`
        writes (before it: state.json is the commit point) to ``columns-<gen>.*.npy``. Only
        their names tables (``kind_names``, ``family_names``) and the row count are here."""
        d: dict[str, Any] = {"index_version": INDEX_VERSION}
        d.update((k, v) for k, v in vars(self).items() if k not in COLUMNS and not k.startswith("_"))
        del d["version"]
        d.update(count=self.count, kind_names=self.names("kinds"), family_names=self.names("families"))
        return orjson.dumps(d)

    def names(self, name: str) -> list[str]:
        """The names table column ``name`` ("kinds" or "families") is coded into (the codes of
        :meth:`column_arrays`)."""
        cols = self._mapped(name)
        if cols is not None:  # as read: the same table (no list built)
            return cols.kind_names if name == "kinds" else cols.family_names
        return sorted(set(self.kinds if name == "kinds" else self._families()))

    def _families(self) -> list[str]:
        return self.families if len(self.families) == self.count else [""] * self.count

    def column_arrays(self) -> dict[str, np.ndarray]:
        """The columns as :meth:`to_json`'s names tables code them: id bytes, int64 labels, and
        codes into ``kind_names`` and ``family_names``."""
        import numpy as np

        cols = self._mapped("ids")
        ids = np.asarray(cols.ids) if cols is not None else id_bytes(self.ids)  # as read, or encoded
        if not len(ids):
            ids = np.zeros(0, dtype="S1")
        out = {"ids": ids, "labels": np.asarray(self.label_array(), dtype=np.int64)}
        for name in ("kinds", "families"):
            cols = self._mapped(name)
            if cols is not None:  # as read: the same codes into the same table
                out[name] = np.asarray(getattr(cols, name), dtype=np.int32)
                continue
            values = self.kinds if name == "kinds" else self._families()
            code = {v: i for i, v in enumerate(self.names(name))}
            out[name] = np.fromiter(map(code.__getitem__, values), dtype=np.int32, count=len(values))
        return out

    def stamp_at(self, pos: int) -> tuple[int, int] | None:
        """The (mtime_ns, size) the memory file at ``pos`` had when the sync that wrote this
        state read it (its content then was valid); None when unknown (not a format 7 state)."""
        cols = self.__dict__.get("_columns")
        return (int(cols.mtimes[pos]), int(cols.sizes[pos])) if cols is not None else None

    def write_columns(self, index_dir: Path, stamps: tuple[Any, Any] | None = None) -> list[Path]:
        """Write ``columns-<generation>.<column>.npy`` (each atomically), with the memory
        files' ``stamps`` (mtimes, sizes: the file table's; default: as read); returns the paths."""
        import numpy as np

        from memp_cli.store.fsutil import atomic_output

        arrays = self.column_arrays()
        cols = self.__dict__.get("_columns")
        given: tuple[Any, Any]
        if stamps is not None:
            given = stamps
        elif cols is not None:
            given = (cols.mtimes, cols.sizes)
        else:
            raise ValueError("the memory files' stamps are needed")
        for name, values in zip(STAMPS, given, strict=True):
            arrays[name] = np.asarray(values, dtype=np.int64)
            if len(arrays[name]) != self.count:
                raise ValueError(f"{len(arrays[name])} {name} for {self.count} memories")
        paths = []
        for name, arr in arrays.items():
            path = index_dir / column_file_name(self.generation, name)
            with atomic_output(path) as tmp, open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            paths.append(path)
        return paths

    @classmethod
    def from_json(cls, raw: bytes, path: Path) -> State:
        try:
            d = orjson.loads(raw)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            version = d.pop("index_version", None)
            if isinstance(version, int) and version > INDEX_VERSION:
                raise IndexVersionError(
                    f"{path}: the index was written by a newer memp (index format {version}, "
                    f"this memp reads {INDEX_VERSION})",
                    hint="upgrade memp (pip install -U memp), or run `memp index rebuild` to "
                    "rebuild the index in this version's format",
                )
            if isinstance(version, int) and version < OLDEST_READ:
                raise StoreError(
                    f"{path}: the index is in an older format ({version}, now {INDEX_VERSION})",
                    hint=REBUILD_HINT,
                )
            if not isinstance(version, int) or version > INDEX_VERSION:
                raise ValueError("unknown index version")
            if version >= 7:
                count, names, fnames = d.pop("count"), d.pop("kind_names"), d.pop("family_names")
                state = cls(**d, version=version)
                cols = Columns.load(path.parent, state.generation, count, names, fnames)
                for name in COLUMNS:
                    del state.__dict__[name]
                state.__dict__["_columns"] = cols
                return state
            if version < 3:
                d.pop("lexical", None)
            if "label_runs" in d:
                labels: list[int] = []
                for first, count in d.pop("label_runs"):
                    labels.extend(range(first, first + count))
                d["labels"] = labels
            names, codes = d.pop("kind_names"), d.pop("kind_codes")
            fnames, fcodes = d.pop("family_names", None), d.pop("family_codes", None)
            families = list(map(fnames.__getitem__, fcodes)) if fnames is not None else [""] * len(d["ids"])
            state = cls(**d, kinds=list(map(names.__getitem__, codes)), families=families, version=version)
            if version < 6:
                state.base_gen, state.base_end = state.generation, state.next_label
            if not len(state.ids) == len(state.labels) == len(state.kinds) == len(state.families):
                raise ValueError("columns of different lengths")
            return state
        except OSError as e:
            raise StoreError(f"{path}: index state column unreadable ({e})", hint=REBUILD_HINT) from None
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as e:
            raise StoreError(f"{path}: damaged index state ({e})", hint=REBUILD_HINT) from None


@dataclass
class FileTable:
    """Per memory, in ``State.ids`` order, what only a sync reads: ``files-<gen>.json`` before
    format 7; since, made from the records (:func:`load_files`) for the readers' fallbacks."""

    key_hashes: list[str] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the BM25 text (key text + keywords)
    procedures: list[str] = field(default_factory=list)  # the procedure BM25 text
    # "policy\tmodel\tprompt_version" of the memory's provenance ("" unknown: an index from
    # before format 5, or its built file is damaged; a sync reads such memories again). Kept in
    # ``built-<gen>.json`` (:meth:`built_json`), which distill reads without the texts.
    built: list[str] = field(default_factory=list)

    def append(self, key_hash: str, mtime: int, size: int, text: str, procedure: str, built: str) -> None:
        self.key_hashes.append(key_hash)
        self.mtimes.append(mtime)
        self.sizes.append(size)
        self.texts.append(text)
        self.procedures.append(procedure)
        self.built.append(built)

    def to_json(self, generation: int) -> bytes:
        d = {"index_version": INDEX_VERSION, "generation": generation, **vars(self)}
        del d["built"]
        return orjson.dumps(d)

    def built_json(self, generation: int) -> bytes:
        names = sorted(set(self.built))
        code = {b: i for i, b in enumerate(names)}
        return orjson.dumps(
            {
                "index_version": INDEX_VERSION,
                "generation": generation,
                "names": names,
                "codes": [code[b] for b in self.built],
                "mtimes": self.mtimes,
                "sizes": self.sizes,
            }
        )


def state_path(store: MemoryStore) -> Path:
    return store.index_dir / STATE_NAME


def read_state(store: MemoryStore) -> State | None:
    p = state_path(store)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    return State.from_json(raw, p)


def hnsw_path(store: MemoryStore, generation: int) -> Path:
    return store.index_dir / f"hnsw-{generation}.bin"


def vectors_path(store: MemoryStore, state: State) -> Path:
    """The vectors file ``state`` names: ``vectors-<vec_gen>.f32`` (format 6: raw float32 rows,
    the first ``next_label`` of them valid), before format 6 ``vectors-<gen>.npy``."""
    if state.version < 6:
        return store.index_dir / f"vectors-{state.generation}.npy"
    return vec_file_path(store, state.vec_gen)


def vec_file_path(store: MemoryStore, vec_gen: int) -> Path:
    return store.index_dir / f"vectors-{vec_gen}.f32"


def delta_path(store: MemoryStore, generation: int) -> Path:
    return store.index_dir / f"delta-{generation}.bin"


def files_path(store: MemoryStore, generation: int) -> Path:
    return store.index_dir / f"files-{generation}.json"


def built_path(store: MemoryStore, generation: int) -> Path:
    return store.index_dir / f"built-{generation}.json"


def lexical_stem(generation: int, field: str = "lexical") -> str:
    """The BM25 arrays of a generation are ``<index>/lexical-<gen>.<name>.npy``, those of the
    procedure field ``<index>/procedure-<gen>.<name>.npy``."""
    return f"{field}-{generation}"


def generation_files(store: MemoryStore, state: State) -> set[str]:
    """The names of the files of ``state``'s generation that may exist in the index directory
    (``keywords-<gen>.bin`` only when the store has keywords, the graph and the vectors only
    when it has memories): every other file there is left over from an interrupted write or
    from an older generation."""
    from memp_cli.index.lexseg import paths

    gen = state.generation
    if state.version >= 7:
        names = {STATE_NAME, kw_paths(store, gen)[1].name, *_record_names(store, gen)}
        names |= {column_file_name(gen, name) for name in COLUMNS + STAMPS}
    else:
        names = {STATE_NAME, files_path(store, gen).name, *(p.name for p in kw_paths(store, gen))}
    if 5 <= state.version < 7:
        names.add(built_path(store, gen).name)
    if state.count:
        names.add(vectors_path(store, state).name)
        if state.base_end:
            names.add(hnsw_path(store, state.base_gen).name)
        if state.version >= 6 and state.next_label > state.base_end:
            names.add(delta_path(store, gen).name)
        for field, manifest in (("lexical", state.lexical), ("procedure", state.procedure)):
            if isinstance(manifest, dict):
                names |= {p.name for p in paths(store.index_dir, field, gen, manifest)}
    return names


def _record_names(store: MemoryStore, gen: int) -> set[str]:
    """The record files generation ``gen`` names (its manifest says which record generation)."""
    from memp_cli.index import records

    names = {records.manifest_path(store.index_dir, gen).name, records.pos_path(store.index_dir, gen).name}
    try:
        tgen = orjson.loads(records.manifest_path(store.index_dir, gen).read_bytes())["tgen"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        # Damaged (doctor says so): which record files it names is unknown; none is a leftover.
        return names | {p.name for p in store.index_dir.glob("records-*.*.bin")}
    return names | records.generation_names(store.index_dir, gen, int(tgen))


def leftover_files(store: MemoryStore, state: State | None) -> list[Path]:
    """Files in the index directory that no complete generation names (``memp doctor``)."""
    keep = generation_files(store, state) if state is not None else {STATE_NAME}
    try:
        return sorted(
            p
            for p in store.index_dir.iterdir()
            if p.name not in keep and INDEX_FILE_NAME.fullmatch(p.name) and stat.S_ISREG(p.lstat().st_mode)
        )
    except FileNotFoundError:
        return []


def load_files(store: MemoryStore, state: State) -> FileTable:
    """The file table of ``state``'s generation (format 7: made from its records, every text
    read: for the readers' fallbacks only; a sync reads the records)."""
    if state.version >= 7:
        from memp_cli.index import records

        rec = records.load_records(store, state)
        texts, procedures = rec.all_texts()
        return FileTable(
            [records.khash_str(h) for h in rec.column("khash").tolist()],
            rec.column("mtime").tolist(),
            rec.column("size").tolist(),
            texts,
            procedures,
            rec.built(),
        )
    path = files_path(store, state.generation)
    n = state.count
    try:
        d = orjson.loads(path.read_bytes())
        if d.pop("index_version", None) != state.version or d.pop("generation", None) != state.generation:
            raise ValueError("another index version or generation")
        if state.version < 4:
            d["procedures"] = list(d["texts"])  # stale: a sync re-reads the memory files
        table = FileTable(**d, built=load_built(store, state, n))
        if not (
            len(table.key_hashes) == len(table.mtimes) == len(table.sizes) == len(table.texts) == n
            and len(table.procedures) == n
        ):
            raise ValueError(f"{len(table.texts)} entries for {n} memories")
    except FileNotFoundError:
        raise StoreError(f"{path}: missing", hint=REBUILD_HINT) from None
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise StoreError(f"{path}: damaged index file table ({e})", hint=REBUILD_HINT) from None
    return table


def load_built(store: MemoryStore, state: State, n: int) -> list[str]:
    """Per memory what it was built with (see :attr:`FileTable.built`); all unknown ("") when
    the file is missing, damaged or from before format 5 (a sync reads those memories again)."""
    if state.version < 5:
        return [""] * n
    try:
        d = orjson.loads(built_path(store, state.generation).read_bytes())
        if d["index_version"] != state.version or d["generation"] != state.generation:
            raise ValueError("another index version or generation")
        names = d["names"]
        out = [names[c] for c in d["codes"]]
        if len(out) != n or not all(isinstance(x, str) for x in names):
            raise ValueError("another length")
        return out
    except (OSError, orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return [""] * n


def kw_paths(store: MemoryStore, generation: int) -> tuple[Path, Path]:
    return store.index_dir / f"keywords-{generation}.json", store.index_dir / f"keywords-{generation}.bin"


def check_embedder(store: MemoryStore, state: State, embedder_name: str, dim: int | None = None) -> None:
    if state.embedder != embedder_name:
        raise ModelError(
            f"the index of {store.root} was built with embedder {state.embedder!r}, not {embedder_name!r}",
            hint=f"set [embedder] name = {embedder_name!r} in memp.toml and run `memp index rebuild`, "
            f"or query with --embedder {state.embedder}",
        )
    if dim is not None and state.dim != dim:
        raise ModelError(
            f"the index of {store.root} has dimension {state.dim}, the embedder gives {dim}",
            hint="run `memp index rebuild` (or restore [embedder] dim in memp.toml)",
        )


def scan(store: MemoryStore) -> dict[str, tuple[int, int]]:
    """Each memory file's (mtime_ns, size), from the store."""
    return store.memory_stamps()


def is_fresh(store: MemoryStore, state: State | None) -> bool:
    """Cheap check that the index matches the memory files."""
    if state is None:
        return not store.memory_ids()
    dir_mtime = store.memories_mtime_ns()
    if dir_mtime < 0:
        return not state.count
    if dir_mtime != state.dir_mtime_ns:
        return False
    if state.count > FULL_SCAN_LIMIT:
        return True
    # Files added, removed or saved by rename change the directory's mtime;
    # in-place writes are caught here. Broken files are not in the index: they
    # were reported by the sync that saw them and, if their stat is the same,
    # are unchanged since.
    files = scan(store)
    if len(files) != len(state.ids) + len(state.broken):
        return False
    for mid, st in state.broken.items():
        if files.pop(mid, None) != tuple(st):
            return False
    try:
        known = file_stamps(store, state)
    except StoreError:
        return False  # a sync rebuilds it
    return files == known


def file_stamps(store: MemoryStore, state: State) -> dict[str, tuple[int, int]]:
    """Each indexed memory's file stamp as the last sync saw it (StoreError when damaged)."""
    if state.version >= 7:
        from memp_cli.index.records import load_records

        rec = load_records(store, state)
        stamps = zip(rec.column("mtime").tolist(), rec.column("size").tolist(), strict=True)
        return dict(zip(state.ids, stamps, strict=True))
    table = load_files(store, state)
    return dict(zip(state.ids, zip(table.mtimes, table.sizes, strict=True), strict=True))


def peek_generation(store: MemoryStore) -> int:
    """The generation an unreadable state.json names, if it still says (else 0): a rebuild
    continues after it, so no file name of the old index is reused."""
    try:
        gen = orjson.loads(state_path(store).read_bytes()).get("generation", 0)
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return 0
    return gen if isinstance(gen, int) and gen >= 0 else 0
