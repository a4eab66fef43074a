"""``memp scrub``: secrets already in a store (ingested with ``--no-redact``, or before memp
redacted, or matched only by a pattern added since) found and removed everywhere they sit.

Where it looks, in this order (each file rewritten atomically, under the store lock):

1. ``trajectories/*.jsonl``: each record's text fields (its id is kept: memories name it);
2. ``memories/*.toml``: through the store's own write path (:meth:`Store.save_memory`), so the
   file's comments and layout stay and its history gets a version ``by = "memp scrub"``;
3. ``history/``: every version's content (a new object, the log line pointing to it; the old
   object is deleted when no version names it any more) and the log lines themselves;
4. ``trash/``: forgotten memories and their entries;
5. ``cache/llm/``: a cached reply holding a secret is deleted (a rerun asks again);
6. ``journal.jsonl``, ``outcomes.jsonl``, ``reflections.jsonl``: line by line;
7. ``index/``: derived data; rebuilt from the scrubbed memories (``reindex``) when a memory
   changed or an index file holds a secret (an old keyword, say).

The report names each place (file, line, kind), never the value. A second run finds nothing.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from memp_cli.errors import MemoryFileError
from memp_cli.model.memory import memory_from_toml
from memp_cli.model.trajectory import Trajectory
from memp_cli.redact import Redactor, redact_trajectory
from memp_cli.store import Store
from memp_cli.store.fsutil import TMP_PREFIX, atomic_write

_JSONL_LOGS = ("journal.jsonl", "outcomes.jsonl", "reflections.jsonl")


@dataclass(frozen=True)
class Found:
    """One secret: where it is (a path relative to the store, a line in it) and its kind."""

    path: str
    line: int
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "kind": self.kind}


@dataclass
class ScrubReport:
    dry_run: bool = False
    found: list[Found] = field(default_factory=list)
    files: set[str] = field(default_factory=set)  # files rewritten (or that would be)
    cache_deleted: int = 0
    memories: list[str] = field(default_factory=list)  # memory files given a new version
    reindexed: bool = False
    skipped: list[str] = field(default_factory=list)  # files scrub could not read

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "secrets": len(self.found),
            "files": len(self.files),
            "memories": len(self.memories),
            "cache_deleted": self.cache_deleted,
            "reindexed": self.reindexed,
        }


class _Text:
    """Redacts the texts of one file, noting each secret's line (``line``: where the text starts)."""

    def __init__(self, redactor: Redactor, report: ScrubReport, path: str) -> None:
        self.r, self.report, self.path = redactor, report, path
        self.line = 1

    def text(self, text: str) -> str:
        hits = self.r.find(text)
        for h in hits:
            self.report.found.append(Found(self.path, self.line + text.count("\n", 0, h.start), h.kind))
        return self.r.text(text) if hits else text

    def value(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, list):
            new = [self.value(v) for v in obj]
            return obj if all(a is b for a, b in zip(new, obj, strict=True)) else new
        if isinstance(obj, dict):
            items = [(self.value(k), self.value(v)) for k, v in obj.items()]
            same = all(a is k and b is v for (a, b), (k, v) in zip(items, obj.items(), strict=True))
            return obj if same else dict(items)
        return obj


def scrub(
    store: Store,
    redactor: Redactor,
    *,
    dry_run: bool = False,
    reindex: Callable[[], object] | None = None,
) -> ScrubReport:
    """Find (and unless ``dry_run``, remove) every secret ``redactor`` knows in the store.

    ``reindex()`` rebuilds the index from the memory files (the caller's embedder); without it
    an index holding a secret is deleted, to be rebuilt by the next command that needs it.
    """
    report = ScrubReport(dry_run=dry_run)
    store.command = "scrub"
    with store.lock:
        _trajectories(store, redactor, report)
        _memories(store, redactor, report)
        _history(store, redactor, report)
        _trash(store, redactor, report)
        _cache(store, redactor, report)
        for name in _JSONL_LOGS:
            _jsonl(store, store.root / name, redactor, report)
        index_has = _index_secrets(store, redactor, report)
        if not dry_run and (report.memories or index_has):
            if reindex is not None:
                reindex()  # the lock is re-entrant: the sync nests in this hold
            else:
                for p in _files(store.index_dir):
                    p.unlink()
            report.reindexed = True
            if reindex is not None and _index_secrets(store, redactor, ScrubReport()):
                for p in _files(store.index_dir):  # a secret the rebuild kept: the index goes
                    p.unlink()
        if not dry_run and report.found:
            store.journal("scrub", **report.to_dict())
    return report


def _rel(store: Store, path: Path) -> str:
    return str(path.relative_to(store.root))


def _files(directory: Path, pattern: str = "*") -> Iterator[Path]:
    if not directory.is_dir():
        return
    for p in sorted(directory.glob(pattern)):
        if p.is_file() and not p.is_symlink() and not p.name.startswith(TMP_PREFIX):
            yield p


def _write(store: Store, path: Path, data: bytes, report: ScrubReport) -> None:
    report.files.add(_rel(store, path))
    if not report.dry_run:
        atomic_write(path, data)


def _trajectories(store: Store, r: Redactor, report: ScrubReport) -> None:
    for seg in store.segments():
        rel = _rel(store, seg)
        out: list[bytes] = []
        changed = False
        with open(seg, "rb") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    t = Trajectory.from_stored(orjson.loads(line))
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                    out.append(line)  # blank or damaged: doctor's business, kept as it is
                    continue
                counts: Counter[str] = Counter()
                redact_trajectory(t, r, counts)
                if not counts:
                    out.append(line)
                    continue
                report.found.extend(Found(rel, lineno, kind) for kind in counts.elements())
                out.append(orjson.dumps(t.to_dict()) + b"\n")
                changed = True
        if changed:
            _write(store, seg, b"".join(out), report)


def _memories(store: Store, r: Redactor, report: ScrubReport) -> None:
    for mid in store.memory_ids():
        path = store.memories_dir / f"{mid}.toml"
        rel = _rel(store, path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            report.skipped.append(rel)
            continue
        new_text = _Text(r, report, rel).text(text)
        try:
            mem = memory_from_toml(new_text, path)
        except MemoryFileError:
            try:
                mem = memory_from_toml(text, path)
            except MemoryFileError:  # broken by hand: its text is scrubbed all the same
                if new_text != text:
                    _write(store, path, new_text.encode(), report)
                continue
            new_text = ""  # a marker broke the TOML (a secret in a key?): written afresh, by value
        data = mem.to_dict()
        clean = _Text(r, report, rel).value(data)  # a secret in an escaped form (\" in a string)
        if clean is not data:
            import tomli_w

            mem = memory_from_toml(tomli_w.dumps(clean), path)
        elif new_text == text:
            continue
        report.files.add(rel)
        report.memories.append(mid)
        if not report.dry_run:
            store.save_memory(mem, base=new_text, event="memory.scrub", why="scrub")


def _history(store: Store, r: Redactor, report: ScrubReport) -> None:
    from memp_cli.update.history import History

    history = History(store)
    replaced: dict[str, tuple[str, int]] = {}  # object digest -> the scrubbed one's, and its size
    for log in _files(store.history_dir, "*.jsonl"):
        rel = _rel(store, log)
        out: list[bytes] = []
        changed = False
        for lineno, raw in enumerate(log.read_bytes().splitlines(), 1):
            try:
                d = orjson.loads(raw)
            except orjson.JSONDecodeError:
                out.append(raw)  # a torn last line: left as it is
                continue
            t = _Text(r, report, rel)
            t.line = lineno
            new = t.value(d)
            digest = d.get("sha256") if isinstance(d, dict) else None
            if isinstance(digest, str):
                if digest not in replaced:
                    replaced[digest] = _history_object(store, history, digest, r, report)
                if replaced[digest][0] != digest:
                    new = {**new, "sha256": replaced[digest][0], "size": replaced[digest][1]}
            changed |= new is not d
            out.append(raw if new is d else orjson.dumps(new))
        if changed:
            _write(store, log, b"\n".join(out) + b"\n", report)
    gone = {old for old, (new, _) in replaced.items() if new != old}
    if report.dry_run or not gone:
        return
    for log in _files(store.history_dir, "*.jsonl"):  # an object no version names any more goes
        for raw in log.read_bytes().splitlines():
            try:
                gone.discard(orjson.loads(raw).get("sha256"))
            except (orjson.JSONDecodeError, AttributeError):
                continue
    for old in gone:
        with contextlib.suppress(FileNotFoundError):
            history._object(old).unlink()


def _history_object(
    store: Store, history: Any, digest: str, r: Redactor, report: ScrubReport
) -> tuple[str, int]:
    """The digest and size of object ``digest`` scrubbed (its own when clean or unreadable)."""
    from memp_cli.update.history import sha256

    path = history._object(digest)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return digest, 0
    new = _Text(r, report, _rel(store, path)).text(text)
    if new == text:
        return digest, len(text.encode())
    data = new.encode()
    report.files.add(_rel(store, path))
    if report.dry_run:
        return sha256(data), len(data)
    return str(history._put_object(data)), len(data)


def _trash(store: Store, r: Redactor, report: ScrubReport) -> None:
    for path in _files(store.trash_dir):
        rel = _rel(store, path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            report.skipped.append(rel)
            continue
        if path.suffix == ".json":
            try:
                d = orjson.loads(text)
            except orjson.JSONDecodeError:
                d = None
            if d is not None:
                new = _Text(r, report, rel).value(d)
                if new is not d:
                    _write(store, path, orjson.dumps(new, option=orjson.OPT_INDENT_2), report)
                continue
        new_text = _Text(r, report, rel).text(text)
        if new_text != text:
            _write(store, path, new_text.encode(), report)


def _cache(store: Store, r: Redactor, report: ScrubReport) -> None:
    root = store.cache_dir / "llm"
    if not root.is_dir():
        return
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        for path in _files(sub, "*.json"):
            try:
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            hits = r.find(text)
            if not hits:
                continue
            report.found.extend(Found(_rel(store, path), 1, h.kind) for h in hits)
            report.cache_deleted += 1
            report.files.add(_rel(store, path))
            if not report.dry_run:
                path.unlink()


def _jsonl(store: Store, path: Path, r: Redactor, report: ScrubReport) -> None:
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return
    rel = _rel(store, path)
    out: list[bytes] = []
    changed = False
    for lineno, raw in enumerate(lines, 1):
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out.append(raw)  # a torn last line: left to the next writer
            continue
        t = _Text(r, report, rel)
        t.line = lineno
        new = t.value(d)
        if new is d:
            out.append(raw)
        else:
            out.append(orjson.dumps(new) + b"\n")
            changed = True
    if changed:
        _write(store, path, b"".join(out), report)


def _index_secrets(store: Store, r: Redactor, report: ScrubReport) -> bool:
    """Whether a file of the index holds a secret (reported by file; line 0: a binary file)."""
    has = False
    for path in _files(store.index_dir):
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        text = raw.decode("utf-8", errors="replace")
        hits = r.find(text) if path.suffix == ".json" else r.find(raw.decode("latin-1"))
        if hits:
            has = True
            line = 1 if path.suffix == ".json" else 0
            report.found.extend(Found(_rel(store, path), line, h.kind) for h in hits)
    return has
