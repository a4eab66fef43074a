"""The derived index: hnswlib vectors + BM25, rebuildable from ``memories/``.

Files in ``<store>/index/`` (JSON and numpy only, never pickle):

- ``state.json``: the embedder and dimension, the hnsw file's generation, and
  per memory (columnar): id, label, kind, key hash, file mtime and size.
  Written last, atomically: it names the generation of every other file, so
  a reader never pairs a new graph with old labels.
- ``hnsw-<gen>.bin``: the hnswlib graph (cosine space).
- ``lexical*``: the BM25 index over the same texts (:mod:`memp_cli.lexical`).

:func:`sync` brings the index up to date with the memory files: new files
are embedded, changed ones (by mtime/size, then key hash) re-embedded,
deleted ones removed, broken ones reported and left out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .embedders import Embedder
from .errors import MemoryFileError, ModelError, StoreError
from .fsutil import TMP_PREFIX, atomic_write
from .memory import Memory, load_memory_file, valid_id

if TYPE_CHECKING:
    import hnswlib
    import numpy as np

    from .lexical import LexicalIndex
    from .store import Store

STATE_NAME = "state.json"
INDEX_VERSION = 1
# Below this many memories every command stats every file to notice hand
# edits; above it, `query` checks the memories directory's mtime only (editors
# save by rename, which changes it) and write commands do the full scan.
FULL_SCAN_LIMIT = 20_000
EMBED_BATCH = 256


@dataclass
class State:
    embedder: str
    dim: int
    generation: int = 0
    next_label: int = 0
    dir_mtime_ns: int = 0
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    key_hashes: list[str] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        d = {"index_version": INDEX_VERSION, **vars(self)}
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes, path: Path) -> State:
        try:
            d = orjson.loads(raw)
            if d.pop("index_version", None) != INDEX_VERSION:
                raise ValueError("unknown index version")
            return cls(**d)
        except (orjson.JSONDecodeError, TypeError, ValueError) as e:
            raise StoreError(
                f"{path}: damaged index state ({e})",
                hint="the index is derived data: run `memp index rebuild`",
            ) from None


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    embedded: int = 0
    broken: list[MemoryFileError] = field(default_factory=list)
    rebuilt: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def _hnswlib() -> Any:
    import hnswlib

    return hnswlib


class Index:
    """A loaded index (read side). Create with :func:`load` or :func:`sync`."""

    def __init__(
        self, store: Store, state: State, hnsw: hnswlib.Index | None, lexical: LexicalIndex | None
    ) -> None:
        self.store = store
        self.state = state
        self.hnsw = hnsw
        self.lexical = lexical
        self._by_label: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.state.ids)

    def position_of_label(self, label: int) -> int:
        if self._by_label is None:
            self._by_label = {lab: i for i, lab in enumerate(self.state.labels)}
        return self._by_label[label]

    def id_of_label(self, label: int) -> str:
        return self.state.ids[self.position_of_label(label)]

    def vectors(self, labels: list[int]) -> np.ndarray:
        import numpy as np

        if self.hnsw is None or not labels:
            return np.zeros((0, self.state.dim), dtype=np.float32)
        return np.asarray(self.hnsw.get_items(labels), dtype=np.float32)


def valid_id_name(name: str) -> bool:
    return valid_id(name)


def state_path(store: Store) -> Path:
    return store.index_dir / STATE_NAME


def read_state(store: Store) -> State | None:
    p = state_path(store)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    return State.from_json(raw, p)


def _hnsw_path(store: Store, generation: int) -> Path:
    return store.index_dir / f"hnsw-{generation}.bin"


def _load_hnsw(store: Store, state: State) -> hnswlib.Index | None:
    if not state.ids:
        return None
    hnswlib = _hnswlib()
    idx = hnswlib.Index(space="cosine", dim=state.dim)
    path = _hnsw_path(store, state.generation)
    try:
        idx.load_index(str(path), max_elements=max(state.next_label, 1))
    except RuntimeError as e:
        raise StoreError(
            f"{path}: cannot load the vector index ({e})",
            hint="the index is derived data: run `memp index rebuild`",
        ) from None
    idx.set_ef(store.config.index.ef_search)
    return idx


def _load_lexical(store: Store) -> LexicalIndex | None:
    from .lexical import LexicalIndex

    try:
        return LexicalIndex.load(store.index_dir)
    except FileNotFoundError:
        return None


def check_embedder(store: Store, state: State, embedder_name: str) -> None:
    if state.embedder != embedder_name:
        raise ModelError(
            f"the index of {store.root} was built with embedder {state.embedder!r}, not {embedder_name!r}",
            hint=f"set [embedder] name = {embedder_name!r} in memp.toml and run `memp index rebuild`, "
            f"or query with --embedder {state.embedder}",
        )


def load(store: Store) -> Index | None:
    """Load the index as it is on disk (no sync). None when there is none."""
    for _ in range(3):  # a concurrent writer may replace files between reads
        state = read_state(store)
        if state is None:
            return None
        try:
            return Index(store, state, _load_hnsw(store, state), _load_lexical(store) if state.ids else None)
        except StoreError:
            newer = read_state(store)
            if newer is None or newer.generation == state.generation:
                raise
    raise StoreError("the index kept changing while being read", hint="try again")


def _scan(store: Store) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    with os.scandir(store.memories_dir) as it:
        for e in it:
            name = e.name
            if not name.endswith(".toml") or name.startswith(TMP_PREFIX):
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            out[name[:-5]] = (st.st_mtime_ns, st.st_size)
    return out


def is_fresh(store: Store, state: State | None) -> bool:
    """Cheap check that the index matches the memory files."""
    if state is None:
        return not any(True for _ in _iter_toml(store))
    try:
        dir_mtime = store.memories_dir.stat().st_mtime_ns
    except FileNotFoundError:
        return not state.ids
    if dir_mtime != state.dir_mtime_ns:
        return False
    if len(state.ids) > FULL_SCAN_LIMIT:
        return True
    # Files added, removed or saved by rename change the directory's mtime;
    # in-place writes are caught here. Broken files are not in the state: they
    # were reported by the sync that saw them and are unchanged since.
    files = _scan(store)
    return all(
        files.get(mid) == (m, s) for mid, m, s in zip(state.ids, state.mtimes, state.sizes, strict=True)
    )


def _iter_toml(store: Store) -> Any:
    try:
        for n in os.listdir(store.memories_dir):
            if n.endswith(".toml") and not n.startswith(TMP_PREFIX):
                yield n
    except FileNotFoundError:
        return


def sync(
    store: Store,
    embedder: Embedder,
    *,
    rebuild: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Index, SyncReport]:
    """Bring the index up to date with ``memories/``. Takes the writer lock."""
    import numpy as np

    report = SyncReport(rebuilt=rebuild)
    with store.lock:
        old = read_state(store)
        last_generation = old.generation if old is not None else 0
        if rebuild:
            old = None
        if old is not None and (old.embedder != embedder.name or old.dim != embedder.dim):
            check_embedder(store, old, embedder.name)
            raise ModelError(
                f"the index has dimension {old.dim}, the embedder gives {embedder.dim}",
                hint="run `memp index rebuild`",
            )
        dir_mtime = store.memories_dir.stat().st_mtime_ns
        files = _scan(store)
        state = State(embedder=embedder.name, dim=embedder.dim, generation=last_generation)
        hnsw = None
        if old is not None:
            state.generation, state.next_label = old.generation, old.next_label
            try:
                hnsw = _load_hnsw(store, old)
            except StoreError:
                old, hnsw = None, None
                state.next_label = 0
                report.rebuilt = True
        prev: dict[str, int] = {}
        if old is not None:
            prev = {mid: i for i, mid in enumerate(old.ids)}
        to_embed: list[tuple[int, Memory]] = []  # (position in new state, memory)
        removed_labels: list[int] = []
        for mid in sorted(files):
            mtime, size = files[mid]
            i = prev.get(mid)
            if i is not None and old is not None and (old.mtimes[i], old.sizes[i]) == (mtime, size):
                state.ids.append(mid)
                state.labels.append(old.labels[i])
                state.kinds.append(old.kinds[i])
                state.key_hashes.append(old.key_hashes[i])
                state.mtimes.append(mtime)
                state.sizes.append(size)
                state.texts.append(old.texts[i])
                continue
            try:
                mem = load_memory_file(store.memories_dir / f"{mid}.toml")
            except MemoryFileError as e:
                report.broken.append(e)
                if i is not None and old is not None:
                    removed_labels.append(old.labels[i])
                continue
            khash = mem.key_hash()
            if i is not None and old is not None and old.key_hashes[i] == khash:
                label = old.labels[i]  # content edit that leaves the keys alone: no re-embed
                report.updated += 1
            else:
                if i is not None and old is not None:
                    label = old.labels[i]
                    report.updated += 1
                else:
                    label = state.next_label
                    state.next_label += 1
                    report.added += 1
                to_embed.append((len(state.ids), mem))
            state.ids.append(mid)
            state.labels.append(label)
            state.kinds.append(mem.kind)
            state.key_hashes.append(khash)
            state.mtimes.append(mtime)
            state.sizes.append(size)
            state.texts.append(_lexical_text(mem))
        if old is not None:
            gone = set(old.ids) - set(files)
            removed_labels.extend(old.labels[prev[mid]] for mid in gone)
            report.removed = len(gone)
        state.dir_mtime_ns = dir_mtime
        changed = report.changed or bool(removed_labels) or old is None or report.rebuilt
        if not changed and old is not None:
            if old.dir_mtime_ns != dir_mtime:
                atomic_write(state_path(store), state.to_json())
            lex = _load_lexical(store) if state.ids else None
            return Index(store, state, hnsw, lex), report

        cfg = store.config.index
        if to_embed:
            if hnsw is None:
                hnsw = _hnswlib().Index(space="cosine", dim=embedder.dim)
                hnsw.init_index(
                    max_elements=max(1024, state.next_label),
                    M=cfg.M,
                    ef_construction=cfg.ef_construction,
                    allow_replace_deleted=False,
                )
            need = state.next_label
            if need > hnsw.get_max_elements():
                hnsw.resize_index(max(need, int(hnsw.get_max_elements() * 1.5)))
            done = 0
            for start in range(0, len(to_embed), EMBED_BATCH):
                batch = to_embed[start : start + EMBED_BATCH]
                vecs = embedder.embed([m.key_text() for _, m in batch])
                labels = np.array([state.labels[pos] for pos, _ in batch], dtype=np.int64)
                for lab in labels.tolist():
                    with contextlib.suppress(RuntimeError):
                        hnsw.unmark_deleted(lab)
                hnsw.add_items(vecs, labels, num_threads=1, replace_deleted=False)
                done += len(batch)
                report.embedded += len(batch)
                if progress:
                    progress(done, len(to_embed))
        if hnsw is not None:
            for lab in removed_labels:
                with contextlib.suppress(RuntimeError):
                    hnsw.mark_deleted(lab)
        _write(store, state, hnsw, old)
        lex = _write_lexical(store, state)
        store.journal(
            "index.sync",
            added=report.added,
            updated=report.updated,
            removed=report.removed,
            embedded=report.embedded,
            rebuilt=report.rebuilt,
        )
        hnsw_out = hnsw if state.ids else None
        if hnsw_out is not None:
            hnsw_out.set_ef(cfg.ef_search)
        return Index(store, state, hnsw_out, lex), report


def _lexical_text(mem: Memory) -> str:
    return mem.key_text() + ("\n" + " ".join(mem.keywords) if mem.keywords else "")


def _write(store: Store, state: State, hnsw: hnswlib.Index | None, old: State | None) -> None:
    state.generation += 1
    if hnsw is not None and state.ids:
        final = _hnsw_path(store, state.generation)
        tmp = store.index_dir / f"{TMP_PREFIX}hnsw-{state.generation}.bin"
        hnsw.save_index(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    atomic_write(state_path(store), state.to_json())
    for p in store.index_dir.glob("hnsw-*.bin"):
        if p.name != f"hnsw-{state.generation}.bin":
            with contextlib.suppress(OSError):
                p.unlink()


def _write_lexical(store: Store, state: State) -> LexicalIndex | None:
    from .lexical import LexicalIndex

    lex = LexicalIndex.build(list(zip(state.labels, state.texts, strict=True)))
    lex.save(store.index_dir)
    return lex if state.ids else None


def clear(store: Store) -> None:
    """Remove the derived index files (used by ``memp index rebuild``)."""
    for p in store.index_dir.iterdir():
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
