"""The store's inbox: sessions a hook could not ingest because another memp process held the store.

A hook must never make the agent wait: when the store lock is not free within a moment, the hook
writes ``<store>/inbox/<key>.json`` (``{format, transcript, success, session_id, time}``; one
file per transcript, written atomically, so a session queued twice is queued once) and returns.
The next writer that drains the inbox (``memp ingest``, ``memp distill``, ``memp cycle`` and the
next hook) ingests the queued sessions under its own lock, then deletes their entries. An entry
whose transcript is gone or unreadable is dropped with a warning.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from memp_cli.model.memory import now_iso
from memp_cli.store.fsutil import TMP_PREFIX, atomic_write, make_dirs

if TYPE_CHECKING:
    from memp_cli.store import Store

INBOX = "inbox"


def inbox_dir(root: Path) -> Path:
    return root / INBOX


def queue(root: Path, fmt: str, transcript: str, *, success: bool | None, session_id: str | None) -> Path:
    """Queue one session for the next writer; returns the entry's path."""
    folder = inbox_dir(root)
    make_dirs(folder)
    key = hashlib.sha256(f"{fmt}\0{os.path.abspath(transcript)}".encode()).hexdigest()[:16]
    entry = {
        "format": fmt,
        "transcript": os.path.abspath(transcript),
        "success": success,
        "session_id": session_id,
        "time": now_iso(),
    }
    path = folder / f"{key}.json"
    atomic_write(path, orjson.dumps(entry) + b"\n")
    return path


def pending(root: Path) -> list[Path]:
    try:
        names = os.listdir(inbox_dir(root))
    except FileNotFoundError:
        return []
    return sorted(inbox_dir(root) / n for n in names if n.endswith(".json") and not n.startswith(TMP_PREFIX))


@dataclass
class Drained:
    sessions: int = 0  # entries ingested (their sessions added or already stored)
    added: int = 0
    dropped: int = 0  # entries whose transcript could not be read


def drain(store: Store, warn: Callable[[str], None]) -> Drained:
    """Ingest every queued session (under the store lock), deleting each entry once done."""
    from memp_cli.ingest.transcripts import FORMATS, read_session

    out = Drained()
    if not pending(store.root):
        return out
    with store.lock:
        for path in pending(store.root):
            try:
                entry = orjson.loads(path.read_bytes())
                fmt, transcript = entry["format"], entry["transcript"]
                success = entry.get("success")
                if (
                    fmt not in FORMATS
                    or not isinstance(transcript, str)
                    or success not in (None, True, False)
                ):
                    raise ValueError(f"format {fmt!r}, transcript {transcript!r}")
            except FileNotFoundError:
                continue  # drained by another process meanwhile
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                warn(f"{path}: not an inbox entry ({e}); removed")
                path.unlink(missing_ok=True)
                out.dropped += 1
                continue
            try:
                f = open(transcript, "rb")  # noqa: SIM115 (a context manager below)
            except OSError as e:
                warn(f"queued session {transcript}: {e.strerror or e}; dropped from the inbox")
                path.unlink(missing_ok=True)
                out.dropped += 1
                continue
            with f:
                results, _ = read_session(f, transcript, fmt, success=success)
                report = store.ingest(results)
            path.unlink(missing_ok=True)
            out.sessions += 1
            out.added += report.added
    return out
