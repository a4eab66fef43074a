"""Coding-agent session transcripts: one session file -> one trajectory.

The line formats of :mod:`memp_cli.ingest` hold one run per line; a transcript is a whole file
per run (a session of Claude Code, Codex CLI or Gemini CLI). Each format is a module with
``NAME``, ``detect(obj) -> bool`` (is this record surely of the format) and ``build(records,
session)`` filling a :class:`Session` from ``(line, record)`` pairs:

- ``claude-code``: :mod:`memp_cli.ingest.transcripts.claude_code`
- ``codex``: :mod:`memp_cli.ingest.transcripts.codex`
- ``gemini-cli``: :mod:`memp_cli.ingest.transcripts.gemini_cli`

How a session becomes a trajectory, for every format:

- the task is the first request the user typed (injected context, slash commands and
  compaction summaries are not requests); later requests are kept as observations
  ``[user] ...`` of the step they follow: one session is one trajectory;
- each tool call is a step whose action is ``Name[arguments]`` (:func:`action_text`: a single
  argument as it is, several as JSON) and whose observation is the tool's result (``error: ...``
  when the tool failed);
- the assistant's text and reasoning (thinking blocks, reasoning summaries, Gemini thoughts)
  before a call are that step's thought; the text after the last call (the final answer) is a
  last step with a thought and no action;
- a session without a request or without a tool call is not stored (nothing to learn a procedure
  from), and the summary says so: not an error (Claude Code leaves such files behind);
- a session has no outcome: ``success`` is what the caller says (``--success/--failure``) or
  None (unknown, which never counts as a success);
- the trajectory id is derived from the format and the session id (and a sub-agent's id), so
  ingesting the same session again stores nothing new; the session is kept as it was when first
  ingested (ingest it when it has ended: the hooks run at session end);
- each action, observation and thought is cut to :data:`MAX_FIELD_CHARS` characters (the task to
  :data:`MAX_TASK_CHARS`), marked with "…": a file read or a long diff does not bloat the store.

Records of a type the reader does not know are skipped and counted (formats drift; the count is
in the ingest summary); a line that is not JSON is one bad line (``file:line``), as in the line
formats, and the rest of the session is still read.
"""

from __future__ import annotations

import hashlib
import itertools
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import orjson

from memp_cli.errors import InputError
from memp_cli.ingest import ReadResult, json_lines, read_jsonl
from memp_cli.model.text import cut as plain_cut
from memp_cli.model.trajectory import RecordError, Step, Trajectory
from memp_cli.redact import redactor

MAX_FIELD_CHARS = 2000
MAX_TASK_CHARS = 4000
# How far past a field's limit a secret the limit splits is looked for (a PEM block fits).
SECRET_WINDOW = 8192


def cut(text: str, limit: int) -> str:
    """:func:`memp_cli.model.text.cut`, moved back to the start of a secret the limit would split
    (an API key, a token, a private key block: the built-in patterns), so a cut field never keeps
    the first part of one, where redaction would no longer recognise it (``--no-redact`` too)."""
    if len(text) <= limit:
        return text
    end = limit - 1
    for hit in redactor().find(text[: end + SECRET_WINDOW]):
        if hit.start < end < hit.end:
            return plain_cut(text[: hit.start], limit)
    return plain_cut(text, limit)


SNIFF_LINES = (
    8  # lines looked at to recognise a transcript in `--format auto` (the first one recognised decides)
)


@dataclass
class Session:
    """One session being read: the trajectory's parts and what was skipped."""

    fmt: str
    path: str
    session_id: str | None = None
    agent_id: str | None = None  # a sub-agent's own session (Claude Code agent-*.jsonl)
    cwd: str | None = None
    task: str = ""
    initial: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    records: int = 0
    unknown: Counter[str] = field(default_factory=Counter)
    _thought: list[str] = field(default_factory=list)
    _calls: dict[str, Step] = field(default_factory=dict)

    # -- what the format readers call

    def request(self, text: str) -> None:
        """A request the user typed: the task when it is the first, else an observation."""
        text = text.strip()
        if not text:
            return
        if not self.task:
            self.task = cut(text, MAX_TASK_CHARS)
        else:
            self.note(f"[user] {text}")

    def note(self, text: str) -> None:
        """Text the agent saw outside a tool result: added to the last step's observation."""
        text = text.strip()
        if not text:
            return
        if self.steps and self.steps[-1].action:
            s = self.steps[-1]
            s.observation = cut(f"{s.observation}\n{text}".strip(), MAX_FIELD_CHARS)
        else:
            self.initial.append(text)

    def think(self, text: str) -> None:
        text = text.strip()
        if text:
            self._thought.append(text)

    def call(self, call_id: str | None, name: str, args: Any) -> None:
        step = Step(action=cut(action_text(name, args), MAX_FIELD_CHARS), thought=self._take_thought())
        self.steps.append(step)
        if call_id:
            self._calls[call_id] = step

    def result(self, call_id: str | None, text: str, *, error: bool = False) -> None:
        """A tool's result: the observation of the call it answers (else of the last call)."""
        step = self._calls.get(call_id) if call_id else None
        if step is None:
            step = next((s for s in reversed(self.steps) if s.action), None)
        if step is None:
            return
        text = text.strip()
        if error:
            text = f"error: {text}" if text else "error"
        step.observation = cut(f"{step.observation}\n{text}".strip(), MAX_FIELD_CHARS)

    def skip(self, kind: str) -> None:
        """A record (or content block) of a type this reader does not know."""
        self.unknown[kind] += 1

    # -- the result

    def _take_thought(self) -> str:
        thought = cut("\n\n".join(self._thought), MAX_FIELD_CHARS)
        self._thought.clear()
        return thought

    def not_stored(self) -> str | None:
        """Why the session gives no trajectory (an empty session is not bad input), or None."""
        if not self.task:
            return "the session has no request from the user"
        if not any(s.action for s in self.steps):
            return "the session has no tool call (nothing to learn a procedure from)"
        return None

    def trajectory(self, success: bool | None) -> Trajectory:
        """The session as a trajectory (see :meth:`not_stored` first)."""
        steps = list(self.steps)
        if self._thought:
            steps.append(Step(action="", thought=self._take_thought()))
        extra: dict[str, Any] = {"session_id": self.session_id}
        if self.agent_id:
            extra["agent_id"] = self.agent_id
        if self.cwd:
            extra["cwd"] = self.cwd
        key = orjson.dumps([self.fmt, self.session_id, self.agent_id]) if self.session_id else None
        return Trajectory(
            task=self.task,
            steps=steps,
            success=success,
            task_id=self.session_id,
            initial_observation=cut("\n".join(self.initial), MAX_FIELD_CHARS),
            source=self.fmt,
            extra={k: v for k, v in extra.items() if v is not None},
            id="t" + hashlib.sha256(key).hexdigest()[:15] if key else "",
        )


def action_text(name: str, args: Any) -> str:
    """``Name[arguments]``: one string argument as it is (``Bash[pytest -x]``), one list of strings
    as a shell line (``shell[bash -lc 'ls src']``), any other arguments as compact JSON."""
    if isinstance(args, dict) and len(args) == 1:
        (value,) = args.values()
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = shlex.join(value)
        if isinstance(value, str):
            args = value
    if isinstance(args, str):
        body = args
    elif args is None or args == {}:
        body = ""
    else:
        try:
            body = orjson.dumps(args).decode()
        except TypeError:
            body = str(args)
    return f"{name or 'tool'}[{body}]"


def content_text(content: Any) -> str:
    """Text of a content value: a string, or a list of blocks/parts carrying ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content["text"] if isinstance(content.get("text"), str) else ""
    if isinstance(content, list):
        return "\n".join(t for t in (content_text(c) for c in content) if t)
    return ""


# ------------------------------------------------------------------ reading


def _formats() -> dict[str, ModuleType]:
    from memp_cli.ingest.transcripts import claude_code, codex, gemini_cli

    return {m.NAME: m for m in (claude_code, codex, gemini_cli)}


FORMATS = ("claude-code", "codex", "gemini-cli")


def json_records(lines: Iterable[bytes], path: str) -> Iterator[tuple[int, Any] | InputError]:
    """(line number, value) per JSON line, or an InputError naming ``path:line``."""
    return json_lines(
        lines, path, json_hint="a transcript holds one JSON record per line; the other lines were read"
    )


def sniff(lines: Iterable[bytes]) -> tuple[str | None, Iterator[bytes]]:
    """The transcript format of a stream (None: not a transcript, read it line by line), and the
    stream again from its start. Looks at the first :data:`SNIFF_LINES` JSON records."""
    it = iter(lines)
    head = list(itertools.islice(it, SNIFF_LINES))
    again = itertools.chain(head, it)
    formats = _formats()
    first = next((h for h in head if h.strip()), b"")
    if first.strip() in (b"{", b"\xef\xbb\xbf{") and any(b'"sessionId"' in h for h in head):
        return "gemini-cli", again  # a pretty-printed ConversationRecord: Gemini's older .json
    for item in json_records(head, ""):
        if isinstance(item, InputError) or not isinstance(item[1], dict):
            continue
        for name, module in formats.items():
            if module.detect(item[1]):
                return name, again
    return None, again


@dataclass
class SessionRead:
    """What reading one transcript gave, beside the trajectory: for the ingest summary."""

    fmt: str
    records: int = 0
    unknown: Counter[str] = field(default_factory=Counter)
    not_stored: str | None = None  # why the session gave no trajectory (no tool call)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.fmt,
            "records": self.records,
            "unknown": dict(sorted(self.unknown.items())),
            "not_stored": self.not_stored,
        }

    def summary(self, name: str) -> str | None:
        """One line for stderr, or None when there is nothing to say."""
        parts = []
        if self.unknown:
            kinds = ", ".join(f"{k} x{n}" for k, n in sorted(self.unknown.items()))
            n = sum(self.unknown.values())
            parts.append(f"{n} record{'s' if n != 1 else ''} of unknown type skipped ({kinds})")
        if self.not_stored:
            parts.append(f"not stored: {self.not_stored}")
        return f"{name}: {self.fmt} session: {'; '.join(parts)}" if parts else None


def read_session(
    lines: Iterable[bytes], path: str, fmt: str, *, success: bool | None = None
) -> tuple[Iterator[ReadResult], SessionRead]:
    """Read one session file: the results for :meth:`Store.ingest` (bad lines, then at most one
    trajectory) and a :class:`SessionRead` filled in as they are consumed."""
    formats = _formats()
    if fmt not in formats:
        raise RecordError(f"unknown transcript format {fmt!r}; choose from {', '.join(FORMATS)}")
    info = SessionRead(fmt)
    return _results(formats[fmt], lines, path, success, info), info


def read_input(
    lines: Iterable[bytes], path: str, fmt: str, *, success: bool | None = None
) -> tuple[Iterator[ReadResult], SessionRead | None]:
    """Any input of ``memp ingest``: a transcript (named, or recognised by ``auto``) is one
    session; anything else is read line by line (:func:`memp_cli.ingest.read_jsonl`)."""
    if fmt == "auto":
        detected, lines = sniff(lines)
        fmt = detected or fmt
    if fmt in FORMATS:
        return read_session(lines, path, fmt, success=success)
    if success is not None:
        raise InputError(
            "--success/--failure set the outcome of a transcript session; this input is not one",
            path=path,
            hint='records of the line formats carry their own "success"; or name the transcript '
            f"format with --format ({', '.join(FORMATS)})",
        )
    return read_jsonl(lines, path, fmt), None


def _records(lines: Iterable[bytes], path: str, errors: list[ReadResult]) -> Iterator[tuple[int, Any]]:
    """The JSON records of a transcript; a bad line goes to ``errors``. A file whose first line is
    a lone ``{`` is one pretty-printed JSON document (Gemini CLI's older ``.json`` sessions)."""
    it = iter(lines)
    head: list[bytes] = []
    first = b""
    for raw in it:
        if raw.strip():
            first = raw
            break
        head.append(raw)
    if first.strip().removeprefix(b"\xef\xbb\xbf") == b"{":
        data = b"".join(itertools.chain(head, [first], it)).removeprefix(b"\xef\xbb\xbf")
        try:
            yield 1, orjson.loads(data)
        except orjson.JSONDecodeError as e:
            errors.append(
                ReadResult(
                    1, error=InputError(f"not valid JSON ({e.args[0] if e.args else e})", path=path, line=1)
                )
            )
        return
    for item in json_records(itertools.chain(head, [first], it), path):
        if isinstance(item, InputError):
            errors.append(ReadResult(item.line or 0, error=item))
        else:
            yield item


def _results(
    module: ModuleType, lines: Iterable[bytes], path: str, success: bool | None, info: SessionRead
) -> Iterator[ReadResult]:
    session = Session(fmt=module.NAME, path=path)
    errors: list[ReadResult] = []
    try:
        module.build(_records(lines, path, errors), session)
    except RecordError as e:
        yield from errors
        yield ReadResult(0, error=InputError(str(e), path=path))
        return
    finally:
        info.records, info.unknown = session.records, session.unknown
    yield from errors
    info.not_stored = session.not_stored()
    if info.not_stored is None:
        yield ReadResult(0, trajectory=session.trajectory(success))
