"""The store: a directory of plain files (see the README's "Store layout").

::

    memp.toml                 settings (hand-editable)
    memories/<id>.toml        one memory per file (hand-editable)
    trajectories/*.jsonl      ingested trajectories, append-only segments
    index/                    derived: hnswlib index, label map, BM25 (rebuildable)
    journal.jsonl             append-only record of every change
    .lock                     writers' lock

Writers hold the store lock; every file is replaced atomically, so readers
never need the lock and never see a half-written file.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.config import CONFIG_NAME, Config, load_config, render_config, validate_config
from memp_cli.errors import InputError, MemoryFileError, NotFoundError, StoreError
from memp_cli.model.memory import (
    Memory,
    encode_memory_file,
    load_memory_file,
    memory_file_bytes,
    now_iso,
    parse_memory_bytes,
    valid_id,
    valid_ids,
)
from memp_cli.model.trajectory import Trajectory
from memp_cli.store import appendlog, ledger
from memp_cli.store.fsutil import (
    TMP_PREFIX,
    StoreLock,
    atomic_output,
    atomic_write,
    make_dirs,
    register_store,
)
from memp_cli.store.ledger import Settles
from memp_cli.store.recovery import pending

if TYPE_CHECKING:  # the record parsers stay off the query path
    from memp_cli.ingest import ReadResult
    from memp_cli.store.protocol import MemoryStore

DEFAULT_STORE = ".memp"
READ_THREADS, READ_THREADS_MIN, READ_AHEAD = 8, 2048, 256  # iter_memories: threads, from, window


@dataclass
class IngestReport:
    read: int = 0
    added: int = 0
    duplicates: int = 0
    bad: int = 0
    errors: list[InputError] = field(default_factory=list)
    segment: str | None = None
    # Outcomes of memories named in "memories_used": newly counted, and ids the store lacks.
    outcomes: int = 0
    unknown_memories: list[str] = field(default_factory=list)
    # Secrets replaced by [REDACTED:kind] (memp_cli/redact.py), by kind: counts, never values.
    redacted: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "added": self.added,
            "duplicates": self.duplicates,
            "bad": self.bad,
            "segment": self.segment,
            "outcomes": self.outcomes,
            "unknown_memories": self.unknown_memories,
            "redacted": sum(self.redacted.values()),
        }


class Store:
    def __init__(self, root: Path, config: Config, *, wait: bool = True) -> None:
        self.root = root
        register_store(root)  # no write follows a link inside it (the root may be one)
        self.config = config
        self.memories_dir = root / "memories"
        self.trajectories_dir = root / "trajectories"
        self.index_dir = root / "index"
        self.cache_dir = root / "cache"
        self.prompts_dir = root / "prompts"
        self.journal_path = root / "journal.jsonl"
        self.outcomes_path = root / "outcomes.jsonl"
        self.history_dir = root / "history"
        self.trash_dir = root / "trash"
        self.reflections_path = root / "reflections.jsonl"
        self.lock = StoreLock(root / ".lock", wait=wait, on_recover=self._recover)
        self.command = "memp"

    # ------------------------------------------------------------------ setup
    @classmethod
    def init(cls, root: Path, config: Config | None = None) -> Store:
        config = config or Config()
        validate_config(config)  # what every later load would reject is refused now
        if (root / CONFIG_NAME).exists():
            raise StoreError(
                f"{root / CONFIG_NAME} already exists: {root} is a memp store",
                hint="use it as it is, or pick another directory",
            )
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} exists and is not a directory")
        make_dirs(root)
        register_store(root)
        for sub in ("memories", "trajectories", "index"):
            make_dirs(root / sub)
        atomic_write(root / ".gitignore", "index/\ncache/\n.lock\n")
        atomic_write(root / CONFIG_NAME, render_config(config))
        store = cls(root, config)
        store.journal("init", embedder=config.embedder.name)
        return store

    @classmethod
    def open(cls, root: Path, *, wait: bool = True) -> Store:
        if not (root / CONFIG_NAME).exists():
            if root.is_dir() and any(root.iterdir()):
                raise StoreError(
                    f"{root} has no {CONFIG_NAME}: not a memp store",
                    hint=f"create one with `memp init {root}`, or point --store / MEMP_STORE elsewhere",
                )
            raise NotFoundError(
                f"no memp store at {root}",
                hint=f"create one with `memp init {root}`, or point --store / MEMP_STORE at one",
            )
        config = load_config(root / CONFIG_NAME)
        store = cls(root, config, wait=wait)
        for sub in (store.memories_dir, store.trajectories_dir, store.index_dir):
            if not os.path.lexists(sub):  # a link there is reported by the first write (and doctor)
                make_dirs(sub)
        return store

    def _recover(self, killed_pid: int) -> None:
        """The last writer was killed holding the lock: tie up what it left (store/recovery.py)."""
        from memp_cli.store.recovery import recover

        recover(self, killed_pid, _note)

    # ---------------------------------------------------------------- journal
    def journal(self, event: str, **fields: Any) -> None:
        """Append one line to ``journal.jsonl`` (one O_APPEND write and an fsync)."""
        rec = {"time": now_iso(), "event": event, "command": self.command, "pid": os.getpid(), **fields}
        appendlog.append(self.journal_path, orjson.dumps(rec) + b"\n")

    def read_journal(self) -> Iterator[dict[str, Any]]:
        try:
            with open(self.journal_path, "rb") as f:
                for line in f:
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a torn last line from a killed process
        except FileNotFoundError:
            return

    # ----------------------------------------------------------- trajectories
    def segments(self) -> list[Path]:
        return sorted(p for p in self.trajectories_dir.glob("*.jsonl") if not p.name.startswith(TMP_PREFIX))

    def trajectory_ids(self) -> set[str]:
        ids: set[str] = set()
        for seg in self.segments():
            with open(seg, "rb") as f:
                for line in f:
                    m = ledger.SEGMENT_ID.match(line)
                    if m:
                        ids.add(m.group(1).decode())
                    elif line.strip():
                        try:
                            ids.add(orjson.loads(line)["id"])
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            continue
        return ids

    def iter_trajectories(
        self,
        skip: Callable[[str], bool] | None = None,
        *,
        settled: Settles | None = None,
        record: bool = True,
    ) -> Iterator[Trajectory]:
        """Every stored run, parsed; ``skip(id)`` true passes over a run without parsing it.
        ``settled``: a segment it settles whole comes from the trajectory ledger unparsed, only
        the runs it names, as outlines (id and outcome only; see
        :func:`memp_cli.store.ledger.runs`), and the segments read are entered in the ledger
        (``record`` False: not, the ledger is left as it is)."""
        if settled is not None:
            yield from ledger.runs(self, skip, settled, record=record)
            return
        for seg in self.segments():
            with open(seg, "rb") as f:
                yield from ledger.read_segment(seg, f, skip)

    def ingest(
        self, results: Iterable[ReadResult], *, strict: bool = False, redact: bool = True
    ) -> IngestReport:
        """Store the parsed trajectories of one input as one new segment.

        The segment is written to a temp file and renamed into place when the
        input is done: a killed ingest stores nothing, a finished one all.
        With ``strict`` the first bad line aborts and nothing is stored.
        Every trajectory, whatever format it was read from, has its secrets redacted here
        (``[redact]`` in memp.toml; ``redact=False``: ``--no-redact``), as have error messages.
        """
        from memp_cli.redact import for_config, redact_trajectory
        from memp_cli.update.outcomes import Outcome, outcome_of, record

        report = IngestReport()
        redactor = for_config(self.config, enabled=redact)
        used: list[Outcome] = []
        with self.lock:
            seen = self.trajectory_ids()
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            name = f"{stamp}-{secrets.token_hex(3)}.jsonl"
            target = self.trajectories_dir / name
            try:
                with atomic_output(target) as tmp, open(tmp, "wb") as out:
                    for r in results:
                        if r.error is not None:
                            if redactor is not None:  # a message quoting the input quotes no secret
                                r.error.message = redactor.text(r.error.message)
                            report.bad += 1
                            report.errors.append(r.error)
                            if strict:
                                raise r.error
                            continue
                        assert r.trajectory is not None
                        report.read += 1
                        t = r.trajectory
                        used.extend(
                            Outcome(mid, outcome_of(t.success), t.id, source="ingest")
                            for mid in t.memories_used
                        )
                        if t.id in seen:
                            report.duplicates += 1
                            continue
                        seen.add(t.id)
                        if redactor is not None:
                            redact_trajectory(t, redactor, report.redacted)
                        out.write(orjson.dumps(t.to_dict()) + b"\n")
                        report.added += 1
                    if report.added == 0:
                        raise _NothingToWrite
            except _NothingToWrite:
                pass
            else:
                report.segment = name
                self.journal(
                    "ingest",
                    segment=name,
                    added=report.added,
                    duplicates=report.duplicates,
                    bad=report.bad,
                    redacted=dict(report.redacted),
                )
            # After the segment: a kill in between leaves outcomes uncounted, and ingesting the
            # same input again counts them (a counted (memory, run) pair is never counted twice).
            if used:
                counted = record(self, used)
                report.outcomes, report.unknown_memories = counted.recorded, counted.unknown_ids
        return report

    # --------------------------------------------------------------- memories
    def memory_path(self, memory_id: str) -> Path:
        if not valid_id(memory_id):
            raise NotFoundError(
                f"{memory_id!r} is not a valid memory id",
                hint="ids are lowercase letters, digits, - and _; see `memp list`",
            )
        return self.memories_dir / f"{memory_id}.toml"

    def memory_ids(self) -> list[str]:
        return sorted(valid_ids(os.listdir(self.memories_dir), ".toml"))  # a temp file's is no id

    def load_memory(self, memory_id: str) -> Memory:
        path = self.memory_path(memory_id)
        if not path.exists():
            raise NotFoundError(f"no memory {memory_id!r} in {self.root}", hint="see `memp list`")
        return load_memory_file(path)

    def read_memory(self, memory_id: str) -> Memory:
        """One memory as its file is now; MemoryFileError (naming ``path:line``) when it is
        broken or gone (readers that may race a delete report it and go on)."""
        return load_memory_file(self.memories_dir / f"{memory_id}.toml")

    def memory_stamps(self) -> dict[str, tuple[int, int]]:
        """Each memory file's (mtime_ns, size): what the index compares to notice a change.
        One thread: at a million files it takes ~5 s with the inodes cached and ~12 s without,
        where four threads took 13 s and 18 s (each stat hands the GIL over, and on two cores
        the threads spend longer passing it than the kernel does statting)."""
        try:
            listed = os.listdir(self.memories_dir)
            names = [n for n in listed if n.endswith(".toml") and not n.startswith(TMP_PREFIX)]
        except FileNotFoundError:
            return {}
        fd = os.open(self.memories_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            return _stamps(fd, names)
        finally:
            os.close(fd)

    def memories_mtime_ns(self) -> int:
        """The memories folder's mtime (an add, a delete or a save by rename changes it); -1
        when it does not exist."""
        try:
            return self.memories_dir.stat().st_mtime_ns
        except FileNotFoundError:
            return -1

    def iter_memories(self) -> Iterator[Memory | MemoryFileError]:
        """Every memory file, parsed, in id order; a broken one yields its error instead.

        A large folder's files are read a window ahead by a few threads (a read waits on the
        disk with the GIL released; parsing stays in this thread): on a cold cache at 900k
        files one thread at a time read ~175 files a second."""
        ids = self.memory_ids()
        paths = (self.memories_dir / f"{mid}.toml" for mid in ids)
        if len(ids) < READ_THREADS_MIN:
            yield from (_parse_or_error(_read_or_error(p), p) for p in paths)
            return
        from collections import deque
        from concurrent.futures import Future, ThreadPoolExecutor

        ahead: deque[tuple[Path, Future[bytes | MemoryFileError]]] = deque()
        with ThreadPoolExecutor(READ_THREADS, "memp-read") as pool:
            for path in paths:
                ahead.append((path, pool.submit(_read_or_error, path)))
                if len(ahead) >= READ_AHEAD:  # bounded: at most this many files' bytes held
                    done, fut = ahead.popleft()
                    yield _parse_or_error(fut.result(), done)
            while ahead:
                done, fut = ahead.popleft()
                yield _parse_or_error(fut.result(), done)

    def save_memory(
        self,
        memory: Memory,
        *,
        base: str | None = None,
        event: str = "memory.write",
        why: str = "",
        trajectory: str | None = None,
        **fields: Any,
    ) -> None:
        """Write one memory file atomically as a new version, and journal it. Caller holds the lock.

        A hand edit made since the last version is kept in the history first. ``base``: the text
        whose comments and layout to keep (default: the file's own). ``trajectory``: the run this
        change learned from (reflect).
        """
        from memp_cli.update.history import History

        _stamp([memory])
        path = self.memory_path(memory.id)
        data = encode_memory_file(path, memory, base=base)
        if trajectory is not None:
            fields["trajectory"] = trajectory
        with pending(self, event, [memory.id]):
            ver = History(self).write(
                memory.id, data, by=f"memp {self.command}", why=why, trajectory=trajectory
            )
            self.journal(
                event,
                ids=[memory.id],
                kind=memory.kind,
                version=memory.version,
                history=ver.v if ver else None,
                **fields,
            )

    def notice_edits(self, memory_ids: list[str]) -> None:
        """Record the current content of these memory files as versions where it is not the
        last one (hand edits the index noticed). Caller holds the lock."""
        from memp_cli.update.history import History

        history = History(self)
        for mid in memory_ids:
            history.notice(mid)

    def save_memories(
        self, memories: list[Memory], *, event: str, why: str = "", **fields: Any
    ) -> dict[str, tuple[Memory, tuple[int, int]]]:
        """Write many memory files, each a new version (a hand edit made since the last version
        is kept in the history first); one journal line names them all. Made durable by the
        batch, not file by file (:meth:`History.write_many`). Returns each memory written with
        its file's (mtime_ns, size) right after the write, for the index (whose sync need not
        read them again while their files are as written).
        """
        from memp_cli.update.history import History

        _stamp(memories)
        if not memories:
            return {}
        history = History(self)
        by = f"memp {self.command}"

        def render(m: Memory) -> bytes:
            return encode_memory_file(self.memory_path(m.id), m)

        ids = [m.id for m in memories]
        # Every file is rendered before any is written: a memory that cannot be encoded
        # (MemoryFileError) fails the call with nothing written, never half a batch. (In this
        # thread: rendering is Python, and threads taking turns at it were slower than one.)
        texts = [render(m) for m in memories]
        with pending(self, event, ids):  # a kill before the journal line: the next writer journals
            stamps = history.write_many(list(zip(ids, texts, strict=True)), by=by, why=why)
            self.journal(event, ids=ids, count=len(memories), **fields)
        return {m.id: (m, stamps[m.id]) for m in memories if m.id in stamps}


def _read_or_error(path: Path) -> bytes | MemoryFileError:
    try:
        return memory_file_bytes(path)
    except MemoryFileError as e:  # also a file removed since the listing
        return e


def _parse_or_error(raw: bytes | MemoryFileError, path: Path) -> Memory | MemoryFileError:
    if isinstance(raw, MemoryFileError):
        return raw
    try:
        return parse_memory_bytes(raw, path)
    except MemoryFileError as e:
        return e


def _stamps(dir_fd: int, names: list[str]) -> dict[str, tuple[int, int]]:
    """``names`` in the folder ``dir_fd`` -> (mtime_ns, size), by id; a file gone is left out."""
    out: dict[str, tuple[int, int]] = {}
    for name in names:
        try:
            st = os.stat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        out[name[:-5]] = (st.st_mtime_ns, st.st_size)
    return out


def _note(msg: str) -> None:
    sys.stderr.write(f"memp: warning: {msg}\n")
    sys.stderr.flush()


def _stamp(memories: list[Memory]) -> None:
    """Check the ids (before anything is written) and set created/updated."""
    for m in memories:
        if not valid_id(m.id):
            raise StoreError(f"refusing to write memory with invalid id {m.id!r}")
    stamp = now_iso()
    for m in memories:
        m.provenance.updated = stamp
        if not m.provenance.created:
            m.provenance.created = stamp


class _NothingToWrite(Exception):
    """Internal: abort an atomic segment write that would hold no trajectory."""


def resolve_store_path(store: str | os.PathLike[str] | None) -> Path:
    return Path(store) if store else Path(os.environ.get("MEMP_STORE") or DEFAULT_STORE)


def store_embedder(store: MemoryStore, name: str | None = None) -> Any:
    """The embedder the store is configured with (or ``name``, checked later against the index)."""
    from memp_cli.backends.embedders import get_embedder

    cfg = store.config.embedder
    chosen = name or cfg.name
    model_path: Path | None = None
    if cfg.model_path:
        model_path = Path(cfg.model_path).expanduser()
        if not model_path.is_absolute():
            model_path = store.root / model_path
    dim = cfg.dim if chosen == cfg.name else None
    from memp_cli.backends.llm.types import choose_api_base

    base, source = choose_api_base(None, cfg.api_base, "MEMP_EMBEDDER_API_BASE")
    return get_embedder(chosen, dim=dim, model_path=model_path, api_base=base, api_base_from=source)
