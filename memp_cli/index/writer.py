"""Writing the index: :func:`sync` brings it up to date with ``memories/`` under the writer
lock and writes a new generation (:func:`write_generation`); :func:`build_in_memory` does the
same work without the lock and without writing (a store the process may not write)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from memp_cli.backends.embedders import Embedder
from memp_cli.errors import MemoryFileError, ModelError, StoreError
from memp_cli.index.entry import Entry, Fresh, entry
from memp_cli.index.keywords import KeywordIndex, load_keywords, sync_keywords
from memp_cli.index.reader import Index, read_lexical
from memp_cli.index.state import (
    EMBED_BATCH,
    INDEX_FILE_NAME,
    INDEX_VERSION,
    KW_VERSION,
    STATE_NAME,
    FileTable,
    IndexVersionError,
    State,
    built_path,
    check_embedder,
    delta_path,
    files_path,
    hnsw_path,
    kw_paths,
    lexical_stem,
    load_files,
    peek_generation,
    read_state,
    scan,
    state_path,
    vectors_path,
)
from memp_cli.index.vecsync import Graphs, drop_labels, graph_for, open_vectors
from memp_cli.index.vectors import (
    RamVectors,
    VectorFile,
    check_graph_file,
    load_delta,
    load_vectors,
    save_hnsw,
    unit_rows,
)
from memp_cli.store.fsutil import atomic_write, remove_owned

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.index.lexical import LexicalIndex
    from memp_cli.store.protocol import MemoryStore

Progress = Callable[[int, int], None]
# A sync that embeds this many memories adds them to the graph on every core (the graph then
# depends a little on thread timing); a smaller one on one thread, the same graph every time.
PARALLEL_ADD_MIN = 2048


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    embedded: int = 0
    keywords_embedded: int = 0
    broken: list[MemoryFileError] = field(default_factory=list)
    rebuilt: bool = False
    # Why an index the caller did not ask to rebuild was rebuilt (older format, damaged state).
    rebuild_reason: str | None = None
    # Damaged files of the last generation that were rebuilt without embedding (BM25, keywords).
    repaired: list[str] = field(default_factory=list)
    # Memories whose files changed since the last generation (a hand edit, or memp's own write).
    updated_ids: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def sync(
    store: MemoryStore,
    embedder: Embedder,
    *,
    rebuild: bool = False,
    progress: Progress | None = None,
    fresh: Fresh | None = None,
) -> tuple[Index, SyncReport]:
    """Bring the index up to date with ``memories/``: takes the writer lock and writes a new
    generation when anything changed (state.json last; see :func:`write_generation`).

    ``rebuild``: embed every memory again (the last generation stays readable until the new
    one is complete). Without it, an index with a damaged state or files is rebuilt all the same
    (``report.rebuilt``, ``report.rebuild_reason``) or, when only BM25 or keyword files are
    damaged, repaired without embedding (``report.repaired``); one in an older readable format is
    rewritten in this one without embedding; one from a newer memp raises
    :class:`IndexVersionError`. ``progress(done, total)``: after each batch of embedded texts.
    ``fresh``: the memories the caller has just written (:data:`Fresh`), not read again while
    their files are as written.
    """
    with store.lock:
        return _sync(store, embedder, rebuild=rebuild, progress=progress, persist=True, fresh=fresh)


def build_in_memory(
    store: MemoryStore, embedder: Embedder, *, progress: Progress | None = None
) -> tuple[Index, SyncReport]:
    """What :func:`sync` would make of the index, without the lock and without writing: for a
    store this process may not write. Only what changed since the last generation is embedded."""
    return _sync(store, embedder, rebuild=False, progress=progress, persist=False)


def _sync(
    store: MemoryStore,
    embedder: Embedder,
    *,
    rebuild: bool,
    progress: Progress | None,
    persist: bool,
    fresh: Fresh | None = None,
) -> tuple[Index, SyncReport]:

    report = SyncReport(rebuilt=rebuild)
    old, last_generation = _read_old(store, embedder, rebuild, report)
    dir_mtime = store.memories_mtime_ns()
    files = scan(store)
    state = State(embedder=embedder.name, dim=embedder.dim, generation=last_generation)
    table = FileTable()
    delta = None
    old_table = FileTable()
    old_vectors: np.ndarray | None = None
    if old is not None:
        state.generation, state.next_label = old.generation, old.next_label
        state.kw_version = old.kw_version
        try:
            old_table = load_files(store, old)
            check_graph_file(store, old)  # the base graph is read only by a merge
            delta = load_delta(store, old)
        except StoreError as e:
            old, delta = None, None
            state.next_label = 0
            report.rebuilt = True
            report.rebuild_reason = e.message
        else:
            if old.ids:  # else the graphs and the vectors file start afresh
                state.vec_gen, state.base_gen, state.base_end = old.vec_gen, old.base_gen, old.base_end
                state.base_deleted = list(old.base_deleted)
            with contextlib.suppress(StoreError):  # else taken from the graph below
                old_vectors = load_vectors(store, old) if old.ids else None
    first = state.next_label  # the labels of this sync's embeddings start here
    to_embed, removed_labels, kw_src = _plan(store, files, old, old_table, state, table, report, fresh)
    _relabel(state, to_embed, removed_labels, first)
    state.dir_mtime_ns = dir_mtime
    kw_missing = old is None or old.kw_version != KW_VERSION
    vectors_missing = old is not None and bool(old.ids) and old_vectors is None
    changed = report.changed or bool(removed_labels) or kw_missing or report.rebuilt or vectors_missing
    if not changed and old is not None and old.version == INDEX_VERSION:
        # Nothing to embed: the last generation stands if its BM25 and keyword files are sound.
        state.lexical, state.procedure = old.lexical, old.procedure
        try:
            lex = read_lexical(store, old)
            proc = read_lexical(store, old, "procedure")
        except StoreError as e:
            report.repaired.append(e.message)
        try:
            kw_old: KeywordIndex | None = load_keywords(store, old)
        except StoreError as e:
            report.repaired.append(e.message)
            kw_old = None  # rebuilt below from the memory files (only new words are embedded)
        if not report.repaired:
            if persist and (old.dir_mtime_ns != dir_mtime or old.broken != state.broken):
                atomic_write(state_path(store), state.to_json())  # same generation, same files
            return (
                Index(
                    store,
                    state,
                    None,
                    lex,
                    kw_old,
                    vectors=old_vectors,
                    files=table,
                    procedure=proc,
                    delta=delta,
                ),
                report,
            )
        kw_missing = kw_old is None

    cfg = store.config.index
    vectors = open_vectors(store, state, old, old_vectors, delta, first, persist)
    old_vectors = None  # unmapped before the old generation's files are removed
    try:
        # Keywords first: an interrupted embedding of the memories then keeps a complete keyword side.
        kw = sync_keywords(store, embedder, state, old, kw_src, kw_missing, report)
        graphs = graph_for(store, state, delta, vectors, removed_labels, first)
        if to_embed:
            _embed(
                store,
                embedder,
                state,
                graphs,
                kw,
                table,
                vectors,
                to_embed,
                removed_labels,
                report,
                progress,
                persist,
            )
        drop_labels(state, graphs, removed_labels)
        both = _update_lexical(store, old, state, table, kw_src) if old is not None else None
        if both is None:
            both = _build_lexical(state, table)
        if persist:
            if report.updated_ids:  # a hand edit becomes a version of its memory, before the index
                store.notice_edits(report.updated_ids)  # stops calling it changed (a kill between)
            write_generation(store, state, graphs, kw, table, vectors, both)
            store.journal(
                "index.sync",
                added=report.added,
                updated=report.updated,
                removed=report.removed,
                embedded=report.embedded,
                rebuilt=report.rebuilt,
            )
        matrix = vectors.matrix() if state.ids else None
    finally:
        vectors.close()
    for graph in (graphs.base, graphs.delta, kw.hnsw):
        if graph is not None:
            graph.set_ef(cfg.ef_search)
    index = Index(
        store,
        state,
        graphs.base if state.ids else None,
        both[0] if both else None,
        kw,
        vectors=matrix,
        files=table,
        procedure=both[1] if both else None,
        delta=graphs.delta if state.ids else None,
    )
    return index, report


def _relabel(state: State, to_embed: list[tuple[int, Entry]], removed_labels: list[int], first: int) -> None:
    """Give every memory to embed a new label, ``first`` on in ``to_embed`` order, so the
    vectors file only ever grows at its end (a memory whose keys changed leaves its old label
    and row behind: the last generation, which still names them, stays intact)."""
    for j, (pos, _) in enumerate(to_embed):
        if state.labels[pos] < first:
            removed_labels.append(state.labels[pos])
        state.labels[pos] = first + j
    state.next_label = first + len(to_embed)


def _read_old(
    store: MemoryStore, embedder: Embedder, rebuild: bool, report: SyncReport
) -> tuple[State | None, int]:
    """The state a sync starts from (None: from scratch) and the last generation written."""
    try:
        old = read_state(store)
    except IndexVersionError:
        if not rebuild:
            raise
        old = None
    except StoreError as e:  # older format or damaged: derived data, rebuilt
        old = None
        if not rebuild:
            report.rebuilt = True
            report.rebuild_reason = e.message
    last_generation = old.generation if old is not None else peek_generation(store)
    if rebuild:
        old = None  # from scratch; the old generation stays readable until the new one is written
    if old is not None and (old.embedder != embedder.name or old.dim != embedder.dim):
        check_embedder(store, old, embedder.name)
        raise ModelError(
            f"the index has dimension {old.dim}, the embedder gives {embedder.dim}",
            hint="run `memp index rebuild`",
        )
    return old, last_generation


def _plan(
    store: MemoryStore,
    files: dict[str, tuple[int, int]],
    old: State | None,
    old_table: FileTable,
    state: State,
    table: FileTable,
    report: SyncReport,
    fresh: Fresh | None = None,
) -> tuple[list[tuple[int, Entry]], list[int], list[list[str] | int]]:
    """Fill ``state`` and ``table`` with the memory files (in id order): unchanged ones (same
    stat) copied from the old index, the others read, or taken from ``fresh`` while their stat
    is the one recorded there. Returns what to embed (state position, entry), the labels to
    remove from the graph, and per position the keywords of a read memory or its old position.
    Only :class:`Entry` texts are kept of a memory read, never the memory."""
    prev = {mid: i for i, mid in enumerate(old.ids)} if old is not None else {}
    fresh = fresh or {}
    to_embed: list[tuple[int, Entry]] = []
    removed_labels: list[int] = []
    kw_src: list[list[str] | int] = []
    for mid in sorted(files):
        mtime, size = files[mid]
        i = prev.get(mid)
        # (An index from before format 4 has no procedure texts: its memories are re-read.)
        if (
            i is not None
            and old is not None
            and old.version >= 4
            and old_table.built[i]
            and (old_table.mtimes[i], old_table.sizes[i]) == (mtime, size)
        ):
            state.ids.append(mid)
            state.labels.append(old.labels[i])
            state.kinds.append(old.kinds[i])
            state.families.append(old.families[i])
            old_row = (old_table.texts[i], old_table.procedures[i], old_table.built[i])
            table.append(old_table.key_hashes[i], mtime, size, *old_row)
            kw_src.append(i)
            continue
        handed = fresh.get(mid)
        try:
            ent = (
                handed[0]
                if handed is not None and handed[1] == (mtime, size)
                else entry(store.read_memory(mid))
            )
        except MemoryFileError as e:
            report.broken.append(e)
            state.broken[mid] = [mtime, size]
            if i is not None and old is not None:
                removed_labels.append(old.labels[i])
            continue
        khash = ent.key_hash
        if i is not None and old is not None and old_table.key_hashes[i] == khash:
            label = old.labels[i]  # content edit that leaves the keys alone: no re-embed
            if (old_table.mtimes[i], old_table.sizes[i]) != (mtime, size):
                report.updated += 1
                report.updated_ids.append(mid)
        else:
            if i is not None and old is not None:
                label = old.labels[i]
                report.updated += 1
                report.updated_ids.append(mid)
            else:
                label = state.next_label
                state.next_label += 1
                report.added += 1
            to_embed.append((len(state.ids), ent))
        state.ids.append(mid)
        state.labels.append(label)
        state.kinds.append(ent.kind)
        state.families.append(ent.family)
        table.append(khash, mtime, size, ent.lexical, ent.procedure, ent.built)
        kw_src.append(ent.keywords)
    if old is not None:
        gone = set(old.ids) - set(files)
        removed_labels.extend(old.labels[prev[mid]] for mid in gone)
        report.removed = len(gone)
    return to_embed, removed_labels, kw_src


def _embed(
    store: MemoryStore,
    embedder: Embedder,
    state: State,
    graphs: Graphs,
    kw: KeywordIndex,
    table: FileTable,
    vectors: VectorFile | RamVectors,
    to_embed: list[tuple[int, Entry]],
    removed_labels: list[int],
    report: SyncReport,
    progress: Progress | None,
    persist: bool,
) -> None:
    """Embed the key texts of ``to_embed`` in batches into the graph and ``vectors`` (their
    labels are new and consecutive: appended). When interrupted (Ctrl-C, a failing embedder),
    write what was done first (:func:`_checkpoint`)."""
    import numpy as np

    done = 0
    threads = (os.cpu_count() or 1) if len(to_embed) >= PARALLEL_ADD_MIN else 1
    try:
        for start in range(0, len(to_embed), EMBED_BATCH):
            batch = to_embed[start : start + EMBED_BATCH]
            vecs = embedder.embed([e.key for _, e in batch])
            labels = np.array([state.labels[pos] for pos, _ in batch], dtype=np.int64)
            rows = unit_rows(vecs)
            vectors.append(labels, rows)
            graphs.target.add_items(rows, labels, num_threads=threads, replace_deleted=False)
            done += len(batch)
            report.embedded += len(batch)
            if progress:
                progress(done, len(to_embed))
    except BaseException:
        if persist and done:
            pending = {pos for pos, _ in to_embed[done:]}
            with contextlib.suppress(Exception):
                _checkpoint(store, state, graphs, kw, table, vectors, pending, removed_labels, report)
        raise


def _checkpoint(
    store: MemoryStore,
    state: State,
    graphs: Graphs,
    kw: KeywordIndex,
    table: FileTable,
    vectors: VectorFile | RamVectors,
    pending: set[int],
    removed_labels: list[int],
    report: SyncReport,
) -> None:
    """Write a complete generation of what an interrupted sync finished: every memory but those
    at the ``pending`` state positions (not embedded yet), which the next sync finds missing and
    embeds. Its directory mtime is left out, so a large store's quick freshness check sees it
    stale too."""
    import numpy as np

    keep = [pos for pos in range(len(state.ids)) if pos not in pending]
    part = State(
        embedder=state.embedder,
        dim=state.dim,
        generation=state.generation,
        next_label=vectors.rows,  # the pending labels were never named: the next sync reuses them
        vec_gen=state.vec_gen,
        base_gen=state.base_gen,
        base_end=min(state.base_end, vectors.rows),
        dir_mtime_ns=0,
        ids=[state.ids[p] for p in keep],
        labels=[state.labels[p] for p in keep],
        kinds=[state.kinds[p] for p in keep],
        families=[state.families[p] for p in keep],
        broken=state.broken,
    )
    part_table = FileTable()
    for p in keep:
        row = (table.texts[p], table.procedures[p], table.built[p])
        part_table.append(table.key_hashes[p], table.mtimes[p], table.sizes[p], *row)
    # A pending memory that was in the index before (its keys changed) leaves it until
    # re-embedded: its old label is among the removed ones (its new one was never added).
    part.base_deleted = list(state.base_deleted)
    drop_labels(part, graphs, removed_labels)
    rows = [kw.row(p) for p in keep]
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    part_kw = KeywordIndex(kw.words, offsets, flat.astype(np.int64), kw.hnsw)
    write_generation(store, part, graphs, part_kw, part_table, vectors, _build_lexical(part, part_table))
    store.journal("index.sync", embedded=report.embedded, interrupted=True, pending=len(pending))


def _build_lexical(state: State, table: FileTable) -> tuple[LexicalIndex, LexicalIndex] | None:
    """The two BM25 indexes of a generation: over the key texts and over the procedures."""
    from memp_cli.index.lexical import LexicalIndex

    if not state.ids:
        return None
    return (
        LexicalIndex.build(list(zip(state.labels, table.texts, strict=True))),
        LexicalIndex.build(list(zip(state.labels, table.procedures, strict=True))),
    )


def _update_lexical(
    store: MemoryStore, old: State, state: State, table: FileTable, kw_src: list[list[str] | int]
) -> tuple[LexicalIndex, LexicalIndex] | None:
    """The two BM25 indexes of the new generation from the old one's (:meth:`LexicalIndex.updated`:
    the memories read again are dropped and added, nothing else is tokenized again); None when
    the old ones cannot be used (another format, damaged, other BM25 parameters): build them."""
    import numpy as np

    from memp_cli.index import lexical

    if not state.ids or old.version != INDEX_VERSION or not old.ids:
        return None
    try:
        sides = (read_lexical(store, old), read_lexical(store, old, "procedure"))
    except StoreError:
        return None
    copied = [lab for lab, src in zip(state.labels, kw_src, strict=True) if isinstance(src, int)]
    read = [p for p, src in enumerate(kw_src) if not isinstance(src, int)]
    out = []
    for lex, texts in zip(sides, (table.texts, table.procedures), strict=True):
        if lex is None or (lex.k1, lex.b, lex.idf_power, lex.bigrams) != (
            lexical.K1,
            lexical.B,
            lexical.IDF_POWER,
            lexical.BIGRAMS,
        ):
            return None
        try:
            drop = np.setdiff1d(lex.labels, np.array(copied, dtype=np.int64))
            new = lex.updated(drop, [(state.labels[p], texts[p]) for p in read])
        except ValueError:
            return None
        if len(new) != len(state.ids):
            return None
        out.append(new)
    return out[0], out[1]


def write_generation(
    store: MemoryStore,
    state: State,
    graphs: Graphs,
    kw: KeywordIndex,
    table: FileTable,
    vectors: VectorFile | RamVectors,
    lex: tuple[LexicalIndex, LexicalIndex] | None,
) -> None:
    """Write ``state`` as the next generation: every file of it first (the vectors file's new
    rows fsynced, the base graph when merged else the delta graph, keywords, file table, BM25
    arrays, state columns; each atomically), then state.json, which names the generation, then remove every
    other file of the index directory (older generations, what an interrupted write left). A
    process killed at any point leaves the last complete generation readable: the rows it
    names are never written again, the base it names is only ever replaced by a new file."""
    state.generation += 1
    gen = state.generation
    written = {STATE_NAME}

    def wrote(path: Path) -> None:
        written.add(path.name)

    state.version = INDEX_VERSION
    if state.ids:
        vectors.flush()
        wrote(vectors_path(store, state))
        if graphs.merged and graphs.base is not None:
            save_hnsw(store, graphs.base, hnsw_path(store, gen).name)
            state.base_gen = gen
        if state.base_end:
            wrote(hnsw_path(store, state.base_gen))
        if state.next_label > state.base_end and graphs.delta is not None:
            save_hnsw(store, graphs.delta, delta_path(store, gen).name)
            wrote(delta_path(store, gen))
    jpath, bpath = kw_paths(store, gen)
    if kw.hnsw is not None and kw.words:
        save_hnsw(store, kw.hnsw, bpath.name)
        wrote(bpath)
    kw_json = {
        "version": KW_VERSION,
        "words": kw.words,
        "offsets": kw.offsets.tolist(),
        "labels": kw.labels.tolist(),
    }
    atomic_write(jpath, orjson.dumps(kw_json))
    wrote(jpath)
    atomic_write(files_path(store, gen), table.to_json(gen))
    wrote(files_path(store, gen))
    atomic_write(built_path(store, gen), table.built_json(gen))
    wrote(built_path(store, gen))
    state.lexical = state.procedure = None
    if lex is not None and state.ids:
        from memp_cli.index.lexical import array_paths

        state.lexical = lex[0].save(store.index_dir, lexical_stem(gen))
        state.procedure = lex[1].save(store.index_dir, lexical_stem(gen, "procedure"))
        for stem in (lexical_stem(gen), lexical_stem(gen, "procedure")):
            written.update(p.name for p in array_paths(store.index_dir, stem).values())
    state.kw_version = KW_VERSION
    state.version = INDEX_VERSION
    written.update(p.name for p in state.write_columns(store.index_dir, (table.mtimes, table.sizes)))
    atomic_write(state_path(store), state.to_json())
    remove_owned(store.index_dir, written, INDEX_FILE_NAME)
