"""Reading TOML files with errors that name the file and line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from memp_cli.errors import InputError

_AT_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")


def parse_toml(text: str, path: Path | str, error: type[InputError] = InputError) -> dict[str, Any]:
    """Parse TOML text; a syntax error becomes ``path:line: message``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _AT_LINE.search(msg)
        line = int(m.group(1)) if m else None
        reason = _AT_LINE.sub("", msg).strip()
        if m:
            reason += f" (column {m.group(2)})"
        raise error(
            f"TOML syntax error: {reason}",
            path=str(path),
            line=line,
            hint="fix the file by hand (or restore it), then run the command again",
        ) from None
    except RecursionError:  # arrays or inline tables nested a few hundred deep
        raise error(
            "TOML nested too deep to read",
            path=str(path),
            hint="fix the file by hand (or restore it), then run the command again",
        ) from None


def line_of_key(text: str, key: str, section: str | None = None) -> int | None:
    """The first line that assigns ``key`` (best effort, for validation errors).

    With ``section``, the first such line inside that ``[section]`` table.
    Only spaces and tabs may precede a key: a match never starts on the blank
    line before the one it names.
    """
    pat = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=", re.MULTILINE)
    if section is not None:
        head = re.search(rf"^[ \t]*\[[ \t]*{re.escape(section)}[ \t]*\]", text, re.MULTILINE)
        if head is not None:
            nxt = re.compile(r"^[ \t]*\[", re.MULTILINE).search(text, head.end())
            m = pat.search(text, head.end(), nxt.start() if nxt else len(text))
            if m is not None:
                return text.count("\n", 0, m.start()) + 1
    m = pat.search(text)
    if m is None:
        pat = re.compile(rf"^[ \t]*\[+[ \t]*{re.escape(key)}[ \t]*\]+", re.MULTILINE)
        m = pat.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def update_toml(old_text: str, data: dict[str, Any]) -> str | None:
    """``data`` laid out as ``old_text``: a machine rewrite of a hand-edited TOML file.

    Comments, blank lines and key order of ``old_text`` are kept wherever a value did not
    change (a value's inline comment even where it did); a changed or new value is rendered
    as tomli_w renders it (multi-line strings), dropped keys are removed. None when
    ``old_text`` cannot be round-tripped, or when the result would not read back as ``data``:
    the caller then writes a fresh rendering. tomlkit is imported here only: it is slow to
    import and to parse, and the read path uses the standard library's tomllib.
    """
    import tomlkit

    try:
        doc = tomlkit.parse(old_text)
        _merge(doc, data)
        text = tomlkit.dumps(doc)
        if not _same(tomllib.loads(text), data):
            return None
    except Exception:  # tomlkit raises many kinds on odd input; the fresh rendering is always right
        return None
    return text


def _rendered(key: str, value: Any) -> Any:
    """``value`` as a tomlkit item, in tomli_w's style (the style of a freshly written file)."""
    import tomli_w
    import tomlkit

    return tomlkit.parse(tomli_w.dumps({key: value}, multiline_strings=True)).item(key)


def _merge(old: Any, new: dict[str, Any]) -> None:
    """Update the tomlkit container ``old`` in place to hold what ``new`` holds."""
    from tomlkit.items import AoT, Table

    for key in [k for k in old if k not in new]:
        del old[key]
    for key, value in new.items():
        if key not in old:
            old[key] = _rendered(key, value)
            continue
        before = old.item(key) if hasattr(old, "item") else old[key]  # the item, not a bare bool
        if _same(before.unwrap(), value):
            continue
        if isinstance(before, Table) and isinstance(value, dict):
            _merge(before, value)
        elif isinstance(before, AoT) and _is_aot(value):  # [[steps]]: table by table
            for table, row in zip(before, value, strict=False):
                _merge(table, row)
            while len(before) > len(value):
                del before[len(before) - 1]
            if len(value) > len(before):
                for table in _rendered(key, value[len(before) :]).body:
                    before.append(table)
        else:
            old[key] = _rendered(key, value)  # tomlkit keeps the replaced value's inline comment


def _is_aot(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``1`` is not ``true`` nor ``1.0``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
