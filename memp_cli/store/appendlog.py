"""Append-only JSON Lines files (the journal, the outcome ledger, memory histories).

Each append is one ``write`` on an ``O_APPEND`` descriptor followed by ``fsync``: a kill leaves
whole lines and at most one torn last line. Readers skip a line that does not parse; the next
append first ends a torn line with a newline, so the line after it is whole.
"""

from __future__ import annotations

import os
from pathlib import Path

from memp_cli.store.fsutil import FILE_MODE, make_dirs, refused_as_store_error


def append(path: Path, data: bytes) -> None:
    """Append ``data`` (whole lines, each ending in a newline) to ``path``. A refused write is a
    StoreError naming the file; the file's mode follows the umask."""
    make_dirs(path.parent)
    with refused_as_store_error():
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
