"""The derived index: hnswlib vectors + BM25, rebuildable from ``memories/``.

Files in ``<store>/index/`` (JSON and numpy only, never pickle):

- ``state.json``: what a query reads: the embedder and dimension, the generation of the
  files below, the BM25 manifest, the memory count and the kind and family names tables;
  plus the memory files that failed to load at the last sync. Per memory (columnar, in id
  order) its id, label, kind and family code are ``columns-<gen>.<column>.npy`` (format 7),
  which a query maps (:class:`~memp_cli.index.state.State`). Written last, atomically: it
  names the generation of every other file, so a reader never pairs a new graph with old
  labels, and a writer killed at any point leaves the last complete generation readable
  (files of an unfinished one are removed by the next sync, or by ``memp doctor --fix``).
- ``records-<tgen>.{rows,text,kw,words}.bin`` (format 7, :mod:`~memp_cli.index.records`): what
  only a sync (and the freshness check of a small store, and ``memp distill``'s planning) reads,
  per memory file as a sync saw it: its stat, key hash, what it was built with (policy, model,
  prompt version), its BM25 texts and its keyword labels; the keyword strings. Append-only: a
  sync cuts each file to what the last generation names, appends its batch's records, fsyncs
  them, then writes the generation's ``records-<gen>.json`` (which record files, how much of
  each is valid) and ``records-<gen>.pos.npy`` (per state position, its record). A memory file
  that changed gets a new record; once most records are dead a sync starts a new record
  generation with the live ones. (Formats 2-6 kept these in ``files-<gen>.json``,
  ``built-<gen>.json`` and ``keywords-<gen>.json``, rewritten whole by every sync.)
- ``vectors-<vec_gen>.f32``: the unit vectors as raw float32 rows, row = label, append-only:
  labels only grow (a memory whose keys change gets a new one), so a sync appends its batch's
  rows, fsyncs them, and only then writes the state.json that counts them (``next_label``
  rows are valid; what a killed sync appended past them is cut by the next one). Rows of
  labels no memory has any more stay until a rebuild (``state.labels`` lists the live ones).
  A one-shot query maps exactly the rows its state names and searches exactly (a
  matrix-vector product): ~20 ms at 100k memories against ~130 ms to load a graph, recall 1.0.
  A rebuild, or the upgrade of an older index, writes a new file (``vec_gen`` names it).
- ``hnsw-<base_gen>.bin`` and ``delta-<gen>.bin``: the hnswlib graphs (cosine space), for
  long-lived processes and batches: the base holds the labels below ``base_end`` (but those in
  ``base_deleted``, dropped at query time), the delta the newer ones. A sync adds its vectors
  to the delta, which is small to load and rewrite; once the delta (with ``base_deleted``)
  passes 1/8 of the base, the sync merges it into the base and writes a new base.
  :meth:`Index.search` searches both as one graph.
- ``lexical-<base gen>.<array>.npy``: the BM25 index over the same texts
  (:mod:`memp_cli.index.lexical`; ``procedure-`` over the procedures); its manifest is in
  ``state.json``. Like the graph, a base (the files of the generation that made it, named by the
  manifest's ``base_gen``) plus ``lexical-<gen>-delta``/``-dead``: the documents added since and
  the base's removed ones; merged into a new base past 1/16 of it (:mod:`memp_cli.index.lexseg`).
- ``keywords-<gen>.bin``: the AveFact keys. Every distinct keyword string of the store is
  embedded once and kept in a second hnswlib graph (label = line of the records' words file;
  each memory's labels are in its record). A memory's keywords are its ``keywords``
  field, or :func:`memp_cli.build.builtin.keywords.extract_keywords` of its task when that is empty.
  Words no memory uses any more are marked deleted but keep their label, so a keyword that
  comes back is not embedded again; ``memp index rebuild`` starts afresh. Only ``--key
  avefact`` (and a sync that changes something) reads these files.

:func:`sync` brings the index up to date with the memory files: new files
are embedded, changed ones (by mtime/size, then key hash) re-embedded,
deleted ones removed, broken ones reported and left out. A memory's keywords
are re-read whenever its file changes; only keyword strings new to the store
are embedded. The BM25 index of a new generation is the last one's with the memories read
again dropped and added (:meth:`~memp_cli.index.lexseg.Segmented.updated`: only what changed is
tokenized, and only the delta is written while it is small; the same scores as a full build).
An index in format 5 (one ``hnsw-<gen>.bin``
and a ``vectors-<gen>.npy`` rewritten by every sync) is upgraded by the next sync: its graph
becomes the base as it is, its vectors are copied into a new vectors file (no embedding). An
index in format 4 is rewritten in this format by the next sync, which reads the memory files
again (no embedding). An index in
format 2 (BM25 under its own ``lexical.json``) is read, and rewritten in this format by the
next sync without embedding; an older
one is rebuilt by the next sync; one written by a newer memp is left alone (an
error says to upgrade).

Modules: :mod:`~memp_cli.index.state` (state.json, the file table, generation file
names, freshness), :mod:`~memp_cli.index.vectors` (graphs and vectors file),
:mod:`~memp_cli.index.vecsync` (the vector side of a sync: append, delta or merge),
:mod:`~memp_cli.index.keywords` (AveFact keywords), :mod:`~memp_cli.index.lexical`
(BM25), :mod:`~memp_cli.index.reader` (:class:`Index`, :func:`load`) and
:mod:`~memp_cli.index.writer` (:func:`sync`, writing a generation).
"""

from __future__ import annotations

from memp_cli.index.access import Opened, open_index
from memp_cli.index.keywords import KeywordIndex, memory_keywords
from memp_cli.index.reader import Index, check_files, load
from memp_cli.index.state import (
    EMBED_BATCH,
    FULL_SCAN_LIMIT,
    INDEX_VERSION,
    KW_VERSION,
    STATE_NAME,
    FileTable,
    IndexVersionError,
    State,
    check_embedder,
    is_fresh,
    leftover_files,
    read_state,
    state_path,
)
from memp_cli.index.vectors import unit_rows
from memp_cli.index.writer import SyncReport, build_in_memory, sync

__all__ = [
    "EMBED_BATCH",
    "FULL_SCAN_LIMIT",
    "INDEX_VERSION",
    "KW_VERSION",
    "STATE_NAME",
    "FileTable",
    "Index",
    "IndexVersionError",
    "KeywordIndex",
    "Opened",
    "State",
    "SyncReport",
    "build_in_memory",
    "check_embedder",
    "check_files",
    "is_fresh",
    "leftover_files",
    "load",
    "memory_keywords",
    "open_index",
    "read_state",
    "state_path",
    "sync",
    "unit_rows",
]
