"""Writing the index: :func:`sync` brings it up to date with ``memories/`` under the writer
lock and writes a new generation (:func:`write_generation`); :func:`build_in_memory` does the
same work without the lock and without writing (a store the process may not write)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memp_cli.backends.embedders import Embedder
from memp_cli.errors import MemoryFileError, ModelError, StoreError
from memp_cli.index.entry import Fresh, Scan, Stamps
from memp_cli.index.filesync import Old, Sources, appendable, load_old, place, stamps_now
from memp_cli.index.generation import write_generation, write_graphs, write_texts
from memp_cli.index.keywords import KeywordIndex, load_graph, load_keywords, sync_keywords
from memp_cli.index.plan import plan_sync
from memp_cli.index.reader import Index, read_lexical
from memp_cli.index.records import RecordLog
from memp_cli.index.state import (
    EMBED_BATCH,
    INDEX_VERSION,
    KW_VERSION,
    IndexVersionError,
    State,
    check_embedder,
    peek_generation,
    read_state,
    state_path,
)
from memp_cli.index.vecsync import Graphs, drop_labels, graph_for, open_vectors
from memp_cli.index.vectors import (
    RamVectors,
    VectorFile,
    check_graph_file,
    load_delta,
    load_vectors,
    unit_rows,
)
from memp_cli.store.fsutil import atomic_write

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.index.lexical import LexicalIndex
    from memp_cli.index.lexseg import Lexical, Segmented
    from memp_cli.store.protocol import MemoryStore

Progress = Callable[[int, int], None]
# A sync that embeds this many memories adds them to the graph on every core (the graph then
# depends a little on thread timing); a smaller one on one thread, the same graph every time.
PARALLEL_ADD_MIN = 2048
# A rebuild's BM25 indexes are built this many documents at a time (:func:`_build_side`).
LEXICAL_CHUNK = 65536


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
    scanned: Scan | None = None,
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
    their files are as written. ``scanned``: the memory files' stamps as the caller took them
    (:class:`Scan`), used instead of statting every file while the memories folder is as the
    caller left it; only the ``fresh`` memories are statted again.
    """
    with store.lock:
        return _sync(
            store, embedder, rebuild=rebuild, progress=progress, persist=True, fresh=fresh, scanned=scanned
        )


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
    scanned: Scan | None = None,
) -> tuple[Index, SyncReport]:

    report = SyncReport(rebuilt=rebuild)
    old, last_generation = _read_old(store, embedder, rebuild, report)
    dir_mtime = store.memories_mtime_ns()
    files = stamps_now(store, dir_mtime, fresh, scanned)
    state = State(embedder=embedder.name, dim=embedder.dim, generation=last_generation)
    delta = None
    old_side: Old | None = None
    old_vectors: np.ndarray | None = None
    if old is not None:
        state.generation, state.next_label = old.generation, old.next_label
        state.kw_version = old.kw_version
        try:
            old_side = load_old(store, old)
            check_graph_file(store, old)  # the base graph is read only by a merge
            delta = load_delta(store, old)
        except StoreError as e:
            old, delta, old_side = None, None, None
            state.next_label = 0
            report.rebuilt = True
            report.rebuild_reason = e.message
        else:
            if old.count:  # else the graphs and the vectors file start afresh
                state.vec_gen, state.base_gen, state.base_end = old.vec_gen, old.base_gen, old.base_end
                state.base_deleted = list(old.base_deleted)
            with contextlib.suppress(StoreError):  # else taken from the graph below
                old_vectors = load_vectors(store, old) if old.count else None
    first = state.next_label  # the labels of this sync's embeddings start here
    sources = Sources()
    to_embed, removed_labels, stamps = plan_sync(store, files, old, old_side, state, sources, report, fresh)
    del files  # a rebuild holds no per-memory objects it no longer needs (stamps, entries: below)
    _relabel(state, to_embed, removed_labels, first)
    state.dir_mtime_ns = dir_mtime
    kw_missing = old is None or old.kw_version != KW_VERSION
    vectors_missing = old is not None and old.count > 0 and old_vectors is None
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
                Index(store, state, None, lex, kw_old, vectors=old_vectors, procedure=proc, delta=delta),
                report,
            )
        kw_missing = kw_old is None

    cfg = store.config.index
    vectors = open_vectors(store, state, old, old_vectors, delta, first, persist)
    old_vectors = None  # unmapped before the old generation's files are removed
    try:
        # Keywords first: an interrupted embedding of the memories then keeps a complete keyword side.
        recs, kw = _sync_records(store, embedder, state, old, old_side, sources, stamps, kw_missing, report)
        stamp_cols = (stamps.mtimes, stamps.sizes)  # the state columns
        graphs = graph_for(store, state, delta, removed_labels, first)
        if to_embed:
            _embed(
                store,
                embedder,
                state,
                graphs,
                kw,
                recs,
                vectors,
                to_embed,
                sources,
                removed_labels,
                report,
                progress,
                persist,
            )
        to_embed.clear()  # the key texts are embedded: not held through the BM25 build
        drop_labels(state, graphs, removed_labels)
        segs = _update_lexical(store, old, state, sources) if old is not None else None
        del sources
        if segs is None:
            segs = _build_lexical(state, recs)
        both: tuple[Lexical, Lexical] | None = segs
        if persist:
            if report.updated_ids:  # a hand edit becomes a version of its memory, before the index
                store.notice_edits(report.updated_ids)  # stops calling it changed (a kill between)
            written = write_texts(store, state, kw, recs, segs, stamp_cols)
            if graphs.merged:  # on disk now: not in memory beside the base being made
                del old_side, recs, segs
                sides = (read_lexical(store, state), read_lexical(store, state, "procedure"))
                both = (
                    (sides[0], sides[1]) if sides[0] is not None and sides[1] is not None else None
                )  # mapped, not read
            write_graphs(store, state, graphs, vectors, written)
            store.journal(
                "index.sync",
                added=report.added,
                updated=report.updated,
                removed=report.removed,
                embedded=report.embedded,
                rebuilt=report.rebuilt,
            )
        else:
            graphs.complete(vectors)
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
        procedure=both[1] if both else None,
        delta=graphs.delta if state.ids else None,
    )
    return index, report


def _sync_records(
    store: MemoryStore,
    embedder: Embedder,
    state: State,
    old: State | None,
    old_side: Old | None,
    sources: Sources,
    stamps: Stamps,
    kw_missing: bool,
    report: SyncReport,
) -> tuple[RecordLog, KeywordIndex]:
    """The new generation's records (appended to the old ones, or a new record generation) and
    its keyword side (only words new to the store are embedded)."""
    import numpy as np

    graph = None
    old_live = np.zeros(0, dtype=np.int64)
    words: list[str] = []
    if old is not None and old_side is not None and not kw_missing:
        try:
            if old_side.records is not None:
                words = old_side.records.words
                graph = load_graph(store, old, len(words))
                old_live = np.unique(old_side.records.keyword_rows()[1])
            elif old_side.kw is not None:
                words, graph, old_live = old_side.kw.words, old_side.kw.hnsw, old_side.kw.live()
        except StoreError:
            graph = None  # damaged: every word is embedded again
    base = appendable(old_side, sources)
    if base is not None:
        log = RecordLog(base.tgen, base)
    else:  # a new record generation: no complete generation names its files yet
        log = RecordLog(state.generation + 1, None, words if graph is not None else [])
    log.pos = place(store, log, old_side, state.ids, sources, stamps)
    offsets, flat = log.records(log.pos).keyword_rows()
    kw = sync_keywords(store, embedder, graph, old_live, log.words, offsets, flat, report)
    return log, kw


def _relabel(state: State, to_embed: list[int], removed_labels: list[int], first: int) -> None:
    """Give every memory to embed a new label, ``first`` on in ``to_embed`` order, so the
    vectors file only ever grows at its end (a memory whose keys changed leaves its old label
    and row behind: the last generation, which still names them, stays intact)."""
    for j, pos in enumerate(to_embed):
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


def _embed(
    store: MemoryStore,
    embedder: Embedder,
    state: State,
    graphs: Graphs,
    kw: KeywordIndex,
    recs: RecordLog,
    vectors: VectorFile | RamVectors,
    to_embed: list[int],
    sources: Sources,
    removed_labels: list[int],
    report: SyncReport,
    progress: Progress | None,
    persist: bool,
) -> None:
    """Embed the key texts of the positions ``to_embed`` in batches into the graph and ``vectors`` (their
    labels are new and consecutive: appended). When interrupted (Ctrl-C, a failing embedder),
    write what was done first (:func:`_checkpoint`)."""
    import numpy as np

    done = 0
    threads = (os.cpu_count() or 1) if len(to_embed) >= PARALLEL_ADD_MIN else 1
    try:
        for start in range(0, len(to_embed), EMBED_BATCH):
            batch = to_embed[start : start + EMBED_BATCH]
            vecs = embedder.embed([sources.key(pos) for pos in batch])
            labels = np.array([state.labels[pos] for pos in batch], dtype=np.int64)
            rows = unit_rows(vecs)
            vectors.append(labels, rows)
            graphs.add(labels, rows, threads)
            done += len(batch)
            report.embedded += len(batch)
            if progress:
                progress(done, len(to_embed))
    except BaseException:
        if persist and done:
            pending = set(to_embed[done:])
            with contextlib.suppress(Exception):
                _checkpoint(store, state, graphs, kw, recs, vectors, pending, removed_labels, report)
        raise


def _checkpoint(
    store: MemoryStore,
    state: State,
    graphs: Graphs,
    kw: KeywordIndex,
    recs: RecordLog,
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
    # A pending memory that was in the index before (its keys changed) leaves it until
    # re-embedded: its old label is among the removed ones (its new one was never added).
    part.base_deleted = list(state.base_deleted)
    drop_labels(part, graphs, removed_labels)
    all_pos = recs.pos
    recs.pos = all_pos[np.asarray(keep, dtype=np.int64)]
    offsets, flat = recs.records(recs.pos).keyword_rows()
    part_kw = KeywordIndex(kw.words, offsets, flat, kw.hnsw)
    try:
        write_generation(store, part, graphs, part_kw, recs, vectors, _build_lexical(part, recs))
    finally:
        recs.pos = all_pos
    store.journal("index.sync", embedded=report.embedded, interrupted=True, pending=len(pending))


def _build_lexical(state: State, recs: RecordLog) -> tuple[Segmented, Segmented] | None:
    """The two BM25 indexes of a generation: over the key texts and over the procedures."""

    if not state.ids:
        return None
    from memp_cli.index.lexseg import Segmented

    rec = recs.records(recs.pos)  # the texts read one at a time, one index after the other
    return (
        Segmented.whole(_build_side(state.labels, rec.iter_texts(0))),
        Segmented.whole(_build_side(state.labels, rec.iter_texts(1))),
    )


def _build_side(labels: list[int], texts: Iterator[str]) -> LexicalIndex:
    """One BM25 index, built :data:`LEXICAL_CHUNK` documents at a time, each chunk merged into
    the index so far (:meth:`LexicalIndex.updated`: the arrays one build of them all makes). A
    build's temporary arrays are several times its postings' size: bounded by a chunk, they
    are no longer the peak of a rebuild at 1M memories."""
    import numpy as np

    from memp_cli.index.lexical import LexicalIndex

    docs = zip(labels, texts, strict=True)
    lex = LexicalIndex.build(itertools.islice(docs, LEXICAL_CHUNK))
    none = np.zeros(0, dtype=np.int64)
    while chunk := list(itertools.islice(docs, LEXICAL_CHUNK)):
        lex = lex.updated(none, chunk)
    return lex


def _update_lexical(
    store: MemoryStore, old: State, state: State, sources: Sources
) -> tuple[Segmented, Segmented] | None:
    """The two BM25 indexes of the new generation from the old one's (:meth:`Segmented.updated`:
    the memories read again are dropped and added, nothing else is tokenized again; the old base
    is kept while the delta is small); None when the old ones cannot be used (another format,
    damaged, other BM25 parameters): build them."""
    import numpy as np

    from memp_cli.index import lexical
    from memp_cli.index.lexseg import as_segmented

    if not state.ids or old.version < 6 or not old.count:
        return None
    try:
        sides = (read_lexical(store, old), read_lexical(store, old, "procedure"))
    except StoreError:
        return None
    at = sources.positions()
    kept = at >= 0
    copied = np.zeros(old.count, dtype=bool)
    copied[at[kept]] = True
    drop = old.label_array()[~copied]  # read again, gone or broken
    read = sources.read()
    out = []
    for k, lex in enumerate(sides):
        if lex is None or (lex.k1, lex.b, lex.idf_power, lex.bigrams) != (
            lexical.K1,
            lexical.B,
            lexical.IDF_POWER,
            lexical.BIGRAMS,
        ):
            return None
        try:
            new = as_segmented(lex).updated(
                drop, [(state.labels[p], e.procedure if k else e.lexical) for p, e in read]
            )
        except ValueError:
            return None
        if len(new) != len(state.ids):
            return None
        out.append(new)
    return out[0], out[1]
