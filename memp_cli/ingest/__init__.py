"""Reading trajectories: the record shapes memp accepts, detected per line.

Each shape is one module with ``NAME``, ``detect(obj) -> int`` and
``parse(obj) -> Trajectory``; :data:`SHAPES` lists them in detection order.
``detect`` answers 2 when the record is surely of its shape, 1 when it may be
(a fallback), 0 when not: a record takes the first shape sure of it, else the
first that may fit. A new shape is a new module and one line in :data:`SHAPES`.

- ``native``: ``{"task_id"|"id", "task", "steps", "success", "reward", ...}``
- ``openai``: ``{"messages": [{"role", "content"}...], "success"?, "reward"?}``
- ``conversations``: AgentInstruct/ETO ``{"conversations": [{"from", "value"}]}``
- ``memp``: the Mem^p reference record ``{"query", "trajectory", "reward"}``

:func:`read_jsonl` reads a JSONL stream line by line, reporting a bad line as
``file:line: what is wrong`` without losing the good ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import orjson

from memp_cli.errors import InputError
from memp_cli.ingest import conversations, memp, native, openai
from memp_cli.model.limits import MAX_JSON_DEPTH, depth_over
from memp_cli.model.trajectory import RecordError, Trajectory

SHAPES: tuple[ModuleType, ...] = (native, openai, conversations, memp)

_PARSERS: dict[str, Callable[[dict[str, Any]], Trajectory]] = {m.NAME: m.parse for m in SHAPES}

FORMATS = ("auto", *_PARSERS)

MAX_LINE_BYTES = 16 * 1024 * 1024


def detect_format(obj: dict[str, Any]) -> str:
    """The name of the shape ``obj`` is read as; RecordError when none fits."""
    scores = [(m.NAME, m.detect(obj)) for m in SHAPES]
    for wanted in (2, 1):
        for name, score in scores:
            if score == wanted:
                return name
    raise RecordError(
        "unrecognised record: expected native {task, steps}, OpenAI {messages}, "
        "Mem^p {query, trajectory} or AgentInstruct {conversations}"
    )


def parse_record(obj: Any, fmt: str = "auto") -> Trajectory:
    if not isinstance(obj, dict):
        raise RecordError(f"a trajectory must be a JSON object, got {type(obj).__name__}")
    if fmt == "auto":
        fmt = detect_format(obj)
    try:
        parser = _PARSERS[fmt]
    except KeyError:
        raise RecordError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}") from None
    t = parser(obj)
    if not t.steps:
        # A memory is built from the steps: a run without any could never be distilled.
        raise RecordError("the trajectory has no steps (no action was taken)")
    return t


@dataclass(slots=True)
class ReadResult:
    line: int
    trajectory: Trajectory | None = None
    error: InputError | None = None


def json_lines(
    lines: Iterable[bytes], path: str, *, json_hint: str, depth_hint: str | None = None
) -> Iterator[tuple[int, Any] | InputError]:
    """``(line number, value)`` per non-blank JSON line, or an InputError naming ``path:line``
    (a line over the size limit, JSON that does not parse, JSON nested too deep). A UTF-8 byte
    order mark on the first line is dropped. ``json_hint`` / ``depth_hint``: what to do, as the
    caller's format puts it. Shared by the line formats and the transcripts."""
    for lineno, raw in enumerate(lines, 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark, as some Windows tools write
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            yield InputError(
                f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES} byte limit", path=path, line=lineno
            )
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            yield InputError(
                f"not valid JSON ({e.args[0] if e.args else e})", path=path, line=lineno, hint=json_hint
            )
            continue
        if depth_over(obj, MAX_JSON_DEPTH):
            yield InputError(
                f"JSON nested more than {MAX_JSON_DEPTH} deep", path=path, line=lineno, hint=depth_hint
            )
            continue
        yield lineno, obj


def read_jsonl(lines: Iterable[bytes], path: str, fmt: str = "auto") -> Iterator[ReadResult]:
    """Parse JSONL lines; yield a trajectory or an error (with path:line) per line.

    Blank lines are skipped silently. Bytes that are not UTF-8, JSON that does
    not parse, and records of the wrong shape each give an error for their line.
    """
    for item in json_lines(
        lines,
        path,
        json_hint="each line must hold one JSON object; fix or remove the line",
        depth_hint="a trajectory record needs a few levels; fix or remove the line",
    ):
        if isinstance(item, InputError):
            yield ReadResult(item.line or 0, error=item)
            continue
        lineno, obj = item
        try:
            yield ReadResult(lineno, trajectory=parse_record(obj, fmt))
        except RecordError as e:
            yield ReadResult(lineno, error=InputError(str(e), path=path, line=lineno))
