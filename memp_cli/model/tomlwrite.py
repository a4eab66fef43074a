"""Memory files rendered as ``tomli_w.dumps(data, multiline_strings=True)`` renders them, byte
for byte, about six times faster (:func:`dumps`).

Distill writes thousands of memory files a batch, and tomli_w looks at every character of every
string in Python: about 350 µs a memory file, the largest part of writing one. Here a string is
escaped by one regular expression (at C speed), and a document of the types memory files hold
(``str``, ``int``, ``bool``, lists and tables of them) is laid out as tomli_w lays it out: the
same table order, array layout and choice between an array of tables and an inline array.
Anything else (a float, a date, another mapping type...) is rendered by tomli_w itself, which
also raises its own errors. ``tests/test_tomlwrite.py`` checks the two agree on generated
documents."""

from __future__ import annotations

import re
from typing import Any

import tomli_w

_INDENT = "    "
_MAX_LINE = 100  # an array of tables is written inline when each table fits in this
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# What a basic string escapes: control characters but tab, the quote and the backslash.
_ILLEGAL = re.compile('[\x00-\x08\x0a-\x1f\x7f"\\\\]')
_COMPACT = {"\b": "\\b", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


class _Other(Exception):
    """A value of a type this module leaves to tomli_w."""


def dumps(data: dict[str, Any]) -> str:
    """``tomli_w.dumps(data, multiline_strings=True)``."""
    try:
        return "".join(_table(data, "", False))
    except _Other:
        return tomli_w.dumps(data, multiline_strings=True)


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _COMPACT.get(c) or f"\\u{ord(c):04x}"


def _escape_multiline(m: re.Match[str]) -> str:
    c = m.group()
    return "\n" if c == "\n" else _COMPACT.get(c) or f"\\u{ord(c):04x}"


def _string(s: str, multiline: bool = True) -> str:
    if multiline and "\n" in s:
        return '"""\n' + _ILLEGAL.sub(_escape_multiline, s.replace("\r\n", "\n")) + '"""'
    return '"' + (_ILLEGAL.sub(_escape, s) if _ILLEGAL.search(s) else s) + '"'


_KEYS: dict[str, str] = {}  # keys as written, remembered: a memory file repeats a few dozen


def _key(k: object) -> str:
    if type(k) is not str:
        raise _Other
    out = _KEYS.get(k)
    if out is None:
        out = k if _BARE_KEY.fullmatch(k) else _string(k, multiline=False)
        if len(_KEYS) < 4096:
            _KEYS[k] = out
    return out


def _literal(v: object, level: int = 0) -> str:
    t = type(v)
    if t is str:
        return _string(v)  # type: ignore[arg-type]
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return str(v)
    if t is list or t is tuple:
        if not v:
            return "[]"
        inner = _INDENT * (level + 1)
        items = ",\n".join(inner + _literal(x, level + 1) for x in v)  # type: ignore[attr-defined]
        return f"[\n{items},\n{_INDENT * level}]"
    if t is dict:
        return _inline(v)  # type: ignore[arg-type]
    raise _Other


def _inline(d: dict[Any, Any]) -> str:
    if not d:
        return "{}"
    return "{ " + ", ".join(f"{_key(k)} = {_literal(x)}" for k, x in d.items()) + " }"


def _tables_of(v: object) -> bool:
    """A non-empty list of tables not all of which fit on a line: written as ``[[name]]``."""
    if not isinstance(v, (list, tuple)) or not v or not all(type(x) is dict for x in v):
        return False
    return not all(_fits(x) for x in v)


def _fits(d: dict[Any, Any]) -> bool:
    s = _inline(d)
    return len(_INDENT) + len(s) + 1 <= _MAX_LINE and "\n" not in s


def _table(table: dict[Any, Any], name: str, in_aot: bool) -> list[str]:
    if in_aot and all(type(v) is str for v in table.values()):  # a step: strings only
        return [f"[[{name}]]\n", *(f"{_key(k)} = {_string(v)}\n" for k, v in table.items())]
    literals: list[tuple[Any, Any]] = []
    tables: list[tuple[Any, Any, bool]] = []
    for k, v in table.items():
        if type(v) is dict:
            tables.append((k, v, False))
        elif _tables_of(v):
            tables.extend((k, t, True) for t in v)
        elif not isinstance(v, (str, int, list, tuple, dict)):
            raise _Other  # (a mapping of another type is a table to tomli_w: left to it)
        else:
            literals.append((k, v))
    out: list[str] = []
    if in_aot or (name and (literals or not tables)):
        out.append(f"[[{name}]]\n" if in_aot else f"[{name}]\n")
    out.extend(f"{_key(k)} = {_literal(v)}\n" for k, v in literals)
    for k, v, aot in tables:
        if out:
            out.append("\n")
        part = _key(k)
        out.extend(_table(v, f"{name}.{part}" if name else part, aot))
    return out
