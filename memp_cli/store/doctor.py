"""``memp doctor``: check that files, index and config agree; say how to fix what does not."""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from shlex import quote
from typing import Any

import orjson

from memp_cli import index as index_mod
from memp_cli.errors import MemoryFileError, MempError
from memp_cli.model.memory import valid_id
from memp_cli.store import Store
from memp_cli.store.fsutil import TMP_PREFIX, unlink_own


@dataclass
class Finding:
    level: str  # "error" | "warning"
    what: str
    fix: str
    fixed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return vars(self)


def check(store: Store, *, fix: bool = False, embedder: Any = None) -> list[Finding]:
    findings: list[Finding] = []
    add = findings.append
    tree = scan_tree(store)  # one walk of the whole store, for links and permissions
    links = link_findings(store, tree)
    fix = fix and not links  # nothing is written while a link could lead it out of the store

    # Stray temp files from killed writers.
    for d in (store.root, store.memories_dir, store.trajectories_dir, store.index_dir, store.cache_dir):
        for p in [] if d.is_symlink() else d.glob(f"{TMP_PREFIX}*"):
            f = Finding(
                "warning",
                f"{p}: leftover temporary file from an interrupted write",
                "harmless; `memp doctor --fix` removes it",
            )
            if fix:
                with contextlib.suppress(OSError):
                    unlink_own(p)
                    f.fixed = True
            add(f)

    # Memory files.
    memory_trajs: set[str] = set()
    n_mem = 0
    for m in store.iter_memories():
        if isinstance(m, MemoryFileError):
            add(Finding("error", str(m).split("\n")[0], "fix the file by hand (memp edit ID) or restore it"))
        else:
            n_mem += 1
            memory_trajs.update(m.provenance.trajectories)
    for p in store.memories_dir.iterdir():
        if p.name.startswith(TMP_PREFIX) or p.name.startswith("."):
            continue
        if p.suffix != ".toml":
            add(
                Finding(
                    "warning",
                    f"{p}: not a memory file (memories/ holds <id>.toml files)",
                    "move it elsewhere",
                )
            )
        elif not valid_id(p.stem):
            add(
                Finding(
                    "error",
                    f"{p}: file name is not a valid memory id",
                    "rename it to <id>.toml with a lowercase id of letters, digits, - and _",
                )
            )

    # Trajectory segments.
    traj_ids: set[str] = set()
    for seg in store.segments():
        with open(seg, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                    traj_ids.add(rec["id"])
                    rec["task"], rec["steps"]
                except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                    add(
                        Finding(
                            "error",
                            f"{seg}:{lineno}: damaged trajectory record ({e})",
                            "restore the segment from a backup, or delete the line",
                        )
                    )
    missing = memory_trajs - traj_ids
    if missing:
        add(
            Finding(
                "warning",
                f"{len(missing)} memories name source trajectories that are not in trajectories/ "
                f"(e.g. {sorted(missing)[0]})",
                "re-ingest the source logs if you want them kept",
            )
        )

    # Journal.
    with contextlib.suppress(FileNotFoundError), open(store.journal_path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                add(
                    Finding(
                        "warning",
                        f"{store.journal_path}:{lineno}: torn journal line (a writer was killed)",
                        "harmless; the journal is a record, not state",
                    )
                )

    findings.extend(_index_findings(store, n_mem, fix=fix, embedder=embedder))
    findings.extend(links)
    findings.extend(permission_findings(store, tree))
    return findings


SYNC_FIX = "run `memp index sync` (or `memp doctor --fix`); the index is derived data"
REBUILD_FIX = "run `memp index rebuild` (or `memp doctor --fix`); the index is derived data"


def _index_findings(store: Store, n_mem: int, *, fix: bool, embedder: Any) -> list[Finding]:
    """The index: every file of its generation there and consistent, in step with the memory
    files, nothing left over from an interrupted write. Each problem comes with the cheapest
    fix that works: `memp index sync` (new and changed files only, and it rebuilds damaged
    files) unless only a rebuild does (another embedder, vectors that disagree)."""
    out: list[Finding] = []
    problem: Finding | None = None
    state = None
    try:
        state = index_mod.read_state(store)
        if state is None:
            if n_mem:
                problem = Finding("warning", f"{store.index_dir}: no index for {n_mem} memories", SYNC_FIX)
        elif state.embedder != store.config.embedder.name:
            problem = Finding(
                "error",
                f"the index was built with embedder {state.embedder!r} but memp.toml says "
                f"{store.config.embedder.name!r}",
                REBUILD_FIX,
            )
        else:
            index_mod.check_files(store, state)  # files table, vectors, BM25, keywords
            if state.version < index_mod.INDEX_VERSION:
                problem = Finding(
                    "warning",
                    f"the index is in an older format ({state.version}, now {index_mod.INDEX_VERSION})",
                    SYNC_FIX + " (it is upgraded without embedding anything)",
                )
            elif not index_mod.is_fresh(store, state):
                # the next command that reads it syncs it
                problem = Finding("warning", "the index is older than some memory files", SYNC_FIX)
            else:
                idx = index_mod.load(store, keywords=True, exact=True)  # graphs not loaded: read
                vector_problem = _vector_problem(idx) if idx is not None else None
                if vector_problem:
                    problem = Finding("error", vector_problem, REBUILD_FIX)
    except index_mod.IndexVersionError as e:  # from a newer memp: sync leaves it alone
        problem = Finding("error", str(e).split("\n")[0], REBUILD_FIX)
    except MempError as e:
        problem = Finding("error", str(e).split("\n")[0], SYNC_FIX)
    if problem is not None:
        if fix and embedder is not None:
            index_mod.sync(store, embedder, rebuild=problem.fix == REBUILD_FIX)
            problem.fixed = True
        out.append(problem)
    try:
        state = index_mod.read_state(store)  # again: a fix above wrote a new generation
    except MempError:
        state = None
    if state is not None:
        leftover = [p for p in index_mod.leftover_files(store, state) if not p.name.startswith(TMP_PREFIX)]
        if leftover:
            f = Finding(
                "warning",
                f"{store.index_dir}: {len(leftover)} file{'s' if len(leftover) != 1 else ''} left over "
                "from an interrupted index write "
                f"(e.g. {leftover[0].name})",
                "harmless; `memp index sync` or `memp doctor --fix` removes them",
            )
            if fix:
                with store.lock:
                    for p in leftover:
                        with contextlib.suppress(OSError):
                            unlink_own(p)
                f.fixed = True
            out.append(f)
    return out


def _vector_problem(idx: index_mod.Index) -> str | None:
    """The graph and the vectors file hold the same vectors (a sample of them is compared)."""
    import numpy as np

    if not len(idx):
        return None
    if idx.graph_count() < len(idx):
        return "the vector index holds fewer vectors than the state lists"
    labels = idx.state.label_array()
    picks = np.linspace(0, len(labels) - 1, min(len(labels), 64)).astype(int)
    sample = sorted({int(labels[i]) for i in picks})
    try:
        in_graph = idx.graph_vectors(sample)
    except RuntimeError as e:
        return f"the vector index lacks memories the state lists ({e})"
    in_file = idx.vector_matrix()[sample]
    if not np.allclose(in_graph, in_file, atol=1e-5):
        path = index_mod.state.vectors_path(idx.store, idx.state)
        return f"{path}: the vectors file does not match the vector index"
    return None


# ------------------------------------------------------------ links and permissions
def _walk(store: Store) -> Iterator[tuple[str, os.stat_result]]:
    """Every path inside the store (not the root), by lstat: links are not followed. One
    folder's entries at a time: a million-memory store is walked in bounded memory."""
    stack = [str(store.root)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                yield e.path, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)


@dataclass
class _Paths:
    """How many paths matched, and the first few (all a finding shows)."""

    count: int = 0
    some: list[str] = field(default_factory=list)

    def add(self, path: str) -> None:
        self.count += 1
        if len(self.some) < 3:
            self.some.append(path)

    def describe(self) -> str:
        shown = ", ".join(self.some)
        return f"{self.count} path{'s' if self.count != 1 else ''} (e.g. {shown})"


@dataclass
class TreeScan:
    """What one walk of the store found: links (each reported) and paths others can write."""

    links: list[tuple[str, str]]  # (path, target)
    by_all: _Paths
    by_group: _Paths
    group_gid: int = -1


def scan_tree(store: Store) -> TreeScan:
    root = str(store.root)
    out = TreeScan([], _Paths(), _Paths())
    private: dict[tuple[int, int], bool] = {}  # one group lookup per (group, owner), not per path
    try:
        items = itertools.chain([(root, os.stat(root))], _walk(store))
    except OSError:
        return out
    for path, st in items:
        if stat.S_ISLNK(st.st_mode):  # a link's own mode means nothing
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            out.links.append((path, target))
        elif st.st_mode & stat.S_IWOTH:
            out.by_all.add(path)
        elif st.st_mode & stat.S_IWGRP:
            key = (st.st_gid, st.st_uid)
            if key not in private:
                private[key] = _private_group(*key)
            if not private[key]:
                if not out.by_group.count:
                    out.group_gid = st.st_gid
                out.by_group.add(path)
    return out


def link_findings(store: Store, tree: TreeScan | None = None) -> list[Finding]:
    """A symbolic link anywhere inside the store (error): memp refuses to write through one, and
    one made by someone else can lead memp's writes (or a memory's contents) out of the store.
    The store's own path may be a link: that is the user's choice, and not reported."""
    out: list[Finding] = []
    for path, target in (tree or scan_tree(store)).links:
        out.append(
            Finding(
                "error",
                f"{path}: a symbolic link (to {target}) inside the store; memp writes no file through it",
                f"if you did not make it, remove it (`rm {quote(path)}`; its target stays as it is) "
                "and memp makes a real one; to keep a store elsewhere, link the whole store instead "
                "(`memp doctor --fix` fixes nothing while a link is inside the store)",
            )
        )
    return sorted(out, key=lambda f: f.what)


def _private_group(gid: int, uid: int) -> bool:
    """Whether group ``gid`` is the owner's own (a user private group: named as the owner and
    with no other member), so that group write lets nobody else in."""
    import grp
    import pwd

    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(uid)
    except KeyError:
        return False
    return group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def permission_findings(store: Store, tree: TreeScan | None = None) -> list[Finding]:
    """Store folders and files others can write: by everyone is an error (anyone on the machine
    can edit settings or plant a link), by a shared group a warning (intended for a store a
    group shares, e.g. under umask 002; a private group is not reported)."""
    tree = tree or scan_tree(store)
    root = quote(str(store.root))
    out: list[Finding] = []
    if tree.by_all.count:
        out.append(
            Finding(
                "error",
                f"{tree.by_all.describe()} in the store are writable by everyone: anyone on this machine "
                "can edit its settings or plant links in it",
                f"run `chmod -R go-w {root}` (memp itself makes none, even under umask 000)",
            )
        )
    if tree.by_group.count:
        out.append(
            Finding(
                "warning",
                f"{tree.by_group.describe()} in the store are writable by group "
                f"{_group_name(tree.group_gid)}: its members can edit settings or plant links",
                f"fine for a store your group shares; otherwise run `chmod -R g-w {root}`",
            )
        )
    return out


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
