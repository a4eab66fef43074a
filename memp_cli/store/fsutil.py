"""File-system primitives: atomic writes and the store's writer lock.

Every file memp writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the same directory, are fsynced, and replace the target by
``os.replace``. A reader sees the old file or the new one, never half of one;
a killed process leaves at most a stray ``.tmp-*`` file that the next writer (see
:class:`StoreLock` and store/recovery.py) or ``memp doctor --fix`` removes.

New files and directories get the usual modes less the process umask (0644 and 0755 under umask
022, 0664 and 0775 under 002), as any program's files do, so a group can share a store. A umask
that leaves them writable by everyone (000, 001...) is taken for no choice at all: what memp
creates then loses group and other write (0644 and 0755), so nobody else on the machine can plant
a link or edit the settings. A write the file system refuses (no permission, read-only file
system) raises :class:`StoreError` naming the file or directory, through
:func:`refused_as_store_error`.

Symbolic links: the store's own path may be a link (``.memp -> /data/memp``, or ``--store`` naming
one): that is the user's choice. A link *inside* a store is never written through: every write
here first checks with ``lstat`` that no directory between the store root and the file is a link,
lock files and append logs are opened with ``O_NOFOLLOW`` and must be regular files, and
:func:`remove_owned` removes only regular files of the store's own directory whose names it
owns. Otherwise :class:`StoreLinkError` (exit 5) names the link and its target, and nothing is
touched. Which paths are a store's is known from :func:`register_store` (called by ``Store``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shlex
import stat
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from memp_cli.errors import LockedError, StoreError

TMP_PREFIX = ".tmp-"
#: Mode requested for new files; the kernel takes the umask off (and applies a directory's
#: default ACL), as for any program's files. tempfile.mkstemp would ask for 0o600.
FILE_MODE = 0o666
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
SYNCFS_MIN = 64  # files made durable by one syncfs(2) rather than file by file (sync_files)
#: The roots of the stores this process opened (as given, absolute, and resolved).
_ROOTS: set[str] = set()


class StoreLinkError(StoreError):
    """A symbolic link inside a store where memp would write (exit 5, as any store problem)."""

    def __init__(self, link: Path, *, what: str = "") -> None:
        try:
            target = os.readlink(link)
        except OSError:
            target = "?"
        self.link = link
        super().__init__(
            f"{link} is a symbolic link (to {target}) inside the store: memp does not write through "
            f"links inside a store{f' ({what})' if what else ''}, and left it and its target untouched",
            hint=f"if you did not make it, remove the link (`rm {shlex.quote(str(link))}`; its target "
            "stays as it is) and run the command again (memp makes a real one); `memp doctor` lists "
            "every link in the store",
        )


def register_store(root: Path) -> None:
    """Make ``root`` a store for the checks below: what lies under it must not be a link."""
    _ROOTS.add(os.path.abspath(root))
    with contextlib.suppress(OSError):
        _ROOTS.add(os.path.realpath(root))


def _store_root(path: str) -> str | None:
    best = None
    for root in _ROOTS:
        if path.startswith(root.rstrip(os.sep) + os.sep) and (best is None or len(root) > len(best)):
            best = root
    return best


def check_no_links(path: Path, *, last: bool = True) -> None:
    """Raise StoreLinkError if a directory between the store root and ``path`` (and ``path``
    itself when ``last``) is a symbolic link. No check for a path in no registered store."""
    full = os.path.abspath(path)
    root = _store_root(full)
    if root is None:
        return
    parts = full[len(root) :].strip(os.sep).split(os.sep)
    if not last:
        parts = parts[:-1]
    here = root
    for part in parts:
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return  # memp makes the rest: real directories
        except NotADirectoryError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise StoreLinkError(Path(here))


def _tighten(fd: int | None = None, path: Path | None = None) -> None:
    """A file or directory memp just made that everyone may write (umask 000) loses group and
    other write: the umask left no choice to respect."""
    st = os.fstat(fd) if fd is not None else os.lstat(path)  # type: ignore[arg-type]
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        if fd is not None:
            os.fchmod(fd, mode & ~0o022)
        else:
            os.chmod(path, mode & ~0o022)  # type: ignore[arg-type]


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
    """Make ``directory`` and its missing parents (never through a link inside a store)."""
    check_no_links(directory)
    missing: list[Path] = []
    here = directory
    while not os.path.lexists(here) and here != here.parent:
        missing.append(here)
        here = here.parent
    with refused_as_store_error():
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o777)
            except FileExistsError:
                continue  # made meanwhile by another process
            _tighten(path=d)
        if not directory.is_dir():
            directory.mkdir()  # raises the error that says what is there


def _new_temp(directory: Path, kind: str = "") -> tuple[int, Path]:
    """Create and open an unused ``.tmp-<kind>*`` file in ``directory`` (mode: FILE_MODE less the
    umask)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC
    with refused_as_store_error(directory):
        for _ in range(100):
            tmp = directory / f"{TMP_PREFIX}{kind}{secrets.token_hex(6)}"
            try:
                fd = os.open(tmp, flags, FILE_MODE)
            except FileExistsError:
                continue
            _tighten(fd)
            return fd, tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(directory))


def write_temp(directory: Path, data: bytes, *, kind: str = "") -> tuple[Path, os.stat_result]:
    """A new temp file in ``directory`` holding ``data``, not fsynced (see :func:`sync_files`),
    and its stat once written (a rename keeps its mtime and size)."""
    fd, tmp = _new_temp(directory, kind)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            st = os.fstat(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp, st


def _replace(tmp: Path, path: Path) -> None:
    check_no_links(path, last=False)  # again: the link may have been made since the temp file
    with refused_as_store_error(path.parent):
        os.replace(tmp, path)


def open_own(path: Path, flags: int, *, what: str = "") -> int:
    """Open (creating it if needed) one of the store's own files for writing: never through a
    link (``O_NOFOLLOW``, and no link among its directories in the store), and only a regular
    file (a FIFO or a device is refused before anything is written). ``flags`` must not hold
    O_TRUNC: a file is cut only once it is known to be memp's."""
    make_dirs(path.parent)
    with refused_as_store_error():
        while True:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, FILE_MODE)
                _tighten(fd)
                return fd
            except FileExistsError:
                pass
            try:
                fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
                break
            except FileNotFoundError:
                continue  # removed meanwhile: make it
            except OSError as e:
                if e.errno == errno.ELOOP or os.path.islink(path):
                    raise StoreLinkError(path, what=what) from None
                raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(
            f"{path} is not a regular file: memp writes only its own files there"
            + (f" ({what})" if what else ""),
            hint=f"move it away (`mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.bak')}`) and "
            "run the command again; memp makes a new one",
        )
    return fd


def remove_owned(directory: Path, keep: Collection[str], owned: re.Pattern[str]) -> list[str]:
    """Remove the files of ``directory`` not in ``keep`` whose names ``owned`` matches in full,
    and only regular files: never what a link leads to. The directory itself must be a real
    one of the store (StoreLinkError otherwise, and nothing is removed). Returns the names
    removed."""
    check_no_links(directory)
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(directory):
            raise StoreLinkError(directory) from None
        raise
    removed: list[str] = []
    try:
        for name in os.listdir(fd):
            if name in keep or not owned.fullmatch(name):
                continue
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=fd)
                    removed.append(name)
    finally:
        os.close(fd)
    return removed


def unlink_own(path: Path) -> None:
    """Remove one of the store's files (a link is removed, never its target; a link among its
    directories is refused). FileNotFoundError when there is none."""
    check_no_links(path, last=False)
    os.unlink(path)


def rename_own(src: Path, dst: Path) -> None:
    """``os.replace`` within a store, with no link among the directories of either path."""
    check_no_links(src, last=False)
    check_no_links(dst, last=False)
    os.replace(src, dst)


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


def sync_files(paths: Iterable[Path]) -> None:
    """Make the data of the files ``paths`` and their names in their folders durable: an fsync
    of each file and of each folder or, for a batch of at least :data:`SYNCFS_MIN` files, one
    ``syncfs(2)`` of each file system holding them where Linux has it (one flush instead of one
    per file; it also flushes what other programs wrote there, hence not for a few files)."""
    paths = list(paths)
    if not paths:
        return
    dirs = {p.parent for p in paths}
    if len(paths) >= SYNCFS_MIN:
        devices: dict[int, Path] = {}
        for d in sorted(dirs):
            with contextlib.suppress(OSError):
                devices.setdefault(os.stat(d).st_dev, d)
        if devices and all(_syncfs(d) for d in devices.values()):
            return
    for p in paths:  # the folder once a file, as each atomic write does (a count that never varies)
        _fsync_path(p)
        fsync_dir(p.parent)


def _syncfs(within: Path) -> bool:
    """``syncfs(2)`` of the file system holding the folder ``within``; False where it is not
    available (not Linux, or the call failed: the caller then fsyncs file by file)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    try:
        fd = os.open(within, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return False
    try:
        return bool(fn(fd) == 0)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, *, durable: bool = True, kind: str = "") -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename; the temp file is
    named ``.tmp-<kind><12 hex>``)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    make_dirs(path.parent)
    fd, tmp = _new_temp(path.parent, kind)
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
        fd = open_own(self.path, os.O_RDWR, what="a lock file")
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
                    with contextlib.suppress(OSError, UnicodeDecodeError):
                        holder = os.pread(fd, 200, 0).decode().strip()
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
