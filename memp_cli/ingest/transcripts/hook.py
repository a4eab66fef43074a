"""``memp hook``: ingest the session a coding agent's hook event names, fast and quietly.

A hook runs inside the agent's loop, so it must never slow or break it: :func:`run_hook` never
raises, writes nothing to stdout, and returns one line for stderr only on trouble (the command
exits 0 whatever happens). The event is the JSON object Claude Code and Gemini CLI write on the
hook's stdin: ``session_id``, ``transcript_path``, ``cwd``, ``hook_event_name``.

- Which store: the one given (``--store`` / ``MEMP_STORE``), else the nearest ``.memp`` at or
  above the event's ``cwd`` (as memp finds one from the current directory), else none: the hook
  does nothing, quietly (a project without a store is not trouble).
- When: on ``SessionEnd`` (or an event without a name). A session is stored once, as it is when
  first ingested, so a per-turn event (``Stop``, ``AfterAgent``) is refused with a line saying
  to use ``SessionEnd``.
- A busy store: the lock is awaited :data:`LOCK_WAIT` seconds at most; then the session is
  queued in the store's inbox (:mod:`memp_cli.ingest.transcripts.inbox`) for the next writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from memp_cli.errors import LockedError, MempError
from memp_cli.store import DEFAULT_STORE

LOCK_WAIT = 2.0  # seconds a hook waits for the store lock before it queues the session
MAX_EVENT_BYTES = 1 << 20
END_EVENTS = {"SessionEnd"}


def find_store_from(cwd: str) -> Path | None:
    """The nearest ``.memp`` store (a directory with ``memp.toml``) at or above ``cwd``."""
    try:
        here = Path(cwd).resolve()
    except (OSError, RuntimeError):
        return None
    for folder in (here, *here.parents):
        candidate = folder / DEFAULT_STORE
        if (candidate / "memp.toml").is_file():
            return candidate
    return None


def parse_event(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_EVENT_BYTES:
        raise ValueError(f"the event on stdin is over {MAX_EVENT_BYTES} bytes")
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"stdin is not a hook event (not JSON: {e.args[0] if e.args else e})") from None
    if not isinstance(event, dict):
        raise ValueError("stdin is not a hook event (a JSON object)")
    return event


def run_hook(
    fmt: str,
    data: bytes,
    *,
    store_root: Path | None = None,
    lock_wait: float = LOCK_WAIT,
    success: bool | None = None,
) -> str | None:
    """Ingest the session of one hook event; a line for stderr on trouble, else None."""
    try:
        return _run(fmt, data, store_root, lock_wait, success)
    except MempError as e:
        return str(e).split("\n")[0]
    except Exception as e:  # a hook never breaks the agent; the line says what went wrong
        return f"unexpected {type(e).__name__}: {e}"


def _run(
    fmt: str, data: bytes, store_root: Path | None, lock_wait: float, success: bool | None
) -> str | None:
    from memp_cli.ingest.transcripts import inbox, read_session
    from memp_cli.store import Store
    from memp_cli.store.fsutil import StoreLock

    try:
        event = parse_event(data)
    except ValueError as e:
        return str(e)
    name = event.get("hook_event_name")
    if name is not None and name not in END_EVENTS:
        return f"ignored a {name} event: run memp hook as a SessionEnd hook (a session is stored once)"
    transcript = event.get("transcript_path")
    if not isinstance(transcript, str) or not transcript:
        return "the hook event has no transcript_path"
    if store_root is None:
        cwd = event.get("cwd")
        store_root = find_store_from(cwd) if isinstance(cwd, str) and cwd else None
        if store_root is None:
            return None  # no store for this project: nothing to do
    store = Store.open(store_root)
    store.command = f"hook {fmt}"
    store.lock = StoreLock(store.lock.path, wait=True, timeout=max(lock_wait, 0.0))
    session_id = event.get("session_id") if isinstance(event.get("session_id"), str) else None
    try:
        store.lock.acquire()
    except LockedError:
        inbox.queue(store.root, fmt, transcript, success=success, session_id=session_id)
        return None
    try:
        trouble: list[str] = []
        try:
            f = open(transcript, "rb")  # noqa: SIM115 (a context manager below)
        except OSError as e:
            trouble.append(f"{transcript}: {e.strerror or e}")
        else:
            with f:
                results, _ = read_session(f, transcript, fmt, success=success)
                report = store.ingest(results)
            if report.bad:
                first = str(report.errors[0]).split("\n")[0]
                more = f" (and {report.bad - 1} more)" if report.bad > 1 else ""
                trouble.append(f"{first}{more}")
        # Then what earlier hooks queued: a broken entry costs a line, never this session.
        try:
            inbox.drain(store, trouble.append)
        except MempError as e:
            trouble.append(str(e).split("\n")[0])
        return "; ".join(trouble) or None
    finally:
        store.lock.release()


def stdin_bytes(stream: Any) -> bytes:
    """The event on ``stream`` (at most one byte over the limit, so the size check sees it); empty
    when it is a terminal."""
    try:
        if os.isatty(stream.fileno()):
            return b""
    except (AttributeError, OSError, ValueError):
        pass
    return bytes(stream.read(MAX_EVENT_BYTES + 1))
