"""Versions of memory files, in git's model.

``<store>/history/<id>.jsonl`` lists the versions of one memory, one line each::

    {"v": 3, "time": "...", "by": "memp reflect", "why": "...", "sha256": "...", "size": 812}

and ``<store>/history/objects/<sha[:2]>/<sha>`` holds each distinct content once, byte for
byte (content-addressed: a revert or a re-written identical file costs nothing). A version is
immutable; a revert is a new version whose content equals an old one. A deletion (forget,
prune, a file deleted by hand) is a version with ``"sha256": null``.

A change made by hand is noticed the next time memp looks at the file (before it rewrites it,
when the index notices the edit, or when ``history``/``diff``/``revert`` is asked) and recorded
as a version ``by = "hand edit"``. Memories written before history existed get their first
version when first looked at (``by = "before history"``).

Order of writes: the object first, then the memory file, then the log line, so a kill leaves
either no new version (the file unchanged) or a file whose content the next look records.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.errors import InputError, MemoryFileError, NotFoundError
from memp_cli.model.memory import now_iso, read_memory_bytes, valid_ids
from memp_cli.store import appendlog
from memp_cli.store.fsutil import (
    TMP_PREFIX,
    atomic_write,
    check_no_links,
    fsync_dir,
    make_dirs,
    refused_as_store_error,
    rename_own,
    sync_files,
    write_temp,
)

if TYPE_CHECKING:
    from memp_cli.store.protocol import MemoryStore

HAND_EDIT = "hand edit"
BEFORE_HISTORY = "before history"
# Versions a person made: distill keeps them instead of rebuilding over them.
HUMAN = frozenset({HAND_EDIT, "memp edit", "memp revert"})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Version:
    v: int
    time: str
    by: str
    why: str
    sha256: str | None  # None: the memory was deleted (forgotten, pruned, or by hand)
    size: int = 0
    trajectory: str | None = None  # the run a reflection learned from

    @property
    def deleted(self) -> bool:
        return self.sha256 is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": self.v,
            "time": self.time,
            "by": self.by,
            "why": self.why,
            "sha256": self.sha256,
            "size": self.size,
        }
        if self.trajectory is not None:
            d["trajectory"] = self.trajectory
        return d


class History:
    """The history of every memory in one store. Writing needs the store lock."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.root = store.history_dir

    # ----------------------------------------------------------------- reading
    def _log(self, memory_id: str) -> Path:
        return self.root / f"{memory_id}.jsonl"

    def _object(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def _lines(self, memory_id: str) -> list[dict[str, Any]]:
        try:
            raw = self._log(memory_id).read_bytes()
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for line in raw.splitlines():
            try:
                d = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line from a killed writer
            if isinstance(d, dict):
                out.append(d)
        return out

    def versions(self, memory_id: str) -> list[Version]:
        out: list[Version] = []
        for d in self._lines(memory_id):
            if "v" not in d:
                continue  # a note
            try:
                out.append(
                    Version(
                        int(d["v"]),
                        str(d["time"]),
                        str(d["by"]),
                        str(d.get("why", "")),
                        d["sha256"],
                        int(d.get("size", 0)),
                        d.get("trajectory"),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue  # a line edited into nonsense
        return out

    def hand_edited(self, memory_id: str) -> bool:
        """Whether a person made the memory file what it is now: changed by hand since memp's
        last version, or last written by ``memp edit``/``memp revert`` or a noticed hand edit.
        A memory from before history is taken as memp's."""
        versions = self.versions(memory_id)
        if not versions:
            return False
        try:
            data = read_memory_bytes(self.store.memory_path(memory_id))
        except FileNotFoundError:
            return False
        except MemoryFileError:
            return True  # not a file memp wrote (a FIFO, a symlink...): a person put it there
        last = versions[-1]
        return last.sha256 != sha256(data) or last.by in HUMAN

    def ids(self) -> set[str]:
        """Every memory id that has a history."""
        return self.ids_but(())

    def ids_but(self, *known: Container[str]) -> set[str]:
        """The memory ids that have a history and are in none of ``known``: only those names
        are checked as ids (a million history logs, almost all of them of memories present)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return set()
        for k in known:  # ("<id>.jsonl"[:-6] is the id)
            names = [n for n in names if n[:-6] not in k]
        return set(valid_ids(names, ".jsonl"))

    def content(self, memory_id: str, v: int) -> bytes:
        """The exact bytes of version ``v`` (raises NotFoundError for an unknown or deleted one)."""
        for ver in self.versions(memory_id):
            if ver.v == v:
                if ver.sha256 is None:
                    raise NotFoundError(f"version {v} of {memory_id} is its deletion: it has no content")
                try:
                    return self._object(ver.sha256).read_bytes()
                except FileNotFoundError:
                    raise NotFoundError(
                        f"the content of version {v} of {memory_id} is missing from {self.root / 'objects'}",
                        hint="the history was damaged by hand; the current file is unaffected",
                    ) from None
        raise NotFoundError(
            f"{memory_id} has no version {v}", hint=f"see `memp history {memory_id}` for its versions"
        )

    # ----------------------------------------------------------------- writing
    def _put_object(self, data: bytes) -> str:
        digest = sha256(data)
        path = self._object(digest)
        if not path.exists():
            atomic_write(path, data)
        return digest

    def _append(self, memory_id: str, version: Version, durable: bool = True) -> None:
        appendlog.append(self._log(memory_id), orjson.dumps(version.to_dict()) + b"\n", durable=durable)

    def _last(self, memory_id: str) -> Version | None:
        versions = self.versions(memory_id)
        return versions[-1] if versions else None

    def _record(
        self,
        memory_id: str,
        last: Version | None,
        by: str,
        why: str,
        digest: str | None,
        size: int,
        trajectory: str | None = None,
        durable: bool = True,
    ) -> Version:
        """Append the version after ``last`` (the log's last line, read once by the caller)."""
        ver = Version(last.v + 1 if last else 1, now_iso(), by, why, digest, size, trajectory)
        self._append(memory_id, ver, durable)
        return ver

    def _notice(
        self, memory_id: str, last: Version | None, by: str | None = None, why: str = ""
    ) -> Version | None:
        path = self.store.memory_path(memory_id)
        try:
            data = read_memory_bytes(path)
        except MemoryFileError:
            return None  # a FIFO, a directory, a symlink, too big: nothing to keep as a version
        except FileNotFoundError:
            if last is not None and last.sha256 is not None:
                return self._record(memory_id, last, HAND_EDIT, "deleted by hand", None, 0)
            return None
        digest = sha256(data)
        if last is not None and last.sha256 == digest:
            return None
        self._put_object(data)
        if by is None:
            by = HAND_EDIT if last is not None else BEFORE_HISTORY
        return self._record(memory_id, last, by, why, digest, len(data))

    def notice(self, memory_id: str, *, by: str | None = None, why: str = "") -> Version | None:
        """Record the file's current content if it is not the last version (a hand edit, or
        a memory from before history): returns the version recorded, if any. A file missing
        after a version with content is recorded as deleted by hand. ``by``/``why``: who wrote
        the content when it is known (a killed memp process, found by the next writer)."""
        return self._notice(memory_id, self._last(memory_id), by, why)

    def write(
        self,
        memory_id: str,
        data: bytes,
        *,
        by: str,
        why: str = "",
        durable: bool = True,
        trajectory: str | None = None,
    ) -> Version | None:
        """Replace the memory file with ``data`` as a new version (a hand edit made since the
        last version is recorded first). Returns the version, or None when ``data`` is what the
        file already holds. Caller holds the store lock, so the log is read once."""
        todo = self._to_write(memory_id, data)
        if todo is None:
            return None
        digest, path, last = todo
        self._put_object(data)
        last = self._keep_replaced(memory_id, last, swap_in(path, data, durable=durable))
        return self._record(memory_id, last, by, why, digest, len(data), trajectory)

    def _to_write(self, memory_id: str, data: bytes) -> tuple[str, Path, Version | None] | None:
        """Before a write: a hand edit made since the last version recorded, then ``data``'s
        digest, the file and the last version; None when the file already holds ``data``."""
        last = self._last(memory_id)
        last = self._notice(memory_id, last) or last
        digest = sha256(data)
        path = self.store.memory_path(memory_id)
        if last is not None and last.sha256 == digest and path.exists():
            return None
        return digest, path, last

    def _keep_replaced(self, memory_id: str, last: Version | None, replaced: bytes | None) -> Version | None:
        """A hand edit saved after the notice before a write, and replaced by it, is kept too."""
        if replaced is not None:
            old_digest = sha256(replaced)
            if last is None or last.sha256 != old_digest:
                self._put_object(replaced)
                last = self._record(memory_id, last, HAND_EDIT, "", old_digest, len(replaced))
        return last

    def write_many(
        self, items: list[tuple[str, bytes]], *, by: str, why: str = ""
    ) -> dict[str, tuple[int, int]]:
        """Replace many memory files, each as a new version as :meth:`write` does, made durable
        by the batch: every new object and every temp file written, one flush
        (:func:`~memp_cli.store.fsutil.sync_files`), the renames, one fsync of the folder, the
        log lines, one flush. Each memory's writes keep :meth:`write`'s order (object, file, log
        line), so a kill (or a power cut) leaves each as :meth:`write` would. Returns each file
        written with its (mtime_ns, size) as written (a file that already held its data is
        left out). An id given twice is written once, with its last data."""
        todo: list[tuple[str, bytes, str, Path, Version | None]] = []
        for mid, data in dict(items).items():
            one = self._to_write(mid, data)
            if one is not None:
                todo.append((mid, data, *one))
        objects: list[Path] = []
        temps: list[Path] = []
        stamps: dict[str, tuple[int, int]] = {}
        ready: set[Path] = set()  # folders made and checked for links, once each per batch

        def folder(d: Path) -> Path:
            if d not in ready:
                make_dirs(d)
                ready.add(d)
            return d

        try:
            for mid, data, digest, path, _ in todo:
                obj = self._object(digest)
                if not obj.exists():
                    tmp, _ = write_temp(folder(obj.parent), data)
                    try:
                        with refused_as_store_error(obj.parent):
                            os.replace(tmp, obj)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            tmp.unlink()
                        raise
                    objects.append(obj)
                tmp, st = write_temp(folder(path.parent), data, kind="swap-")
                temps.append(tmp)
                stamps[mid] = (st.st_mtime_ns, st.st_size)
            sync_files(objects + temps)
            for d in ready:  # again: a link may have been made since (as atomic_write checks)
                check_no_links(d)
            lasts = [
                self._keep_replaced(mid, last, _swap(tmp, path, durable=False, checked=True))
                for (mid, _, _, path, last), tmp in zip(todo, temps, strict=True)
            ]
        except BaseException:
            for tmp in temps:  # those not renamed yet (a renamed one is gone)
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            raise
        for d in sorted({path.parent for _, _, _, path, _ in todo}):
            fsync_dir(d)
        for (mid, data, digest, _, _), last in zip(todo, lasts, strict=True):
            self._record(mid, last, by, why, digest, len(data), durable=False)
        sync_files(self._log(mid) for mid, *_ in todo)
        return stamps

    def record_deleted(self, memory_id: str, *, by: str, why: str) -> Version:
        return self._record(memory_id, self._last(memory_id), by, why, None, 0)

    def revert(self, memory_id: str, to: int, *, by: str = "memp revert") -> Version | None:
        """Make the content of version ``to`` current again, byte for byte (a new version)."""
        data = self.content(memory_id, to)
        return self.write(memory_id, data, by=by, why=f"revert to version {to}")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(path: Path, data: bytes, *, durable: bool = True) -> bytes | None:
    """Put ``data`` at ``path`` atomically and return the exact bytes it replaced (None when
    there was no file). With RENAME_EXCHANGE the replaced inode itself is read back, so a hand
    edit saved a moment before (in place or by rename) is never lost unseen; elsewhere a hard
    link to the old file is taken just before the rename. A symbolic link replaced is not read
    (its target is not the store's): None, as for no file."""
    tmp = path.parent / f"{TMP_PREFIX}swap-{secrets.token_hex(6)}"
    atomic_write(tmp, data, durable=durable)
    return _swap(tmp, path, durable=durable)


def _swap(tmp: Path, path: Path, *, durable: bool, checked: bool = False) -> bytes | None:
    """:func:`swap_in` of the temp file ``tmp`` (removed in any case). ``checked``: the caller
    has just checked the folder for links (a batch checks it once)."""
    rename = os.replace if checked else rename_own
    try:
        if path.exists() and _exchange(tmp, path):
            old = _own_bytes(tmp)
            tmp.unlink()
            if durable:
                fsync_dir(path.parent)
            return old
        backup = path.parent / f"{TMP_PREFIX}old-{secrets.token_hex(6)}"
        try:
            os.link(path, backup)
        except FileNotFoundError:
            rename(tmp, path)
            if durable:
                fsync_dir(path.parent)
            return None
        rename(tmp, path)
        if durable:
            fsync_dir(path.parent)
        old = _own_bytes(backup)
        backup.unlink()
        return old
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _own_bytes(path: Path) -> bytes | None:
    """The bytes of a regular file, never read through a link (None for a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read()


def resolve(history: History, memory_id: str, spec: str | None, default: int) -> int:
    """A version number from ``spec`` (``3``, ``v3``, ``-1`` for the one before the last)."""
    versions = history.versions(memory_id)
    if not versions:
        raise NotFoundError(f"{memory_id} has no history", hint="see `memp list` for memory ids")
    if spec is None:
        return versions[default].v
    s = spec[1:] if spec.lower().startswith("v") else spec
    try:
        n = int(s)
    except ValueError:
        raise InputError(f"{spec!r} is not a version", hint="give a number, like 2 or v2") from None
    if n < 0:
        if -n > len(versions):
            raise NotFoundError(f"{memory_id} has only {len(versions)} versions")
        return versions[n].v
    return n


def unified_diff(history: History, memory_id: str, v1: int, v2: int) -> str:
    """A unified diff between two versions (a deleted version diffs as empty)."""

    def text(v: int) -> list[str]:
        ver = next((x for x in history.versions(memory_id) if x.v == v), None)
        if ver is None:
            raise NotFoundError(f"{memory_id} has no version {v}", hint=f"see `memp history {memory_id}`")
        if ver.deleted:
            return []
        return history.content(memory_id, v).decode("utf-8", errors="replace").splitlines(keepends=True)

    return "".join(
        difflib.unified_diff(text(v1), text(v2), fromfile=f"{memory_id} v{v1}", tofile=f"{memory_id} v{v2}")
    )
