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
