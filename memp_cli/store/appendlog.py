"""Append-only JSON Lines files (the journal, the outcome ledger, memory histories).

Each append is one ``write`` on an ``O_APPEND`` descriptor followed by ``fsync``: a kill leaves
whole lines and at most one torn last line. Readers skip a line that does not parse; the next
append first ends a torn line with a newline, so the line after it is whole. A log is opened with
``O_NOFOLLOW`` and must be a regular file of the store: a link in its place is refused
(:class:`~memp_cli.store.fsutil.StoreLinkError`), never appended to.
"""

from __future__ import annotations

import os
from pathlib import Path

from memp_cli.store.fsutil import open_own


def append(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Append ``data`` (whole lines, each ending in a newline) to ``path``. A refused write is a
    StoreError naming the file; the file's mode follows the umask. ``durable=False``: no fsync
    (the caller makes a batch of appends durable at once, :func:`~memp_cli.store.fsutil.sync_files`)."""
    fd = open_own(path, os.O_RDWR | os.O_APPEND, what="an append-only log")
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
