"""Memories: one TOML file each, meant to be read and edited by hand.

A memory is what a new task gets back: the task it was learned from, the
concrete steps (kind ``trajectory``), an abstract script (kind ``script``),
or both (kind ``procedure``, the paper's proceduralization), plus usage
statistics and provenance. ``keys`` are the texts embedded for retrieval
(by default the task); editing them re-embeds the memory on the next command.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memp_cli.errors import MemoryFileError
from memp_cli.model import tomlwrite
from memp_cli.model.limits import (
    MAX_COUNT,
    MAX_DEPTH,
    MAX_KEYS,
    MAX_KEYWORDS,
    MAX_MEMORY_FILE_BYTES,
    depth_over,
)
from memp_cli.model.tomlutil import line_of_key, parse_toml, update_toml
from memp_cli.redact import shown

SCHEMA_VERSION = 1
KINDS = ("trajectory", "script", "procedure")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

HEADER = (
    "# memp memory. Edit freely: the next memp command re-checks it and re-embeds\n"
    "# it when `keys` change. `memp doctor` validates every memory file.\n"
)

_VARIABLE = re.compile(r"\{[^{}]*\}")


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def valid_id(memory_id: str) -> bool:
    return bool(ID_RE.match(memory_id))


def valid_ids(names: Iterable[str], suffix: str = "") -> list[str]:
    """The ids of ``names`` that are a valid id followed by ``suffix`` (``.toml``), in order:
    :func:`valid_id` by one regex pass over all of them (a folder of a million files)."""
    pattern = f"^({ID_RE.pattern[1:-1]}){re.escape(suffix)}$"
    return re.findall(pattern, "\n".join(n for n in names if "\n" not in n), re.M)


@dataclass
class Stats:
    retrieved: int = 0
    successes: int = 0
    failures: int = 0
    last_used: str = ""


@dataclass
class Provenance:
    trajectories: list[str] = field(default_factory=list)
    policy: str = ""
    model: str = ""
    prompt_version: str = ""
    created: str = ""
    updated: str = ""


@dataclass
class Memory:
    id: str
    kind: str
    task: str
    keys: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    task_type: str = ""
    success: bool | None = None
    script: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, str]] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    provenance: Provenance = field(default_factory=Provenance)
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def key_text(self) -> str:
        """The text embedded and matched lexically for the ``query`` key."""
        return "\n".join(self.keys) if self.keys else self.task

    def list_row(self) -> dict[str, Any]:
        """The memory as one line of ``memp list --json`` (and the MCP ``list`` tool)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "task": self.task,
            "task_type": self.task_type or None,
            "success": self.success,
            "stats": vars(self.stats),
            "version": self.version,
            "updated": self.provenance.updated,
        }

    def procedure_text(self) -> str:
        """The procedure this memory is an instance of, as retrieval matches it: the script's
        title with its ``{variables}`` dropped (``"put a hot {object} in {receptacle}"`` ->
        ``"put a hot in"``), or the key text when the memory has no script title. Matching a
        task against it weighs what is done over what it is done to."""
        title = self.script.get("title") if self.script else None
        if isinstance(title, str) and title.strip():
            return " ".join(_VARIABLE.sub(" ", title).split())
        return self.key_text()

    def family(self) -> str:
        """The memories that are the same procedure share this: the task type when the run
        had one, else the procedure text (lowercased, spaces collapsed)."""
        return self.task_type or " ".join(self.procedure_text().lower().split())

    def key_hash(self) -> str:
        return hashlib.sha256(self.key_text().encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "kind": self.kind,
            "version": self.version,
            "task": self.task,
        }
        if self.task_type:
            d["task_type"] = self.task_type
        if self.success is not None:
            d["success"] = self.success
        d["keys"] = list(self.keys)
        d["keywords"] = list(self.keywords)
        d.update(self.extra)
        d["stats"] = dict(vars(self.stats))
        d["provenance"] = dict(vars(self.provenance))
        if self.script:
            d["script"] = self.script
        if self.steps:
            d["steps"] = self.steps
        return d

    def to_toml(self, previous: str | None = None) -> str:
        """The memory file's text. With ``previous`` (the text it replaces), keep that text's
        comments, blank lines and key order wherever the content did not change."""
        data = self.to_dict()
        fresh = HEADER + tomlwrite.dumps(data)  # as tomli_w renders it, faster
        if previous is None or _as_memp_writes_it(previous):
            return fresh  # nothing of the user's to keep: skip the (slow) round trip
        return update_toml(previous, data) or fresh


def _as_memp_writes_it(text: str) -> bool:
    """Whether ``text`` is exactly what memp renders for its content (no comment, no layout
    of the user's). Cheap next to a tomlkit round trip: tomllib and the writer are fast."""
    try:
        return text == HEADER + tomlwrite.dumps(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, TypeError, ValueError):
        return False


def _fail(msg: str, path: Path | str, text: str, key: str | None = None) -> MemoryFileError:
    line = line_of_key(text, key) if key else None
    return MemoryFileError(
        msg,
        path=str(path),
        line=line,
        hint="fix the file by hand, or restore it; `memp doctor` lists every broken file",
    )


def _expect(cond: bool, msg: str, path: Path | str, text: str, key: str) -> None:
    if not cond:
        raise _fail(msg, path, text, key)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def memory_from_toml(text: str, path: Path | str) -> Memory:
    """Parse and validate one memory file; errors name ``path:line``."""
    data = parse_toml(text, path, MemoryFileError)
    if depth_over(data):
        raise _fail(f"tables or arrays nested more than {MAX_DEPTH} deep", path, text)
    sv = data.get("schema_version", SCHEMA_VERSION)
    _expect(
        isinstance(sv, int) and not isinstance(sv, bool),
        "schema_version must be a number",
        path,
        text,
        "schema_version",
    )
    _expect(
        sv <= SCHEMA_VERSION,
        f"schema_version {sv} is newer than this memp understands",
        path,
        text,
        "schema_version",
    )
    mid = data.get("id")
    _expect(
        isinstance(mid, str) and valid_id(mid),
        'missing or invalid "id" (lowercase letters, digits, - and _, at most 64)',
        path,
        text,
        "id",
    )
    stem = Path(path).stem
    _expect(
        stem == mid,
        f'"id" is {shown(mid)} but the file is named {Path(path).name}: they must agree',
        path,
        text,
        "id",
    )
    kind = data.get("kind")
    _expect(kind in KINDS, f'"kind" must be one of {", ".join(KINDS)}, got {shown(kind)}', path, text, "kind")
    task = data.get("task")
    _expect(
        isinstance(task, str) and bool(task.strip()), '"task" must be a non-empty string', path, text, "task"
    )
    version = data.get("version", 1)
    _expect(
        isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= MAX_COUNT,
        '"version" must be a positive whole number',
        path,
        text,
        "version",
    )
    keys = data.get("keys", [])
    _expect(_str_list(keys), '"keys" must be a list of strings', path, text, "keys")
    _expect(
        len(keys) <= MAX_KEYS,
        f'"keys" holds at most {MAX_KEYS} texts, got {len(keys)}',
        path,
        text,
        "keys",
    )
    keywords = data.get("keywords", [])
    _expect(_str_list(keywords), '"keywords" must be a list of strings', path, text, "keywords")
    _expect(
        len(keywords) <= MAX_KEYWORDS,
        f'"keywords" holds at most {MAX_KEYWORDS} words, got {len(keywords)}',
        path,
        text,
        "keywords",
    )
    task_type = data.get("task_type", "")
    _expect(isinstance(task_type, str), '"task_type" must be a string', path, text, "task_type")
    success = data.get("success")
    _expect(
        success is None or isinstance(success, bool), '"success" must be true or false', path, text, "success"
    )
    script = data.get("script", {})
    _expect(isinstance(script, dict), "[script] must be a table", path, text, "script")
    title = script.get("title", "")
    _expect(isinstance(title, str), "script.title must be a string", path, text, "title")
    for k in ("steps", "preconditions", "pitfalls"):
        if k in script:
            _expect(
                _str_list(script[k]),
                f"script.{k} must be a list of strings",
                path,
                text,
                "script" if k == "steps" else k,
            )
    steps = data.get("steps", [])
    ok_steps = isinstance(steps, list) and all(
        isinstance(s, dict) and all(isinstance(v, str) for v in s.values()) for s in steps
    )
    _expect(
        ok_steps,
        "[[steps]] entries must be tables of strings (action, observation, thought)",
        path,
        text,
        "steps",
    )
    if kind in ("script", "procedure"):
        _expect(bool(script), f'a "{kind}" memory needs a [script] table', path, text, "kind")
    if kind in ("trajectory", "procedure"):
        _expect(bool(steps), f'a "{kind}" memory needs [[steps]]', path, text, "kind")

    stats_d = data.get("stats", {})
    _expect(isinstance(stats_d, dict), "[stats] must be a table", path, text, "stats")
    stats = Stats()
    for k, v in stats_d.items():
        if k not in vars(stats):
            continue
        want = type(getattr(stats, k))
        _expect(
            isinstance(v, want)
            and not isinstance(v, bool)
            and (not isinstance(v, int) or 0 <= v <= MAX_COUNT),
            f"stats.{k} must be a {'non-negative whole number (at most 2**53)' if want is int else 'string'}",
            path,
            text,
            k,
        )
        setattr(stats, k, v)
    prov_d = data.get("provenance", {})
    _expect(isinstance(prov_d, dict), "[provenance] must be a table", path, text, "provenance")
    prov = Provenance()
    for k, v in prov_d.items():
        if k not in vars(prov):
            continue
        want = type(getattr(prov, k))
        ok = _str_list(v) if want is list else isinstance(v, str)
        _expect(ok, f"provenance.{k} has the wrong type", path, text, k)
        setattr(prov, k, v)
    known = {
        "schema_version",
        "id",
        "kind",
        "version",
        "task",
        "task_type",
        "success",
        "keys",
        "keywords",
        "stats",
        "provenance",
        "script",
        "steps",
    }
    extra = {k: v for k, v in data.items() if k not in known}
    return Memory(
        id=str(mid),
        kind=str(kind),
        task=str(task),
        keys=keys,
        keywords=keywords,
        task_type=task_type,
        success=success,
        script=script,
        steps=steps,
        stats=stats,
        provenance=prov,
        version=version,
        extra=extra,
    )


def read_memory_bytes(path: Path) -> bytes:
    """A memory file's bytes, refusing (MemoryFileError) what is not a regular file of at most
    MAX_MEMORY_FILE_BYTES: a directory, a FIFO (which would block), a device, a symlink (which
    may point at /dev/zero) are never read. FileNotFoundError when there is no such file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_regular(path, "a symbolic link") from None
        raise MemoryFileError(f"cannot be read ({e.strerror})", path=str(path)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a device or socket"
            )
            raise _not_regular(path, kind)
        if st.st_size > MAX_MEMORY_FILE_BYTES:
            raise _too_big(path, st.st_size)
        raw = _read_all(fd, st.st_size + 1)
        if len(raw) > MAX_MEMORY_FILE_BYTES:
            raise _too_big(path, len(raw))  # grew while being read
        return raw
    except OSError as e:
        raise MemoryFileError(f"cannot be read ({e.strerror})", path=str(path)) from None
    finally:
        os.close(fd)


def _read_all(fd: int, first: int) -> bytes:
    """Up to MAX_MEMORY_FILE_BYTES + 1 bytes of ``fd``, asking first for ``first`` (the size
    fstat gave, and one byte to see it grew): a buffer of the limit's size for every file cost
    a 16 MB allocation per read (~30 us; half a minute over 900k files)."""
    parts: list[bytes] = []
    total, want = 0, first
    while total <= MAX_MEMORY_FILE_BYTES:
        chunk = os.read(fd, min(want, MAX_MEMORY_FILE_BYTES + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        want = 1 << 16
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _not_regular(path: Path, kind: str) -> MemoryFileError:
    return MemoryFileError(
        f"is {kind}, not a regular file",
        path=str(path),
        hint="a memory is a plain .toml file; move this away or replace it with the file itself",
    )


def _too_big(path: Path, size: int) -> MemoryFileError:
    return MemoryFileError(
        f"is {size} bytes, over the {MAX_MEMORY_FILE_BYTES} byte limit for a memory file",
        path=str(path),
        hint="a memory is a few KiB; trim the file or restore it",
    )


def load_memory_file(path: Path) -> Memory:
    return parse_memory_bytes(memory_file_bytes(path), path)


def memory_file_bytes(path: Path) -> bytes:
    """:func:`read_memory_bytes`, a missing file being a MemoryFileError too (for readers that
    report a file removed since they listed it and go on)."""
    try:
        return read_memory_bytes(path)
    except FileNotFoundError:
        raise MemoryFileError("no such memory file", path=str(path)) from None


def parse_memory_bytes(raw: bytes, path: Path) -> Memory:
    """The memory in the bytes :func:`read_memory_bytes` read from ``path``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise MemoryFileError(f"not UTF-8 text ({e.reason})", path=str(path), line=line) from None
    return memory_from_toml(text, path)


def write_memory_file(path: Path, memory: Memory, *, base: str | None = None, durable: bool = True) -> None:
    """Write ``memory`` to ``path`` atomically, keeping the comments and layout of ``base``
    (default: the file being replaced) where the content did not change.

    Every rewrite of an existing memory file goes through here (edit, a re-distill, and
    later reflect, merge and migrations), so a hand comment survives machine writes.
    """
    from memp_cli.store.fsutil import atomic_write  # fsutil's package imports this module

    atomic_write(path, encode_memory_file(path, memory, base=base), durable=durable)


def encode_memory_file(path: Path, memory: Memory, *, base: str | None = None) -> bytes:
    """The bytes ``memory`` is written as at ``path`` (see :func:`render_memory_file`).

    Raises :class:`MemoryFileError` when the memory cannot be a TOML file, e.g. a string
    holds a lone surrogate (not UTF-8 text): checked before anything is written.
    """
    try:
        return render_memory_file(path, memory, base=base).encode("utf-8")
    except _UNENCODABLE as e:
        raise MemoryFileError(f"memory {memory.id} cannot be written as a TOML file ({_why(e)})") from None


# What rendering or encoding a memory raises when a value cannot be TOML text (a lone surrogate).
_UNENCODABLE = (UnicodeError, ValueError, TypeError)


def _why(err: BaseException) -> str:
    reason = f"{type(err).__name__}: {err}"
    return reason if len(reason) <= 300 else reason[:297] + "..."


def encoding_problem(memory: Memory) -> str | None:
    """Why ``memory`` cannot be written as a TOML file, or None: checked before a batch is
    written, so one such memory fails its own trajectory, not the batch."""
    try:
        memory.to_toml().encode("utf-8")
    except _UNENCODABLE as e:
        return f"the memory cannot be written as a TOML file ({_why(e)})"
    return None


def render_memory_file(path: Path, memory: Memory, *, base: str | None = None) -> str:
    """The text ``memory`` is written as at ``path``: keeping the comments and layout of ``base``
    (default: the file there now) where the content did not change."""
    if base is None:
        try:
            base = read_memory_bytes(path).decode("utf-8")
        except (MemoryFileError, OSError, UnicodeDecodeError):
            base = None  # nothing to keep: a new file, or one the write will report on
    return memory.to_toml(previous=base)
