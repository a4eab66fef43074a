"""File-system primitives: atomic writes and the store's writer lock.

Every file memp writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the same directory, are fsynced, and replace the target by
``os.replace``. A reader sees the old file or the new one, never half of one;
a killed process leaves at most a stray ``.tmp-*`` file that the next writer (see
:class:`StoreLock` and store/recovery.py) or ``memp doctor --fix`` removes.

New files and directories get the usual modes less the process umask (0644 and 0755 under umask
022, 0664 and 0775 under 002), as any program's files do, so a group can share a store. A write
the file system refuses (no permission, read-only file system) raises :class:`StoreError` naming
the file or directory, through :func:`refused_as_store_error`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from memp_cli.errors import LockedError, StoreError

TMP_PREFIX = ".tmp-"
#: Mode requested for new files; the kernel takes the umask off (and applies a directory's
#: default ACL), as for any program's files. tempfile.mkstemp would ask for 0o600.
FILE_MODE = 0o666
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


def refused_write_error(path: Path, err: OSError) -> StoreError:
    """The store error for a write the file system refused on ``path`` (a file or a directory)."""
    why = "the file system is read-only" if err.errno == errno.EROFS else "permission denied"
    return StoreError(
        f"no write permission on {path} ({why})",
        hint="ask its owner for write access (or to give your group write access), or only query this store",
    )


@contextlib.contextmanager
def refused_as_store_error(where: Path | None = None) -> Iterator[None]:
    """Turn a refused write (EACCES, EPERM, EROFS) inside the block into a :class:`StoreError`.

    The error names ``where``, else the file the system refused if it exists, else the directory
    that refused to hold a new file.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in _REFUSED:
            raise
        if where is None:
            where = Path(os.fsdecode(e.filename)) if e.filename is not None else Path(".")
            if not where.exists():
                where = where.parent
        raise refused_write_error(where, e) from e


def make_dirs(directory: Path) -> None:
    with refused_as_store_error():
        directory.mkdir(parents=True, exist_ok=True)


def _new_temp(directory: Path) -> tuple[int, Path]:
    """Create and open an unused ``.tmp-*`` file in ``directory`` (mode: FILE_MODE less the umask)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    with refused_as_store_error(directory):
        for _ in range(100):
            tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(6)}"
            try:
                return os.open(tmp, flags, FILE_MODE), tmp
            except FileExistsError:
                continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(directory))


def _replace(tmp: Path, path: Path) -> None:
    with refused_as_store_error(path.parent):
        os.replace(tmp, path)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    make_dirs(path.parent)
    fd, tmp = _new_temp(path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path to write to; on success it replaces ``path`` atomically."""
    make_dirs(path.parent)
    fd, tmp_path = _new_temp(path.parent)
    os.close(fd)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        _replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


class StoreLock:
    """An exclusive advisory lock (``flock``) on ``<store>/.lock`` for writers.

    Readers never take it: every file is replaced atomically, so they always
    see a consistent version. The kernel drops the lock when a process dies,
    so a killed writer never leaves the store locked. The lock file names its holder
    (``pid N``) and is emptied on release: a holder still named when the lock is next taken
    was killed holding it, and ``on_recover(pid)`` runs (lock held) to tie up what it left.
    """

    def __init__(
        self,
        path: Path,
        *,
        wait: bool = True,
        timeout: float | None = None,
        on_recover: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.wait = wait
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0
        # Called (lock held) when the last holder was killed holding it: see _killed_holder.
        self.on_recover = on_recover

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        with refused_as_store_error():
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if not self.wait or (deadline is not None and time.monotonic() >= deadline):
                    holder = ""
                    with contextlib.suppress(OSError):
                        holder = Path(self.path).read_text().strip()
                    os.close(fd)
                    raise LockedError(
                        f"the store is locked by another memp process{f' ({holder})' if holder else ''}",
                        hint="wait for it to finish, or run again without --no-wait to wait for the lock",
                    ) from None
                time.sleep(0.05)
        killed = _killed_holder(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        self._depth = 1
        if killed is not None and self.on_recover is not None:
            try:
                self.on_recover(killed)
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # released, not killed: the next holder has nothing to tidy
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _killed_holder(fd: int) -> int | None:
    """The pid the lock file still names once the lock is ours: a holder that released it emptied
    the file, so one that is named was killed holding it (kill -9, a crash; the kernel dropped its
    lock). None when the file is empty, names this process, or says nothing memp wrote."""
    try:
        text = os.pread(fd, 64, 0).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    head, _, pid = text.strip().partition(" ")
    if head != "pid" or not pid.isdigit() or int(pid) == os.getpid():
        return None
    return int(pid)
